using ILGPU;

namespace Lrl.Kernels;

/// <summary>
/// Prefill matrix products y[r, o] = Σ_i x[r, i]·W[o, i]: each group computes a tile of <see cref="TileRows"/> tokens ×
/// Group.DimX outputs. Per K step of <see cref="TileK"/>, the weight tile (converted to f32 once) and the activation tile
/// are staged in shared memory; every weight element loaded is reused for all the tile's tokens.
/// Grid = ceil(outF / Group.DimX) · ceil(rows / TileRows), output blocks fastest.
/// </summary>
public static class GemmKernels
{
    public const int TileRows = 8;
    public const int TileK = 32;
    private const int Pitch = TileK + 1; // padding: conflict-free column reads

    public static void Gemm<TW>(TW w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias,
                                int rows, int outF, int inF)
        where TW : struct, IWeightReader
    {
        var ws = SharedMemory.Allocate<float>(KernelMath.MaxGroup * Pitch);
        var xs = SharedMemory.Allocate<float>(TileRows * TileK);
        int t = Group.IdxX, g = Group.DimX;
        int outBlocks = (outF + g - 1) / g;
        int o0 = (Grid.IdxX % outBlocks) * g;
        int r0 = (Grid.IdxX / outBlocks) * TileRows;
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        for (int k0 = 0; k0 < inF; k0 += TileK)
        {
            for (int e = t; e < g * TileK; e += g)
            {
                int rr = e / TileK, cc = e % TileK;
                int o = o0 + rr, k = k0 + cc;
                ws[rr * Pitch + cc] = o < outF && k < inF ? w.Get((long)o * inF + k) : 0f;
            }
            for (int e = t; e < TileRows * TileK; e += g)
            {
                int rr = e / TileK, cc = e % TileK;
                int r = r0 + rr, k = k0 + cc;
                xs[e] = r < rows && k < inF ? x[(long)r * inF + k] : 0f;
            }
            Group.Barrier();
            int wb = t * Pitch;
            for (int kk = 0; kk < TileK; kk++)
            {
                float wv = ws[wb + kk];
                a0 += xs[kk] * wv;
                a1 += xs[TileK + kk] * wv;
                a2 += xs[2 * TileK + kk] * wv;
                a3 += xs[3 * TileK + kk] * wv;
                a4 += xs[4 * TileK + kk] * wv;
                a5 += xs[5 * TileK + kk] * wv;
                a6 += xs[6 * TileK + kk] * wv;
                a7 += xs[7 * TileK + kk] * wv;
            }
            Group.Barrier();
        }
        int oo = o0 + t;
        if (oo >= outF) return;
        float bv = hasBias != 0 ? bias[oo] : 0f;
        if (r0 < rows) y[(long)r0 * outF + oo] = a0 + bv;
        if (r0 + 1 < rows) y[(long)(r0 + 1) * outF + oo] = a1 + bv;
        if (r0 + 2 < rows) y[(long)(r0 + 2) * outF + oo] = a2 + bv;
        if (r0 + 3 < rows) y[(long)(r0 + 3) * outF + oo] = a3 + bv;
        if (r0 + 4 < rows) y[(long)(r0 + 4) * outF + oo] = a4 + bv;
        if (r0 + 5 < rows) y[(long)(r0 + 5) * outF + oo] = a5 + bv;
        if (r0 + 6 < rows) y[(long)(r0 + 6) * outF + oo] = a6 + bv;
        if (r0 + 7 < rows) y[(long)(r0 + 7) * outF + oo] = a7 + bv;
    }
}
