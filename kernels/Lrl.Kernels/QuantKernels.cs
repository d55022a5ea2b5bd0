using ILGPU;
using ILGPU.Algorithms;
using static Lrl.Kernels.KernelMath;

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
    /// <summary>
    /// 1 when the group-wise GEMVs read each row 8 bytes per lane (<see cref="QuantShape.Vectorizes"/>): input order,
    /// one group per row or power-of-two groups of 8+ columns, rows of whole 8-column chunks (8-bit) or whole 64-column
    /// blocks (4-bit).
    /// </summary>
    public int Vector;
    /// <summary>log2(Group) when the group size is a power of two, else -1.</summary>
    public int GroupShift;

    /// <summary>The shape of a quantized matrix as the kernels take it (<see cref="Vector"/> and <see cref="GroupShift"/> derived).</summary>
    public static QuantShape Create(int bits, int cols, int group, int groups, bool zeros, bool order) => new()
    {
        Cols = cols, Group = group, Groups = groups, HasZeros = zeros ? 1 : 0, HasOrder = order ? 1 : 0,
        Vector = Vectorizes(bits, cols, group, order) ? 1 : 0,
        GroupShift = (group & (group - 1)) == 0 ? System.Numerics.BitOperations.Log2((uint)group) : -1,
    };

    /// <summary>Whether rows of this shape take the 8-bytes-per-lane GEMV (see <see cref="Vector"/>).</summary>
    public static bool Vectorizes(int bits, int cols, int group, bool order) =>
        !order && (group == cols || group >= 8 && (group & (group - 1)) == 0) && (bits == 8 ? cols % 8 == 0 : cols % 64 == 0);
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
        if (s.Vector != 0) return RowQ8Wide(codes, scales, x, row, s);
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

    /// <summary>
    /// <see cref="RowQ8"/> for <see cref="QuantShape.Vector"/> shapes: each lane takes 8 codes per step (one 8-byte load,
    /// a warp 256 contiguous bytes) and their 8 activations (four 8-byte loads); the 8 share a group, so a step adds
    /// its partial sum times the group's scale (a row of one group: the scale once, at the end).
    /// </summary>
    private static float RowQ8Wide(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<float> x, int row, QuantShape s)
    {
        var w8 = codes.Cast<ulong>();
        var x2 = x.Cast<ulong>();
        int chunks = s.Cols >> 3;
        long wb = (long)row * chunks, sb = (long)row * s.Groups;
        float acc = 0;
        for (int c = Warp.LaneIdx; c < chunks; c += Warp.WarpSize)
        {
            ulong v = w8[wb + c];
            uint w0 = (uint)v, w1 = (uint)(v >> 32);
            var xc = x2.SubView((long)c << 2, 4);
            ulong x01 = xc[0], x23 = xc[1], x45 = xc[2], x67 = xc[3];
            float part = Code8(w0, 0) * Lo(x01) + Code8(w0, 8) * Hi(x01) + Code8(w0, 16) * Lo(x23) + Code8(w0, 24) * Hi(x23)
                       + Code8(w1, 0) * Lo(x45) + Code8(w1, 8) * Hi(x45) + Code8(w1, 16) * Lo(x67) + Code8(w1, 24) * Hi(x67);
            acc += s.Groups == 1 ? part : part * KernelMath.HalfToFloat(scales[sb + ((c << 3) >> s.GroupShift)]);
        }
        if (s.Groups == 1) acc *= KernelMath.HalfToFloat(scales[sb]);
        return KernelMath.WarpSum(acc);
    }

    /// <summary>2^23 as float bits: OR-ing an integer below 2^23 into the mantissa gives the float 2^23 + that integer, exactly
    /// (<see cref="Code4"/>: q − z with no int-to-float conversion, the zero point folded into the one subtraction).</summary>
    private const uint Exponent23 = 0x4B000000;
    private const float Two23 = 8388608f;

    /// <summary>
    /// The signed 8-bit code at bit <paramref name="at"/> of <paramref name="w"/> as a float, sign-extended by shifts (two
    /// shifts and a full-rate I2FP per code on sm_90). Not <c>(sbyte)(w >> at)</c>: ILGPU 1.5.3 compiles some of those
    /// narrowing casts to unsigned conversions (see <see cref="MmaGemmKernels"/>; <c>PtxTests</c> guards it).
    /// </summary>
    private static float Code8(uint w, int at) => (int)(w << (24 - at)) >> 24;

    /// <summary>The 4-bit code at bit <paramref name="at"/> of <paramref name="w"/> minus its zero point z, exactly, given <paramref name="z23"/> = 2^23 + z.</summary>
    private static float Code4(uint w, int at, float z23) => Interop.IntAsFloat(((w >> at) & 15u) | Exponent23) - z23;

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
        if (s.Vector != 0) return RowQ4Wide(codes, scales, zeros, x, row, s);
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
    /// <see cref="RowQ4"/> for <see cref="QuantShape.Vector"/> shapes (whole 64-column blocks): each lane takes 8 bytes
    /// per step, bytes 8k .. 8k+7 of a block, whose low nibbles are columns 8k .. 8k+7 and high nibbles columns
    /// 32+8k .. 32+8k+7 (16 codes, a warp 256 contiguous bytes), and their 16 activations (eight 8-byte loads). Each half
    /// lies in one group (power-of-two groups of 8+ columns) and adds s·Σ (q − z)·x, q − z formed exactly by
    /// <see cref="Code4"/> (a shift, two logic ops and one add per code); a row of one group applies its scale once.
    /// </summary>
    private static float RowQ4Wide(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<byte> zeros, ArrayView<float> x, int row, QuantShape s)
    {
        var w8 = codes.Cast<ulong>();
        var x2 = x.Cast<ulong>();
        int chunks = s.Cols >> 4;
        long wb = (long)row * chunks, sb = (long)row * s.Groups;
        float zRow = Two23 + (s.HasZeros != 0 ? zeros[sb] : 8);
        float acc = 0;
        for (int c = Warp.LaneIdx; c < chunks; c += Warp.WarpSize)
        {
            ulong v = w8[wb + c];
            uint w0 = (uint)v, w1 = (uint)(v >> 32);
            int col = ((c >> 2) << 6) + ((c & 3) << 3);
            var xl = x2.SubView(col >> 1, 20);
            ulong l0 = xl[0], l1 = xl[1], l2 = xl[2], l3 = xl[3], h0 = xl[16], h1 = xl[17], h2 = xl[18], h3 = xl[19];
            long gl = 0, gh = 0;
            float zl = zRow, zh = zRow;
            if (s.Groups != 1)
            {
                gl = sb + (col >> s.GroupShift); gh = sb + ((col + 32) >> s.GroupShift);
                zl = Two23 + (s.HasZeros != 0 ? zeros[gl] : 8); zh = Two23 + (s.HasZeros != 0 ? zeros[gh] : 8);
            }
            float pl = Code4(w0, 0, zl) * Lo(l0) + Code4(w0, 8, zl) * Hi(l0) + Code4(w0, 16, zl) * Lo(l1) + Code4(w0, 24, zl) * Hi(l1)
                     + Code4(w1, 0, zl) * Lo(l2) + Code4(w1, 8, zl) * Hi(l2) + Code4(w1, 16, zl) * Lo(l3) + Code4(w1, 24, zl) * Hi(l3);
            float ph = Code4(w0, 4, zh) * Lo(h0) + Code4(w0, 12, zh) * Hi(h0) + Code4(w0, 20, zh) * Lo(h1) + Code4(w0, 28, zh) * Hi(h1)
                     + Code4(w1, 4, zh) * Lo(h2) + Code4(w1, 12, zh) * Hi(h2) + Code4(w1, 20, zh) * Lo(h3) + Code4(w1, 28, zh) * Hi(h3);
            acc += s.Groups == 1 ? pl + ph : pl * KernelMath.HalfToFloat(scales[gl]) + ph * KernelMath.HalfToFloat(scales[gh]);
        }
        if (s.Groups == 1) acc *= KernelMath.HalfToFloat(scales[sb]);
        return KernelMath.WarpSum(acc);
    }

    /// <summary>
    /// Fused MLP front half for int8 weights in input order: y[o] = silu(Gate[o]·x)·(Up[o]·x), each row by
    /// <see cref="RowQ8"/> (the group-wise row code, 8 bytes per lane where the shape allows). One warp per output row,
    /// grid as <see cref="GemvQ8"/>.
    /// </summary>
    public static void GemvSwiGluQ8(Q8Reader gate, Q8Reader up, ArrayView<float> x, ArrayView<float> y, int outF)
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long xr) * warps + Warp.WarpIdx;
        if (row >= outF) return;
        var xv = x.SubView(xr * gate.Shape.Cols, gate.Shape.Cols);
        float g = RowQ8(gate.Codes, gate.Scales, xv, row, gate.Shape);
        float u = RowQ8(up.Codes, up.Scales, xv, row, up.Shape);
        if (Warp.LaneIdx == 0) y[xr * outF + row] = g * u / (1f + XMath.Exp(-g));
    }

    /// <summary>The int4 <see cref="GemvSwiGluQ8"/>, each row by <see cref="RowQ4"/>.</summary>
    public static void GemvSwiGluQ4(Q4Reader gate, Q4Reader up, ArrayView<float> x, ArrayView<float> y, int outF)
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long xr) * warps + Warp.WarpIdx;
        if (row >= outF) return;
        var xv = x.SubView(xr * gate.Shape.Cols, gate.Shape.Cols);
        float g = RowQ4(gate.Codes, gate.Scales, gate.Zeros, xv, row, gate.Shape);
        float u = RowQ4(up.Codes, up.Scales, up.Zeros, xv, row, up.Shape);
        if (Warp.LaneIdx == 0) y[xr * outF + row] = g * u / (1f + XMath.Exp(-g));
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
