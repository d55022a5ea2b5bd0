namespace Lrl.Models;

/// <summary>How a model is instantiated on a backend.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>Positions the KV cache holds; 0 = the model's max_position_embeddings, capped at <see cref="DefaultContextCap"/>.</summary>
    public int ContextLength { get; init; }
    /// <summary>Most tokens run in one batched pass (longer prompts are processed in chunks of this size).</summary>
    public int BatchSize { get; init; } = 256;

    public const int DefaultContextCap = 4096;

    /// <summary>
    /// Position cap of recurrent models (RWKV, TransNormerLLM) when <see cref="ContextLength"/> is 0: their state does not
    /// grow with the sequence, so this only bounds position counters and callers' per-position buffers.
    /// </summary>
    public const int RecurrentContextCap = 1 << 20;

    /// <summary>The context of a model whose state has a constant size: <see cref="ContextLength"/>, or <see cref="RecurrentContextCap"/>.</summary>
    public int ResolveRecurrentContext()
    {
        if (ContextLength < 0) throw new LrlException($"context length must be ≥ 0, got {ContextLength}");
        if (BatchSize < 1) throw new LrlException($"batch size must be ≥ 1, got {BatchSize}");
        if (ContextLength > RecurrentContextCap)
            throw new LrlException($"context length {ContextLength} exceeds {RecurrentContextCap}, the most positions lrlrun runs a recurrent model for");
        return ContextLength > 0 ? ContextLength : RecurrentContextCap;
    }

    public int ResolveContext(int modelMax)
    {
        if (ContextLength < 0) throw new LrlException($"context length must be ≥ 0, got {ContextLength}");
        if (BatchSize < 1) throw new LrlException($"batch size must be ≥ 1, got {BatchSize}");
        if (ContextLength > modelMax)
            throw new LrlException($"context length {ContextLength} exceeds the model's max_position_embeddings ({modelMax})");
        return ContextLength > 0 ? ContextLength : Math.Min(modelMax, DefaultContextCap);
    }
}
