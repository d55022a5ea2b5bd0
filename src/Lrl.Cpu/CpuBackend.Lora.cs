using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// A LoRA pair in host memory, as f32, as bf16 bits (adapter files in bf16: half the bytes a product reads) or as int8
/// codes (<see cref="LoraInt8"/>: a quarter). A is [rank, in] as stored; B is held transposed, [rank, out] (f32/bf16: a
/// product's outputs are contiguous per rank), or for int8 in groups of <see cref="Group"/> outputs by quads of ranks,
/// [out/8][rank/4][8][4] (each output's four rank codes in one 4-byte run: the u8 × s8 instructions' dot product of four;
/// ranks padded with zero codes to a multiple of four). The int8 scales fold into the down-projection:
/// t[j] = SA[j]·SB[j]·Σ x·qA[j], so the up-projection is codes times t alone. With AVX2, int8 pairs run integer dot
/// products as the int8 base kernels do: x quantized to int8 per 128 columns (<see cref="QuantKernels.ActivationBlock"/>)
/// for the down-projection, t to int8 with one scale per row for the up-projection (2x fewer instructions than widening
/// the codes to floats, which made an adapter cost twice its share of the bytes on SmolLM2-135M q4).
/// </summary>
internal sealed unsafe class CpuLora : LoraWeights
{
    /// <summary>Outputs per group of an int8 B (one 256-bit vector of four-rank dot products).</summary>
    public const int Group = 8;
    /// <summary>With updates staged, product items start at multiples of this many outputs (whole groups).</summary>
    public const int ItemAlign = 16;
    /// <summary>The adapter pairs of the dispatch that followed the last one this pair opened (a prefetch hint).</summary>
    internal CpuLora[]? NextDispatch;
    public float[]? A { get; }
    public float[]? Bt { get; }
    public ushort[]? A16 { get; }
    public ushort[]? Bt16 { get; }
    public sbyte[]? A8 { get; }
    public sbyte[]? B8 { get; }
    private readonly float[]? _fold; // SA[j]·SB[j] for int8

    public CpuLora(string name, int rank, int inF, int outF, ReadOnlySpan<float> a, ReadOnlySpan<float> b, DType stored) : base(name, rank, inF, outF)
    {
        if (stored == DType.I8)
        {
            A8 = new sbyte[a.Length];
            _fold = new float[rank];
            B8 = new sbyte[(long)(outF + Group - 1) / Group * Quads * 32];
            for (int j = 0; j < rank; j++)
            {
                var row = a.Slice(j * inF, inF);
                float sa = LoraInt8.Scale(TensorPrimitives.MaxMagnitude(row) is var m && float.IsFinite(m) ? MathF.Abs(m) : throw new ArgumentException($"LoRA {name}: A holds a non-finite value"));
                for (int i = 0; i < inF; i++) A8[j * inF + i] = LoraInt8.Code(row[i], sa);
                float max = 0;
                for (int o = 0; o < outF; o++) max = MathF.Max(max, MathF.Abs(b[o * rank + j]));
                float sb = LoraInt8.Scale(max);
                for (int o = 0; o < outF; o++) B8[((long)(o / Group) * Quads + j / 4) * 32 + o % Group * 4 + j % 4] = LoraInt8.Code(b[o * rank + j], sb);
                _fold[j] = sa * sb;
            }
            return;
        }
        var bt = new float[(long)rank * outF];
        for (int o = 0; o < outF; o++)
            for (int j = 0; j < rank; j++) bt[(long)j * outF + o] = b[o * rank + j];
        if (stored != DType.BF16) { A = a.ToArray(); Bt = bt; return; }
        A16 = new ushort[a.Length];
        for (int i = 0; i < a.Length; i++) A16[i] = DTypes.FloatToBF16(a[i]);
        Bt16 = new ushort[bt.Length];
        for (int i = 0; i < bt.Length; i++) Bt16[i] = DTypes.FloatToBF16(bt[i]);
    }

    /// <summary>Rank quads of an int8 B (rank rounded up to a multiple of four, over four).</summary>
    public int Quads => (Rank + 3) / 4;

    /// <summary>
    /// Floats per row of a down-projection's result t: the rank values; for int8 pairs also their int8 codes, four to a
    /// float's bits (<see cref="Quads"/>), and the codes' scale (<see cref="QuantizeT"/>).
    /// </summary>
    public int TStride => B8 is null ? Rank : Rank + Quads + 1;

