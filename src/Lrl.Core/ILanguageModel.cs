namespace Lrl;

/// <summary>
/// A loaded causal language model bound to a backend, holding the state of one sequence
/// (a KV cache for attention models, a recurrent state for linear-attention models).
/// </summary>
public interface ILanguageModel : IDisposable
{
    /// <summary>The HF architecture name, e.g. "LlamaForCausalLM".</summary>
    string Architecture { get; }
    int VocabSize { get; }
    /// <summary>Most positions the state can hold (the context window).</summary>
    int ContextLength { get; }
    IBackend Backend { get; }
    /// <summary>Parameter count of the weights.</summary>
    long ParameterCount { get; }
    /// <summary>Storage format of the block matrices, e.g. "BF16" or "Q4_G64".</summary>
    string WeightFormat { get; }
    /// <summary>Bytes of weights read to decode one token (the decode roofline numerator).</summary>
    long WeightBytesPerToken { get; }

    /// <summary>
    /// Whether Forward may restart at a startPos below the current length (attention models: the KV cache is simply
    /// overwritten). Recurrent models (RWKV) hold one state that cannot be rewound, so they return false.
    /// </summary>
    bool CanRewind => true;

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions startPos .. startPos+n-1 as one batched pass; the state must hold
    /// positions 0 .. startPos-1 (startPos = 0 starts a new sequence). Writes the logits of the last token into
    /// <paramref name="logits"/> (length VocabSize), or of every token when its length is n·VocabSize.
    /// Positions past <see cref="ContextLength"/> are an <see cref="LrlException"/>.
    /// </summary>
    void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits);
}
