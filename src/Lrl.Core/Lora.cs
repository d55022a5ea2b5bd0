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
    /// product reads); otherwise it keeps f32.
    /// </summary>
    LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                         DType stored = DType.F32);

    /// <summary>
    /// y[row0 + r, o] += scale·Σ_j (Σ_i x[row0 + r, i]·A[j, i])·B[o, j] for r &lt; rows: the unmerged adapter update of
    /// one sequence's rows inside a batched step (the other rows are left as they are). x is [*, in], y is [*, out].
    /// </summary>
    void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y);

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
}
