using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Numerics.Tensors;

namespace Lrl.Cpu;

/// <summary>
/// A weight-only quantized matrix (int8 or int4 codes with f16 group scales, see <see cref="QuantizedTensor"/>) read in
/// place. Decode (<see cref="Gemv"/>) quantizes the activation row to int8 per 32 columns and runs integer dot products
/// (AVX2 maddubs / AVX-VNNI) with the group scales fused in; prefill goes through <see cref="RowToFloat"/>, which
/// dequantizes one row that <see cref="MatMulJob"/> then reuses for every token of the batch.
/// </summary>
public sealed unsafe class QuantMatrix : CpuMatrix
{
    private readonly QuantizedTensor _q;

    public QuantMatrix(QuantizedTensor q) : base(q.Name, q.Rows, q.Cols)
    {
        q.Validate();
        _q = q;
        if (q.Groups == 1)
        {
            // One scale per row: kept as f32 (4 bytes a row, against the row's Cols/2 or Cols of codes), so the
            // decode kernels skip the per-row f16 conversion.
            _channelScales = new float[q.Rows];
            for (int o = 0; o < q.Rows; o++) _channelScales[o] = (float)q.Scales[o];
        }
    }

    private readonly float[]? _channelScales;

    public QuantizedTensor Tensor => _q;
    public int Bits => _q.Bits;
    public int GroupSize => _q.GroupSize;
    public override string Format => _q.Format;
    public override long ByteSize => _q.ByteSize;

    /// <summary>Selects this matrix's decode kernel (tests, measurements); <see cref="QuantKernel.Auto"/> picks the fastest available.</summary>
    public QuantKernel Kernel { get; set; } = QuantKernel.Auto;

    private readonly QuantScratch _prepared = new();
    private bool _isPrepared;

    /// <summary>Permutes and quantizes the activation row once for all the row blocks of one product.</summary>
    public override void PrepareGemv(ReadOnlySpan<float> x)
    {
        _isPrepared = false;
        Prepare(x, _prepared);
        _isPrepared = true;
    }

    public override void EndGemv() { _isPrepared = false; _shared = null; }

    private QuantScratch? _shared;

    /// <summary>
    /// Uses the activation <paramref name="other"/> prepared for the same input (Q/K/V, gate/up) when it is prepared
    /// the same way: same width, kernel, bits and group size, no column permutation.
    /// </summary>
    public override bool TryShareGemv(CpuMatrix other)
    {
        if (other is not QuantMatrix m || !m._isPrepared || m._shared != null || m.Cols != Cols || m.Bits != Bits ||
            m.GroupSize != GroupSize || m._q.ColumnOrder != null || _q.ColumnOrder != null || m.Selected() != Selected())
            return false;
        _shared = m._prepared;
        _isPrepared = true;
        return true;
    }

