using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>
/// The unmerged LoRA update y += scale·(x·Aᵀ)·Bᵀ of rows row0 .. row0+rows-1. Decode and small batches take one launch,
/// <see cref="Fused"/>; many rows take two, <see cref="Down"/> (one warp per (row, rank) dot product over the input,
/// lanes striding it, warp-shuffle sum) and <see cref="Up"/> (one thread per output element; B held transposed
/// [rank, out] so a warp reads consecutive columns).
/// </summary>
public static class LoraKernels
{
    /// <summary>Largest rank <see cref="Fused"/> takes (its t lives in shared memory).</summary>
    public const int FusedMaxRank = 128;
    /// <summary>Output columns each group of <see cref="Fused"/> adds.</summary>
    public const int FusedColumns = 1024;

    /// <summary>
    /// One launch for the whole update: group g takes row r = g / blocks and output columns [c·1024, (c+1)·1024) with
    /// c = g mod blocks. Its warps compute t = scale·x_r·Aᵀ into shared memory (warp w takes ranks w, w + warps, ...;
    /// lanes stride the input, a warp-shuffle sum), then, after a barrier, each thread adds Σ_j t[j]·Bᵀ[j, o] to its
    /// columns. A group recomputes the row's t (rank·in multiply-adds, A read from L2): for one decode row that is less
    /// than a launch costs; past a few rows the two-launch form reads less.
    /// </summary>
    public static void Fused(ArrayView<float> x, ArrayView<float> a, ArrayView<float> bt, ArrayView<float> y,
                             int row0, int blocks, int rank, int inF, int outF, float scale)
    {
        var t = SharedMemory.Allocate<float>(FusedMaxRank);
        int r = Grid.IdxX / blocks, c = Grid.IdxX - r * blocks;
        int warps = Group.DimX / Warp.WarpSize;
        long xb = (long)(row0 + r) * inF;
        for (int j = Warp.WarpIdx; j < rank; j += warps) // uniform per warp
        {
            long ab = (long)j * inF;
            float acc = 0;
            for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize) acc += x[xb + i] * a[ab + i];
            acc = KernelMath.WarpSum(acc);
            if (Warp.LaneIdx == 0) t[j] = scale * acc;
        }
        Group.Barrier();
        long yb = (long)(row0 + r) * outF;
        int end = XMath.Min(outF, (c + 1) * FusedColumns);
        for (int o = c * FusedColumns + Group.IdxX; o < end; o += Group.DimX)
        {
            float acc = 0;
            for (int j = 0; j < rank; j++) acc += t[j] * bt[(long)j * outF + o];
            y[yb + o] += acc;
        }
    }

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

    /// <summary>
    /// An adapted embedding: y[(row0 + r)·outF + o] += scale·Σ_j A[j·vocab + tok_r]·Bt[j·outF + o], one thread per
    /// (r, o); tok_r = ids[r], or <paramref name="single"/> for one row (the id as an argument, nothing uploaded).
    /// </summary>
    public static void EmbedUp(Index1D index, ArrayView<int> ids, int single, ArrayView<float> a, ArrayView<float> bt, ArrayView<float> y,
                               int row0, int rows, int rank, int vocab, int outF, float scale)
    {
        if (index >= rows * outF) return;
        int r = index / outF, o = index - r * outF;
        int tok = rows == 1 ? single : ids[r];
        float acc = 0;
        for (int j = 0; j < rank; j++) acc += a[(long)j * vocab + tok] * bt[(long)j * outF + o];
        y[(long)(row0 + r) * outF + o] += scale * acc;
    }
}
