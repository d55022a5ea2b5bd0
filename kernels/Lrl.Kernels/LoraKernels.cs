using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>
/// How a LoRA matrix (A [rank, in], or B held transposed [rank, out]) is held on the device: element i of the matrix
/// is <see cref="Value"/>(i)·<see cref="RowScale"/>(j) for its rank row j. Kernels are generic over it (a struct), so
/// ILGPU compiles one specialized kernel per storage.
/// </summary>
public interface ILoraMatrix
{
    /// <summary>Element <paramref name="i"/> before its row's scale.</summary>
    float Value(long i);

    /// <summary>The scale of rank row <paramref name="j"/> (1 for float storage).</summary>
    float RowScale(int j);
}

/// <summary>f32 values.</summary>
public struct LoraF32 : ILoraMatrix
{
    public ArrayView<float> Data;
    public LoraF32(ArrayView<float> data) => Data = data;
    public readonly float Value(long i) => Data[i];
    public readonly float RowScale(int j) => 1f;
}

/// <summary>bf16 values as raw ushort bits (adapters stored in bf16: half the bytes of f32, no rounding).</summary>
public struct LoraBF16 : ILoraMatrix
{
    public ArrayView<ushort> Data;
    public LoraBF16(ArrayView<ushort> data) => Data = data;
    public readonly float Value(long i) => KernelMath.BF16ToFloat(Data[i]);
    public readonly float RowScale(int j) => 1f;
}

/// <summary>
/// Signed int8 codes with one f32 scale per rank row (Lrl.LoraInt8's grid: a quarter of the bytes of f32). The codes
/// are read as bytes and sign-extended by shifts (ILGPU 1.5.3 compiles some narrowing casts to unsigned conversions;
/// PtxTests guards every Q8 kernel).
/// </summary>
public struct LoraQ8 : ILoraMatrix
{
    public ArrayView<byte> Codes;
    public ArrayView<float> Scales;
    public LoraQ8(ArrayView<byte> codes, ArrayView<float> scales) { Codes = codes; Scales = scales; }
    public readonly float Value(long i) => ((int)((uint)Codes[i] << 24)) >> 24;
    public readonly float RowScale(int j) => Scales[j];
}

/// <summary>
/// The unmerged LoRA update y += scale·(x·Aᵀ)·Bᵀ of rows row0 .. row0+rows-1, over A and Bᵀ held as
/// <typeparamref name="TL"/>. Decode and small batches take one launch, <see cref="Fused{TL}"/>; many rows take two,
/// <see cref="Down{TL}"/> (one warp per (row, rank) dot product over the input, lanes striding it, warp-shuffle sum) and
/// <see cref="Up{TL}"/> (one thread per output element; B held transposed [rank, out] so a warp reads consecutive
/// columns). Row scales fold into t: t[j] = scale·sA[j]·sB[j]·Σ_i x_i·A'[j, i], then y_o += Σ_j t[j]·Bᵀ'[j, o].
/// </summary>
public static class LoraKernels
{
    /// <summary>Largest rank <see cref="Fused{TL}"/> takes (its t lives in shared memory).</summary>
    public const int FusedMaxRank = 128;
    /// <summary>Output columns each group of <see cref="Fused{TL}"/> adds.</summary>
    public const int FusedColumns = 1024;

    /// <summary>
    /// One launch for the whole update: group g takes row r = g / blocks and output columns [c·1024, (c+1)·1024) with
    /// c = g mod blocks. Its warps compute t (scales folded) into shared memory (warp w takes ranks w, w + warps, ...;
    /// lanes stride the input, a warp-shuffle sum), then, after a barrier, each thread adds Σ_j t[j]·Bᵀ[j, o] to its
    /// columns. A group recomputes the row's t (rank·in multiply-adds, A read from L2): for one decode row that is less
    /// than a launch costs; past a few rows the two-launch form reads less.
    /// </summary>
    public static void Fused<TL>(ArrayView<float> x, TL a, TL bt, ArrayView<float> y, int row0, int blocks, int rank, int inF, int outF, float scale)
        where TL : struct, ILoraMatrix
    {
        var t = SharedMemory.Allocate<float>(FusedMaxRank);
        var term = new LoraTerm<TL> { A = a, Bt = bt, Y = y, Row0 = row0, Rank = rank, OutF = outF, Blocks = blocks, Scale = scale };
        FusedGroup(x, inF, term, Grid.IdxX, t);
    }

