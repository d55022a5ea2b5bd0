using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>RMSNorm, fused residual-add + RMSNorm, and LayerNorm: one group per row, shared-memory reductions.</summary>
public static class NormKernels
{
    /// <summary>y[r] = x[r] · rsqrt(mean(x[r]²) + eps) · w. Grid = rows.</summary>
    public static void RmsNorm(ArrayView<float> x, ArrayView<float> w, ArrayView<float> y, int n, float eps)
    {
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        long b = (long)Grid.IdxX * n;
        float ss = 0;
        for (int i = Group.IdxX; i < n; i += Group.DimX) { float v = x[b + i]; ss += v * v; }
        ss = KernelMath.GroupSum(ss, scratch);
        float inv = 1f / XMath.Sqrt(ss / n + eps);
        for (int i = Group.IdxX; i < n; i += Group.DimX) y[b + i] = x[b + i] * inv * w[i];
    }

    /// <summary>residual[r] += delta[r]; y[r] = RmsNorm(residual[r]). Grid = rows.</summary>
    public static void AddRmsNorm(ArrayView<float> residual, ArrayView<float> delta, ArrayView<float> w, ArrayView<float> y, int n, float eps)
    {
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        long b = (long)Grid.IdxX * n;
        float ss = 0;
        for (int i = Group.IdxX; i < n; i += Group.DimX)
        {
            float v = residual[b + i] + delta[b + i];
            residual[b + i] = v;
            ss += v * v;
        }
        ss = KernelMath.GroupSum(ss, scratch);
        float inv = 1f / XMath.Sqrt(ss / n + eps);
        // Each thread re-reads only the elements it wrote itself: no barrier needed.
        for (int i = Group.IdxX; i < n; i += Group.DimX) y[b + i] = residual[b + i] * inv * w[i];
    }

    /// <summary>y[r] = (x[r] − mean) / sqrt(var + eps) · w + bias (two-pass variance). Grid = rows.</summary>
    public static void LayerNorm(ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias, ArrayView<float> y, int n, float eps)
    {
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        long b = (long)Grid.IdxX * n;
        float s = 0;
        for (int i = Group.IdxX; i < n; i += Group.DimX) s += x[b + i];
        float mean = KernelMath.GroupSum(s, scratch) / n;
        float ss = 0;
        for (int i = Group.IdxX; i < n; i += Group.DimX) { float d = x[b + i] - mean; ss += d * d; }
        float inv = 1f / XMath.Sqrt(KernelMath.GroupSum(ss, scratch) / n + eps);
        for (int i = Group.IdxX; i < n; i += Group.DimX) y[b + i] = (x[b + i] - mean) * inv * w[i] + bias[i];
    }
}
