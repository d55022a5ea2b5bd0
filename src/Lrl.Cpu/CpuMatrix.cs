using System.Runtime.InteropServices;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// A weight matrix [Rows = out, Cols = in] as the CPU backend reads it. Each storage format (dense f32/f16/bf16,
/// quantized) implements the two primitives the backend's products are built from.
/// </summary>
public abstract class CpuMatrix(string name, int rows, int cols) : Weight(name, rows, cols)
{
    /// <summary>y[o - rowStart] = W[o, :] · x for o in [rowStart, rowEnd).</summary>
    public abstract void Gemv(ReadOnlySpan<float> x, Span<float> y, int rowStart, int rowEnd);

    /// <summary>Row <paramref name="row"/> converted to f32.</summary>
    public abstract void RowToFloat(int row, Span<float> destination);

    /// <summary>Called once before the parallel <see cref="Gemv"/> blocks of one product (e.g. to quantize x once).</summary>
    public virtual void PrepareGemv(ReadOnlySpan<float> x) { }

    /// <summary>Called once after the blocks of one product have run.</summary>
    public virtual void EndGemv() { }

    /// <summary>
    /// Instead of <see cref="PrepareGemv"/>: reuse what <paramref name="other"/> prepared for the same input, when the
    /// preparation would be identical; false (prepare as usual) otherwise.
    /// </summary>
    public virtual bool TryShareGemv(CpuMatrix other) => false;

    /// <summary>
    /// Most rows a product runs through <see cref="GemvRows"/> (each weight block read from memory once and applied to
    /// every row from L1 by the decode kernel, so each row's result is exactly its GEMV result); above it the f32 tile
    /// path (weights converted once per tile, then FMA over all rows) is faster. 0 = never.
    /// </summary>
    public virtual int RowsMax => 0;

    /// <summary>
    /// Prepares <paramref name="rows"/> activation rows of x [rows, Cols] for <see cref="GemvRows"/> (quantized matrices
    /// quantize them, the rows shared among <paramref name="pool"/>'s threads).
    /// </summary>
    public virtual void PrepareRows(float[] x, int rows, RowScratch scratch, WorkerPool pool) { }

    /// <summary>Uses the rows <paramref name="other"/> prepared from the same input, when it prepares them the same way.</summary>
    public virtual bool TryShareRows(CpuMatrix other) => false;

    /// <summary>Bytes of one weight row as stored (sizes the L1 blocks of <see cref="GemvRows"/>).</summary>
    protected long RowBytes => Math.Max(1, ByteSize / Math.Max(1, Rows));

    /// <summary>
    /// y[r, o] for r &lt; rows and o in [rowStart, rowEnd), x laid out [rows, Cols] and y [rows, Rows], after
    /// <see cref="PrepareRows"/>: blocks of weight rows small enough for L1, each applied to every row in turn.
    /// </summary>
    public virtual void GemvRows(ReadOnlySpan<float> x, Span<float> y, int rows, int rowStart, int rowEnd)
    {
        int step = BlockRows, outF = Rows;
        for (int b0 = rowStart; b0 < rowEnd; b0 += step)
        {
            int b1 = Math.Min(rowEnd, b0 + step);
            for (int r = 0; r < rows; r++) GemvRow(x.Slice(r * Cols, Cols), r, y.Slice(r * outF + b0, b1 - b0), b0, b1);
        }
    }

    /// <summary>
    /// Weight rows per block of <see cref="GemvRows"/>: about 16 KB (L1), a multiple of 4 so that blocks start where
    /// the GEMV's items do (kernels that pair rows then pair the same ones, and give the same bits).
    /// </summary>
    protected int BlockRows => (int)Math.Clamp(16384 / RowBytes, 4, 64) / 4 * 4;

    /// <summary>One activation row's share of <see cref="GemvRows"/>; dense matrices run their GEMV.</summary>
    protected virtual void GemvRow(ReadOnlySpan<float> x, int row, Span<float> y, int rowStart, int rowEnd) => Gemv(x, y, rowStart, rowEnd);
}

/// <summary>A dense matrix read in place from memory-mapped storage (f32, f16 or bf16; converted inside the kernel).</summary>
public sealed unsafe class DenseMatrix : CpuMatrix
{
    private readonly byte* _data;
    private readonly DType _dtype;

    public DenseMatrix(string name, int rows, int cols, DType dtype, byte* data) : base(name, rows, cols)
    {
        if (dtype is not (DType.F32 or DType.F16 or DType.BF16))
            throw new LrlException($"{name}: a dense matrix must be F32, F16 or BF16, not {dtype}");
        _dtype = dtype;
        _data = data;
    }

    public override string Format => _dtype.ToString();
    public override long ByteSize => (long)Rows * Cols * _dtype.Size();

    /// <summary>
    /// Most rows through the GEMV kernels (see <see cref="CpuMatrix.RowsMax"/>): each row's result is its one-row GEMV's
    /// bits, so a verify step or a batched step of up to 16 rows gives every row what plain decoding gives it. At 12-16
    /// rows as fast as the transposed GEMM (SmolLM2-135M bf16 pp12 257-274 vs 222-233 tok/s, pp16 254-295 vs 254-292),
    /// slower from 24 on.
    /// </summary>
    internal static int DenseRowsMax = int.TryParse(Environment.GetEnvironmentVariable("LRL_DENSE_ROWS"), out var v) ? v : 16;
    public override int RowsMax => DenseRowsMax;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Gemv(ReadOnlySpan<float> x, Span<float> y, int rowStart, int rowEnd)
    {
        int n = Cols;
        switch (_dtype)
        {
            case DType.F32:
                if (Simd.Avx2RowKernels(n))
                    fixed (float* xp = x)
                        for (int o = rowStart; o < rowEnd; o++) y[o - rowStart] = Simd.DotF32((float*)_data + (long)o * n, xp, n);
                else
                    for (int o = rowStart; o < rowEnd; o++)
                        y[o - rowStart] = TensorPrimitives.Dot(new ReadOnlySpan<float>((float*)_data + (long)o * n, n), x);
                break;
            case DType.BF16:
            {
                float* xb = Prepared(x[..n]);
                if (xb != null)
                    for (int o = rowStart; o < rowEnd; o++) y[o - rowStart] = Simd.DotBF16Split((ushort*)_data + (long)o * n, xb, x[..n]);
                else
                    for (int o = rowStart; o < rowEnd; o++) y[o - rowStart] = Simd.DotBF16((ushort*)_data + (long)o * n, x);
                break;
            }
            case DType.F16:
            {
                float* xs = Prepared(x[..n]);
                if (xs != null)
                    for (int o = rowStart; o < rowEnd; o++) y[o - rowStart] = Simd.DotF16Prepared((ushort*)_data + (long)o * n, xs, x[..n]);
                else
                    for (int o = rowStart; o < rowEnd; o++) y[o - rowStart] = Simd.DotF16((Half*)_data + (long)o * n, x);
                break;
            }
        }
    }

