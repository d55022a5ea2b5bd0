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
        float g = gate[i];
        y[i] = g * up[i] / (1f + XMath.Exp(-g));
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
