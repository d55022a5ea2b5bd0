using ILGPU;

namespace Lrl.Kernels;

/// <summary>Embedding gather: one group per token row.</summary>
public static class EmbedKernels
{
    /// <summary>
    /// x[r, :] = table[token_r, :]. Grid = rows. With <paramref name="tokens"/> empty, the single row uses
    /// <paramref name="singleToken"/> (batch-1 decode passes the id as an argument: no upload).
    /// </summary>
    public static void Embed<TW>(TW table, ArrayView<int> tokens, int singleToken, ArrayView<float> x, int dim)
        where TW : struct, IWeightReader
    {
        int r = Grid.IdxX;
        int tok = tokens.Length == 0 ? singleToken : tokens[r];
        long src = (long)tok * dim, dst = (long)r * dim;
        for (int i = Group.IdxX; i < dim; i += Group.DimX) x[dst + i] = table.Get(src + i);
    }
}