    /// <summary>
    /// <see cref="Fused{TL}"/> for an update that ends a residual block, rows 0 .. rows-1 (rows = Grid / blocks), then
    /// residual += y and out = RmsNorm(residual)·w by the last group of each row (<see cref="NormKernels"/>' tickets): the
    /// update and the block's norm in one launch, the norm the bits of its own launch.
    /// </summary>
    public static void FusedAddRmsNorm<TL>(ArrayView<float> x, TL a, TL bt, ArrayView<float> y, int blocks, int rank, int inF, int outF, float scale,
                                           AddNormArgs args)
        where TL : struct, ILoraMatrix
    {
        var t = SharedMemory.Allocate<float>(FusedMaxRank);
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        var last = SharedMemory.Allocate<int>(1);
        int r = Grid.IdxX / blocks;
        var term = new LoraTerm<TL> { A = a, Bt = bt, Y = y, Row0 = 0, Rank = rank, OutF = outF, Blocks = blocks, Scale = scale };
        FusedGroup(x, inF, term, Grid.IdxX, t);
        NormKernels.AddRmsNormByLastGroup(r, y, outF, args, scratch, last, blocks);
    }

    /// <summary>
    /// Up to three updates over the same input in one launch (Q/K/V, gate/up: a decode step's adapters of one dispatch):
    /// group g belongs to the term whose groups hold it, and runs <see cref="Fused{TL}"/>'s arithmetic for it (so each
    /// output gets the bits a launch of its own gives it). <paramref name="count"/> terms are live (2 or 3). Then the op
    /// that consumes the updated outputs, by the launch's last group (<paramref name="e"/>: Q/K/V's RoPE and cache
    /// writes, or gate/up's SwiGLU; its own launch's element code, the same bits), where it took a launch of its own.
    /// </summary>
    public static void FusedTerms<TL>(ArrayView<float> x, int inF, LoraTerm<TL> t0, LoraTerm<TL> t1, LoraTerm<TL> t2, int count, TermsEpilogue e)
        where TL : struct, ILoraMatrix
    {
        var t = SharedMemory.Allocate<float>(FusedMaxRank);
        var last = SharedMemory.Allocate<int>(1);
        int g = Grid.IdxX;
        if (count > 2 && g >= t2.FirstGroup) FusedGroup(x, inF, t2, g - t2.FirstGroup, t);
        else if (g >= t1.FirstGroup) FusedGroup(x, inF, t1, g - t1.FirstGroup, t);
        else FusedGroup(x, inF, t0, g, t);
        if (e.Kind == TermsEpilogue.Rope) RopeKernels.RopeQkvCacheByLastGroup(e.Q, e.K, e.V, e.RopeArgs, last); // uniform
        else if (e.Kind == TermsEpilogue.SwiGlu) ActivationKernels.SwiGluByLastGroup(e.Gate, e.Up, e.N, e.Tickets, last);
    }

