namespace Lrl;

/// <summary>
/// One LoRA pair held by a backend for one linear module: A [rank, in] and B [out, rank], applied unmerged as
/// y += scale·(x·Aᵀ)·Bᵀ after the module's own product. Made by <see cref="ILoraOps.LoadLora"/>.
/// </summary>
public abstract class LoraWeights(string name, int rank, int inFeatures, int outFeatures) : IDisposable
{
    public string Name { get; } = name;
    public int Rank { get; } = rank;
    public int InFeatures { get; } = inFeatures;
    public int OutFeatures { get; } = outFeatures;
    /// <summary>Bytes a product reads (both matrices).</summary>
    public abstract long ByteSize { get; }
    public virtual void Dispose() { }
}

/// <summary>
/// Low-rank adapter ops, beside <see cref="IBackend"/> so backends opt in (every backend in the tree does). A model
/// casts its backend: <c>backend as ILoraOps ?? throw new LrlException(...)</c>.
/// </summary>
public interface ILoraOps
{
    /// <summary>
    /// Copies a LoRA pair into the backend: <paramref name="a"/> is A [rank, in] and <paramref name="b"/> is B [out, rank],
    /// both row-major f32 values (the adapter file's own layout; backends may hold them in another). When
    /// <paramref name="stored"/> is BF16 the values are exactly bf16 and a backend may hold them so (half the bytes a
    /// product reads); when it is I8 they lie on the int8 grid of <see cref="LoraInt8"/> (each row of A and each column
    /// of B is a scale times whole numbers in [-127, 127]) and a backend may hold the codes and one scale per row of A
    /// and column of B (a quarter of the bytes); otherwise it keeps f32.
    /// </summary>
    LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                         DType stored = DType.F32);

    /// <summary>
    /// y[row0 + r, o] += scale·Σ_j (Σ_i x[row0 + r, i]·A[j, i])·B[o, j] for r &lt; rows: the unmerged adapter update of
    /// one sequence's rows inside a batched step (the other rows are left as they are). x is [*, in], y is [*, out].
    /// </summary>
    void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y);

    /// <summary>
    /// An adapted embedding's update: y[row0 + r, o] += scale·Σ_j A[j, tokens[r]]·B[o, j] for each token, with the pair
    /// loaded as A [rank, vocab] (in = vocabulary) and B [hidden, rank]: PEFT's lora_embedding_A/B, a lookup of A's
    /// columns instead of a product. Runs at once (never staged).
    /// </summary>
    void LoraEmbedRows(ReadOnlySpan<int> tokens, int row0, LoraWeights lora, float scale, DeviceBuffer y);

    /// <summary>
    /// Whether the backend fuses adapter updates into its products: callers then <see cref="StageLora"/> each update
    /// before the product that writes its output (the product adds it to the rows it writes, in the same pass), instead
    /// of calling <see cref="LoraRows"/> after it.
    /// </summary>
    bool FusesLora => false;

    /// <summary>
    /// Queues y[row0 + r, :] += scale·(x[row0 + r, :]·Aᵀ)·Bᵀ for the next product (MatMul, MatMul3, GateUpSwiGlu) that
    /// writes <paramref name="y"/>; that product applies and forgets it (updates for other outputs stay staged for
    /// theirs). x must not change before then. Only when <see cref="FusesLora"/>.
    /// </summary>
    void StageLora(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) =>
        throw new NotSupportedException("this backend does not fuse LoRA updates; call LoraRows after the product");

    /// <summary>Updates staged and not yet applied by a product.</summary>
    int PendingLora => 0;

    /// <summary>
    /// Forgets every staged update. A model calls it before each pass: updates a pass staged and never applied (it
    /// stopped at an exception between staging and the product) must not land on a later pass's products.
    /// </summary>
    void ClearStagedLora() { }
}

/// <summary>
/// The int8 grid of adapters held as int8 (<see cref="ILoraOps.LoadLora"/> with <see cref="DType.I8"/>): each row of A
/// [rank, in] and each column of B [out, rank] is s·q with s = max|values| / 127 and q a whole number in [-127, 127].
/// Rounding the values onto it (<see cref="RoundA"/>, <see cref="RoundB"/>) before loading makes every backend compute
/// with the same numbers, whether it keeps the codes or the floats.
/// </summary>
public static class LoraInt8
{
    /// <summary>The scale of a row or column whose largest magnitude is <paramref name="maxAbs"/> (1 for all zeros).</summary>
    public static float Scale(float maxAbs) => maxAbs > 0 ? maxAbs / 127f : 1f;

    /// <summary>The code of <paramref name="v"/> at scale <paramref name="s"/>.</summary>
    public static sbyte Code(float v, float s) => (sbyte)Math.Clamp(MathF.Round(v / s, MidpointRounding.ToEven), -127, 127);

    /// <summary>Rounds each row of A [rank, inF] onto its int8 grid, in place.</summary>
    public static void RoundA(Span<float> a, int rank, int inF)
    {
        for (int j = 0; j < rank; j++) RoundStrided(a.Slice(j * inF, inF), 1);
    }

    /// <summary>Rounds each column of B [outF, rank] onto its int8 grid, in place.</summary>
    public static void RoundB(Span<float> b, int outF, int rank)
    {
        for (int j = 0; j < rank; j++) RoundStrided(b[j..], rank);
    }

    private static void RoundStrided(Span<float> v, int stride)
    {
        float max = 0;
        for (int i = 0; i < v.Length; i += stride) max = MathF.Max(max, MathF.Abs(v[i]));
        float s = Scale(max);
        for (int i = 0; i < v.Length; i += stride) v[i] = Code(v[i], s) * s;
    }
}