    private QuantKernel Selected()
    {
        var k = Kernel == QuantKernel.Auto ? QuantKernels.Best : Kernel;
        return QuantKernels.IsSupported(k) ? k : QuantKernel.Scalar;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Prepare(ReadOnlySpan<float> x, QuantScratch s)
    {
        s.Ensure(Cols);
        var xp = s.Permuted.AsSpan(0, Cols);
        if (_q.ColumnOrder is { } order)
            for (int j = 0; j < xp.Length; j++) xp[j] = x[order[j]];
        else
            x[..Cols].CopyTo(xp);
        if (Selected() is QuantKernel.Avx2Int or QuantKernel.Vnni)
        {
            QuantKernels.QuantizeActivations(xp, s);
            QuantKernels.GroupSums(s, Cols, _q.GroupSize, _q.Bits);
        }
    }

    private QuantScratch[] _rowScratch = [];

    /// <summary>
    /// Most rows through the integer kernels per product (see <see cref="CpuMatrix.RowsMax"/>) where no tile serves the
    /// format (grouped formats, and narrow per-channel matrices past their tiles): each row gets its GEMV's bits, so
    /// verify steps (trees of up to 64 nodes) and batched steps of up to 64 rows give every row what plain decoding gives
    /// it (at 32, a 41-row tree on stories260k q4/q8 went through the f32 path and its greedy output drifted).
    /// </summary>
    internal static int QuantRowsMax = int.TryParse(Environment.GetEnvironmentVariable("LRL_QUANT_ROWS"), out var v) ? v : 64;

    /// <summary>
    /// Most rows through the integer tiles per product (prefill chunks included): 0.7-0.9 of the f32 path's time at 128
    /// rows (SmolLM2-135M pp128 q4 600-630 vs 457-483 tok/s, q8 600-675 vs 384-500, alternating runs).
    /// </summary>
    internal static int TileRowsMax = int.TryParse(Environment.GetEnvironmentVariable("LRL_TILE_ROWS"), out var t) ? t : 512;

    private bool TilesServe => Selected() is QuantKernel.Avx2Int or QuantKernel.Vnni && QuantKernels.TilesServe(_q, _channelScales, Selected() == QuantKernel.Vnni);

    /// <summary>
    /// Narrower matrices keep the f32 path past <see cref="QuantRowsMax"/> rows: the tiles gain little on them, and
    /// one activation scale per short row costs accuracy (stories260k's 64-wide int4 per-channel model: held-out
    /// perplexity +0.28 % through the tiles).
    /// </summary>
    private const int TileMinCols = 256;

    public override int RowsMax => TilesServe && Cols >= TileMinCols ? Math.Max(TileRowsMax, QuantRowsMax) : QuantRowsMax;

    /// <summary>
    /// Quantizes each activation row once (as <see cref="PrepareGemv"/> does for one) into the product's scratch, the rows
    /// shared among the pool's threads: on the caller alone the other threads waited it out (a sixth of a 16-row int4
    /// product at SmolLM2-135M's shapes).
    /// </summary>
    public override void PrepareRows(float[] x, int rows, RowScratch scratch, WorkerPool pool)
    {
        if ((long)rows * Cols > x.Length) throw new ArgumentException($"{Name}: {rows} rows of {Cols} exceed the input ({x.Length})");
        _rowScratch = scratch.Ensure(rows);
        if (rows < ParallelPrepareRows || pool.ThreadCount == 1)
        {
            for (int r = 0; r < rows; r++) Prepare(x.AsSpan(r * Cols, Cols), _rowScratch[r]);
            return;
        }
        _prepareJob ??= new PrepareRowsJob(this);
        _prepareJob.X = x;
        try { pool.Run(_prepareJob, rows); }
        finally { _prepareJob.X = []; }
    }

    /// <summary>Fewest rows whose preparation is shared among threads (below, a dispatch costs more than it saves).</summary>
    private const int ParallelPrepareRows = 4;

    private PrepareRowsJob? _prepareJob;

    private sealed class PrepareRowsJob(QuantMatrix m) : IParallelJob
    {
        public float[] X = [];
        public void Execute(int item, int worker) => m.Prepare(X.AsSpan(item * m.Cols, m.Cols), m._rowScratch[item]);
    }

    /// <summary>Uses the rows <paramref name="other"/> prepared from the same input (Q/K/V, gate/up) when prepared alike.</summary>
    public override bool TryShareRows(CpuMatrix other)
    {
        if (other is not QuantMatrix m || m.Cols != Cols || m.Bits != Bits || m.GroupSize != GroupSize ||
            m._q.ColumnOrder != null || _q.ColumnOrder != null || m.Selected() != Selected())
            return false;
        _rowScratch = m._rowScratch;
        return true;
    }

    protected override void GemvRow(ReadOnlySpan<float> x, int row, Span<float> y, int rowStart, int rowEnd) =>
        RunKernel(_rowScratch[row], y, rowStart, rowEnd);

    /// <summary>
    /// Per-channel matrices run register-blocked integer tiles (<see cref="QuantKernels.ChannelTiles"/>): up to four
    /// activation rows at a time against each block of weight rows, unpacked once, every result bit-identical to the
    /// row's GEMV (the channel order); a single leftover activation row and an odd last weight row run the GEMV. Other formats
    /// as the base class does.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void GemvRows(ReadOnlySpan<float> x, Span<float> y, int rows, int rowStart, int rowEnd)
    {
        var k = Selected();
        bool vnni = k == QuantKernel.Vnni;
        if (rows < 2 || k is not (QuantKernel.Avx2Int or QuantKernel.Vnni) || !QuantKernels.TilesServe(_q, _channelScales, vnni))
        {
            base.GemvRows(x, y, rows, rowStart, rowEnd);
            return;
        }
        // Tiles take groups of four rows and a last group of two or three (a narrower tile), a single leftover row the
        // GEMV. SmolLM2-135M q4 shapes, one thread, weights in cache: 2 rows 33-36 -> 22-24 µs as a tile instead of two
        // GEMVs, 3 rows 48-54 -> 30, 7 rows 81-88 -> 65-69 (8 rows: 74-76).
        int step = QuantKernels.TileBlockRows(_q), outF = Rows, full = rows % 4 == 1 ? rows - 1 : rows;
        for (int b0 = rowStart; b0 < rowEnd; b0 += step)
        {
            int b1 = Math.Min(rowEnd, b0 + step), even = b0 + (b1 - b0) / 2 * 2;
            QuantKernels.ChannelTiles(_q, _rowScratch, full, _channelScales!, y, outF, b0, even, vnni);
            for (int m = 0; m < rows; m++)
            {
                if (m < full && even == b1) continue;
                int from = m < full ? even : b0; // an odd last weight row, or every row for leftover activation rows
                RunKernel(_rowScratch[m], y.Slice(m * outF + from, b1 - from), from, b1);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Gemv(ReadOnlySpan<float> x, Span<float> y, int rowStart, int rowEnd)
    {
        QuantScratch s;
        if (_isPrepared) s = _shared ?? _prepared;
        else Prepare(x, s = QuantScratch.ForThread(Cols));
        RunKernel(s, y, rowStart, rowEnd);
    }

    /// <summary>Rows [rowStart, rowEnd) of the product with the prepared activation row <paramref name="s"/>.</summary>
    private void RunKernel(QuantScratch s, Span<float> y, int rowStart, int rowEnd)
    {
        var xp = s.Permuted.AsSpan(0, Cols);
        switch (Selected())
        {
            case QuantKernel.WidenF32: QuantKernels.GemvWiden(_q, xp, y, rowStart, rowEnd); break;
            case QuantKernel.Avx2Int: QuantKernels.GemvInt(_q, s, y, rowStart, rowEnd, vnni: false, _channelScales); break;
            case QuantKernel.Vnni: QuantKernels.GemvInt(_q, s, y, rowStart, rowEnd, vnni: true, _channelScales); break;
            default: QuantKernels.GemvScalar(_q, xp, y, rowStart, rowEnd); break;
        }
    }

    /// <summary>v = v·a + b (one pass; a group of 32 or more is too short for two framework calls to pay off).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScaleShift(Span<float> v, float a, float b)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var va = Vector256.Create(a); var vb = Vector256.Create(b);
            ref float r = ref MemoryMarshal.GetReference(v);
            for (; i + 8 <= v.Length; i += 8)
                Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref r, (nuint)i), va, vb).StoreUnsafe(ref r, (nuint)i);
        }
        for (; i < v.Length; i++) v[i] = v[i] * a + b;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void RowToFloat(int row, Span<float> destination)
    {
        int n = Cols, gs = _q.GroupSize, groups = _q.Groups;
        var dst = destination[..n];
        var tmp = _q.ColumnOrder is null ? dst : QuantScratch.ForThread(n).Row.AsSpan(0, n);
        if (_q.Bits == 8)
        {
            var codes = new ReadOnlySpan<sbyte>((sbyte*)_q.Codes + (long)row * n, n);
            TensorPrimitives.ConvertChecked<sbyte, float>(codes, tmp);
            for (int g = 0; g < groups; g++)
            {
                var part = tmp.Slice(g * gs, gs);
                TensorPrimitives.Multiply(part, _q.Scale(row, g), part);
            }
        }
        else
        {
            QuantKernels.UnpackInt4Row(_q.Codes + (long)row * (n / 2), n, tmp);
            for (int g = 0; g < groups; g++)
            {
                int z = _q.Zeros != null ? _q.Zeros[(long)row * groups + g] : 8;
                var part = tmp.Slice(g * gs, gs);
                float scale = _q.Scale(row, g);
                ScaleShift(part, scale, -z * scale); // (code − z)·s in one pass
            }
        }
        if (_q.ColumnOrder is { } order)
            for (int j = 0; j < n; j++) dst[order[j]] = tmp[j];
    }
}

/// <summary>Inner-loop choice for quantized products.</summary>
public enum QuantKernel
{
    /// <summary>VNNI when the CPU has it, else AVX2 integer dot, else scalar.</summary>
    Auto,
    /// <summary>Plain loops (the reference the SIMD kernels are tested against).</summary>
    Scalar,
    /// <summary>Widen codes to f32 and FMA with the f32 activations (no activation quantization).</summary>
    WidenF32,
    /// <summary>int8 activations × codes with AVX2 maddubs/madd.</summary>
    Avx2Int,
    /// <summary>int8 activations × codes with AVX-VNNI vpdpbusd.</summary>
    Vnni,
}

/// <summary>The prepared activation rows of one product (owned by the job that runs it, shared by its matrices).</summary>
public sealed unsafe class RowScratch
{
    private QuantScratch[] _rows = [];
    private float[] _floats = [];
    private bool[] _flags = [];

