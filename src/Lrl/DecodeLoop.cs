using System.Diagnostics;
using System.Threading.Channels;
using Lrl.Models;

namespace Lrl;

/// <summary>
/// Continuous batching: one thread runs every generation of a model in shared batched steps
/// (<see cref="StepBatch"/>). Each step holds one decode row per running sequence and, within a row budget, chunks of
/// the prompts of sequences being admitted, so a new request's prefill interleaves with the others' decode instead of
/// waiting for them; a step reads the weights once for all its rows. Sequences join between steps (up to
/// <see cref="MaxSequences"/> at once, the rest wait in arrival order) and leave when they finish; each one's tokens
/// stream out through its own channel. Sampling, stop strings and detokenization run per sequence on this thread
/// (<see cref="Generation"/>), so every sequence's output equals its output when run alone.
/// </summary>
internal sealed class DecodeLoop : IDisposable
{
    private readonly ILanguageModel _model;
    private readonly Thread _thread;
    private readonly object _gate = new();
    private readonly Queue<Job> _waiting = new();
    private readonly List<Job> _active = new();
    private readonly StepBatch _batch = new(256);
    private readonly List<GeneratedToken> _emit = new();
    private float[] _logits = [];
    private bool _stop;

    /// <summary>Most sequences decoding at once.</summary>
    public int MaxSequences { get; }
    /// <summary>Most rows (tokens) in a step while other sequences decode: bounds the time between their tokens.</summary>
    public int StepRows { get; }
    /// <summary>Most rows in a step of prompts only (nothing else waits for it).</summary>
    public int PrefillRows { get; }

    /// <summary>Steps run and rows in them (for tests and statistics).</summary>
    public long Steps { get; private set; }
    public long Rows { get; private set; }
    /// <summary>The most sequences seen decoding in one step.</summary>
    public int MostInStep { get; private set; }

    /// <summary>
    /// Most bytes the running generations' sequence states (their KV caches) may come to together; 0 = no budget (then
    /// <see cref="MaxSequences"/> alone bounds them). A generation is admitted when the most its state can grow to
    /// (<see cref="ModelBase.StateBytes"/> at its prompt plus its most new tokens) fits beside the others'; the next in
    /// line waits until running ones finish (arrival order is kept); one that could never fit is refused up front
    /// (<see cref="CheckFits"/>).
    /// </summary>
    public long KvBudget { get; }
    /// <summary>Bytes reserved by the running generations now, and the most reserved at once (for tests and statistics).</summary>
    public long KvReserved { get { lock (_gate) return _reserved; } }
    public long MostKvReserved { get; private set; }
    private long _reserved;

    /// <summary>
    /// States kept idle beside the loop (a server's session pool) whose memory counts in <see cref="KvBudget"/>: a
    /// generation that does not fit beside the running ones and the idle states first has idle states released.
    /// </summary>
    internal interface IIdleStates
    {
        /// <summary>Bytes the idle states hold.</summary>
        long IdleBytes { get; }
        /// <summary>Releases idle states (least recently used first) until at least <paramref name="bytes"/> are freed or none is left.</summary>
        void Release(long bytes);
    }

    /// <summary>The idle states counted in the budget (one holder: a server's session pool; null: none).</summary>
    internal IIdleStates? Idle { get; set; }

    /// <summary>Whether the next waiting generation fits the budget (releasing idle states to make room if need be).</summary>
    private bool NextFits()
    {
        if (KvBudget == 0) return true;
        long need = _reserved + _waiting.Peek().Reserve;
        if (need > KvBudget) return false;
        if (Idle is { } idle && idle.IdleBytes is var held && need + held > KvBudget) idle.Release(need + held - KvBudget);
        return true;
    }