    public override long ByteSize => A is not null ? (A.Length + (long)Bt!.Length) * 4
        : A16 is not null ? (A16.Length + (long)Bt16!.Length) * 2
        : A8!.Length + (long)B8!.Length + 4L * Rank;

    /// <summary>Asks for B's bytes of outputs [start, end) in L2.</summary>
    internal void PrefetchUp(int start, int end)
    {
        if (B8 is null || !Sse.IsSupported) return;
        long from = (long)(start / Group) * Quads * 32, to = (long)((end + Group - 1) / Group) * Quads * 32;
        fixed (sbyte* p = B8)
            for (long b = from & ~63L; b < to; b += 64) Sse.Prefetch1(p + b);
    }

    /// <summary>
    /// Asks for the fraction [from, to) of A's bytes in L2 (the down-projection reads A first thing in its dispatch; B is
    /// asked for by each product item before its own product, <see cref="PrefetchUp"/>: asking here too put ~1.5 points
    /// of the products' CPU time on prefetch instructions, perf over `bench --lora-random 1`).
    /// </summary>
    internal void PrefetchSlice(double from, double to)
    {
        if (A is not null) fixed (float* p = A) PrefetchPart(p, A.Length * 4L, from, to);
        else if (A16 is not null) fixed (ushort* p = A16) PrefetchPart(p, A16.Length * 2L, from, to);
        else fixed (sbyte* p = A8) PrefetchPart(p, A8!.Length, from, to);
    }

    private static void PrefetchPart(void* p, long bytes, double from, double to)
    {
        if (!Sse.IsSupported) return;
        byte* b = (byte*)p + ((long)(bytes * from) & ~63L), e = (byte*)p + (long)(bytes * to);
        for (; b < e; b += 64) Sse.Prefetch1(b);
    }

    /// <summary>t[j] = scale·A[j, col] for every rank j (an adapted embedding's lookup; int8: times SA[j]·SB[j]).</summary>
    public void Gather(int col, float scale, float* t)
    {
        int inF = InFeatures;
        if ((uint)col >= (uint)inF) throw new LrlException($"token id {col} is outside the vocabulary (0..{inF - 1})");
        for (int j = 0; j < Rank; j++)
        {
            long at = (long)j * inF + col;
            t[j] = scale * (A is { } a ? a[at] : A16 is { } a16 ? DTypes.BF16ToFloat(a16[at]) : A8![at] * _fold![j]);
        }
        if (B8 is not null) QuantizeT(t, Rank, Quads);
    }

    /// <summary>
    /// t[j] = scale·Σ x·A[j] for every rank j (int8: times SA[j]·SB[j], B's scale folded in; with AVX2 over x quantized
    /// to int8, <see cref="DownInt8"/>, and t's own codes after it, <see cref="QuantizeT"/>). <see cref="TStride"/> floats.
    /// x is row <paramref name="row"/> of <paramref name="xs"/>; <paramref name="epoch"/> (<see cref="NewEpoch"/>, one per
    /// dispatch) lets a thread reuse its quantized x for the next pair over the same row (Q/K/V, gate/up).
    /// </summary>
    public void DownAll(float[] xs, int row, float scale, float* t, long epoch)
    {
        int inF = InFeatures, rank = Rank;
        var x = xs.AsSpan(row * inF, inF);
        if (A is { } a) for (int j = 0; j < rank; j++) t[j] = scale * TensorPrimitives.Dot(x, a.AsSpan(j * inF, inF));
        else if (A16 is { } a16) fixed (ushort* p = a16) for (int j = 0; j < rank; j++) t[j] = scale * Simd.DotBF16(p + (long)j * inF, x);
        else
        {
            fixed (sbyte* p = A8) fixed (float* xp = x)
            {
                if (Avx2.IsSupported) DownInt8(p, inF, rank, xs, row, t, epoch);
                else
                {
                    int j = 0;
                    for (; j + 4 <= rank; j += 4) Simd.DotI8x4(p + (long)j * inF, inF, xp, t + j);
                    for (; j < rank; j++) t[j] = Simd.DotI8(p + (long)j * inF, x);
                }
            }
            for (int j = 0; j < rank; j++) t[j] *= scale * _fold![j];
            QuantizeT(t, rank, Quads);
        }
    }