    /// <summary>Group <paramref name="g"/> of one term: <see cref="Fused{TL}"/>'s body.</summary>
    private static void FusedGroup<TL>(ArrayView<float> x, int inF, LoraTerm<TL> term, int g, ArrayView<float> t) where TL : struct, ILoraMatrix
    {
        int r = g / term.Blocks, c = g - r * term.Blocks;
        int warps = Group.DimX / Warp.WarpSize;
        long xb = (long)(term.Row0 + r) * inF;
        for (int j = Warp.WarpIdx; j < term.Rank; j += warps) // uniform per warp
        {
            long ab = (long)j * inF;
            float acc = 0;
            for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize) acc += x[xb + i] * term.A.Value(ab + i);
            acc = KernelMath.WarpSum(acc);
            if (Warp.LaneIdx == 0) t[j] = term.Scale * term.A.RowScale(j) * term.Bt.RowScale(j) * acc;
        }
        Group.Barrier();
        int outF = term.OutF;
        long yb = (long)(term.Row0 + r) * outF;
        int end = XMath.Min(outF, (c + 1) * FusedColumns);
        for (int o = c * FusedColumns + Group.IdxX; o < end; o += Group.DimX)
        {
            float acc = 0;
            for (int j = 0; j < term.Rank; j++) acc += t[j] * term.Bt.Value((long)j * outF + o);
            term.Y[yb + o] += acc;
        }
    }

    /// <summary>t[r·rank + j] = scale·sA[j]·sB[j]·Σ_i x[(row0 + r)·inF + i]·A'[j·inF + i]. Grid = ceil(rows·rank / warpsPerGroup).</summary>
    public static void Down<TL>(ArrayView<float> x, TL a, TL bt, ArrayView<float> t, int row0, int rows, int rank, int inF, float scale)
        where TL : struct, ILoraMatrix
    {
        int warps = Group.DimX / Warp.WarpSize;
        int item = Grid.IdxX * warps + Warp.WarpIdx;
        if (item >= rows * rank) return; // uniform per warp
        int r = item / rank, j = item - r * rank;
        long xb = (long)(row0 + r) * inF, ab = (long)j * inF;
        float acc = 0;
        for (int i = Warp.LaneIdx; i < inF; i += Warp.WarpSize) acc += x[xb + i] * a.Value(ab + i);
        acc = KernelMath.WarpSum(acc);
        if (Warp.LaneIdx == 0) t[item] = scale * a.RowScale(j) * bt.RowScale(j) * acc;
    }

    /// <summary>y[(row0 + r)·outF + o] += Σ_j t[r·rank + j]·Bᵀ'[j·outF + o], one thread per (r, o).</summary>
    public static void Up<TL>(Index1D index, ArrayView<float> t, TL bt, ArrayView<float> y, int row0, int rows, int rank, int outF)
        where TL : struct, ILoraMatrix
    {
        if (index >= rows * outF) return;
        int r = index / outF, o = index - r * outF;
        float acc = 0;
        for (int j = 0; j < rank; j++) acc += t[r * rank + j] * bt.Value((long)j * outF + o);
        y[(long)(row0 + r) * outF + o] += acc;
    }

    /// <summary>
    /// An adapted embedding: y[(row0 + r)·outF + o] += scale·Σ_j A[j·vocab + tok_r]·Bᵀ[j·outF + o], one thread per
    /// (r, o); tok_r = ids[r], or <paramref name="single"/> for one row (the id as an argument, nothing uploaded).
    /// </summary>
    public static void EmbedUp<TL>(Index1D index, ArrayView<int> ids, int single, TL a, TL bt, ArrayView<float> y,
                                   int row0, int rows, int rank, int vocab, int outF, float scale)
        where TL : struct, ILoraMatrix
    {
        if (index >= rows * outF) return;
        int r = index / outF, o = index - r * outF;
        int tok = rows == 1 ? single : ids[r];
        float acc = 0;
        for (int j = 0; j < rank; j++) acc += a.Value((long)j * vocab + tok) * a.RowScale(j) * bt.RowScale(j) * bt.Value((long)j * outF + o);
        y[(long)(row0 + r) * outF + o] += scale * acc;
    }
}

/// <summary>
/// One adapter update of <see cref="LoraKernels.FusedTerms{TL}"/>: A and Bᵀ, the output it adds to, its first row, and
/// the launch's groups it takes (from FirstGroup, rows·Blocks of them: row-major over its rows and column blocks).
/// </summary>
public struct LoraTerm<TL> where TL : struct, ILoraMatrix
{
    public TL A, Bt;
    public ArrayView<float> Y;
    public int Row0, Rank, OutF, Blocks, FirstGroup;
    public float Scale;
}

/// <summary>
/// What <see cref="LoraKernels.FusedTerms{TL}"/> runs after the updates, by its last group: nothing, RoPE and the K/V
/// cache writes of the updated Q/K/V (<see cref="RopeArgs"/>, its tickets), or SwiGLU of the updated gate and up
/// (Gate = silu(Gate)·Up over N elements; Tickets: one int, zero between launches).
/// </summary>
public struct TermsEpilogue
{
    public const int None = 0, Rope = 1, SwiGlu = 2;
    public int Kind, N;
    public ArrayView<float> Q, K, V, Gate, Up;
    public RopeArgs RopeArgs;
    public ArrayView<int> Tickets;
}