    // The activations as the decode kernels want them (bf16 on AVX2: split even/odd; f16: times 2^112, on AVX2 also
    // split), prepared once per product by PrepareGemv (or shared with the product that prepared the same input) for
    // every thread's rows, valid until EndGemv: the product's GEMVs all take that same input. A GEMV outside a product
    // prepares its own in thread scratch.
    private float[]? _prep;
    private float* _prepared;

    private float* Prepared(ReadOnlySpan<float> x)
    {
        if (_prepared != null) return _prepared;
        return _dtype == DType.BF16 ? (Simd.SplitForBF16(x, out float* b) ? b : null)
             : _dtype == DType.F16 ? (Simd.PrepareF16(x, out float* h) ? h : null) : null;
    }

    public override void PrepareGemv(ReadOnlySpan<float> x)
    {
        _prepared = null;
        if (_dtype == DType.F32 || x.Length != Cols) return;
        _prep ??= GC.AllocateArray<float>(Cols, pinned: true);
        float* d = (float*)Unsafe.AsPointer(ref _prep[0]);
        if (_dtype == DType.BF16 ? Simd.SplitForBF16(x, d) : Simd.PrepareF16(x, d)) _prepared = d;
    }

    public override bool TryShareGemv(CpuMatrix other)
    {
        if (other is not DenseMatrix m || m._prepared == null || m._dtype != _dtype || m.Cols != Cols) return false;
        _prepared = m._prepared;
        return true;
    }

    public override void EndGemv() => _prepared = null;

    /// <summary>
    /// bf16 and f16 with AVX-512: each weight row is widened once for up to four activation rows at a time
    /// (<see cref="Simd.DotBF16x4"/>, <see cref="Simd.DotF16x4"/>: every row's result bit-identical to its one-row dot),
    /// instead of once per activation row; f32 runs the GEMV per row over L1 blocks (the base class).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void GemvRows(ReadOnlySpan<float> x, Span<float> y, int rows, int rowStart, int rowEnd)
    {
        int n = Cols, outF = Rows;
        if (rows >= 2 && Simd.Avx2RowKernels(n))
        {
            GemvRowsSplit(x, y, rows, rowStart, rowEnd);
            return;
        }
        if (_dtype == DType.F32 || !Simd.HasDotBF16x4(n) || rows < 2)
        {
            base.GemvRows(x, y, rows, rowStart, rowEnd);
            return;
        }
        bool f16 = _dtype == DType.F16;
        if ((long)rows * n > x.Length || (long)(rows - 1) * outF + rowEnd > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"{Name}: {rows} rows exceed the product's buffers");
        // Blocks of weight rows (~128 KB, L2) walked once per group of four activation rows (L1): walking every activation
        // row for each weight row read all of x from L2 per weight row (147 KB at 64 rows of 576), which bound the FMAs.
        int block = Math.Max(4, 65536 / n);
        // f16: the activations times 2^112 (Simd.ScaleForF16), when they allow it.
        float* xs = f16 && Simd.ScaleForF16(x[..(rows * n)], out float* scaled) ? scaled : null;
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            for (int b0 = rowStart; b0 < rowEnd; b0 += block)
            {
                int b1 = Math.Min(rowEnd, b0 + block), m = 0;
                for (; m + 1 < rows; m += 4)
                {
                    // A last group of two or three rows repeats its last row (one widening still serves them all).
                    int last = Math.Min(rows - 1, m + 3);
                    float* x0 = xp + (long)m * n;
                    float* x2 = xp + (long)Math.Min(m + 2, last) * n, x3 = xp + (long)last * n;
                    long at2 = x2 - xp, at3 = x3 - xp, at0 = (long)m * n;
                    for (int o = b0; o < b1; o++)
                    {
                        ushort* w = (ushort*)_data + (long)o * n;
                        var r = !f16 ? Simd.DotBF16x4(w, x0, x0 + n, x2, x3, n)
                            : xs != null ? Simd.DotF16x4Scaled(w, xs + at0, xs + at0 + n, xs + at2, xs + at3, x0, x0 + n, x2, x3, n)
                            : Simd.DotF16x4(w, x0, x0 + n, x2, x3, n);
                        for (int j = 0; j <= last - m; j++) yp[(long)(m + j) * outF + o] = r[j];
                    }
                }
                if (m < rows)
                {
                    var xr = new ReadOnlySpan<float>(xp + (long)m * n, n);
                    for (int o = b0; o < b1; o++)
                        yp[(long)m * outF + o] = !f16 ? Simd.DotBF16((ushort*)_data + (long)o * n, xr)
                            : xs != null ? Simd.DotF16Scaled((ushort*)_data + (long)o * n, xs + (long)m * n, xr)
                            : Simd.DotF16((Half*)_data + (long)o * n, xr);
                }
            }
        }
    }

    /// <summary>
    /// f32, bf16 and f16 on AVX2 without AVX-512 (f32: <see cref="Simd.DotF32x2"/>, nothing to prepare); bf16 and f16:
    /// every activation row prepared once as its one-row GEMV prepares it
    /// (<see cref="Simd.SplitForBF16(ReadOnlySpan{float}, float*)"/>, <see cref="Simd.PrepareF16(ReadOnlySpan{float}, float*)"/>),
    /// then blocks of weight rows (~64 KB, L2) walked once per pair of activation rows (<see cref="Simd.DotBF16Split2"/>,
    /// <see cref="Simd.DotF16Split2"/>: one widening of each weight load serves both rows); a row left over, or an f16
    /// row too large to prepare, runs its one-row kernel. Each result is its one-row GEMV's bits. Per row before: the
    /// GEMV, re-widening every weight row and re-preparing the activations per 16 KB block.
    /// </summary>
    private void GemvRowsSplit(ReadOnlySpan<float> x, Span<float> y, int rows, int rowStart, int rowEnd)
    {
        int n = Cols, outF = Rows;
        if ((long)rows * n > x.Length || (long)(rows - 1) * outF + rowEnd > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"{Name}: {rows} rows exceed the product's buffers");
        bool f16 = _dtype == DType.F16;
        int block = (int)Math.Max(4, 65536 / RowBytes);
        if (_dtype == DType.F32)
        {
            fixed (float* xp = x)
            fixed (float* yp = y)
                for (int b0 = rowStart; b0 < rowEnd; b0 += block)
                {
                    int b1 = Math.Min(rowEnd, b0 + block), m = 0;
                    for (; m + 1 < rows; m += 2)
                    {
                        float* x0 = xp + (long)m * n, y0 = yp + (long)m * outF, y1 = y0 + outF;
                        for (int o = b0; o < b1; o++) Simd.DotF32x2((float*)_data + (long)o * n, x0, x0 + n, n, out y0[o], out y1[o]);
                    }
                    if (m < rows)
                        for (int o = b0; o < b1; o++) yp[(long)m * outF + o] = Simd.DotF32((float*)_data + (long)o * n, xp + (long)m * n, n);
                }
            return;
        }
        // The rows the product prepared once for all its items (PrepareRows), else this call's own.
        float* split;
        Span<bool> ready;
        if (_rows != null && _rowsCount == rows && _rowsInput is { } input &&
            Unsafe.AreSame(ref MemoryMarshal.GetReference(x), ref MemoryMarshal.GetArrayDataReference(input)))
        {
            split = _rows;
            ready = _rowsReady;
        }
        else
        {
            split = Simd.ActivationScratch(rows * n);
            ready = rows <= 256 ? stackalloc bool[rows] : new bool[rows];
            PrepareEach(x, rows, split, ready);
        }
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            ushort* wd = (ushort*)_data;
            for (int b0 = rowStart; b0 < rowEnd; b0 += block)
            {
                int b1 = Math.Min(rowEnd, b0 + block);
                for (int m = 0; m < rows;)
                {
                    float* s0 = split + (long)m * n, x0 = xp + (long)m * n, y0 = yp + (long)m * outF;
                    if (m + 1 < rows && ready[m] && ready[m + 1])
                    {
                        float* y1 = y0 + outF;
                        if (f16)
                            for (int o = b0; o < b1; o++) Simd.DotF16Split2(wd + (long)o * n, s0, s0 + n, x0, x0 + n, n, out y0[o], out y1[o]);
                        else
                            for (int o = b0; o < b1; o++) Simd.DotBF16Split2(wd + (long)o * n, s0, s0 + n, x0, x0 + n, n, out y0[o], out y1[o]);
                        m += 2;
                        continue;
                    }
                    var xr = new ReadOnlySpan<float>(x0, n);
                    for (int o = b0; o < b1; o++)
                    {
                        ushort* w = wd + (long)o * n;
                        y0[o] = !ready[m] ? (f16 ? Simd.DotF16((Half*)w, xr) : Simd.DotBF16(w, xr))
                              : f16 ? Simd.DotF16Split(w, s0, xr) : Simd.DotBF16Split(w, s0, xr);
                    }
                    m++;
                }
            }
        }
    }

    // The activation rows of the product being run, prepared once (PrepareRows) or shared with the product's first
    // matrix (TryShareRows: Q/K/V, gate/up); GemvRows uses them when it is given that same input.
    private float* _rows;
    private bool[] _rowsReady = [];
    private float[]? _rowsInput;
    private int _rowsCount;

    public override void PrepareRows(float[] x, int rows, RowScratch scratch, WorkerPool pool)
    {
        _rows = null;
        _rowsInput = null;
        if (_dtype == DType.F32 || rows < 2 || !Simd.Avx2RowKernels(Cols) || (long)rows * Cols > x.Length) return;
        float* d = scratch.Floats((long)rows * Cols);
        var ready = scratch.Flags(rows);
        PrepareEach(x, rows, d, ready);
        _rows = d; _rowsReady = ready; _rowsInput = x; _rowsCount = rows;
    }

    public override bool TryShareRows(CpuMatrix other)
    {
        if (other is not DenseMatrix m || m._rows == null || m._dtype != _dtype || m.Cols != Cols) return false;
        _rows = m._rows; _rowsReady = m._rowsReady; _rowsInput = m._rowsInput; _rowsCount = m._rowsCount;
        return true;
    }

    /// <summary>Each activation row as its one-row GEMV prepares it (bf16: split; f16: split and scaled, when it fits).</summary>
    private void PrepareEach(ReadOnlySpan<float> x, int rows, float* d, Span<bool> ready)
    {
        int n = Cols;
        for (int r = 0; r < rows; r++)
            ready[r] = _dtype == DType.F16 ? Simd.PrepareF16(x.Slice(r * n, n), d + (long)r * n) : Simd.SplitForBF16(x.Slice(r * n, n), d + (long)r * n);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void RowToFloat(int row, Span<float> d)
    {
        int n = Cols;
        switch (_dtype)
        {
            case DType.F32: new ReadOnlySpan<float>((float*)_data + (long)row * n, n).CopyTo(d); break;
            case DType.F16: TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)_data + (long)row * n, n), d); break;
            case DType.BF16: Simd.BF16ToFloat((ushort*)_data + (long)row * n, d[..n]); break;
        }
    }
}

