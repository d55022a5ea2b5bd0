using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Lrl.Runtime;

namespace Lrl;

/// <summary>
/// One conversation or generation stream over a loaded <see cref="LrlModel"/>: its own sequence state (KV cache or
/// recurrent state), the tokens that state holds (a new prompt that extends them reuses it), and the statistics of
/// its last generation. Sessions over one model may run concurrently from different threads; one session runs one
/// generation at a time. Its memory (the state, sized for the context window) is released by <see cref="Dispose"/>.
/// </summary>
public sealed class InferenceSession : IDisposable
{
    private readonly LrlModel _owner;
    private readonly ISequenceState _state;
    private readonly float[] _logits;
    private readonly int[] _one = new int[1];
    // Tokens whose state the session holds now (prompt + fed generated tokens).
    private readonly List<int> _held;
    private int _busy;
    private volatile bool _disposed;

    /// <summary>Counts and timings of this session's last generation.</summary>
    public GenerationStats LastStats { get; private set; } = new();

    /// <summary>The managed thread that ran the last forward pass (for tests of where compute runs).</summary>
    internal int LastComputeThread { get; private set; }

    internal InferenceSession(LrlModel owner)
    {
        _owner = owner;
        var model = owner.Model;
        _state = model.CreateState();
        _logits = new float[model.VocabSize];
        _held = new List<int>(Math.Min(model.ContextLength, 4096));
    }

    /// <summary>Streams generated tokens; the forward passes run on the thread pool, never on the caller's context.</summary>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(string prompt, GenerationOptions? options = null,
        CancellationToken cancellationToken = default) =>
        OffContext.Stream(() => Generate(prompt, options, cancellationToken));

    /// <summary>Generates synchronously, token by token.</summary>
    public IEnumerable<GeneratedToken> Generate(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= new GenerationOptions();
        return Generate(_owner.Tokenizer.Encode(prompt, options.AddBos), options, cancellationToken);
    }

    /// <summary>Generates from prompt token ids.</summary>
    public IEnumerable<GeneratedToken> Generate(int[] promptIds, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Run(CheckPrompt(_owner.Model, promptIds, options), options, cancellationToken);
    }

    /// <summary>
    /// Checks a prompt and its options against the model (non-empty, every id in the vocabulary, within the context
    /// window unless <see cref="GenerationOptions.TruncatePrompt"/>) and returns the ids to run.
    /// </summary>
    internal static int[] CheckPrompt(ILanguageModel model, int[] promptIds, GenerationOptions options)
    {
        ArgumentNullException.ThrowIfNull(promptIds);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        int ctx = model.ContextLength;
        if (promptIds.Length == 0) throw new LrlException("the prompt is empty (no tokens to start from)");
        foreach (var id in promptIds)
            if ((uint)id >= (uint)model.VocabSize) throw new LrlException($"prompt token id {id} is outside the model's vocabulary (0..{model.VocabSize - 1})");
        if (promptIds.Length <= ctx) return promptIds;
        if (!options.TruncatePrompt)
            throw new LrlException($"the prompt is {promptIds.Length} tokens but the context window holds {ctx}; shorten it, raise --context, or pass --truncate to keep its last tokens");
        // Keep the prompt's last tokens and leave room for the generation (at most half the window).
        int keep = Math.Max(1, ctx - Math.Min(options.MaxTokens, ctx / 2));
        return promptIds[^keep..];
    }

    /// <summary>Runs a checked prompt (see <see cref="CheckPrompt"/>).</summary>
    internal IEnumerable<GeneratedToken> Run(int[] prompt, GenerationOptions options, CancellationToken ct)
    {
        if (Interlocked.Exchange(ref _busy, 1) == 1)
            throw new InvalidOperationException("this session is already generating; a session runs one generation at a time (create one session per concurrent generation)");
        try
        {
            foreach (var t in RunCore(prompt, options, ct)) yield return t;
        }
        finally { Volatile.Write(ref _busy, 0); }
    }

    private IEnumerable<GeneratedToken> RunCore(int[] prompt, GenerationOptions options, CancellationToken ct)
    {
        ThrowIfDisposed();
        var model = _owner.Model;
        var tokenizer = _owner.Tokenizer;
        var stats = LastStats = new GenerationStats { PromptTokens = prompt.Length };
        var sampler = new Sampler(model.VocabSize, options.Sampling);
        var decoder = tokenizer.CreateStreamingDecoder();
        var stops = new StopMatcher(options.StopStrings);
        var eos = tokenizer.EosIds;

        // Reuse the state of the longest common prefix with the previous sequence (chat turns, repeated prompts).
        int reuse = 0;
        while (reuse < _held.Count && reuse < prompt.Length && _held[reuse] == prompt[reuse]) reuse++;
        if (reuse == prompt.Length) reuse--; // at least one token must run to produce logits
        if (reuse < _held.Count && !model.CanRewind) reuse = 0;
        stats.CachedTokens = reuse;
        _held.Clear();

        var clock = Stopwatch.StartNew();
        Forward(prompt.AsSpan(reuse), reuse);
        _held.AddRange(prompt);
        stats.PrefillTime = clock.Elapsed;
        clock.Restart();
        stats.FinishReason = FinishReason.Length;

        for (int i = 0; i < options.MaxTokens; i++)
        {
            if (ct.IsCancellationRequested) { stats.FinishReason = FinishReason.Cancelled; break; }
            int next = sampler.Sample(_logits, CollectionsMarshal.AsSpan(_held)); // the context so far
            if (!options.IgnoreEos && eos.Contains(next)) { stats.FinishReason = FinishReason.EndOfSequence; break; }
            stats.GeneratedTokens++;
            var text = stops.Push(decoder.Push(next));
            if (stops.Stopped)
            {
                stats.FinishReason = FinishReason.StopString;
                stats.DecodeTime = clock.Elapsed;
                yield return new GeneratedToken(next, text);
                yield break;
            }
            yield return new GeneratedToken(next, text);
            if (i + 1 == options.MaxTokens) break;
            if (_held.Count + 1 >= model.ContextLength) { stats.FinishReason = FinishReason.ContextFull; break; }
            _one[0] = next;
            Forward(_one, _held.Count);
            _held.Add(next);
        }
        stats.DecodeTime = clock.Elapsed;
        var rest = stops.Push(decoder.Flush()) + stops.Flush();
        if (rest.Length > 0) yield return new GeneratedToken(-1, rest);
    }

    private void Forward(ReadOnlySpan<int> tokens, int startPos)
    {
        ThrowIfDisposed();
        LastComputeThread = Environment.CurrentManagedThreadId;
        _owner.Model.Forward(_state, tokens, startPos, _logits);
    }

    /// <summary>Forgets the held sequence: the next generation starts from an empty context.</summary>
    public void Reset()
    {
        ThrowIfDisposed();
        _held.Clear();
    }

    private void ThrowIfDisposed()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _owner.ThrowIfDisposed();
    }

    /// <summary>Releases the session's state; a generation still running on another thread stops with an ObjectDisposedException.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _state.Dispose();
    }
}