    public DecodeLoop(ILanguageModel model, int maxSequences, int stepRows, int prefillRows, long kvBudget = 0)
    {
        if (maxSequences < 1) throw new LrlException($"--parallel must be ≥ 1, got {maxSequences}");
        if (stepRows < 1) throw new LrlException($"the step row budget must be ≥ 1, got {stepRows}");
        if (kvBudget > 0 && model is not ModelBase)
            throw new LrlException($"--kv-memory: {model.Architecture} does not report its state sizes");
        KvBudget = kvBudget;
        _model = model;
        MaxSequences = maxSequences;
        StepRows = Math.Max(stepRows, maxSequences);
        PrefillRows = Math.Max(prefillRows, StepRows);
        _thread = new Thread(Run) { IsBackground = true, Name = "lrl-decode-loop" };
        _thread.Start();
    }

    /// <summary>One generation in the loop: its state, its cursor, and where its tokens go.</summary>
    internal sealed class Job(ISequenceState state, Generation generation, IDraftSource? draft = null, int draftTokens = 0, int[]? tree = null)
    {
        /// <summary>Draft heads verifying a tree of candidates: the tree's shape, and this step's rows.</summary>
        public int[]? Tree { get; } = tree;
        public int[]? TreeTokens, TreeParents;
        public int TreePos;
        public List<int> TreeNodeTokens { get; } = [];
        public List<int> TreeNodeParents { get; } = [];
        public ISequenceState State { get; } = state;
        public Generation Generation { get; } = generation;
        /// <summary>Speculative decoding: the job's draft source; its decode runs carry the drafts (all rows' logits).</summary>
        public IDraftSource? Draft { get; } = draft;
        public int[] Drafts { get; } = new int[draftTokens];
        public int[] RunTokens { get; } = new int[draftTokens + 1];
        public int DraftCount;
        public List<int> Context { get; } = draft is null ? [] : new List<int>(256);
        /// <summary>Draft heads: the hidden row handed to the draft source after each step.</summary>
        public float[]? Hidden { get; set; }
        public Channel<GeneratedToken> Output { get; } = Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        /// <summary>Set by the reader when it stops reading (disposed enumerator): the loop drops the job.</summary>
        public volatile bool Abandoned;
        /// <summary>Completes when the loop no longer uses the job's state (the channel's Completion waits for a reader too).</summary>
        public TaskCompletionSource Finished { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void End(Exception? error = null)
        {
            try { Draft?.Dispose(); } catch (Exception e) when (error is null) { error = e; }
            Output.Writer.TryComplete(error);
            Finished.TrySetResult();
        }
        public int LogitsRow = -1;
        public bool Decoding;
        /// <summary>Bytes of <see cref="KvBudget"/> the job holds while it runs (0 without a budget).</summary>
        public long Reserve;
    }

    /// <summary>Positions past the held tokens that a speculative step writes: its tree's nodes, else its drafts (none without speculation).</summary>
    internal static int DraftRows(bool speculative, int[]? tree, int draftTokens) =>
        !speculative ? 0 : tree is { Length: > 0 } ? tree.Length : draftTokens;

    /// <summary>
    /// The most bytes a generation's state can come to: its whole prompt and its most new tokens (and a speculative
    /// step's drafts) held, grown from what the state holds now.
    /// </summary>
    private long NeedOf(ISequenceState state, int promptTokens, int maxTokens, int draftTokens) =>
        KvBudget == 0 ? 0 : ((ModelBase)_model).StateBytes((int)Math.Min(int.MaxValue, (long)promptTokens + maxTokens + draftTokens + 1),
                                                         state);

    /// <summary>
    /// Throws when a generation of <paramref name="promptTokens"/> and up to <paramref name="maxTokens"/> new tokens
    /// could never fit <see cref="KvBudget"/>, naming both (callers check before they submit it).
    /// </summary>
    public void CheckFits(ISequenceState state, int promptTokens, int maxTokens, int draftTokens = 0)
    {
        long need = NeedOf(state, promptTokens, maxTokens, draftTokens);
        if (KvBudget > 0 && need > KvBudget) throw OverBudget(need, promptTokens, maxTokens);
    }