/// <summary>SIMD inner loops with the f16/bf16 → f32 conversion fused into the dot product.</summary>
public static unsafe class Simd
{
    /// <summary>Bytes ahead of the read position that a streaming loop asks to bring into L2.</summary>
    public const int L2AheadBytes = 8192;
    /// <summary>Bytes ahead that it asks to bring on into L1 (from L2, where the far prefetch put them).</summary>
    public const int L1AheadBytes = 1024;

    /// <summary>
    /// Prefetch for one 64-byte line of a sequential weight stream (call once per line read): the line 8 KiB ahead into
    /// L2, the line 1 KiB ahead into L1. The decode GEMVs read each weight once per token in one stream per thread and
    /// are bound by how many misses a core keeps in flight; the hardware prefetchers stop at 4 KiB pages. On a 2-vCPU
    /// Xeon (Emerald Rapids) VM, a bf16 GEMV over 1 GB streamed 14.7 GB/s with no prefetch, 20-22 GB/s with one L1
    /// prefetch 4 KiB ahead (the EPYC-tuned scheme before) and 23.6-24.7 GB/s with this pair, against a read probe of
    /// 24.3-25.7 GB/s (medians of 15 alternating passes over the buffer, two threads).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void PrefetchStream(void* line)
    {
        if (!Sse.IsSupported) return;
        Sse.Prefetch1((byte*)line + L2AheadBytes);
        Sse.Prefetch0((byte*)line + L1AheadBytes);
    }

