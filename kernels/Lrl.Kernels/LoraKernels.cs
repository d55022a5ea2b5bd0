using ILGPU;

namespace Lrl.Kernels;

/// <summary>
/// The unmerged LoRA update y += scale·(x·Aᵀ)·Bᵀ of rows row0 .. row0+rows-1, in two launches: <see cref="Down"/>
/// (one warp per (row, rank) dot product over the input, lanes striding it, warp-shuffle sum) and <see cref="Up"/>
/// (one thread per output element; B held transposed [rank, out] so a warp reads consecutive columns).
/// </summary>
public static class LoraKernels
{
    /// <summary>t[r·rank + j] = scale·Σ_i x[(row0 + r)·inF + i]·A[j·inF + i]. Grid = ceil(rows·rank / warpsPerGroup).</summary>
    public static void Down(ArrayView<float> x, ArrayView<float> a, ArrayView<float> t, int row0, int rows, int rank, int inF, float scale)
    {
        int warps = Group.DimX / Warp.WarpSize;
        int item = Grid.IdxX * warps + Warp.WarpIdx;
        if (item >= rows * rank) return; // uniform per warp
        int r = item / rank, j = item - r * rank;
        long xb = (long)(row0 + r) * inF, ab = (long)j * inF;
        float acc = 0;
        for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize) acc += x[xb + i] * a[ab + i];
        acc = KernelMath.WarpSum(acc);
        if (Warp.LaneIdx == 0) t[item] = scale * acc;
    }

    /// <summary>y[(row0 + r)·outF + o] += Σ_j t[r·rank + j]·Bt[j·outF + o], one thread per (r, o).</summary>
    public static void Up(Index1D index, ArrayView<float> t, ArrayView<float> bt, ArrayView<float> y, int row0, int rows, int rank, int outF)
    {
        if (index >= rows * outF) return;
        int r = index / outF, o = index - r * outF;
        float acc = 0;
        for (int j = 0; j < rank; j++) acc += t[r * rank + j] * bt[(long)j * outF + o];
        y[(long)(row0 + r) * outF + o] += acc;
    }
}
