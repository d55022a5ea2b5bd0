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
    /// both row-major f32 (the adapter file's own layout; backends may hold them in another).
    /// </summary>
    LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures);

    /// <summary>
    /// y[row0 + r, o] += scale·Σ_j (Σ_i x[row0 + r, i]·A[j, i])·B[o, j] for r &lt; rows: the unmerged adapter update of
    /// one sequence's rows inside a batched step (the other rows are left as they are). x is [*, in], y is [*, out].
    /// </summary>
    void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y);
}
