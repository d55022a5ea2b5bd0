using ILGPU;

namespace Lrl.Kernels;

/// <summary>
/// Weight readers for lrlrun's quantized layout (see Lrl.QuantizedTensor): each element is dequantized on the fly,
/// w = (q − z)·s, so the generic GEMV, GEMM, fused SwiGLU GEMV and embedding kernels run on int8/int4 weights unchanged
/// (one specialization per reader). Codes stay packed in device memory: the products read codes + f16 scales only.
/// </summary>
public struct QuantShape
{
    /// <summary>Input features (row length) and group size; Groups = Cols / Group.</summary>
    public int Cols, Group, Groups;
    /// <summary>1 when per-group zero points are given (4-bit), else the implicit zero (8 for 4-bit).</summary>
    public int HasZeros;
    /// <summary>1 when columns are stored permuted (GPTQ act-order): stored index of input column c is StoredColumn[c].</summary>
    public int HasOrder;
}

/// <summary>8-bit signed codes [rows, cols] with f16 group scales.</summary>
public struct Q8Reader : IWeightReader
{
    public ArrayView<byte> Codes;
    public ArrayView<ushort> Scales;
    public ArrayView<int> StoredColumn;
    public QuantShape Shape;

    public Q8Reader(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<int> storedColumn, QuantShape shape)
    {
        Codes = codes; Scales = scales; StoredColumn = storedColumn; Shape = shape;
    }

    public readonly float Get(long i)
    {
        long row = i / Shape.Cols;
        int col = (int)(i - row * Shape.Cols);
        int j = Shape.HasOrder != 0 ? StoredColumn[col] : col;
        int q = (sbyte)Codes[row * Shape.Cols + j];
        return q * KernelMath.HalfToFloat(Scales[row * Shape.Groups + j / Shape.Group]);
    }

    /// <summary>Elements 4q .. 4q+3 (through <see cref="Get"/>; quantized rows are read group-wise by their own kernels).</summary>
    public readonly void Get4(long q, out float a, out float b, out float c, out float d)
    {
        a = Get(4 * q); b = Get(4 * q + 1); c = Get(4 * q + 2); d = Get(4 * q + 3);
    }
}

/// <summary>
/// 4-bit unsigned nibbles packed [rows, cols/2]: in each 64-column block (the last may be shorter, of even length L),
/// byte j holds column j (low nibble) and column j + L/2 (high nibble); f16 group scales; optional u8 zero points.
/// </summary>
public struct Q4Reader : IWeightReader
{
    public ArrayView<byte> Codes;
    public ArrayView<ushort> Scales;
    public ArrayView<byte> Zeros;
    public ArrayView<int> StoredColumn;
    public QuantShape Shape;

    public Q4Reader(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<byte> zeros, ArrayView<int> storedColumn, QuantShape shape)
    {
        Codes = codes; Scales = scales; Zeros = zeros; StoredColumn = storedColumn; Shape = shape;
    }

    public readonly float Get(long i)
    {
        int cols = Shape.Cols;
        long row = i / cols;
        int col = (int)(i - row * cols);
        int j = Shape.HasOrder != 0 ? StoredColumn[col] : col;
        int b0 = j & ~63;
        int len = cols - b0 < 64 ? cols - b0 : 64;
        int jj = j - b0, half = len >> 1;
        int v = Codes[row * (cols >> 1) + (b0 >> 1) + (jj < half ? jj : jj - half)];
        int q = jj < half ? v & 15 : v >> 4;
        long g = row * Shape.Groups + j / Shape.Group;
        int z = Shape.HasZeros != 0 ? Zeros[g] : 8;
        return (q - z) * KernelMath.HalfToFloat(Scales[g]);
    }

    /// <summary>Elements 4q .. 4q+3 (through <see cref="Get"/>; quantized rows are read group-wise by their own kernels).</summary>
    public readonly void Get4(long q, out float a, out float b, out float c, out float d)
    {
        a = Get(4 * q); b = Get(4 * q + 1); c = Get(4 * q + 2); d = Get(4 * q + 3);
    }
}

