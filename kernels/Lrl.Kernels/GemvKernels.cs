using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>
/// Batch-1 matrix-vector products: one warp per output row, lanes striding the row (coalesced), warp-shuffle reduction.
/// Weights are read in their stored dtype and converted in the kernel. Grid = ceil(outF / warpsPerGroup).
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
        long b = (long)row * inF;
        float acc = 0;
        for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize) acc += w.Get(b + i) * x[i];
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
        long b = (long)row * inF;
        float g = 0, u = 0;
        for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize)
        {
            float xv = x[i];
            g += gate.Get(b + i) * xv;
            u += up.Get(b + i) * xv;
        }
        g = KernelMath.WarpSum(g);
        u = KernelMath.WarpSum(u);
        if (Warp.LaneIdx == 0) y[row] = g * u / (1f + XMath.Exp(-g));
    }
}
