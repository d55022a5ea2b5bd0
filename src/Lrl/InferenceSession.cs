using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Lrl.Models;
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
    private volatile DecodeLoop.Job? _job; // the generation the model's decode loop runs for this session
    private volatile bool _disposed;
    private LoraAdapter[] _adapters = [];      // the session's default adapters
    private LoraAdapter[] _stateAdapters = []; // the adapters the held state was computed with

    /// <summary>
    /// LoRA adapters (from <see cref="LrlModel.LoadAdapter"/>) this session's generations run with unless their
    /// <see cref="GenerationOptions.Adapters"/> say otherwise; empty = the base model. Changing them starts the next
    /// generation from an empty context (the held state belongs to the old ones). Not while generating.
    /// </summary>
    public IReadOnlyList<LoraAdapter> Adapters
    {
        get => _adapters;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            ThrowIfDisposed();
            if (Volatile.Read(ref _busy) == 1) throw new InvalidOperationException("adapters cannot change while the session is generating");
            var model = (ModelBase)_owner.Model;
            foreach (var a in value)
            {
                ArgumentNullException.ThrowIfNull(a, nameof(value));
                if (a.Model != model) throw new LrlException($"adapter {a.Name} was loaded by another model");
                ObjectDisposedException.ThrowIf(a.IsDisposed, a);
            }
            _adapters = value.ToArray();
        }
    }

    /// <summary>The draft source of a speculative generation in the decode loop (null: plain, or a model that cannot rewind).</summary>
    private IDraftSource? DraftFor(GenerationOptions options) =>
        options.Speculative != SpeculativeMethod.None && _owner.Model.CanRewind ? SpeculativeRun.CreateSource(_owner, _state, options) : null;

    /// <summary>Points the state at the adapters a generation runs with; a change forgets the held tokens.</summary>
    private void UseAdapters(GenerationOptions options)
    {
        var want = options.Adapters ?? _adapters;
        if (want.SequenceEqual(_stateAdapters)) return;
        ((ModelBase)_owner.Model).SetAdapters(_state, want);
        _stateAdapters = want.ToArray();
        _held.Clear();
    }

    /// <summary>Bytes this session's state holds now (its KV cache at its present capacity).</summary>
    internal long StateBytes => _owner.Model is ModelBase mb ? mb.StateBytes(0, _state) : 0;

    /// <summary>Whether a generation of this session is still in the decode loop (disposing it would wait for the loop).</summary>
    internal bool InLoop => _job is { } job && !job.Finished.Task.IsCompleted;

    /// <summary>Whether this session's state runs with exactly these adapters (null = its defaults).</summary>
    internal bool RunsWith(IReadOnlyList<LoraAdapter>? adapters) => (adapters ?? _adapters).SequenceEqual(_stateAdapters);

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
        CancellationToken cancellationToken = default)
    {
        if (_owner.Loop is null) return OffContext.Stream(() => Generate(prompt, options, cancellationToken));
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= new GenerationOptions();
        return GenerateAsync(_owner.Tokenizer.Encode(prompt, options.AddBos), options, cancellationToken);
    }

    /// <summary>
    /// Streams tokens generated from prompt ids. With continuous batching (<see cref="ModelOptions.Parallel"/> &gt; 1) no
    /// thread waits while the tokens come; otherwise the forward passes run on the thread pool.
    /// </summary>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(int[] promptIds, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        var prompt = CheckFits(promptIds, options);
        return _owner.Loop is null ? OffContext.Stream(() => Run(prompt, options, cancellationToken)) : RunAsync(prompt, options, cancellationToken);
    }

    /// <summary>
    /// <see cref="CheckPrompt"/>, then (with a decode loop under a KV budget) whether the generation can ever fit it:
    /// refused here, before it is queued, with the error naming max_tokens and the budget.
    /// </summary>
    private int[] CheckFits(int[] promptIds, GenerationOptions options)
    {
        var prompt = CheckPrompt(_owner.Model, promptIds, options);
        _owner.Loop?.CheckFits(_state, prompt.Length, options.MaxTokens,
                               DecodeLoop.DraftRows(options.Speculative != SpeculativeMethod.None, options.DraftTree, options.DraftTokens));
        return prompt;
    }

    /// <summary>Tokens at the start of <paramref name="prompt"/> whose state this session holds already.</summary>
    internal int SharedPrefix(ReadOnlySpan<int> prompt) => Generation.SharedPrefix(_held, prompt);

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
        return Run(CheckFits(promptIds, options), options, cancellationToken);
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
        UseAdapters(options);
        var g = new Generation(_owner, _held, prompt, options, ct);
        LastStats = g.Stats;
        if (_owner.Loop is { } loop)
        {
            // Batched: the model's decode loop runs this generation's steps together with every other one's.
            var job = _job = loop.Submit(_state, g, DraftFor(options), options.DraftTokens, options.DraftTree);
            try
            {
                var reader = job.Output.Reader;
                // Tokens the loop made before a cancellation are not delivered after it (as without the loop).
                while (!ct.IsCancellationRequested && reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
                    while (!ct.IsCancellationRequested && reader.TryRead(out var t)) yield return t;
            }
            finally { Leave(job); }
            yield break;
        }
        var emit = new List<GeneratedToken>(2);
        if (options.Speculative != SpeculativeMethod.None && _owner.Model.CanRewind)
        {
            // Recurrent models cannot drop rejected drafts from their state: they decode plainly. The source exists
            // before the prompt runs, so draft heads see the prompt's last hidden row.
            using var source = SpeculativeRun.CreateSource(_owner, _state, options);
            Forward(prompt.AsSpan(g.Held.Count), g.Held.Count);
            g.PromptRan(g.PromptLeft);
            LastComputeThread = Environment.CurrentManagedThreadId;
            foreach (var t in SpeculativeRun.Run(_owner, _state, g, options, _logits, source)) yield return t;
            yield break;
        }
        bool argmax = g.PlainArgmax, sampled = !argmax && g.PlainTopK(_owner.Model.Backend.MaxDeviceTopK);
        if ((argmax || sampled) && _owner.Model is Lrl.Models.ModelBase mb)
        {
            // Greedy, or plain top-k/top-p sampling on a backend that samples where its logits are: the model makes the
            // choice there (one id back per token); the sampler's generator gives the same draws as on the host.
            ThrowIfDisposed();
            LastComputeThread = Environment.CurrentManagedThreadId;
            int Choose(ReadOnlySpan<int> tokens, int pos)
            {
                if (argmax) return mb.ForwardArgmax(_state, tokens, pos);
                var (temperature, topK, topP, minP, u) = g.DeviceDraw();
                return mb.ForwardSample(_state, tokens, pos, temperature, topK, topP, minP, u);
            }
            int token = Choose(prompt.AsSpan(g.Held.Count), g.Held.Count);
            g.PromptRan(g.PromptLeft);
            while (true)
            {
                bool more = argmax ? g.AcceptArgmax(token, emit) : g.AcceptSampled(token, emit);
                foreach (var t in emit) yield return t;
                emit.Clear();
                if (!more) break;
                ThrowIfDisposed();
                token = Choose([g.Next], g.Held.Count);
                g.NextRan();
            }
            yield break;
        }
        Forward(prompt.AsSpan(g.Held.Count), g.Held.Count);
        g.PromptRan(g.PromptLeft);
        while (true)
        {
            bool more = g.Accept(_logits, emit);
            foreach (var t in emit) yield return t;
            emit.Clear();
            if (!more) break;
            _one[0] = g.Next;
            Forward(_one, g.Held.Count);
            g.NextRan();
        }
    }

    /// <summary>
    /// As <see cref="Run"/> for a model with a decode loop: tokens come from the loop's channel without holding a
    /// thread while waiting.
    /// </summary>
    internal async IAsyncEnumerable<GeneratedToken> RunAsync(int[] prompt, GenerationOptions options,
        [EnumeratorCancellation] CancellationToken ct)
    {
        var loop = _owner.Loop ?? throw new InvalidOperationException("no decode loop");
        if (Interlocked.Exchange(ref _busy, 1) == 1)
            throw new InvalidOperationException("this session is already generating; a session runs one generation at a time (create one session per concurrent generation)");
        DecodeLoop.Job? job = null;
        try
        {
            ThrowIfDisposed();
            UseAdapters(options);
            var g = new Generation(_owner, _held, prompt, options, ct);
            LastStats = g.Stats;
            job = _job = loop.Submit(_state, g, DraftFor(options), options.DraftTokens, options.DraftTree);
            await foreach (var t in job.Output.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                if (ct.IsCancellationRequested) break; // the loop ends the job as cancelled at its next step
                yield return t;
            }
        }
        finally
        {
            if (job is not null)
            {
                job.Abandoned = true;
                // The loop drops an abandoned job at its next step; the state stays in use until then.
                await job.Finished.Task.ConfigureAwait(false);
                _job = null;
            }
            Volatile.Write(ref _busy, 0);
        }
    }

    /// <summary>Stops reading a job: the loop drops it at its next step; returns once it no longer uses the state.</summary>
    private void Leave(DecodeLoop.Job job)
    {
        job.Abandoned = true;
        job.Finished.Task.Wait();
        _job = null;
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
        if (_job is { } job) Leave(job); // never free the state under a step of the decode loop
        _state.Dispose();
    }
}
