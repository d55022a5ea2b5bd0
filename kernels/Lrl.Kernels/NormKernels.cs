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
        AddRmsNormRow(residual, delta, w, y, n, eps, (long)Grid.IdxX * n, scratch);
    }

    /// <summary><see cref="AddRmsNorm"/> of the row at offset <paramref name="b"/>, by the calling group.</summary>
    internal static void AddRmsNormRow(ArrayView<float> residual, ArrayView<float> delta, ArrayView<float> w, ArrayView<float> y,
                                       int n, float eps, long b, ArrayView<float> scratch)
    {
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

    /// <summary>
    /// The end of a product whose output row <paramref name="r"/> ([n]) is the residual's delta: every group publishes
    /// its outputs (a device-level fence) and takes a ticket for the row; the group that takes the row's last one runs
    /// <see cref="AddRmsNorm"/>'s arithmetic on it (the same bits as that launch, at the same group size) and resets the
    /// ticket. Every thread of every group must call it (it holds group barriers).
    /// </summary>
    internal static void AddRmsNormByLastGroup(long r, ArrayView<float> delta, int n, AddNormArgs a, ArrayView<float> scratch, ArrayView<int> last) =>
        AddRmsNormByLastGroup(r, delta, n, a, scratch, last, Grid.DimY > 1 ? Grid.DimY : Grid.DimX); // see KernelMath.RowsBlock

    /// <summary><see cref="AddRmsNormByLastGroup(long, ArrayView{float}, int, AddNormArgs, ArrayView{float}, ArrayView{int})"/> for a launch whose rows each take <paramref name="groupsPerRow"/> groups.</summary>
    internal static void AddRmsNormByLastGroup(long r, ArrayView<float> delta, int n, AddNormArgs a, ArrayView<float> scratch, ArrayView<int> last, int groupsPerRow)
    {
        if (!KernelMath.LastToFinish(a.Tickets, r, groupsPerRow, last)) return; // uniform per group
        AddRmsNormRow(a.Residual, delta, a.Weight, a.Output, n, a.Eps, r * n, scratch);
        if (Group.IdxX == 0) a.Tickets[r] = 0;
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

/// <summary>
/// A residual add and RMSNorm fused after a product (<see cref="NormKernels.AddRmsNormByLastGroup"/>): residual += the
/// product's output row, Output = RmsNorm(residual)·Weight; Tickets: one per activation row, zero between launches.
/// </summary>
public struct AddNormArgs
{
    public ArrayView<float> Residual, Weight, Output;
    public ArrayView<int> Tickets;
    public float Eps;
}