    /// <summary>Pinned room for <paramref name="n"/> floats (dense matrices' prepared rows), valid until the next call.</summary>
    internal float* Floats(long n)
    {
        if (_floats.Length < n) _floats = GC.AllocateArray<float>(checked((int)Math.Max(n, 2L * _floats.Length)), pinned: true);
        return (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_floats));
    }

    /// <summary>One flag per row (which rows could be prepared).</summary>
    internal bool[] Flags(int rows)
    {
        if (_flags.Length < rows) _flags = new bool[Math.Max(rows, 2 * _flags.Length)];
        return _flags;
    }

    internal QuantScratch[] Ensure(int rows)
    {
        if (_rows.Length < rows)
        {
            int old = _rows.Length;
            Array.Resize(ref _rows, Math.Max(rows, 2 * old));
            for (int i = old; i < _rows.Length; i++) _rows[i] = new QuantScratch();
        }
        return _rows;
    }
}

/// <summary>Per-thread scratch for activation quantization (allocated once per thread and size, reused after).</summary>
internal sealed unsafe class QuantScratch
{
    [ThreadStatic] private static QuantScratch? _current;

    // The int8 activations start on a cache line: the integer kernels read them 32 bytes at a time, and a managed
    // array's data is only 8-byte aligned (half its loads would then split across two lines, at random per process:
    // the 4-bit GEMV ran at 14 or 24 GB/s a core from one run to the next).
    private sbyte[] _xqStore = [];
    private sbyte* _xq;
    private int _xqLength;

