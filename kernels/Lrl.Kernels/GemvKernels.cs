using ILGPU;
using ILGPU.Algorithms;
using static Lrl.Kernels.KernelMath;

namespace Lrl.Kernels;

/// <summary>
/// Batch-1 matrix-vector products: one warp per output row, lanes striding the row (coalesced), warp-shuffle reduction.
/// Weights are read in their stored dtype and converted in the kernel; when the row length is a multiple of 4 each lane
/// loads 4 elements at once (8 bytes for f16/bf16, so a warp reads 256 contiguous bytes per step).
/// Grid = ceil(outF / warpsPerGroup) for one row; for several rows (x at row·inF, y at row·outF) rows × max(2, blocks)
/// (<see cref="KernelMath.RowsBlock"/>), each row computing exactly what it computes alone (a speculative verification
/// pass and batch-invariant steps, <c>IBackend.ExactRows</c>).
/// </summary>
public static class GemvKernels
{
    /// <summary>y[o] = Σ_i W[o, i]·x[i] (+ bias[o] when hasBias ≠ 0).</summary>
    public static void Gemv<TW>(TW w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias, int outF, int inF)
        where TW : struct, IWeightReader
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long r) * warps + Warp.WarpIdx;
        if (row >= outF) return; // uniform per warp
        float acc = RowDot(w, x.SubView(r * inF, inF), row, inF);
        if (Warp.LaneIdx == 0) y[r * outF + row] = hasBias != 0 ? acc + bias[row] : acc;
    }

    /// <summary>
    /// y = W·x for one decode row (or exact rows), then residual += y and out = RmsNorm(residual)·w by the last group
    /// of each row (<see cref="NormKernels.AddRmsNormByLastGroup"/>): the product and the residual block's norm in one
    /// launch, each as its own launch computes it.
    /// </summary>
    public static void GemvAddRmsNorm<TW>(TW w, ArrayView<float> x, ArrayView<float> y, int outF, int inF, AddNormArgs a)
        where TW : struct, IWeightReader
    {
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        var last = SharedMemory.Allocate<int>(1);
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long r) * warps + Warp.WarpIdx;
        if (row < outF) // uniform per warp; no return: every warp takes part in the norm's barriers
        {
            float acc = RowDot(w, x.SubView(r * inF, inF), row, inF);
            if (Warp.LaneIdx == 0) y[r * outF + row] = acc;
        }
        NormKernels.AddRmsNormByLastGroup(r, y, outF, a, scratch, last);
    }

    /// <summary>
    /// A draft head's residual block in one launch (Medusa: h + SiLU(W h + b)): y[row] = x[row] + silu(W[row]·x + b[row])
    /// for a square W; one warp per row as <see cref="Gemv{TW}"/>. y must not alias x (other warps still read x).
    /// </summary>
    public static void GemvResidualSilu<TW>(TW w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int n)
        where TW : struct, IWeightReader
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = Grid.IdxX * warps + Warp.WarpIdx;
        if (row >= n) return; // uniform per warp
        float z = RowDot(w, x, row, n) + bias[row];
        if (Warp.LaneIdx == 0) y[row] = x[row] + z / (1f + XMath.Exp(-z));
    }

    /// <summary>
    /// The warp's dot product of weight row <paramref name="row"/> with x, summed over the warp (every lane gets it):
    /// lanes stride the row, 4 elements per load when the row length allows.
    /// </summary>
    private static float RowDot<TW>(TW w, ArrayView<float> x, int row, int inF) where TW : struct, IWeightReader
    {
        float acc = 0;
        if ((inF & 3) == 0)
        {
            int quads = inF >> 2;
            long qb = (long)row * quads;
            var x2 = x.Cast<ulong>(); // the activations as float pairs: two 8-byte loads per quad (rows of 4k floats start 16-byte aligned)
            int q = Warp.LaneIdx, ws = Warp.WarpSize;
            // Two quads per step, both loaded before either is used (ptxas left the one-quad loop of the O2 compile
            // un-unrolled: one weight load in flight per lane); the sum's order is the one-quad loop's.
            for (; q + ws < quads; q += 2 * ws)
            {
                w.Get4(qb + q, out float w0, out float w1, out float w2, out float w3);
                w.Get4(qb + q + ws, out float v0, out float v1, out float v2, out float v3);
                ulong a = x2[2 * q], b = x2[2 * q + 1], c = x2[2 * (q + ws)], d = x2[2 * (q + ws) + 1];
                acc += w0 * Lo(a) + w1 * Hi(a) + w2 * Lo(b) + w3 * Hi(b);
                acc += v0 * Lo(c) + v1 * Hi(c) + v2 * Lo(d) + v3 * Hi(d);
            }
            if (q < quads)
            {
                w.Get4(qb + q, out float w0, out float w1, out float w2, out float w3);
                ulong a = x2[2 * q], b = x2[2 * q + 1];
                acc += w0 * Lo(a) + w1 * Hi(a) + w2 * Lo(b) + w3 * Hi(b);
            }
        }
        else
        {
            long b = (long)row * inF;
            for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize) acc += w.Get(b + i) * x[i];
        }
        return KernelMath.WarpSum(acc);
    }

    /// <summary>Fused MLP front half at batch 1: y[o] = silu(Gate[o]·x) · (Up[o]·x); x is read once for both rows.</summary>
    public static void GemvSwiGlu<TW>(TW gate, TW up, ArrayView<float> x, ArrayView<float> y, int outF, int inF)
        where TW : struct, IWeightReader
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out long r) * warps + Warp.WarpIdx;
        if (row >= outF) return;
        x = x.SubView(r * inF, inF);
        y = y.SubView(r * outF, outF);
        float g = 0, u = 0;
        if ((inF & 3) == 0)
        {
            int quads = inF >> 2;
            long qb = (long)row * quads;
            var xq = x.Cast<ulong>();
            for (int q = Warp.LaneIdx; q < quads; q += Warp.WarpSize)
            {
                ulong a = xq[2 * q], b = xq[2 * q + 1];
                float x0 = Lo(a), x1 = Hi(a), x2 = Lo(b), x3 = Hi(b);
                gate.Get4(qb + q, out float g0, out float g1, out float g2, out float g3);
                up.Get4(qb + q, out float u0, out float u1, out float u2, out float u3);
                g += g0 * x0 + g1 * x1 + g2 * x2 + g3 * x3;
                u += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3;
            }
        }
        else
        {
            long b = (long)row * inF;
            for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize)
            {
                float xv = x[i];
                g += gate.Get(b + i) * xv;
                u += up.Get(b + i) * xv;
            }
        }
        g = KernelMath.WarpSum(g);
        u = KernelMath.WarpSum(u);
        if (Warp.LaneIdx == 0) y[row] = g * u / (1f + XMath.Exp(-g));
    }

    /// <summary>
    /// Q/K/V at batch 1 in one launch: one warp per output row of the three matrices together (rows of w0, then w1,
    /// then w2), each reading x as <see cref="Gemv{TW}"/> does. Grid = ceil((out0 + out1 + out2) / warpsPerGroup). With
    /// <paramref name="rope"/>'s tickets, the launch's last group then rotates Q and K and writes the K/V cache rows
    /// (<see cref="RopeKernels.RopeQkvCacheByLastGroup"/>).
    /// </summary>
    public static void Gemv3<TW>(TW w0, TW w1, TW w2, ArrayView<float> x, ArrayView<float> y0, ArrayView<float> y1, ArrayView<float> y2,
                                 ArrayView<float> b0, ArrayView<float> b1, ArrayView<float> b2, Gemv3Shape s, RopeArgs rope)
        where TW : struct, IWeightReader
    {
        var last = SharedMemory.Allocate<int>(1);
        if (Gemv3Slot(s, out long xr, out int m, out int r)) // uniform per warp; no return: the RoPE tail holds barriers
        {
            var w = m == 0 ? w0 : m == 1 ? w1 : w2;
            float acc = RowDot(w, x.SubView(xr * s.InF, s.InF), r, s.InF);
            if (Warp.LaneIdx == 0) Gemv3Store(acc, m, r, xr, y0, y1, y2, b0, b1, b2, s);
        }
        RopeKernels.RopeQkvCacheByLastGroup(y0, y1, y2, rope, last);
    }

    /// <summary>The warp's place in a three-matrix launch: activation row xr, matrix m (0-2), its row r; false past the end.</summary>
    internal static bool Gemv3Slot(Gemv3Shape s, out long xr, out int m, out int r)
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = KernelMath.RowsBlock(out xr) * warps + Warp.WarpIdx;
        m = row < s.Out0 ? 0 : row < s.Out0 + s.Out1 ? 1 : 2;
        r = m == 0 ? row : m == 1 ? row - s.Out0 : row - s.Out0 - s.Out1;
        return row < s.Out0 + s.Out1 + s.Out2;
    }

    /// <summary>Writes row <paramref name="r"/> of matrix <paramref name="m"/> of a three-matrix launch (its bias added when it has one).</summary>
    internal static void Gemv3Store(float acc, int m, int r, long xr, ArrayView<float> y0, ArrayView<float> y1, ArrayView<float> y2,
                                    ArrayView<float> b0, ArrayView<float> b1, ArrayView<float> b2, Gemv3Shape s)
    {
        if (m == 0) y0[xr * s.Out0 + r] = (s.HasBias & 1) != 0 ? acc + b0[r] : acc;
        else if (m == 1) y1[xr * s.Out1 + r] = (s.HasBias & 2) != 0 ? acc + b1[r] : acc;
        else y2[xr * s.Out2 + r] = (s.HasBias & 4) != 0 ? acc + b2[r] : acc;
    }
}

/// <summary>Shape of a <see cref="GemvKernels.Gemv3{TW}"/> launch: rows of each matrix, columns, and which have a bias (bits 0-2).</summary>
public struct Gemv3Shape
{
    public int Out0, Out1, Out2, InF, HasBias;
}