/// <summary>
/// Batch-1 products for quantized weights stored in input order: one warp per output row, the warp walks the row one
/// group at a time (lanes stride the group, coalesced byte reads), and each group's partial sum is scaled once.
/// Grid = ceil(outF / warpsPerGroup). Act-order (permuted) weights use the generic reader kernels instead.
/// </summary>
public static class QuantGemvKernels
{
    /// <summary>y[o] = Σ_g s[o, g]·Σ_{i∈g} q[o, i]·x[i] (+ bias).</summary>
    public static void GemvQ8(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<float> x, ArrayView<float> y,
                              ArrayView<float> bias, int hasBias, int outF, QuantShape s)
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long xr) * warps + Warp.WarpIdx;
        if (row >= outF) return;
        float acc = RowQ8(codes, scales, x.SubView(xr * s.Cols, s.Cols), row, s);
        if (Warp.LaneIdx == 0) y[xr * outF + row] = hasBias != 0 ? acc + bias[row] : acc;
    }

    /// <summary><see cref="GemvQ8"/> (no bias), then the residual add and RMSNorm by each row's last group (as <see cref="GemvKernels.GemvAddRmsNorm{TW}"/>).</summary>
    public static void GemvQ8AddRmsNorm(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<float> x, ArrayView<float> y, int outF,
                                        QuantShape s, AddNormArgs a)
    {
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        var last = SharedMemory.Allocate<int>(1);
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long xr) * warps + Warp.WarpIdx;
        if (row < outF) // uniform per warp
        {
            float acc = RowQ8(codes, scales, x.SubView(xr * s.Cols, s.Cols), row, s);
            if (Warp.LaneIdx == 0) y[xr * outF + row] = acc;
        }
        NormKernels.AddRmsNormByLastGroup(xr, y, outF, a, scratch, last);
    }

    /// <summary><see cref="GemvQ4"/> (no bias), then the residual add and RMSNorm by each row's last group.</summary>
    public static void GemvQ4AddRmsNorm(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<byte> zeros, ArrayView<float> x,
                                        ArrayView<float> y, int outF, QuantShape s, AddNormArgs a)
    {
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        var last = SharedMemory.Allocate<int>(1);
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long xr) * warps + Warp.WarpIdx;
        if (row < outF) // uniform per warp
        {
            float acc = RowQ4(codes, scales, zeros, x.SubView(xr * s.Cols, s.Cols), row, s);
            if (Warp.LaneIdx == 0) y[xr * outF + row] = acc;
        }
        NormKernels.AddRmsNormByLastGroup(xr, y, outF, a, scratch, last);
    }

    /// <summary>The warp's sum for one 8-bit row (every lane returns it).</summary>
    private static float RowQ8(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<float> x, int row, QuantShape s)
    {
        long b = (long)row * s.Cols, sb = (long)row * s.Groups;
        float acc = 0;
        for (int g = 0; g < s.Groups; g++)
        {
            int end = (g + 1) * s.Group;
            float part = 0;
            for (int i = g * s.Group + Warp.LaneIdx; i < end; i += Warp.WarpSize) part += (sbyte)codes[b + i] * x[i];
            acc += part * KernelMath.HalfToFloat(scales[sb + g]);
        }
        return KernelMath.WarpSum(acc);
    }

    /// <summary>y[o] = Σ_g s[o, g]·Σ_{i∈g} (q[o, i] − z[o, g])·x[i] (+ bias), 4-bit codes in the 64-column block layout.</summary>
    public static void GemvQ4(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<byte> zeros, ArrayView<float> x,
                              ArrayView<float> y, ArrayView<float> bias, int hasBias, int outF, QuantShape s)
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long xr) * warps + Warp.WarpIdx;
        if (row >= outF) return;
        float acc = RowQ4(codes, scales, zeros, x.SubView(xr * s.Cols, s.Cols), row, s);
        if (Warp.LaneIdx == 0) y[xr * outF + row] = hasBias != 0 ? acc + bias[row] : acc;
    }

    /// <summary>The warp's sum for one 4-bit row (every lane returns it).</summary>
    private static float RowQ4(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<byte> zeros, ArrayView<float> x, int row, QuantShape s)
    {
        int cols = s.Cols;
        long b = (long)row * (cols >> 1), sb = (long)row * s.Groups;
        float acc = 0;
        for (int g = 0; g < s.Groups; g++)
        {
            int end = (g + 1) * s.Group;
            float part = 0, xs = 0;
            for (int j = g * s.Group + Warp.LaneIdx; j < end; j += Warp.WarpSize)
            {
                int b0 = j & ~63;
                int len = cols - b0 < 64 ? cols - b0 : 64;
                int jj = j - b0, half = len >> 1;
                int v = codes[b + (b0 >> 1) + (jj < half ? jj : jj - half)];
                float xv = x[j];
                part += (jj < half ? v & 15 : v >> 4) * xv;
                xs += xv;
            }
            int z = s.HasZeros != 0 ? zeros[sb + g] : 8;
            acc += (part - z * xs) * KernelMath.HalfToFloat(scales[sb + g]);
        }
        return KernelMath.WarpSum(acc);
    }

    /// <summary>
    /// Q/K/V of 8-bit weights (in input order) in one launch: one warp per output row of the three matrices together, as
    /// <see cref="GemvKernels.Gemv3{TW}"/>, each row computed as <see cref="GemvQ8"/> computes it (the same bits).
    /// </summary>
    public static void Gemv3Q8(Q8Reader w0, Q8Reader w1, Q8Reader w2, ArrayView<float> x, ArrayView<float> y0, ArrayView<float> y1,
                               ArrayView<float> y2, ArrayView<float> b0, ArrayView<float> b1, ArrayView<float> b2, Gemv3Shape s, RopeArgs rope)
    {
        var last = SharedMemory.Allocate<int>(1);
        if (GemvKernels.Gemv3Slot(s, out long xr, out int m, out int r)) // uniform per warp
        {
            var w = m == 0 ? w0 : m == 1 ? w1 : w2;
            float acc = RowQ8(w.Codes, w.Scales, x.SubView(xr * s.InF, s.InF), r, w.Shape);
            if (Warp.LaneIdx == 0) GemvKernels.Gemv3Store(acc, m, r, xr, y0, y1, y2, b0, b1, b2, s);
        }
        RopeKernels.RopeQkvCacheByLastGroup(y0, y1, y2, rope, last);
    }

    /// <summary>Q/K/V of 4-bit weights (in input order) in one launch, each row as <see cref="GemvQ4"/> computes it.</summary>
    public static void Gemv3Q4(Q4Reader w0, Q4Reader w1, Q4Reader w2, ArrayView<float> x, ArrayView<float> y0, ArrayView<float> y1,
                               ArrayView<float> y2, ArrayView<float> b0, ArrayView<float> b1, ArrayView<float> b2, Gemv3Shape s, RopeArgs rope)
    {
        var last = SharedMemory.Allocate<int>(1);
        if (GemvKernels.Gemv3Slot(s, out long xr, out int m, out int r)) // uniform per warp
        {
            var w = m == 0 ? w0 : m == 1 ? w1 : w2;
            float acc = RowQ4(w.Codes, w.Scales, w.Zeros, x.SubView(xr * s.InF, s.InF), r, w.Shape);
            if (Warp.LaneIdx == 0) GemvKernels.Gemv3Store(acc, m, r, xr, y0, y1, y2, b0, b1, b2, s);
        }
        RopeKernels.RopeQkvCacheByLastGroup(y0, y1, y2, rope, last);
    }
}
