using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>Elementwise ops: SwiGLU, GELU (tanh), Add. One thread per element.</summary>
public static class ActivationKernels
{
    /// <summary>y[i] = silu(gate[i]) · up[i]; y may alias gate or up.</summary>
    public static void SwiGlu(Index1D i, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> y, int n)
    {
        if (i >= n) return;
        y[i] = SwiGluOf(gate[i], up[i]);
    }

    /// <summary>silu(g)·u, as <see cref="SwiGlu"/> computes it.</summary>
    internal static float SwiGluOf(float g, float u) => g * u / (1f + XMath.Exp(-g));

    /// <summary>
    /// <see cref="SwiGlu"/> in place (gate = silu(gate)·up over n elements) by the last group of a launch to finish (a
    /// device-level fence and a ticket per group; the last resets it): the end of a launch that wrote gate and up. Every
    /// thread of every group must call it (it holds group barriers).
    /// </summary>
    internal static void SwiGluByLastGroup(ArrayView<float> gate, ArrayView<float> up, int n, ArrayView<int> tickets, ArrayView<int> last)
    {
        if (!KernelMath.LastToFinish(tickets, 0, Grid.DimX * Grid.DimY, last)) return; // uniform per group
        for (int i = Group.IdxX; i < n; i += Group.DimX) gate[i] = SwiGluOf(gate[i], up[i]);
        if (Group.IdxX == 0) tickets[0] = 0;
    }

    /// <summary>
    /// In place x[i] = 0.5·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³), computed as x / (1 + e^(−2u)) (the same
    /// function without the cancellation of 1 + tanh(u) for negative x).
    /// </summary>
    public static void Gelu(Index1D i, ArrayView<float> x, int n)
    {
        if (i >= n) return;
        float a = x[i];
        float u = 0.7978845608028654f * (a + 0.044715f * a * a * a);
        x[i] = a / (1f + XMath.Exp(-2f * u));
    }

    /// <summary>a[i] += b[i].</summary>
    public static void Add(Index1D i, ArrayView<float> a, ArrayView<float> b, int n)
    {
        if (i >= n) return;
        a[i] += b[i];
    }
}