    /// <summary>
    /// out[r] = Σ_i w[r·ld + i]·x[i] for r &lt; 4 over int8 weights: four rows share each load of x and run four FMA chains.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotI8x4(sbyte* w, int ld, float* x, float* out4)
    {
        int i = 0, n = ld;
        sbyte* w0 = w, w1 = w + ld, w2 = w + 2L * ld, w3 = w + 3L * ld;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        if (Avx512F.IsSupported && n >= 16)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 16; i += 16)
            {
                var xv = Vector512.Load(x + i);
                a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w0 + i))), xv, a0);
                a1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w1 + i))), xv, a1);
                a2 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w2 + i))), xv, a2);
                a3 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w3 + i))), xv, a3);
            }
            s0 = Vector512.Sum(a0); s1 = Vector512.Sum(a1); s2 = Vector512.Sum(a2); s3 = Vector512.Sum(a3);
        }
        else if (Avx2.IsSupported && n >= 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 8; i += 8)
            {
                var xv = Vector256.Load(x + i);
                a0 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w0 + i)), xv, a0);
                a1 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w1 + i)), xv, a1);
                a2 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w2 + i)), xv, a2);
                a3 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w3 + i)), xv, a3);
            }
            s0 = Vector256.Sum(a0); s1 = Vector256.Sum(a1); s2 = Vector256.Sum(a2); s3 = Vector256.Sum(a3);
        }
        for (; i < n; i++)
        {
            float xi = x[i];
            s0 += w0[i] * xi; s1 += w1[i] * xi; s2 += w2[i] * xi; s3 += w3[i] * xi;
        }
        out4[0] = s0; out4[1] = s1; out4[2] = s2; out4[3] = s3;
    }

    /// <summary>Σ w[i] · x[i] over int8 weights (an adapter's codes: a few KB, no streaming prefetch).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotI8(sbyte* w, ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        float s = 0;
        fixed (float* xp = x)
        {
            if (Avx512F.IsSupported && n >= 32)
            {
                Vector512<float> a0 = default, a1 = default;
                for (; i <= n - 32; i += 32)
                {
                    a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + i))), Vector512.Load(xp + i), a0);
                    a1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + i + 16))), Vector512.Load(xp + i + 16), a1);
                }
                s = Vector512.Sum(a0 + a1);
            }
            else if (Avx2.IsSupported && n >= 16)
            {
                Vector256<float> a0 = default, a1 = default;
                for (; i <= n - 16; i += 16)
                {
                    a0 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + i)), Vector256.Load(xp + i), a0);
                    a1 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + i + 8)), Vector256.Load(xp + i + 8), a1);
                }
                s = Vector256.Sum(a0 + a1);
            }
            for (; i < n; i++) s += w[i] * xp[i];
        }
        return s;
    }

    /// <summary>Σ bf16(w[i]) · x[i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    /// <summary>Whether <see cref="DotBF16x4"/> and <see cref="DotF16x4"/> run (AVX-512, rows of at least 64).</summary>
    public static bool HasDotBF16x4(int n) => Avx512F.IsSupported && n >= 64;

    /// <summary>
    /// <see cref="DotBF16"/> of one bf16 row against four activation rows of n floats, each widened
    /// weight vector feeding four FMAs; per row the same accumulators, order and reduction as
    /// <see cref="DotBF16"/>'s AVX-512 path, so every result is bit-identical to it. Needs <see cref="HasDotBF16x4"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static Vector128<float> DotBF16x4(ushort* w, float* x, float* x1, float* x2, float* x3, int n)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        int i = 0;
        for (; i <= n - 64; i += 64)
        {
            PrefetchStream(w + i);
            PrefetchStream(w + i + 32);
            var w0 = WidenBF16(Vector256.Load(w + i));
            var w1 = WidenBF16(Vector256.Load(w + i + 16));
            var w2 = WidenBF16(Vector256.Load(w + i + 32));
            var w3 = WidenBF16(Vector256.Load(w + i + 48));
            a0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x + i), a0);
            b0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x1 + i), b0);
            c0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x2 + i), c0);
            d0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x3 + i), d0);
            a1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x + i + 16), a1);
            b1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x1 + i + 16), b1);
            c1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x2 + i + 16), c1);
            d1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x3 + i + 16), d1);
            a2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x + i + 32), a2);
            b2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x1 + i + 32), b2);
            c2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x2 + i + 32), c2);
            d2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x3 + i + 32), d2);
            a3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x + i + 48), a3);
            b3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x1 + i + 48), b3);
            c3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x2 + i + 48), c3);
            d3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x3 + i + 48), d3);
        }
        for (; i <= n - 16; i += 16)
        {
            var w0 = WidenBF16(Vector256.Load(w + i));
            a0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x + i), a0);
            b0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x1 + i), b0);
            c0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x2 + i), c0);
            d0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x3 + i), d0);
        }
        float sa = Vector512.Sum((a0 + a1) + (a2 + a3)), sb = Vector512.Sum((b0 + b1) + (b2 + b3));
        float sc = Vector512.Sum((c0 + c1) + (c2 + c3)), sd = Vector512.Sum((d0 + d1) + (d2 + d3));
        for (; i < n; i++)
        {
            float wi = DTypes.BF16ToFloat(w[i]);
            sa += wi * x[i]; sb += wi * x1[i]; sc += wi * x2[i]; sd += wi * x3[i];
        }
        return Vector128.Create(sa, sb, sc, sd);
    }

    public static float DotBF16(ushort* w, ReadOnlySpan<float> x)
    {
        int n = x.Length, i = 0;
        fixed (float* xp = x)
        {
            if (Avx512F.IsSupported && n >= 64)
            {
                // 16 weights per instruction: zero-extend to 32 bits (one load), shift into the f32 high half, FMA with
                // x from memory. Fewer instructions per byte than 256-bit lanes, so one core streams closer to its bandwidth.
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (; i <= n - 64; i += 64)
                {
                    // 128 bytes per iteration: prefetches for each 64-byte line (one for both measured 146 vs 160 tok/s).
                    PrefetchStream(w + i);
                    PrefetchStream(w + i + 32);
                    a0 = Avx512F.FusedMultiplyAdd(WidenBF16(Vector256.Load(w + i)), Vector512.Load(xp + i), a0);
                    a1 = Avx512F.FusedMultiplyAdd(WidenBF16(Vector256.Load(w + i + 16)), Vector512.Load(xp + i + 16), a1);
                    a2 = Avx512F.FusedMultiplyAdd(WidenBF16(Vector256.Load(w + i + 32)), Vector512.Load(xp + i + 32), a2);
                    a3 = Avx512F.FusedMultiplyAdd(WidenBF16(Vector256.Load(w + i + 48)), Vector512.Load(xp + i + 48), a3);
                }
                for (; i <= n - 16; i += 16)
                    a0 = Avx512F.FusedMultiplyAdd(WidenBF16(Vector256.Load(w + i)), Vector512.Load(xp + i), a0);
                float s5 = Vector512.Sum((a0 + a1) + (a2 + a3));
                for (; i < n; i++) s5 += DTypes.BF16ToFloat(w[i]) * xp[i];
                return s5;
            }
            if (Vector256.IsHardwareAccelerated && n >= 32)
            {
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (; i <= n - 32; i += 32)
                {
                    PrefetchStream(w + i);
                    a0 = Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i)), Vector256.Load(xp + i), a0);
                    a1 = Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i + 8)), Vector256.Load(xp + i + 8), a1);
                    a2 = Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i + 16)), Vector256.Load(xp + i + 16), a2);
                    a3 = Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i + 24)), Vector256.Load(xp + i + 24), a3);
                }
                for (; i <= n - 8; i += 8)
                    a0 = Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i)), Vector256.Load(xp + i), a0);
                float s = Vector256.Sum((a0 + a1) + (a2 + a3));
                for (; i < n; i++) s += DTypes.BF16ToFloat(w[i]) * xp[i];
                return s;
            }
            float r = 0;
            for (; i < n; i++) r += DTypes.BF16ToFloat(w[i]) * xp[i];
            return r;
        }
    }

    [ThreadStatic] private static float[]? _activationScratch;

    /// <summary>
    /// This thread's pinned scratch of at least <paramref name="n"/> floats for prepared activations
    /// (<see cref="SplitForBF16(ReadOnlySpan{float}, out float*)"/>, <see cref="ScaleForF16(ReadOnlySpan{float}, out float*)"/>,
    /// <see cref="PrepareF16(ReadOnlySpan{float}, out float*)"/>): one buffer, valid until the thread's next preparation.
    /// </summary>
    internal static float* ActivationScratch(int n)
    {
        var buf = _activationScratch;
        if (buf is null || buf.Length < n) _activationScratch = buf = GC.AllocateArray<float>(Math.Max(n, 4096), pinned: true);
        return (float*)Unsafe.AsPointer(ref buf[0]);
    }

    /// <summary>
    /// AVX2 without AVX-512: the activations regrouped for <see cref="DotBF16Split"/> in this thread's scratch (valid until
    /// its next call): per 16 columns the 8 even ones, then the 8 odd ones. False (nothing done) with AVX-512 (its
    /// widening is already two instructions per 16 weights), without AVX2, or for rows under 32 columns.
    /// </summary>
    public static bool SplitForBF16(ReadOnlySpan<float> x, out float* split)
    {
        split = null;
        if (!Avx2RowKernels(x.Length)) return false;
        split = ActivationScratch(x.Length);
        return SplitForBF16(x, split);
    }

    /// <summary>Whether rows of n columns take the AVX2 row kernels (no AVX-512; <see cref="DotF32"/>, the split bf16/f16 dots and their two-row forms).</summary>
    internal static bool Avx2RowKernels(int n) => !Avx512F.IsSupported && Avx2.IsSupported && Fma.IsSupported && n >= 32;

    /// <summary><see cref="SplitForBF16(ReadOnlySpan{float}, out float*)"/> into <paramref name="d"/> (x.Length floats).</summary>
    public static bool SplitForBF16(ReadOnlySpan<float> x, float* d)
    {
        int n = x.Length;
        if (!Avx2RowKernels(n)) return false;
        fixed (float* xp = x)
        {
            int i = 0;
            var evens = Vector256.Create(0, 2, 4, 6, 1, 3, 5, 7);
            for (; i <= n - 16; i += 16)
            {
                // [x0..x7] -> [x0 x2 x4 x6 | x1 x3 x5 x7], likewise [x8..x15]; then the halves regrouped.
                var a = Avx2.PermuteVar8x32(Vector256.Load(xp + i), evens);
                var b = Avx2.PermuteVar8x32(Vector256.Load(xp + i + 8), evens);
                Avx.Permute2x128(a, b, 0x20).Store(d + i);
                Avx.Permute2x128(a, b, 0x31).Store(d + i + 8);
            }
            for (; i < n; i++) d[i] = xp[i];
        }
        return true;
    }

    /// <summary>
    /// <see cref="DotBF16"/> for AVX2 over activations regrouped by <see cref="SplitForBF16"/>: a 32-byte load holds 16
    /// weights as 8 pairs; the even ones become f32 by one shift (w &lt;&lt; 16), the odd ones by one mask (w &amp; 0xFFFF0000),
    /// two instructions per 16 weights instead of the five of widening each half (x: the unsplit activations, for the
    /// ragged tail).
    /// </summary>
    public static float DotBF16Split(ushort* w, float* split, ReadOnlySpan<float> x) => DotSplit<BF16Pairs>(w, split, x);

    /// <summary>
    /// Σ w[i]·x[i] over f32 rows on AVX2 (the GEMV's dot where AVX-512 is absent): four FMA chains over 32-column steps,
    /// an 8-column step into the first, the reduction ((a0 + a1) + (a2 + a3)), then a scalar tail: an order of its own,
    /// so <see cref="DotF32x2"/> can give each of two rows these same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotF32(float* w, float* x, int n)
    {
        int i = 0;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (; i <= n - 32; i += 32)
        {
            PrefetchStream(w + i);
            PrefetchStream(w + i + 16);
            a0 = Fma.MultiplyAdd(Vector256.Load(w + i), Vector256.Load(x + i), a0);
            a1 = Fma.MultiplyAdd(Vector256.Load(w + i + 8), Vector256.Load(x + i + 8), a1);
            a2 = Fma.MultiplyAdd(Vector256.Load(w + i + 16), Vector256.Load(x + i + 16), a2);
            a3 = Fma.MultiplyAdd(Vector256.Load(w + i + 24), Vector256.Load(x + i + 24), a3);
        }
        for (; i <= n - 8; i += 8) a0 = Fma.MultiplyAdd(Vector256.Load(w + i), Vector256.Load(x + i), a0);
        float s = Vector256.Sum((a0 + a1) + (a2 + a3));
        for (; i < n; i++) s += w[i] * x[i];
        return s;
    }

    /// <summary><see cref="DotF32"/> of one weight row against two activation rows: each weight load serves both, each result that row's bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotF32x2(float* w, float* x0, float* x1, int n, out float r0, out float r1)
    {
        int i = 0;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        for (; i <= n - 32; i += 32)
        {
            PrefetchStream(w + i);
            PrefetchStream(w + i + 16);
            var w0 = Vector256.Load(w + i); var w1 = Vector256.Load(w + i + 8);
            var w2 = Vector256.Load(w + i + 16); var w3 = Vector256.Load(w + i + 24);
            a0 = Fma.MultiplyAdd(w0, Vector256.Load(x0 + i), a0);
            b0 = Fma.MultiplyAdd(w0, Vector256.Load(x1 + i), b0);
            a1 = Fma.MultiplyAdd(w1, Vector256.Load(x0 + i + 8), a1);
            b1 = Fma.MultiplyAdd(w1, Vector256.Load(x1 + i + 8), b1);
            a2 = Fma.MultiplyAdd(w2, Vector256.Load(x0 + i + 16), a2);
            b2 = Fma.MultiplyAdd(w2, Vector256.Load(x1 + i + 16), b2);
            a3 = Fma.MultiplyAdd(w3, Vector256.Load(x0 + i + 24), a3);
            b3 = Fma.MultiplyAdd(w3, Vector256.Load(x1 + i + 24), b3);
        }
        for (; i <= n - 8; i += 8)
        {
            var w0 = Vector256.Load(w + i);
            a0 = Fma.MultiplyAdd(w0, Vector256.Load(x0 + i), a0);
            b0 = Fma.MultiplyAdd(w0, Vector256.Load(x1 + i), b0);
        }
        float p = Vector256.Sum((a0 + a1) + (a2 + a3));
        float q = Vector256.Sum((b0 + b1) + (b2 + b3));
        for (int j = i; j < n; j++) p += w[j] * x0[j];
        for (int j = i; j < n; j++) q += w[j] * x1[j];
        r0 = p; r1 = q;
    }

    /// <summary>
    /// <see cref="DotBF16Split"/> (<see cref="DotF16Split"/>) for two activation rows at once, each split by
    /// <see cref="SplitForBF16(ReadOnlySpan{float}, float*)"/> (<see cref="PrepareF16(ReadOnlySpan{float}, float*)"/>):
    /// every 32-byte load of weights is widened once for both rows, and each row keeps the one-row kernel's four
    /// accumulators, its step order and its tail, so each result is bit for bit that row's one-row dot. Eight
    /// accumulators, four widened weight vectors and the mask fit AVX2's sixteen registers (four rows would not).
    /// </summary>
    public static void DotBF16Split2(ushort* w, float* s0, float* s1, float* x0, float* x1, int n, out float r0, out float r1) =>
        DotSplit2<BF16Pairs>(w, s0, s1, x0, x1, n, out r0, out r1);

    /// <inheritdoc cref="DotBF16Split2"/>
    public static void DotF16Split2(ushort* w, float* s0, float* s1, float* x0, float* x1, int n, out float r0, out float r1) =>
        DotSplit2<F16Pairs>(w, s0, s1, x0, x1, n, out r0, out r1);

    /// <summary>A 32-bit lane holding two 16-bit floats, the even column low: each half moved into an f32.</summary>
    public interface IPairWiden
    {
        static abstract Vector256<int> Mask { get; }
        static abstract Vector256<float> Even(Vector256<int> v, Vector256<int> mask);
        static abstract Vector256<float> Odd(Vector256<int> v, Vector256<int> mask);
        static abstract float Scalar(ushort h);
    }

    /// <summary>bf16: the even one by one shift (w &lt;&lt; 16), the odd one by one mask (w &amp; 0xFFFF0000).</summary>
    public readonly struct BF16Pairs : IPairWiden
    {
        public static Vector256<int> Mask => Vector256.Create(unchecked((int)0xFFFF0000));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Even(Vector256<int> v, Vector256<int> mask) => Avx2.ShiftLeftLogical(v, 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Odd(Vector256<int> v, Vector256<int> mask) => (v & mask).AsSingle();
        public static float Scalar(ushort h) => DTypes.BF16ToFloat(h);
    }

    /// <summary>
    /// f16 times 2^-112 (the activations carry 2^112): the even one by a shift left by 16 and an arithmetic shift right
    /// by 3, the odd one by the arithmetic shift alone, one mask clearing the sign's copies and the neighbour's bits.
    /// </summary>
    public readonly struct F16Pairs : IPairWiden
    {
        public static Vector256<int> Mask => Vector256.Create(unchecked((int)0x8FFFE000));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Even(Vector256<int> v, Vector256<int> mask) => (Avx2.ShiftRightArithmetic(Avx2.ShiftLeftLogical(v, 16), 3) & mask).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Odd(Vector256<int> v, Vector256<int> mask) => (Avx2.ShiftRightArithmetic(v, 3) & mask).AsSingle();
        public static float Scalar(ushort h) => DTypes.F16ToFloat(h);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotSplit<TW>(ushort* w, float* split, ReadOnlySpan<float> x) where TW : struct, IPairWiden
    {
        int n = x.Length, i = 0;
        var mask = TW.Mask;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (; i <= n - 32; i += 32)
        {
            PrefetchStream(w + i);
            var v = Vector256.Load((int*)(w + i));
            var u = Vector256.Load((int*)(w + i + 16));
            a0 = Fma.MultiplyAdd(TW.Even(v, mask), Vector256.Load(split + i), a0);
            a1 = Fma.MultiplyAdd(TW.Odd(v, mask), Vector256.Load(split + i + 8), a1);
            a2 = Fma.MultiplyAdd(TW.Even(u, mask), Vector256.Load(split + i + 16), a2);
            a3 = Fma.MultiplyAdd(TW.Odd(u, mask), Vector256.Load(split + i + 24), a3);
        }
        for (; i <= n - 16; i += 16)
        {
            var v = Vector256.Load((int*)(w + i));
            a0 = Fma.MultiplyAdd(TW.Even(v, mask), Vector256.Load(split + i), a0);
            a1 = Fma.MultiplyAdd(TW.Odd(v, mask), Vector256.Load(split + i + 8), a1);
        }
        float s = Vector256.Sum((a0 + a1) + (a2 + a3));
        fixed (float* xp = x)
            for (; i < n; i++) s += TW.Scalar(w[i]) * xp[i];
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotSplit2<TW>(ushort* w, float* s0, float* s1, float* x0, float* x1, int n, out float r0, out float r1)
        where TW : struct, IPairWiden
    {
        int i = 0;
        var mask = TW.Mask;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        for (; i <= n - 32; i += 32)
        {
            PrefetchStream(w + i);
            var v = Vector256.Load((int*)(w + i));
            var u = Vector256.Load((int*)(w + i + 16));
            var ve = TW.Even(v, mask);
            var vo = TW.Odd(v, mask);
            var ue = TW.Even(u, mask);
            var uo = TW.Odd(u, mask);
            a0 = Fma.MultiplyAdd(ve, Vector256.Load(s0 + i), a0);
            b0 = Fma.MultiplyAdd(ve, Vector256.Load(s1 + i), b0);
            a1 = Fma.MultiplyAdd(vo, Vector256.Load(s0 + i + 8), a1);
            b1 = Fma.MultiplyAdd(vo, Vector256.Load(s1 + i + 8), b1);
            a2 = Fma.MultiplyAdd(ue, Vector256.Load(s0 + i + 16), a2);
            b2 = Fma.MultiplyAdd(ue, Vector256.Load(s1 + i + 16), b2);
            a3 = Fma.MultiplyAdd(uo, Vector256.Load(s0 + i + 24), a3);
            b3 = Fma.MultiplyAdd(uo, Vector256.Load(s1 + i + 24), b3);
        }
        for (; i <= n - 16; i += 16)
        {
            var v = Vector256.Load((int*)(w + i));
            var ve = TW.Even(v, mask);
            var vo = TW.Odd(v, mask);
            a0 = Fma.MultiplyAdd(ve, Vector256.Load(s0 + i), a0);
            b0 = Fma.MultiplyAdd(ve, Vector256.Load(s1 + i), b0);
            a1 = Fma.MultiplyAdd(vo, Vector256.Load(s0 + i + 8), a1);
            b1 = Fma.MultiplyAdd(vo, Vector256.Load(s1 + i + 8), b1);
        }
        float p = Vector256.Sum((a0 + a1) + (a2 + a3));
        float q = Vector256.Sum((b0 + b1) + (b2 + b3));
        for (int j = i; j < n; j++) p += TW.Scalar(w[j]) * x0[j];
        for (int j = i; j < n; j++) q += TW.Scalar(w[j]) * x1[j];
        r0 = p; r1 = q;
    }

    /// <summary>16 bf16 values to f32: zero-extend to 32 bits (one load), shift into the f32 high half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> WidenBF16(Vector256<ushort> v) => Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(v), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> WidenBF16(Vector128<ushort> v)
    {
        var (lo, hi) = Vector128.Widen(v);
        return Vector256.Create(Vector128.ShiftLeft(lo, 16), Vector128.ShiftLeft(hi, 16)).AsSingle();
    }

    /// <summary>Σ f16(w[i]) · x[i]: converted in registers (AVX-512), else in chunks through the stack.</summary>
    public static float DotF16(Half* w, ReadOnlySpan<float> x)
    {
        if (Avx512F.IsSupported && x.Length >= 64) return DotF16Avx512((ushort*)w, x);
        return DotF16Chunked(w, x);
    }

    /// <summary>
    /// f16 → f32 without F16C intrinsics (.NET exposes none): the bits shifted into f32 position and scaled by 2^112
    /// rebias the exponent (exact for normal and subnormal halves and signed zeros; weights are never inf/NaN).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> WidenF16(Vector256<ushort> h) => F16Bits(h) * Vector512.Create(F16Rebias);

    /// <summary>
    /// A half's bits in f32 position, its value times 2^-112: sign-extended to 32 bits and shifted by 13, the sign lands
    /// in bit 31 (copies of it in bits 28-30, masked off), exponent and mantissa in bits 13-27. Three instructions per
    /// 16 weights; <see cref="WidenF16"/> multiplies by 2^112, or the activations carry that factor
    /// (<see cref="ScaleForF16"/>: f16 decode is compute-bound on cores that stream only 12-15 GB/s).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> F16Bits(Vector256<ushort> h) =>
        (Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(h.AsInt16()), 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    private const float F16Rebias = 5.192296858534828e33f; // 2^112

    /// <summary>Activations below this magnitude times 2^112 stay finite (2^15 · 2^112 = 2^127).</summary>
    private const float F16ScaledMax = 32768f;

    private interface IF16Widen { static abstract Vector512<float> Widen(Vector256<ushort> h); }
    private struct Rebiased : IF16Widen { public static Vector512<float> Widen(Vector256<ushort> h) => WidenF16(h); }
    private struct PreScaled : IF16Widen { public static Vector512<float> Widen(Vector256<ushort> h) => F16Bits(h); }

    /// <summary>
    /// The activations times 2^112 in this thread's scratch (valid until its next call), so the f16 kernels skip the
    /// rebiasing multiply: w'·(x·2^112) = (w'·2^112)·x exactly, where w' = <see cref="F16Bits"/> (both scalings are by a
    /// power of two, so every FMA rounds the same product: bit for bit <see cref="DotF16"/>'s result). False (nothing
    /// scaled) without AVX-512, for rows under 64, or when some |x| ≥ 2^15 or is NaN (the scaled value could overflow).
    /// </summary>
    public static bool ScaleForF16(ReadOnlySpan<float> x, out float* scaled)
    {
        scaled = null;
        if (!Avx512F.IsSupported || x.Length < 64) return false;
        scaled = ActivationScratch(x.Length);
        return ScaleForF16(x, scaled);
    }

    /// <summary><see cref="ScaleForF16(ReadOnlySpan{float}, out float*)"/> into <paramref name="d"/> (x.Length floats).</summary>
    public static bool ScaleForF16(ReadOnlySpan<float> x, float* d)
    {
        if (!Avx512F.IsSupported || x.Length < 64 || !(TensorPrimitives.MaxMagnitude(x) is var m && MathF.Abs(m) < F16ScaledMax)) return false;
        TensorPrimitives.Multiply(x, F16Rebias, new Span<float>(d, x.Length));
        return true;
    }

    /// <summary>
    /// The activations as <see cref="DotF16Prepared"/> reads them, in this thread's scratch (valid until its next call):
    /// with AVX-512 scaled by 2^112 (<see cref="ScaleForF16(ReadOnlySpan{float}, float*)"/>); with AVX2 alone also split
    /// even/odd per 16 columns (<see cref="SplitForBF16(ReadOnlySpan{float}, float*)"/>). False when neither applies
    /// (no AVX2, short rows, an activation of 2^15 or more): then <see cref="DotF16"/>.
    /// </summary>
    public static bool PrepareF16(ReadOnlySpan<float> x, out float* prepared)
    {
        prepared = ActivationScratch(x.Length);
        return PrepareF16(x, prepared);
    }

    /// <summary><see cref="PrepareF16(ReadOnlySpan{float}, out float*)"/> into <paramref name="d"/> (x.Length floats).</summary>
    public static bool PrepareF16(ReadOnlySpan<float> x, float* d)
    {
        if (Avx512F.IsSupported) return ScaleForF16(x, d);
        if (!Avx2RowKernels(x.Length) || !(TensorPrimitives.MaxMagnitude(x) is var m && MathF.Abs(m) < F16ScaledMax)) return false;
        SplitForBF16(x, d);
        var v = new Span<float>(d, x.Length);
        TensorPrimitives.Multiply(v, F16Rebias, v);
        return true;
    }

    /// <summary><see cref="DotF16"/> over activations prepared by <see cref="PrepareF16(ReadOnlySpan{float}, float*)"/> (x: the unprepared ones, for the ragged tail).</summary>
    public static float DotF16Prepared(ushort* w, float* prepared, ReadOnlySpan<float> x) =>
        Avx512F.IsSupported ? DotF16Scaled(w, prepared, x) : DotF16Split(w, prepared, x);

    /// <summary>
    /// f16 on AVX2 over activations split and scaled (<see cref="PrepareF16(ReadOnlySpan{float}, float*)"/>): a 32-byte load
    /// holds 16 halves as 8 pairs; the even ones move to the f32 sign/exponent/mantissa positions by a shift left by 16
    /// and an arithmetic shift right by 3, the odd ones by the arithmetic shift alone, one mask clearing the sign's copies
    /// and the neighbour's bits: five instructions per 16 weights (the chunked conversion through the stack took a pass
    /// of its own). Exact for normal and subnormal halves and signed zeros, as <see cref="WidenF16"/>.
    /// </summary>
    public static float DotF16Split(ushort* w, float* split, ReadOnlySpan<float> x) => DotSplit<F16Pairs>(w, split, x);

    /// <summary><see cref="DotF16"/> over activations scaled by <see cref="ScaleForF16"/> (x: the unscaled ones, for the ragged tail).</summary>
    public static float DotF16Scaled(ushort* w, float* scaled, ReadOnlySpan<float> x)
    {
        fixed (float* xp = x) return DotF16Avx512<PreScaled>(w, scaled, xp, x.Length);
    }

    /// <summary><see cref="DotF16x4"/> over activations scaled by <see cref="ScaleForF16"/> (x: the unscaled rows, for the ragged tail).</summary>
    public static Vector128<float> DotF16x4Scaled(ushort* w, float* s0, float* s1, float* s2, float* s3, float* x, float* x1, float* x2, float* x3, int n) =>
        DotF16x4<PreScaled>(w, s0, s1, s2, s3, x, x1, x2, x3, n);

    /// <summary>
    /// <see cref="DotF16"/> of one f16 row against four activation rows of n floats (n ≥ 64, AVX-512), each widened
    /// weight vector feeding four FMAs; per row the same accumulators, order and reduction as
    /// <see cref="DotF16Avx512"/>, so every result is bit-identical to it.
    /// </summary>
    public static Vector128<float> DotF16x4(ushort* w, float* x, float* x1, float* x2, float* x3, int n) =>
        DotF16x4<Rebiased>(w, x, x1, x2, x3, x, x1, x2, x3, n);

    /// <summary>The vector part reads v0..v3 (x, or x scaled for <see cref="PreScaled"/>), the scalar tail x0..x3.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> DotF16x4<TW>(ushort* w, float* v0, float* v1, float* v2, float* v3, float* x, float* x1, float* x2, float* x3, int n)
        where TW : struct, IF16Widen
    {
        Vector512<float> a0 = default, a1 = default, b0 = default, b1 = default, c0 = default, c1 = default, d0 = default, d1 = default;
        int i = 0;
        for (; i <= n - 32; i += 32)
        {
            PrefetchStream(w + i);
            var w0 = TW.Widen(Vector256.Load(w + i));
            var w1 = TW.Widen(Vector256.Load(w + i + 16));
            a0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v0 + i), a0);
            b0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v1 + i), b0);
            c0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v2 + i), c0);
            d0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v3 + i), d0);
            a1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(v0 + i + 16), a1);
            b1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(v1 + i + 16), b1);
            c1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(v2 + i + 16), c1);
            d1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(v3 + i + 16), d1);
        }
        for (; i <= n - 16; i += 16)
        {
            var w0 = TW.Widen(Vector256.Load(w + i));
            a0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v0 + i), a0);
            b0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v1 + i), b0);
            c0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v2 + i), c0);
            d0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(v3 + i), d0);
        }
        float sa = Vector512.Sum(a0 + a1), sb = Vector512.Sum(b0 + b1), sc = Vector512.Sum(c0 + c1), sd = Vector512.Sum(d0 + d1);
        for (; i < n; i++)
        {
            float wi = DTypes.F16ToFloat(w[i]);
            sa += wi * x[i]; sb += wi * x1[i]; sc += wi * x2[i]; sd += wi * x3[i];
        }
        return Vector128.Create(sa, sb, sc, sd);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotF16Avx512(ushort* w, ReadOnlySpan<float> x)
    {
        fixed (float* xp = x) return DotF16Avx512<Rebiased>(w, xp, xp, x.Length);
    }

    /// <summary>The vector part reads v (x, or x scaled for <see cref="PreScaled"/>), the scalar tail x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotF16Avx512<TW>(ushort* w, float* v, float* xp, int n) where TW : struct, IF16Widen
    {
        int i = 0;
        Vector512<float> a0 = default, a1 = default;
        for (; i <= n - 32; i += 32)
        {
            PrefetchStream(w + i);
            a0 = Avx512F.FusedMultiplyAdd(TW.Widen(Vector256.Load(w + i)), Vector512.Load(v + i), a0);
            a1 = Avx512F.FusedMultiplyAdd(TW.Widen(Vector256.Load(w + i + 16)), Vector512.Load(v + i + 16), a1);
        }
        for (; i <= n - 16; i += 16)
            a0 = Avx512F.FusedMultiplyAdd(TW.Widen(Vector256.Load(w + i)), Vector512.Load(v + i), a0);
        float s = Vector512.Sum(a0 + a1);
        for (; i < n; i++) s += DTypes.F16ToFloat(w[i]) * xp[i];
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotF16Chunked(Half* w, ReadOnlySpan<float> x)
    {
        const int Chunk = 512;
        Span<float> tmp = stackalloc float[Chunk];
        float s = 0;
        for (int i = 0; i < x.Length; i += Chunk)
        {
            int len = Math.Min(Chunk, x.Length - i);
            var t = tmp[..len];
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(w + i, len), t);
            s += TensorPrimitives.Dot(t, x.Slice(i, len));
        }
        return s;
    }

    /// <summary>y[i] += c · bf16(w[i]).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AxpyBF16(ushort* w, float c, Span<float> y)
    {
        int n = y.Length, i = 0;
        fixed (float* d = y)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                var cv = Vector256.Create(c);
                for (; i <= n - 16; i += 16)
                {
                    Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i)), cv, Vector256.Load(d + i)).Store(d + i);
                    Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i + 8)), cv, Vector256.Load(d + i + 8)).Store(d + i + 8);
                }
                for (; i <= n - 8; i += 8)
                    Vector256.FusedMultiplyAdd(WidenBF16(Vector128.Load(w + i)), cv, Vector256.Load(d + i)).Store(d + i);
            }
            for (; i < n; i++) d[i] += c * DTypes.BF16ToFloat(w[i]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void BF16ToFloat(ushort* src, Span<float> dst)
    {
        int n = dst.Length, i = 0;
        fixed (float* d = dst)
        {
            if (Vector256.IsHardwareAccelerated)
                for (; i <= n - 8; i += 8) WidenBF16(Vector128.Load(src + i)).Store(d + i);
            for (; i < n; i++) d[i] = DTypes.BF16ToFloat(src[i]);
        }
    }
}