    /// <summary>Activations as int8, padded to a multiple of 64, 64-byte aligned (pinned).</summary>
    public Span<sbyte> Xq => new(_xq, _xqLength);
    public float[] D = [];      // per 32 columns: activation scale (pinned: the tiles read it through DPointer)
    public float* DPointer;
    public float[] BSum = [];   // per 32 columns: d · Σ xq (for the zero-point correction)
    public float[] GroupBSum = []; // per group of the prepared matrix: Σ BSum over the columns its integer kernel covers
    public float[] Permuted = [];
    public float[] Row = [];
    public float[] ChunkScale = []; // per 32 columns of one row: group scale · activation scale

    public static QuantScratch ForThread(int cols)
    {
        var s = _current ??= new QuantScratch();
        s.Ensure(cols);
        return s;
    }

    public void Ensure(int cols)
    {
        if (Permuted.Length >= cols) return;
        int padded = (cols + 63) / 64 * 64;
        _xqStore = GC.AllocateArray<sbyte>(padded + 64, pinned: true);
        fixed (sbyte* p = _xqStore) _xq = (sbyte*)(((nint)p + 63) & ~(nint)63);
        _xqLength = padded;
        D = GC.AllocateArray<float>(padded / 32, pinned: true);
        fixed (float* dp = D) DPointer = dp;
        BSum = new float[padded / 32];
        Permuted = new float[cols];
        Row = new float[cols];
        ChunkScale = new float[padded / 32];
    }
}
