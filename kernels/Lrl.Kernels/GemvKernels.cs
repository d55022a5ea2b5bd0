using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>
/// Batch-1 matrix-vector products: one warp per output row, lanes striding the row (coalesced), warp-shuffle reduction.
/// Weights are read in their stored dtype and converted in the kernel; when the row length is a multiple of 4 each lane
/// loads 4 elements at once (8 bytes for f16/bf16, so a warp reads 256 contiguous bytes per step).
/// Grid = ceil(outF / warpsPerGroup).
/// </summary>
public static class GemvKernels
{
    /// <summary>y[o] = Σ_i W[o, i]·x[i] (+ bias[o] when hasBias ≠ 0).</summary>
    public static void Gemv<TW>(TW w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias, int outF, int inF)
        where TW : struct, IWeightReader
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = Grid.IdxX * warps + Warp.WarpIdx;
        if (row >= outF) return; // uniform per warp
        float acc = 0;
        if ((inF & 3) == 0)
        {
            int quads = inF >> 2;
            long qb = (long)row * quads;
            for (int q = Warp.LaneIdx; q < quads; q += Warp.WarpSize)
            {
                w.Get4(qb + q, out float w0, out float w1, out float w2, out float w3);
                int i = q << 2;
                acc += w0 * x[i] + w1 * x[i + 1] + w2 * x[i + 2] + w3 * x[i + 3];
            }
        }
        else
        {
            long b = (long)row * inF;
            for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize) acc += w.Get(b + i) * x[i];
        }
        acc = KernelMath.WarpSum(acc);
        if (Warp.LaneIdx == 0) y[row] = hasBias != 0 ? acc + bias[row] : acc;
    }

    /// <summary>Fused MLP front half at batch 1: y[o] = silu(Gate[o]·x) · (Up[o]·x); x is read once for both rows.</summary>
    public static void GemvSwiGlu<TW>(TW gate, TW up, ArrayView<float> x, ArrayView<float> y, int outF, int inF)
        where TW : struct, IWeightReader
    {
        int warps = Group.DimX / Warp.WarpSize;
        int row = Grid.IdxX * warps + Warp.WarpIdx;
        if (row >= outF) return;
        float g = 0, u = 0;
        if ((inF & 3) == 0)
        {
            int quads = inF >> 2;
            long qb = (long)row * quads;
            for (int q = Warp.LaneIdx; q < quads; q += Warp.WarpSize)
            {
                int i = q << 2;
                float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
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
}