    // What _xs holds: row _xRow (of _xLength) of _xKey's array in dispatch _xEpoch (weak: a cached key must not keep a
    // disposed model's activations alive on a pool thread). Its own scratch, not the thread's product scratch.
    [ThreadStatic] private static QuantScratch? _xs;
    [ThreadStatic] private static WeakReference<float[]>? _xKey;
    [ThreadStatic] private static int _xRow, _xLength;
    [ThreadStatic] private static long _xEpoch;
    private static long _epoch;

    /// <summary>A new dispatch: the activations may have changed since any thread quantized them.</summary>
    public static long NewEpoch() => Interlocked.Increment(ref _epoch);

    /// <summary>
    /// t[j] = Σ_chunks d_c·Σ_{i in chunk} qA[j, i]·q_i over x quantized as the int8 base kernels quantize their
    /// activations (<see cref="QuantKernels.QuantizeActivations"/>: one scale per 128 columns, the last n % 32 columns
    /// their own): four rows at a time share each activation load.
    /// </summary>
    private static void DownInt8(sbyte* a, int inF, int rank, float[] xs, int row, float* t, long epoch)
    {
        var s = _xs ??= new QuantScratch();
        _xKey ??= new WeakReference<float[]>([]);
        if (_xEpoch != epoch || _xRow != row || _xLength != inF || !_xKey.TryGetTarget(out var held) || !ReferenceEquals(held, xs))
        {
            s.Ensure(inF);
            QuantKernels.QuantizeActivations(xs.AsSpan(row * inF, inF), s);
            _xKey.SetTarget(xs);
            (_xRow, _xLength, _xEpoch) = (row, inF, epoch);
        }
        fixed (sbyte* q = s.Xq) fixed (float* d = s.D)
        {
            int j = 0;
            for (; j + 4 <= rank; j += 4) LoraKernels.Dot4(a + (long)j * inF, inF, q, d, t + j);
            for (; j < rank; j++) t[j] = LoraKernels.Dot1(a + (long)j * inF, inF, q, d);
        }
    }

    /// <summary>
    /// t's int8 codes for the integer up-projection, after its <paramref name="rank"/> floats: one scale for the row,
    /// st = max|t|/127, codes round(t/st) packed four to an int (zero past the rank), then st.
    /// </summary>
    internal static void QuantizeT(float* t, int rank, int quads)
    {
        float amax = 0;
        for (int j = 0; j < rank; j++) amax = MathF.Max(amax, MathF.Abs(t[j]));
        float inv = amax > 0 ? 127f / amax : 0f;
        int* codes = (int*)(t + rank);
        for (int k = 0; k < quads; k++)
        {
            int v = 0;
            for (int m = 0; m < 4; m++)
            {
                int j = 4 * k + m;
                int c = j < rank ? Math.Clamp((int)MathF.Round(t[j] * inv), -127, 127) : 0;
                v |= (c & 0xFF) << (8 * m);
            }
            codes[k] = v;
        }
        t[rank + quads] = amax / 127f;
    }
}

/// <summary>The integer kernels of int8 adapters (AVX2): the down-projection's dot products.</summary>
internal static unsafe class LoraKernels
{
    /// <summary>Columns sharing one activation scale (<see cref="QuantKernels.QuantizeActivations"/>).</summary>
    public const int Block = QuantKernels.ActivationBlock;

