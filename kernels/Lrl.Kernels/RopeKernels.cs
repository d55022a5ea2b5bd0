using ILGPU;

namespace Lrl.Kernels;

/// <summary>Rotary position embedding, Hugging Face rotate_half pairing (i, i + rotaryDim/2).</summary>
public static class RopeKernels
{
    /// <summary>
    /// In place on x [rows, heads·headDim]; one thread per (row, head, pair). cos/sin come from tables [position, half]
    /// that the host fills once from the RopeTable's (llama3/yarn-adjusted) inv_freq as (float)cos((double)pos·inv_freq),
    /// exactly as the CPU backend computes them, so no device trigonometry is involved.
    /// </summary>
    public static void Rope(Index1D idx, ArrayView<float> x, ArrayView<float> cos, ArrayView<float> sin,
                            int half, int heads, int headDim, int pos0, int total)
    {
        if (idx >= total) return;
        int i = idx % half;
        int rh = idx / half;
        int r = rh / heads;
        long b = (long)rh * headDim;
        long t = (long)(pos0 + r) * half + i;
        float c = cos[t], s = sin[t];
        float a0 = x[b + i], a1 = x[b + i + half];
        x[b + i] = a0 * c - a1 * s;
        x[b + i + half] = a1 * c + a0 * s;
    }
}
