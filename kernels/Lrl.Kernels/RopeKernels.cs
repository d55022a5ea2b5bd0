using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>Rotary position embedding, Hugging Face rotate_half pairing (i, i + rotaryDim/2).</summary>
public static class RopeKernels
{
    /// <summary>
    /// In place on x [rows, heads·headDim]; one thread per (row, head, pair). The angle and its cos/sin are computed
    /// in double (positions × inv_freq loses precision in f32 at long contexts), the rotation in f32.
    /// invFreq is the llama3/yarn-adjusted table from RopeTable.
    /// </summary>
    public static void Rope(Index1D idx, ArrayView<float> x, ArrayView<float> invFreq, int heads, int headDim, int pos0, int total)
    {
        if (idx >= total) return;
        int half = (int)invFreq.Length;
        int i = idx % half;
        int rh = idx / half;
        int r = rh / heads;
        long b = (long)rh * headDim;
        double ang = (double)(pos0 + r) * invFreq[i];
        float c = (float)XMath.Cos(ang), s = (float)XMath.Sin(ang);
        float a0 = x[b + i], a1 = x[b + i + half];
        x[b + i] = a0 * c - a1 * s;
        x[b + i + half] = a1 * c + a0 * s;
    }
}