    /// <summary>Σ u·s over groups of four bytes into int32 lanes (u unsigned, s signed): VNNI's vpdpbusd, else pmaddubsw + pmaddwd.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Acc(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) =>
        AvxVnni.IsSupported ? AvxVnni.MultiplyWideningAndAdd(acc, u, s)
                            : acc + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256<short>.One);

    /// <summary>
    /// Four rows' Σ d·Σ a·q (rows <paramref name="inF"/> bytes apart; d per 32 columns, equal within a block of
    /// <see cref="Block"/>): per block the integer sums of its 32-column chunks (|q| · sign(a, q): |q| ≤ 127 keeps
    /// pmaddubsw's pairs from saturating), one convert and FMA per block; the columns past the last whole chunk (their own
    /// scale) one at a time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Dot4(sbyte* a, int inF, sbyte* q, float* d, float* out4)
    {
        sbyte* a0 = a, a1 = a + inF, a2 = a + 2L * inF, a3 = a + 3L * inF;
        int full = inF / 32 * 32;
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default;
        for (int c = 0, b = 0; c < full; b++)
        {
            int end = Math.Min(full, c + Block);
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (; c < end; c += 32)
            {
                var xv = Vector256.Load(q + c);
                var ux = Avx2.Abs(xv);
                i0 = Acc(i0, ux, Avx2.Sign(Vector256.Load(a0 + c), xv));
                i1 = Acc(i1, ux, Avx2.Sign(Vector256.Load(a1 + c), xv));
                i2 = Acc(i2, ux, Avx2.Sign(Vector256.Load(a2 + c), xv));
                i3 = Acc(i3, ux, Avx2.Sign(Vector256.Load(a3 + c), xv));
            }
            var db = Vector256.Create(d[b * (Block / 32)]);
            f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), db, f0);
            f1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), db, f1);
            f2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2), db, f2);
            f3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i3), db, f3);
        }
        var s = QuantKernels.HSum4(f0, f1, f2, f3);
        if (full < inF)
        {
            int s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int c = full; c < inF; c++) { int v = q[c]; s0 += a0[c] * v; s1 += a1[c] * v; s2 += a2[c] * v; s3 += a3[c] * v; }
            s += Vector128.Create((float)s0, s1, s2, s3) * d[full / 32];
        }
        s.Store(out4);
    }

    /// <summary>One row of <see cref="Dot4"/> (the rank's last rows when it is not a multiple of four).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Dot1(sbyte* a, int inF, sbyte* q, float* d)
    {
        int full = inF / 32 * 32;
        Vector256<float> f = default;
        for (int c = 0, b = 0; c < full; b++)
        {
            int end = Math.Min(full, c + Block);
            Vector256<int> i0 = default;
            for (; c < end; c += 32)
            {
                var xv = Vector256.Load(q + c);
                i0 = Acc(i0, Avx2.Abs(xv), Avx2.Sign(Vector256.Load(a + c), xv));
            }
            f = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(d[b * (Block / 32)]), f);
        }
        float s = QuantKernels.HSum(f);
        if (full < inF)
        {
            int si = 0;
            for (int c = full; c < inF; c++) si += a[c] * q[c];
            s += si * d[full / 32];
        }
        return s;
    }
}

/// <summary>
/// The unmerged LoRA update in two parallel phases: t = x·Aᵀ (rank dot products per row, one item each), then
/// y += scale·t·B (output columns split in chunks, each chunk an axpy per rank over B's transposed rows: contiguous
/// reads). Small updates run on the caller alone (a pool dispatch costs more than they do).
/// </summary>
internal sealed unsafe class LoraJob : IParallelJob
{
    private const int Chunk = 512;            // output columns per item of the second phase
    private const long SerialWork = 1 << 17;  // multiply-adds below which the caller does it alone
    private float[] _t = new float[64];       // [rows, rank] scaled x·Aᵀ
    private float[] _x = [], _y = [];
    private CpuLora? _w;
    private int _row0, _rows, _phase;
    private float _scale;
    private long _epoch;