    private LrlException OverBudget(long need, int promptTokens, int maxTokens) =>
        new(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"this generation ({promptTokens} prompt tokens and up to {maxTokens} new ones) can need {need / 1048576.0:F1} MiB of KV cache, more than the --kv-memory budget of {KvBudget / 1048576.0:F1} MiB; lower max_tokens or raise --kv-memory"));

    /// <summary>Queues a generation; its tokens arrive on the returned job's channel, which completes when it ends.</summary>
    public Job Submit(ISequenceState state, Generation generation, IDraftSource? draft = null, int draftTokens = 0, int[]? tree = null)
    {
        var job = new Job(state, generation, draft, draftTokens, tree);
        job.Reserve = NeedOf(state, generation.Prompt.Length, generation.MaxTokens, DraftRows(draft is not null, tree, draftTokens));
        if (KvBudget > 0 && job.Reserve > KvBudget) throw OverBudget(job.Reserve, generation.Prompt.Length, generation.MaxTokens);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_stop, this);
            _waiting.Enqueue(job);
            Monitor.Pulse(_gate);
        }
        return job;
    }

    private void Run()
    {
        while (true)
        {
            lock (_gate)
            {
                while (!_stop && _waiting.Count == 0 && _active.Count == 0) Monitor.Wait(_gate);
                if (_stop) break;
                while (_active.Count < MaxSequences && _waiting.Count > 0 && NextFits())
                {
                    var j = _waiting.Dequeue();
                    _reserved += j.Reserve;
                    _active.Add(j);
                }
                MostKvReserved = Math.Max(MostKvReserved, _reserved);
            }
            try { Step(); }
            catch (Exception e)
            {
                // A failed step (e.g. a disposed model) fails every sequence in it; the loop goes on for later ones.
                lock (_gate)
                {
                    foreach (var j in _active) { j.End(e); _reserved -= j.Reserve; }
                    _active.Clear();
                }
            }
        }
        lock (_gate)
        {
            var stopped = new ObjectDisposedException(nameof(DecodeLoop), "the model was disposed during generation");
            foreach (var j in _active) j.End(stopped);
            foreach (var j in _waiting) j.End(stopped);
            _active.Clear(); _waiting.Clear();
        }
    }

    private void Step()
    {
        long started = Stopwatch.GetTimestamp();
        _batch.Clear();
        int decoding = 0;
        // Decode rows first: one per running sequence.
        foreach (var j in _active)
        {
            j.LogitsRow = -1;
            if (Drop(j) || !j.Decoding) continue;
            var g = j.Generation;
            if (j.Draft is HeadsDraft treeHeads && j.Tree is { Length: > 0 } shape && _model is ModelBase { SupportsTrees: true })
            {
                // Draft heads with a tree: the pending token and every candidate in one tree run.
                var (rowTokens, rowParents) = SpeculativeRun.TreePropose(treeHeads, shape, g, _model.ContextLength, j.TreeNodeTokens, j.TreeNodeParents);
                j.TreeTokens = rowTokens; j.TreeParents = rowParents; j.TreePos = g.Held.Count;
                j.LogitsRow = _batch.AddTree(j.State, rowTokens, rowParents, g.Held.Count);
                decoding += rowTokens.Length;
                continue;
            }
            if (j.Draft is { } source)
            {
                // Speculative: the pending token and its drafts in one run, every row's logits.
                j.DraftCount = SpeculativeRun.Propose(source, g, j.Context, j.Drafts, _model.ContextLength);
                var run = j.RunTokens.AsSpan(0, j.DraftCount + 1);
                run[0] = g.Next;
                j.Drafts.AsSpan(0, j.DraftCount).CopyTo(run[1..]);
                j.LogitsRow = _batch.Add(j.State, run, g.Held.Count, LogitsWanted.All);
                decoding += j.DraftCount + 1;
                continue;
            }
            j.LogitsRow = _batch.Add(j.State, [g.Next], g.Held.Count);
            decoding++;
        }
        // Then prompt chunks, in arrival order, within the budget (at least one row of prefill per step, so admission
        // always progresses).
        int budget = (decoding > 0 ? StepRows : PrefillRows) - decoding;
        foreach (var j in _active)
        {
            if (j.Decoding || j.Generation.Done) continue;
            if (budget <= 0 && _batch.RowCount > 0) break;
            var g = j.Generation;
            int take = Math.Min(g.PromptLeft, Math.Max(budget, 1));
            bool last = take == g.PromptLeft;
            j.LogitsRow = _batch.Add(j.State, g.Prompt.AsSpan(g.Held.Count, take), g.Held.Count, last ? LogitsWanted.Last : LogitsWanted.None);
            g.PromptRan(take);
            budget -= take;
        }
        if (_batch.RowCount > 0)
        {
            int v = _model.VocabSize;
            if (_logits.Length < _batch.LogitsRows * v) _logits = new float[Math.Max(_batch.LogitsRows, 16) * v];
            _model.Forward(_batch, _logits);
            Steps++;
            Rows += _batch.RowCount;
            MostInStep = Math.Max(MostInStep, decoding);
        }
        // Sample, emit, retire.
        for (int i = 0; i < _active.Count; i++)
        {
            var j = _active[i];
            var g = j.Generation;
            if (!g.Done && j.LogitsRow >= 0)
            {
                int v = _model.VocabSize;
                _emit.Clear();
                long accepted = g.Stats.AcceptedTokens;
                int hiddenRow = -1;
                if (j.Decoding && j.TreeTokens is { } rowTokens)
                {
                    j.Decoding = SpeculativeRun.TreeAccept((ModelBase)_model, g, j.State, j.TreePos, rowTokens, j.TreeParents!,
                                                           _logits.AsSpan(j.LogitsRow * v, rowTokens.Length * v), _emit, out int last);
                    j.TreeTokens = j.TreeParents = null;
                    hiddenRow = j.LogitsRow + last;
                }
                else if (j.Decoding && j.Draft is not null)
                {
                    g.NextRan();
                    j.Decoding = SpeculativeRun.AcceptRows(g, _logits.AsSpan(j.LogitsRow * v, (j.DraftCount + 1) * v), v, j.Drafts.AsSpan(0, j.DraftCount), _emit);
                    // A step of this sequence alone times its draft length (beside others, its rows' share is unknown).
                    if (_active.Count == 1 && _batch.RowCount == j.DraftCount + 1)
                        g.Drafting.ObserveCost(j.DraftCount, Stopwatch.GetElapsedTime(started).TotalSeconds);
                }
                else
                {
                    if (j.Decoding) g.NextRan();
                    j.Decoding = g.Accept(_logits.AsSpan(j.LogitsRow * v, v), _emit);
                }
                if (j.Decoding && j.Draft is { WantsHidden: true } heads && _model is ModelBase mb)
                {
                    // Draft heads start from the hidden row the pending token was sampled from.
                    var hidden = j.Hidden ??= new float[mb.HiddenSize];
                    mb.CopyCapturedHidden(hiddenRow >= 0 ? hiddenRow : j.LogitsRow + (int)(g.Stats.AcceptedTokens - accepted), hidden);
                    heads.Observe(hidden);
                }
                foreach (var t in _emit) j.Output.Writer.TryWrite(t);
            }
            if (g.Done)
            {
                j.End();
                lock (_gate) { _reserved -= j.Reserve; _active.RemoveAt(i--); }
            }
        }
    }

    /// <summary>Ends a job whose reader left or whose caller cancelled; returns whether it is done.</summary>
    private bool Drop(Job j)
    {
        var g = j.Generation;
        if (g.Done) return true;
        if (!j.Abandoned && !g.Cancellation.IsCancellationRequested) return false;
        _emit.Clear();
        g.Finish(FinishReason.Cancelled, _emit);
        foreach (var t in _emit) j.Output.Writer.TryWrite(t);
        return true;
    }

    /// <summary>Stops the loop after the step in progress; waiting and running generations end with an error.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_stop) return;
            _stop = true;
            Monitor.PulseAll(_gate);
        }
        if (Thread.CurrentThread != _thread) _thread.Join();
    }
}
