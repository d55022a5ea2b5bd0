namespace Lrl;

/// <summary>
/// The state of one sequence for one model: a KV cache (attention models) or a recurrent state (linear attention),
/// created by <see cref="ILanguageModel.CreateState"/>. Its memory is held until it is disposed.
/// </summary>
public interface ISequenceState : IDisposable
{
    /// <summary>Floats of memory this state holds now (KV caches grow with the sequence, up to the context window).</summary>
    long Floats { get; }
}

/// <summary>
/// A loaded causal language model bound to a backend: weights shared read-only by any number of sequence states.
/// Forward calls from several threads are safe (they run one at a time over the model's scratch buffers); each
/// concurrent sequence needs its own state. A disposed model, or a state used after disposal or with another model,
/// is an <see cref="ObjectDisposedException"/> or <see cref="LrlException"/>, never a crash.
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

    /// <summary>A new, empty sequence state sized for <see cref="ContextLength"/> positions.</summary>
    ISequenceState CreateState();

    /// <summary>
    /// As <see cref="Forward(ReadOnlySpan{int}, int, Span{float})"/>, over <paramref name="state"/> instead of the
    /// model's own default state.
    /// </summary>
    void Forward(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits);

    /// <summary>
    /// Runs one batched step over the runs of several sequence states (see <see cref="StepBatch"/>): every product
    /// reads the weights once for all rows, attention runs per sequence over its own state. Writes the wanted logits
    /// in run order into <paramref name="logits"/> (at least batch.LogitsRows · VocabSize floats). Each run's result
    /// equals a <see cref="Forward(ISequenceState, ReadOnlySpan{int}, int, Span{float})"/> of the same tokens within
    /// floating-point rounding (the products sum over all rows at once).
    /// </summary>
    void Forward(StepBatch batch, Span<float> logits)
    {
        ArgumentNullException.ThrowIfNull(batch);
        float[]? discard = null;
        foreach (var run in batch.Runs)
        {
            var tokens = batch.Tokens.Slice(run.Row0, run.Rows);
            var dst = StepBatch.LogitsOf(run, logits, VocabSize, ref discard);
            Forward(run.State, tokens, run.StartPos, dst);
        }
    }
}