    public void Run(WorkerPool pool, float[] x, int row0, int rows, CpuLora w, float scale, float[] y)
    {
        if (row0 < 0 || rows < 0 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        if (rows == 0) return;
        if (_t.Length < rows * w.TStride) _t = new float[Math.Max(rows * w.TStride, _t.Length * 2)];
        _x = x; _y = y; _w = w; _row0 = row0; _rows = rows;
        bool serial = (long)rows * w.Rank * (w.InFeatures + w.OutFeatures) < SerialWork || pool.ThreadCount == 1;
        _phase = 0;
        _scale = scale;
        _epoch = CpuLora.NewEpoch();
        if (serial) for (int i = 0; i < rows; i++) Execute(i, 0);
        else pool.Run(this, rows);
        _phase = 1;
        int upItems = (w.OutFeatures + Chunk - 1) / Chunk;
        if (serial) for (int i = 0; i < upItems; i++) Execute(i, 0);
        else pool.Run(this, upItems);
        _x = _y = []; _w = null;
    }

    public void Execute(int item, int worker)
    {
        var w = _w!;
        int stride = w.TStride, inF = w.InFeatures, outF = w.OutFeatures;
        if (_phase == 0)
        {
            fixed (float* t = &_t[item * stride]) w.DownAll(_x, _row0 + item, _scale, t, _epoch); // one item per row
            return;
        }
        int o0 = item * Chunk, n = Math.Min(Chunk, outF - o0);
        fixed (float* tp = _t)
            for (int r = 0; r < _rows; r++)
                fixed (float* y = &_y[(_row0 + r) * outF + o0])
                    LoraStage.Up(w, o0, tp + r * stride, y, n);
    }
}

// ILoraOps on host memory.
public sealed unsafe partial class CpuBackend : ILoraOps
{
    private LoraJob? _loraJob;

    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                                DType stored = DType.F32)
    {
        if (rank < 1 || inFeatures < 1 || outFeatures < 1 || a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
            throw new ArgumentException($"LoRA {name}: A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]");
        return new CpuLora(name, rank, inFeatures, outFeatures, a, b, stored);
    }

    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) =>
        (_loraJob ??= new LoraJob()).Run(_pool, D(x), row0, rows,
            lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend"), scale, D(y));

    public void LoraEmbedRows(ReadOnlySpan<int> tokens, int row0, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend");
        var Y = D(y);
        int outF = w.OutFeatures;
        if (row0 < 0 || (long)(row0 + tokens.Length) * outF > Y.Length)
            throw new ArgumentOutOfRangeException(nameof(row0), $"LoRA {w.Name}: rows {row0}..{row0 + tokens.Length - 1} exceed the buffer");
        var t = stackalloc float[w.TStride];
        for (int r = 0; r < tokens.Length; r++)
        {
            w.Gather(tokens[r], scale, t);
            fixed (float* dst = &Y[(long)(row0 + r) * outF]) LoraStage.Up(w, 0, t, dst, outF);
        }
    }

    /// <summary>The products apply staged updates in their own pass (see <see cref="LoraStage"/>).</summary>
    public bool FusesLora => true;

    public int PendingLora => _matMul.Stage.Count;

    public void ClearStagedLora() => _matMul.Stage.Clear();

    public void StageLora(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) =>
        _matMul.Stage.Add(D(x), row0, rows, lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend"), scale, D(y));
}

/// <summary>
/// Adapter updates staged for the next products (<see cref="ILoraOps.StageLora"/>), applied inside the dispatch of the
/// product that writes their output, with no dispatch of their own: the dispatch's first items are the down-projections
/// t = scale·x·Aᵀ (one item per term and row: all its rank dot products), claimed before any product item; each product
/// item then adds t·B to the rows and output columns it wrote (<see cref="Epilogue"/>, after waiting for the
/// down-projections, long done by the time its own product is), so the update runs on every thread.
/// </summary>
internal sealed unsafe class LoraStage
{
    internal struct Term
    {
        public float[] X, Y;
        public int Row0, Rows, T, Item; // T: offset of its [rows, rank] block in _t; Item: its first down item
        public CpuLora W;
        public float Scale;
        public bool Active;               // taken by the dispatch being run
    }

    private Term[] _terms = new Term[8];
    private int _count, _active, _downItems, _downDone;
    private long _epoch;
    private float[] _t = new float[256];

    public int Count => _count;

    public void Add(float[] x, int row0, int rows, CpuLora w, float scale, float[] y)
    {
        if (row0 < 0 || rows < 1 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        if (_count == _terms.Length) Array.Resize(ref _terms, _count * 2);
        _terms[_count++] = new Term { X = x, Y = y, Row0 = row0, Rows = rows, W = w, Scale = scale };
    }

    /// <summary>
    /// Takes the staged terms writing one of <paramref name="outputs"/> for the dispatch about to run; returns its down
    /// items (to run, in order, before the product's).
    /// </summary>
    public int Begin(ReadOnlySpan<float[]?> outputs)
    {
        _active = _downItems = _downDone = 0;
        _epoch = CpuLora.NewEpoch();
        int tUsed = 0;
        for (int i = 0; i < _count; i++)
        {
            ref var t = ref _terms[i];
            bool mine = false;
            foreach (var y in outputs) mine |= ReferenceEquals(y, t.Y);
            t.Active = mine;
            if (!mine) continue;
            t.T = tUsed;
            t.Item = _downItems;
            tUsed += t.Rows * t.W.TStride;
            _downItems += t.Rows;
            _active++;
        }
        if (_t.Length < tUsed) _t = new float[Math.Max(tUsed, 2 * _t.Length)];
        // Learn which pairs the next dispatch runs (decode repeats the same order every token) and let this dispatch's
        // product items fetch them: an adapter's matrices are short streams, evicted by the base's weights every
        // token, that each waited out DRAM latency when read cold (2-3x what their bytes take).
        _next = null;
        if (_active > 0)
        {
            var first = FirstActive();
            if (_lastFirst is not null && _lastFirst != first && _lastFirst.NextDispatch is null)
            {
                var ws = new CpuLora[_active];
                for (int i = 0, k = 0; i < _count; i++) if (_terms[i].Active) ws[k++] = _terms[i].W;
                _lastFirst.NextDispatch = ws;
            }
            _lastFirst = first;
            _next = first.NextDispatch;
        }
        return _downItems;
    }

    private CpuLora? _lastFirst;
    private CpuLora[]? _next;

    private CpuLora FirstActive()
    {
        for (int i = 0; i < _count; i++) if (_terms[i].Active) return _terms[i].W;
        throw new InvalidOperationException("no active term");
    }

    /// <summary>Product item <paramref name="item"/> of <paramref name="items"/>: prefetches its share of the next dispatch's adapter A bytes.</summary>
    public void PrefetchNext(int item, int items)
    {
        if (_next is null || items <= 0) return;
        double from = (double)item / items, to = (double)(item + 1) / items;
        foreach (var w in _next) w.PrefetchSlice(from, to);
    }

    /// <summary>Asks for the B bytes the epilogue of <paramref name="y"/>'s outputs [start, end) will read (before its product).</summary>
    public void PrefetchUp(float[] y, int start, int end)
    {
        for (int i = 0; i < _count; i++)
            if (_terms[i].Active && ReferenceEquals(_terms[i].Y, y)) _terms[i].W.PrefetchUp(start, end);
    }

    /// <summary>Whether the dispatch being run has updates.</summary>
    public bool Active => _active > 0;

    /// <summary>Down item: every rank dot product of one term's row.</summary>
    public void ExecuteDown(int item)
    {
        int n = 0;
        for (int i = 0; i < _count; i++)
            if (_terms[i].Active && _terms[i].Item <= item) n = i;
        ref var t = ref _terms[n];
        int r = item - t.Item;
        int at = t.T + r * t.W.TStride;
        fixed (float* tp = &_t[at]) t.W.DownAll(t.X, t.Row0 + r, t.Scale, tp, _epoch);
        Interlocked.Increment(ref _downDone);
    }

    /// <summary>Adds the active terms writing <paramref name="y"/> to its rows' output columns [start, end).</summary>
    public void Epilogue(float[] y, int outF, int start, int end)
    {
        if (Volatile.Read(ref _downDone) < _downItems)
        {
            var spin = new SpinWait();
            while (Volatile.Read(ref _downDone) < _downItems) spin.SpinOnce(sleep1Threshold: -1);
        }

        int n = end - start;
        for (int i = 0; i < _count; i++)
        {
            ref var t = ref _terms[i];
            if (!t.Active || !ReferenceEquals(t.Y, y)) continue;
            int stride = t.W.TStride;
            fixed (float* tp = &_t[t.T])
                for (int r = 0; r < t.Rows; r++)
                    fixed (float* dst = &y[(t.Row0 + r) * outF + start])
                        Up(t.W, start, tp + r * stride, dst, n);
        }
    }

    /// <summary>y[o] += Σ_j t[j]·B[start + o, j] for o &lt; n (f32, bf16 or int8 B; t as <see cref="CpuLora.DownAll"/> wrote it).</summary>
    internal static void Up(CpuLora w, int start, float* t, float* y, int n)
    {
        if (w.Bt is { } bt) fixed (float* b = &bt[start]) Up(b, w.OutFeatures, t, w.Rank, y, n);
        else if (w.Bt16 is { } b16) fixed (ushort* b = &b16[start]) Up(b, w.OutFeatures, t, w.Rank, y, n);
        else fixed (sbyte* b = w.B8)
        {
            if (Avx2.IsSupported) UpInt8(b, (int*)(t + w.Rank), t[w.Rank + w.Quads], w.Quads, y - start, start, start + n);
            else for (int o = start; o < start + n; o++) y[o - start] += UpOne(b, t, w.Rank, w.Quads, o);
        }
    }

    /// <summary>
    /// y[o] += st·Σ_j tq[j]·q[o, j] for start ≤ o &lt; end: per group of eight outputs one integer accumulator over the
    /// rank quads (|tq| · sign(q, tq), the quad's codes broadcast), converted and added with one FMA; a range's partial
    /// groups at its ends compute the whole group and add only their lanes (the same FMA per output, so how products
    /// split their outputs into items does not change a bit). y is indexed by output.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UpInt8(sbyte* q, int* tq, float st, int quads, float* y, int start, int end)
    {
        const int G = CpuLora.Group;
        var sv = Vector256.Create(st);
        int o = start;
        if (o % G != 0) o = PartialGroup(q, tq, sv, quads, y, o, end);
        if (quads == 4)
        {
            // Rank 16 (and 13-15): the four broadcast quads stay in registers.
            Vector256<sbyte> t0 = Vector256.Create(tq[0]).AsSByte(), t1 = Vector256.Create(tq[1]).AsSByte(),
                             t2 = Vector256.Create(tq[2]).AsSByte(), t3 = Vector256.Create(tq[3]).AsSByte();
            Vector256<byte> u0 = Avx2.Abs(t0), u1 = Avx2.Abs(t1), u2 = Avx2.Abs(t2), u3 = Avx2.Abs(t3);
            for (; o <= end - G; o += G)
            {
                sbyte* p = q + (long)(o / G) * 128;
                var a = LoraKernels.Acc(LoraKernels.Acc(Vector256<int>.Zero, u0, Avx2.Sign(Vector256.Load(p), t0)), u1, Avx2.Sign(Vector256.Load(p + 32), t1));
                var b = LoraKernels.Acc(LoraKernels.Acc(Vector256<int>.Zero, u2, Avx2.Sign(Vector256.Load(p + 64), t2)), u3, Avx2.Sign(Vector256.Load(p + 96), t3));
                Fma.MultiplyAdd(Avx.ConvertToVector256Single(a + b), sv, Vector256.Load(y + o)).Store(y + o);
            }
        }
        else
        {
            for (; o <= end - G; o += G)
                Fma.MultiplyAdd(Avx.ConvertToVector256Single(GroupSums(q + (long)(o / G) * quads * 32, tq, quads)), sv, Vector256.Load(y + o)).Store(y + o);
        }
        if (o < end) PartialGroup(q, tq, sv, quads, y, o, end);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> GroupSums(sbyte* p, int* tq, int quads)
    {
        var acc = Vector256<int>.Zero;
        for (int k = 0; k < quads; k++, p += 32)
        {
            var tk = Vector256.Create(tq[k]).AsSByte();
            acc = LoraKernels.Acc(acc, Avx2.Abs(tk), Avx2.Sign(Vector256.Load(p), tk));
        }
        return acc;
    }

    /// <summary>Outputs [o, min(end, o's group end)) of one group: the whole group's sums, then only the range's lanes added. Returns the next output.</summary>
    private static int PartialGroup(sbyte* q, int* tq, Vector256<float> sv, int quads, float* y, int o, int end)
    {
        const int G = CpuLora.Group;
        int g0 = o - o % G, stop = Math.Min(end, g0 + G);
        float* sums = stackalloc float[G];
        Avx.ConvertToVector256Single(GroupSums(q + (long)(g0 / G) * quads * 32, tq, quads)).Store(sums);
        float s = sv.ToScalar();
        for (; o < stop; o++) y[o] = MathF.FusedMultiplyAdd(sums[o - g0], s, y[o]);
        return o;
    }

    /// <summary>Σ_j t[j]·q[o, j] in floats (the path without AVX2).</summary>
    private static float UpOne(sbyte* q, float* t, int rank, int quads, int o)
    {
        const int G = CpuLora.Group;
        sbyte* p = q + (long)(o / G) * quads * 32 + o % G * 4;
        float s = 0;
        for (int j = 0; j < rank; j++) s += t[j] * p[j / 4 * 32 + j % 4];
        return s;
    }

    /// <summary>y[o] += Σ_j t[j]·Bᵀ[j, o] for o &lt; n, 32 outputs at a time in four registers over every rank.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Up(float* bt, int ld, float* t, int rank, float* y, int n)
    {
        int o = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; o <= n - 32; o += 32)
            {
                Vector256<float> a0 = Vector256.Load(y + o), a1 = Vector256.Load(y + o + 8), a2 = Vector256.Load(y + o + 16), a3 = Vector256.Load(y + o + 24);
                float* b = bt + o;
                for (int j = 0; j < rank; j++, b += ld)
                {
                    var tj = Vector256.Create(t[j]);
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Load(b), tj, a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.Load(b + 8), tj, a1);
                    a2 = Vector256.FusedMultiplyAdd(Vector256.Load(b + 16), tj, a2);
                    a3 = Vector256.FusedMultiplyAdd(Vector256.Load(b + 24), tj, a3);
                }
                a0.Store(y + o); a1.Store(y + o + 8); a2.Store(y + o + 16); a3.Store(y + o + 24);
            }
            for (; o <= n - 8; o += 8)
            {
                var acc = Vector256.Load(y + o);
                for (int j = 0; j < rank; j++) acc = Vector256.FusedMultiplyAdd(Vector256.Load(bt + (long)j * ld + o), Vector256.Create(t[j]), acc);
                acc.Store(y + o);
            }
        }
        for (; o < n; o++)
        {
            float s = y[o];
            for (int j = 0; j < rank; j++) s += t[j] * bt[(long)j * ld + o];
            y[o] = s;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> WidenBF16(ushort* p)
    {
        var (lo, hi) = Vector128.Widen(Vector128.Load(p));
        return Vector256.Create(Vector128.ShiftLeft(lo, 16), Vector128.ShiftLeft(hi, 16)).AsSingle();
    }

    /// <summary>The bf16 form of <see cref="Up(float*, int, float*, int, float*, int)"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Up(ushort* bt, int ld, float* t, int rank, float* y, int n)
    {
        int o = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; o <= n - 32; o += 32)
            {
                Vector256<float> a0 = Vector256.Load(y + o), a1 = Vector256.Load(y + o + 8), a2 = Vector256.Load(y + o + 16), a3 = Vector256.Load(y + o + 24);
                ushort* b = bt + o;
                for (int j = 0; j < rank; j++, b += ld)
                {
                    var tj = Vector256.Create(t[j]);
                    a0 = Vector256.FusedMultiplyAdd(WidenBF16(b), tj, a0);
                    a1 = Vector256.FusedMultiplyAdd(WidenBF16(b + 8), tj, a1);
                    a2 = Vector256.FusedMultiplyAdd(WidenBF16(b + 16), tj, a2);
                    a3 = Vector256.FusedMultiplyAdd(WidenBF16(b + 24), tj, a3);
                }
                a0.Store(y + o); a1.Store(y + o + 8); a2.Store(y + o + 16); a3.Store(y + o + 24);
            }
            for (; o <= n - 8; o += 8)
            {
                var acc = Vector256.Load(y + o);
                for (int j = 0; j < rank; j++) acc = Vector256.FusedMultiplyAdd(WidenBF16(bt + (long)j * ld + o), Vector256.Create(t[j]), acc);
                acc.Store(y + o);
            }
        }
        for (; o < n; o++)
        {
            float s = y[o];
            for (int j = 0; j < rank; j++) s += t[j] * DTypes.BF16ToFloat(bt[(long)j * ld + o]);
            y[o] = s;
        }
    }

    /// <summary>Drops every staged term (<see cref="ILoraOps.ClearStagedLora"/>).</summary>
    public void Clear()
    {
        Array.Clear(_terms, 0, _count);
        _count = _active = _downItems = 0;
    }

    /// <summary>Drops the terms the finished dispatch applied.</summary>
    public void End()
    {
        if (_active == 0) return;
        int kept = 0;
        for (int i = 0; i < _count; i++)
            if (!_terms[i].Active) _terms[kept++] = _terms[i];
        for (int i = kept; i < _count; i++) _terms[i] = default;
        _count = kept;
        _active = _downItems = 0;
    }
}
