using System.Diagnostics;
using System.Runtime.InteropServices;
using Lrl.Models;

namespace Lrl;

/// <summary>Proposes draft tokens to follow a sequence (speculative decoding).</summary>
internal interface IDraftSource : IDisposable
{
    /// <summary>
    /// Writes up to <paramref name="draft"/>.Length tokens likely to follow <paramref name="context"/> (the whole
    /// sequence so far, its last token not yet run by the model) and returns how many.
    /// </summary>
    int Propose(ReadOnlySpan<int> context, Span<int> draft);

    /// <summary>Whether the source drafts from the model's final hidden state (<see cref="Observe"/> after each pass).</summary>
    bool WantsHidden => false;

    /// <summary>The final hidden row behind the pending token's logits (the row the model sampled it from).</summary>
    void Observe(ReadOnlySpan<float> hidden) { }
}

/// <summary>
/// Medusa-1 draft heads: from the hidden row that produced the pending token, head k proposes the token k positions
/// after it (a chain of each head's top token). Costs the heads' small residual blocks and one pass of the output
/// projection over K rows per step; no second model, no extra cache.
/// </summary>
internal sealed class HeadsDraft : IDraftSource
{
    private readonly ModelBase _model;
    private readonly DraftHeads _heads;
    private readonly IDisposable _capture;
    private readonly float[] _hidden, _logits;
    private bool _observed;

    public HeadsDraft(ModelBase model, DraftHeads heads)
    {
        if (model.HiddenSize == 0) throw new LrlException($"{model.Architecture} cannot run draft heads (Llama-family and GPT-2 models can)");
        if (heads.Hidden != model.HiddenSize || heads.Vocab != model.VocabSize)
            throw new LrlException($"the draft heads are for hidden size {heads.Hidden} and {heads.Vocab} tokens; the model has {model.HiddenSize} and {model.VocabSize}");
        _model = model;
        _heads = heads;
        _capture = model.CaptureHidden();
        _hidden = new float[heads.Hidden];
        _logits = new float[heads.Count * heads.Vocab];
    }

    public bool WantsHidden => true;

    public void Observe(ReadOnlySpan<float> hidden)
    {
        hidden.CopyTo(_hidden);
        _observed = true;
    }

    public int Propose(ReadOnlySpan<int> context, Span<int> draft)
    {
        if (!_observed) return 0; // the first step after a prompt run without the hidden rows kept: plain
        _observed = false;
        _model.RunDraftHeads(_heads, _hidden, _logits);
        int n = Math.Min(draft.Length, _heads.Count);
        for (int k = 0; k < n; k++) draft[k] = Logits.ArgMax(_logits.AsSpan(k * _heads.Vocab, _heads.Vocab));
        return n;
    }

    /// <summary>
    /// Tree candidates after the pending token (row 0): depth d + 1 holds, under every node of depth d, the top
    /// <paramref name="branching"/>[d] tokens of head d + 1 (Medusa's heads predict a position, not a continuation of a
    /// particular parent), at most <paramref name="maxNodes"/> nodes in breadth-first order. Returns the node count
    /// (0 without a hidden row to draft from).
    /// </summary>
    public int ProposeTree(ReadOnlySpan<int> branching, int maxDepth, int maxNodes, List<int> tokens, List<int> parents)
    {
        tokens.Clear(); parents.Clear();
        if (!_observed || maxNodes <= 0 || maxDepth <= 0) return 0;
        _observed = false;
        _model.RunDraftHeads(_heads, _hidden, _logits);
        int depth = Math.Min(Math.Min(branching.Length, _heads.Count), maxDepth);
        var frontier = new List<int> { 0 };
        var next = new List<int>();
        for (int d = 0; d < depth && tokens.Count < maxNodes; d++)
        {
            var top = TopK(_logits.AsSpan(d * _heads.Vocab, _heads.Vocab), branching[d]);
            next.Clear();
            foreach (int node in frontier)
                foreach (int t in top)
                {
                    if (tokens.Count == maxNodes) break;
                    tokens.Add(t);
                    parents.Add(node);
                    next.Add(tokens.Count); // rows: the pending token is row 0, node i is row i + 1
                }
            (frontier, next) = (next, frontier);
        }
        return tokens.Count;
    }

    private static int[] TopK(ReadOnlySpan<float> x, int k)
    {
        k = Math.Clamp(k, 1, x.Length);
        var best = new int[k];
        int n = 0;
        for (int i = 0; i < x.Length; i++)
        {
            if (n == k && x[i] <= x[best[k - 1]]) continue;
            int at = n < k ? n++ : k - 1;
            while (at > 0 && x[best[at - 1]] < x[i]) { best[at] = best[at - 1]; at--; }
            best[at] = i;
        }
        return best;
    }

    public void Dispose() => _capture.Dispose();
}

/// <summary>
/// Prompt lookup (n-gram) drafts: the tokens that followed the latest earlier occurrence of the sequence's last n tokens
/// (n from 4 down to 1), in the prompt or the text so far. No weights; strong where the output repeats its input
/// (translation, summarization, editing, code). A continuation that reaches the end of the text goes on as an
/// overlapping copy (LZ77's): the text that repeats with period d keeps repeating, so a loop drafts a full run instead
/// of the d tokens left before the end (a one-token loop drafted one token per step).
/// </summary>
internal sealed class LookupDraft : IDraftSource
{
    private const int MaxNgram = 4;

    public int Propose(ReadOnlySpan<int> context, Span<int> draft)
    {
        int n = context.Length;
        for (int g = Math.Min(MaxNgram, n - 1); g >= 1; g--)
        {
            var tail = context[(n - g)..];
            // Latest earlier occurrence whose continuation exists.
            for (int start = n - g - 1; start >= 0; start--)
            {
                if (!context.Slice(start, g).SequenceEqual(tail)) continue;
                int from = start + g, period = n - from;
                if (period <= 0) continue;
                for (int i = 0; i < draft.Length; i++) draft[i] = i < period ? context[from + i] : draft[i - period];
                return draft.Length;
            }
        }
        return 0;
    }

    public void Dispose() { }
}

/// <summary>
/// Self-speculation by early exit (LayerSkip-style): greedy drafts from the model's first layers, its final norm and
/// head, over the same sequence state (the full verification pass overwrites those positions' cache entries).
/// </summary>
internal sealed class EarlyExitDraft(ModelBase model, ISequenceState state, int layers) : IDraftSource
{
    private readonly float[] _logits = new float[model.VocabSize];
    private readonly int[] _one = new int[1];

    public int Propose(ReadOnlySpan<int> context, Span<int> draft)
    {
        int pos = context.Length - 1, count = 0;
        int room = Math.Min(draft.Length, model.ContextLength - 1 - pos);
        int token = context[^1];
        for (; count < room; count++)
        {
            _one[0] = token;
            model.ForwardLayers(state, _one, pos + count, _logits, layers);
            token = Logits.ArgMax(_logits);
            draft[count] = token;
        }
        return count;
    }


    public void Dispose() { }
}

/// <summary>
/// A draft model with the same tokenizer (as llama.cpp's llama-speculative): its own state follows the sequence
/// (reusing the prefix it holds), then it drafts greedily.
/// </summary>
internal sealed class DraftModelSource : IDraftSource
{
    private readonly ILanguageModel _model;
    private readonly ISequenceState _state;
    private readonly List<int> _held = new();
    private readonly float[] _logits;
    private readonly int[] _one = new int[1];

    public DraftModelSource(LrlModel draft, LrlModel target)
    {
        if (draft.Model.VocabSize != target.Model.VocabSize || draft.Tokenizer.VocabSize != target.Tokenizer.VocabSize)
            throw new LrlException($"the draft model's vocabulary ({draft.Model.VocabSize} tokens) is not the model's ({target.Model.VocabSize}); a draft model needs the same tokenizer");
        if (!draft.Tokenizer.EosIds.SequenceEqual(target.Tokenizer.EosIds))
            throw new LrlException("the draft model's end-of-sequence tokens differ from the model's; a draft model needs the same tokenizer");
        _model = draft.Model;
        _state = _model.CreateState();
        _logits = new float[_model.VocabSize];
    }

    public int Propose(ReadOnlySpan<int> context, Span<int> draft)
    {
        int n = context.Length;
        if (n > _model.ContextLength) return 0;
        int reuse = Generation.SharedPrefix(_held, context);
        if (reuse == n) reuse--; // the last token must run to give logits
        if (reuse < _held.Count && !_model.CanRewind) reuse = 0;
        _held.RemoveRange(reuse, _held.Count - reuse);
        _model.Forward(_state, context[reuse..], reuse, _logits);
        _held.AddRange(context[reuse..]);
        int room = Math.Min(draft.Length, _model.ContextLength - n);
        int count = 0;
        for (; count < room; count++)
        {
            int t = Logits.ArgMax(_logits);
            draft[count] = t;
            if (count + 1 == room) { count++; break; }
            _one[0] = t;
            _model.Forward(_state, _one, n + count, _logits);
            _held.Add(t);
        }
        return count;
    }

    public void Dispose() => _state.Dispose();
}

/// <summary>
/// Adaptive draft length. An average of the fraction of drafted tokens accepted caps how many to draft next (as deep as
/// a run of accepted drafts reaches with about 10 % probability), and when drafts keep failing (the average below 12 %)
/// the generation decodes plainly for a while before probing with one draft again, the pause doubling with each failed
/// probe (16, 32, ... 512 steps), so a source that never hits costs a few probes per generation: little more than
/// plain decoding. Under the cap, with <see cref="ByCost"/> and timed steps (<see cref="ObserveCost"/>), the length
/// drafted is the one with the most expected tokens per second: E(n) = 1 + r + ... + rⁿ at the acceptance rate r over
/// the time of a step that drafted n (its drafting, verify pass and sampling), measured for the lengths run and
/// interpolated between them; every fourth step tries a neighbour of the choice so that the times around it stay fresh,
/// and one in 64 is plain, timing the alternative: where even the best length yields fewer tokens per second than plain
/// steps (a draft that costs nearly a step per token, a low acceptance rate), the generation backs off as from failing
/// drafts.
/// </summary>
internal sealed class DraftControl
{
    private const double Keep = 0.75;          // weight of the past in the average
    private const double GiveUp = 0.12;        // below this acceptance rate: back off
    private const int PlainSteps = 16;         // plain steps before the first probe
    private const int MaxPause = 512;
    private const int MaxDrafts = 64;
    private const double CostKeep = 0.7;       // weight of the past in a length's time
    // One draft first: an accepted one lifts the rate to 0.33 (three drafts next) and a good source deepens within a few
    // steps; a rejected one backs off at once, so a source that never hits costs one draft per probe.
    private double _rate = 0.1;
    private int _pause, _failures, _choices, _costBackOffs, _observed;
    private bool _costProbe; // the step after a back-off for cost drafts, to time drafting again
    private readonly double[] _seconds = new double[MaxDrafts + 1]; // average time of a step by its drafts; 0 = not run

    /// <summary>Choose the length by measured step times (<see cref="DraftLength.Cost"/>); otherwise by acceptance alone.</summary>
    public bool ByCost { get; set; } = true;

    /// <summary>Plain steps the last back-off chose (tests).</summary>
    internal int LastPause { get; private set; }

    /// <summary>Drafts to propose this step (0 while backing off), at most <paramref name="most"/>.</summary>
    public int Length(int most)
    {
        if (_pause > 0) { _pause--; return 0; }
        // Deep enough that a run reaches the last draft with about 10 % probability (verify rows cost little on a
        // bandwidth-bound model; rows nearly sure to be rejected are what to save).
        double depth = _rate >= 0.99 ? most : Math.Log(0.1) / Math.Log(Math.Max(_rate, 1e-3));
        int cap = Math.Clamp((int)Math.Ceiling(depth), 1, Math.Min(most, MaxDrafts));
        if (!ByCost || !Timed(cap)) return cap;
        _choices++;
        // A plain step now and then (the third timed step, then one in 64) times the alternative to drafting.
        if (_choices % PlainEvery == 3) return 0;
        int best = cap;
        double bestScore = 0, expected = 1, term = 1, r = Math.Min(_rate, 0.999);
        for (int n = 1; n <= cap; n++)
        {
            term *= r;
            expected += term;
            double score = expected / Estimate(n);
            if (score > bestScore) { bestScore = score; best = n; }
        }
        if (_seconds[0] > 0 && _observed >= Settled && bestScore * _seconds[0] < 0.9)
        {
            // Even the best length yields fewer tokens per second than plain steps (drafts that cost nearly a step
            // each, or a low acceptance): decode plainly for a while (16, 32, ... 512 steps as this repeats), keeping
            // the acceptance rate, then run one step at the best length to time it again.
            if (!_costProbe)
            {
                _pause = LastPause = Math.Min(MaxPause, PlainSteps << Math.Min(_costBackOffs++, 5));
                _costProbe = true;
                _pause--;
                return 0;
            }
        }
        else _costBackOffs = 0;
        _costProbe = false;
        if (_choices % 8 == 0 && best < cap) best++;
        else if (_choices % 8 == 4 && best > 1) best--;
        return best;
    }

    /// <summary>Plain steps between the ones that time plain decoding, in cost-aware mode.</summary>
    private const int PlainEvery = 64;
    /// <summary>Verify steps observed (since the last back-off for failing drafts) before the rate is trusted to weigh drafting against plain steps.</summary>
    private const int Settled = 12;

    /// <summary>Decodes plainly for a while (16, 32, ... 512 steps as back-offs repeat), then probes with one draft.</summary>
    private void BackOff()
    {
        _observed = 0;
        _pause = LastPause = Math.Min(MaxPause, PlainSteps << Math.Min(_failures, 5));
        _failures++;
        // The probe after the pause drafts one token: an accepted one lifts the rate to 0.33 (two drafts next).
        _rate = 0.1;
    }

    /// <summary>Whether any step with 1..<paramref name="cap"/> drafts has been timed.</summary>
    private bool Timed(int cap)
    {
        for (int n = 1; n <= cap; n++) if (_seconds[n] > 0) return true;
        return false;
    }

    /// <summary>A step that drafted <paramref name="drafts"/> tokens (0: a plain step) took <paramref name="seconds"/>.</summary>
    public void ObserveCost(int drafts, double seconds)
    {
        if (!ByCost || (uint)drafts > MaxDrafts || !(seconds > 0) || double.IsInfinity(seconds)) return;
        ref double s = ref _seconds[drafts];
        // A step stalled by the machine (another process, a page fault) moves the average by at most a factor of 2.
        s = s == 0 ? seconds : CostKeep * s + (1 - CostKeep) * Math.Clamp(seconds, s / 2, s * 2);
    }

    /// <summary>
    /// The expected time of a step with <paramref name="n"/> drafts: measured, or linear between the nearest measured
    /// lengths, or beyond them along the slope of the two nearest (flat when only one is measured).
    /// </summary>
    internal double Estimate(int n)
    {
        if (_seconds[n] > 0) return _seconds[n];
        int lo = Measured(n - 1, -1), hi = Measured(n + 1, +1);
        if (lo >= 0 && hi >= 0) return _seconds[lo] + (_seconds[hi] - _seconds[lo]) * (n - lo) / (hi - lo);
        if (lo >= 0)
        {
            int lo2 = Measured(lo - 1, -1);
            double slope = lo2 < 0 ? 0 : Math.Max(0, (_seconds[lo] - _seconds[lo2]) / (lo - lo2));
            return _seconds[lo] + slope * (n - lo);
        }
        if (hi >= 0)
        {
            int hi2 = Measured(hi + 1, +1);
            double slope = hi2 < 0 ? 0 : Math.Max(0, (_seconds[hi2] - _seconds[hi]) / (hi2 - hi));
            return Math.Max(_seconds[hi] - slope * (hi - n), _seconds[hi] / 4);
        }
        return 1;
    }

    /// <summary>The first measured length from <paramref name="n"/> in direction <paramref name="step"/>; −1 if none.</summary>
    private int Measured(int n, int step)
    {
        for (; n >= 0 && n <= MaxDrafts; n += step) if (_seconds[n] > 0) return n;
        return -1;
    }

    /// <summary>A verify step kept <paramref name="accepted"/> of <paramref name="drafted"/> drafts.</summary>
    public void Observe(int drafted, int accepted)
    {
        if (drafted == 0) return;
        _observed++;
        if (accepted > 0) _failures = 0;
        // A step stopped early by the draft's failure says the rate is below accepted / (accepted + 1).
        double rate = (double)accepted / Math.Min(drafted, accepted + 1);
        _rate = Keep * _rate + (1 - Keep) * rate;
        if (_rate < GiveUp) BackOff();
    }
}

/// <summary>
/// The verification core: one batched pass over the pending token and the drafts (every row's logits), then the
/// generation's own sampling over the rows in order, keeping drafts while the model's token equals them. Every
/// emitted token is the model's sample from its own logits for the true prefix, so greedy output equals plain greedy
/// output and, with a seed, sampling draws the same random numbers in the same order as plain decoding: output
/// distribution (and seeded output) unchanged. For a draft token d with the model's distribution p this accepts with
/// probability p(d) and otherwise emits a sample of p without d, renormalized: the speculative sampling rule
/// min(1, p/q) with the residual max(0, p − q) for a deterministic draft (q = the point mass at d).
/// </summary>
internal static class SpeculativeRun
{
    public static IDraftSource CreateSource(LrlModel owner, ISequenceState state, GenerationOptions options) => options.Speculative switch
    {
        SpeculativeMethod.Lookup => new LookupDraft(),
        SpeculativeMethod.EarlyExit => owner.Model is ModelBase { LayerCount: > 1 } mb
            ? new EarlyExitDraft(mb, state, options.DraftLayers == 0 ? Math.Max(1, mb.LayerCount / 2) :
                options.DraftLayers < mb.LayerCount ? options.DraftLayers
                : throw new LrlException($"--draft-layers must be below the model's {mb.LayerCount} layers, got {options.DraftLayers}"))
            : throw new LrlException($"{owner.Model.Architecture} cannot draft by early exit (Llama-family models can)"),
        SpeculativeMethod.Draft => new DraftModelSource(options.DraftModel!, owner),
        SpeculativeMethod.Heads => owner.Model is ModelBase hb
            ? new HeadsDraft(hb, options.DraftHeads!)
            : throw new LrlException($"{owner.Model.Architecture} cannot run draft heads"),
        _ => throw new ArgumentOutOfRangeException(nameof(options)),
    };

    /// <summary>
    /// Runs a generation speculatively over <paramref name="state"/> (after its prompt ran and <paramref name="first"/>
    /// holds the last prompt row's logits).
    /// </summary>
    public static IEnumerable<GeneratedToken> Run(LrlModel owner, ISequenceState state, Generation g, GenerationOptions options, float[] first, IDraftSource source)
    {
        var model = owner.Model;
        int vocab = model.VocabSize, k = options.DraftTokens;
        var rows = new float[(k + 1) * vocab];
        var tokens = new int[k + 1];
        var draft = new int[k];
        var context = new List<int>(g.Held.Count + 64);
        var emit = new List<GeneratedToken>(2);
        g.Stats.AcceptedByDepth = new int[k];
        bool more = g.Accept(first, emit);
        var based = model as ModelBase; // every layered model: plain steps take its argmax, verify passes its exact rows
        var heads = source.WantsHidden ? based! : null;
        var hidden = heads is null ? [] : new float[heads.HiddenSize];
        if (more && heads is not null)
        {
            heads.CopyCapturedHidden(0, hidden); // the prompt's last row, kept since the source was made
            source.Observe(hidden);
        }
        foreach (var t in emit) yield return t;
        emit.Clear();
        var tree = options.DraftTree is { Length: > 0 } shape && source is HeadsDraft hd && model is ModelBase { SupportsTrees: true } tm
            ? (Shape: shape, Heads: hd, Model: tm) : default;
        var treeTokens = new List<int>();
        float[] treeLogits = [];
        var treeParents = new List<int>();
        while (more)
        {
            int pos = g.Held.Count;
            if (tree.Heads is not null)
            {
                more = TreeStep(tree.Model, tree.Heads, tree.Shape, state, g, pos, treeTokens, treeParents, hidden, ref treeLogits, emit);
                foreach (var t in emit) yield return t;
                emit.Clear();
                continue;
            }
            long started = Stopwatch.GetTimestamp(); // the step's time (drafting, verify, sampling) sets the length
            int n = Propose(source, g, context, draft, model.ContextLength);
            if (n == 0 && heads is null && g.PlainArgmax && based is not null)
            {
                // Backing off (or nothing to draft) under greedy decoding: a plain step exactly as without speculation
                // (the model takes the argmax where its logits are), so a source that never hits costs only its probes.
                tokens[0] = g.Next;
                int token = based.ForwardArgmax(state, tokens.AsSpan(0, 1), pos);
                g.NextRan();
                g.Stats.PlainSteps++;
                more = g.AcceptArgmax(token, emit);
                g.Drafting.ObserveCost(0, Stopwatch.GetElapsedTime(started).TotalSeconds);
                foreach (var t in emit) yield return t;
                emit.Clear();
                continue;
            }
            tokens[0] = g.Next;
            draft.AsSpan(0, n).CopyTo(tokens.AsSpan(1));
            if (based is not null) based.ForwardVerify(state, tokens.AsSpan(0, n + 1), pos, rows.AsSpan(0, (n + 1) * vocab));
            else model.Forward(state, tokens.AsSpan(0, n + 1), pos, rows.AsSpan(0, (n + 1) * vocab));
            g.NextRan();
            long accepted = g.Stats.AcceptedTokens;
            more = AcceptRows(g, rows, vocab, draft.AsSpan(0, n), emit);
            if (more && heads is not null)
            {
                // The pending token came from the row after the accepted drafts: its hidden state drafts next.
                heads.CopyCapturedHidden((int)(g.Stats.AcceptedTokens - accepted), hidden);
                source.Observe(hidden);
            }
            g.Drafting.ObserveCost(n, Stopwatch.GetElapsedTime(started).TotalSeconds);
            foreach (var t in emit) yield return t;
            emit.Clear();
        }
    }

    /// <summary>
    /// One verify step over a tree of head candidates: one pass over the pending token and every node (tree-masked
    /// attention), then the generation's own sampling from the root down (<see cref="TreeAccept"/>).
    /// </summary>
    private static bool TreeStep(ModelBase model, HeadsDraft heads, int[] shape, ISequenceState state, Generation g, int pos,
                                 List<int> tokens, List<int> parents, float[] hidden, ref float[] logitsBuffer, List<GeneratedToken> emit)
    {
        var (rowTokens, rowParents) = TreePropose(heads, shape, g, model.ContextLength, tokens, parents);
        int need = rowTokens.Length * model.VocabSize;
        if (logitsBuffer.Length < need) logitsBuffer = new float[need]; // grown once to the largest tree, not per step
        var logits = logitsBuffer.AsSpan(0, need);
        model.ForwardTree(state, rowTokens, rowParents, pos, logits);
        int cur;
        bool more = TreeAccept(model, g, state, pos, rowTokens, rowParents, logits, emit, out cur);
        if (more)
        {
            model.CopyCapturedHidden(cur, hidden);
            heads.Observe(hidden);
        }
        return more;
    }

    /// <summary>The rows of a tree step: the pending token (root), then the heads' candidates (none while backing off).</summary>
    internal static (int[] Tokens, int[] Parents) TreePropose(HeadsDraft heads, int[] shape, Generation g, int contextLength,
                                                              List<int> tokens, List<int> parents)
    {
        int maxDepth = g.Drafting.Length(shape.Length);
        int room = Math.Min(AttentionRowsMax, contextLength - 1 - g.Held.Count);
        int n = heads.ProposeTree(shape, maxDepth, room, tokens, parents);
        var rowTokens = new int[n + 1];
        var rowParents = new int[n + 1];
        rowTokens[0] = g.Next; rowParents[0] = -1;
        for (int i = 0; i < n; i++) { rowTokens[i + 1] = tokens[i]; rowParents[i + 1] = parents[i]; }
        return (rowTokens, rowParents);
    }

    /// <summary>Most nodes of a tree step besides the root (one 64-bit ancestor mask on a GPU).</summary>
    private const int AttentionRowsMax = 63;

    /// <summary>
    /// After a tree pass at <paramref name="pos"/> (its pending root recorded as run here): samples from the root down,
    /// descending into the child whose token is the model's own; keeps the accepted path's cache entries; updates the
    /// statistics and the adaptive length. <paramref name="last"/>: the node the pending token was sampled from.
    /// </summary>
    internal static bool TreeAccept(ModelBase model, Generation g, ISequenceState state, int pos, int[] rowTokens, int[] rowParents,
                                    Span<float> logitsRows, List<GeneratedToken> emit, out int last)
    {
        var stats = g.Stats;
        int vocab = model.VocabSize, rows = rowTokens.Length, n = rows - 1;
        g.NextRan();
        var path = new List<int> { 0 };
        int cur = 0, accepted = 0;
        bool more;
        while (true)
        {
            more = g.Accept(logitsRows.Slice(cur * vocab, vocab), emit); // each row is sampled once (in place: penalties)
            if (!more) break;
            int child = -1;
            for (int c = cur + 1; c < rows; c++)
                if (rowParents[c] == cur && rowTokens[c] == g.Next) { child = c; break; }
            if (child < 0) break;
            g.NextRan(); // its row already ran in this pass
            path.Add(child);
            cur = child;
            accepted++;
        }
        model.KeepTreePath(state, pos, CollectionsMarshal.AsSpan(path));
        if (n == 0) stats.PlainSteps++;
        else
        {
            int depth = 0;
            for (int a = rows - 1; a > 0; a = rowParents[a]) depth++;
            if (stats.AcceptedByDepth.Length < depth) stats.AcceptedByDepth = [.. stats.AcceptedByDepth, .. new int[depth - stats.AcceptedByDepth.Length]];
            stats.VerifySteps++;
            stats.DraftedTokens += n;
            stats.AcceptedTokens += accepted;
            for (int d = 0; d < accepted; d++) stats.AcceptedByDepth[d]++;
            g.Drafting.Observe(depth, Math.Min(accepted, depth));
        }
        last = cur;
        return more;
    }

    /// <summary>
    /// Tests only: a deliberately wrong acceptance rule (a draft token is kept whenever the model gives it at least a
    /// third of its top probability, instead of only when the model's own sample is it), to show that the losslessness
    /// tests catch a biased rule.
    /// </summary>
    [ThreadStatic] internal static bool BiasedRuleForTests; // per thread: only the test thread that sets it

    private static bool AcceptRowsBiased(Generation g, Span<float> rows, int vocab, ReadOnlySpan<int> drafts, List<GeneratedToken> emit)
    {
        for (int i = 0; ; i++)
        {
            var row = rows.Slice(i * vocab, vocab);
            if (i < drafts.Length)
            {
                float max = float.NegativeInfinity;
                foreach (var x in row) max = Math.Max(max, x);
                if (row[drafts[i]] >= max - MathF.Log(3))
                {
                    // Force the draft: every other logit far below it.
                    for (int t = 0; t < row.Length; t++) if (t != drafts[i]) row[t] = float.NegativeInfinity;
                }
            }
            if (!g.Accept(row, emit)) return false;
            if (i < drafts.Length && g.Next == drafts[i]) { g.NextRan(); continue; }
            return true;
        }
    }

    /// <summary>
    /// Drafts for the pending token <c>g.Next</c> (at most as many as the context leaves room for and the adaptive
    /// length allows: none while backing off); returns how many.
    /// </summary>
    internal static int Propose(IDraftSource source, Generation g, List<int> context, int[] draft, int contextLength)
    {
        int room = Math.Min(g.Drafting.Length(draft.Length), contextLength - 1 - g.Held.Count);
        if (room <= 0) return 0;
        context.Clear();
        context.AddRange(g.Held);
        context.Add(g.Next);
        return source.Propose(CollectionsMarshal.AsSpan(context), draft.AsSpan(0, room));
    }

    /// <summary>
    /// After a verify pass over the pending token and <paramref name="drafts"/> (rows 0 .. n of logits, the pending token
    /// already recorded as run): samples row by row, keeping drafts while the sample equals them; appends what to emit.
    /// Returns whether the generation goes on (with <c>g.Next</c> to run).
    /// </summary>
    internal static bool AcceptRows(Generation g, Span<float> rows, int vocab, ReadOnlySpan<int> drafts, List<GeneratedToken> emit)
    {
        if (BiasedRuleForTests) return AcceptRowsBiased(g, rows, vocab, drafts, emit);
        var stats = g.Stats;
        if (stats.AcceptedByDepth.Length < drafts.Length) stats.AcceptedByDepth = [.. stats.AcceptedByDepth, .. new int[drafts.Length - stats.AcceptedByDepth.Length]];
        if (drafts.Length == 0) { stats.PlainSteps++; return g.Accept(rows[..vocab], emit); } // backing off, or no room
        stats.VerifySteps++;
        stats.DraftedTokens += drafts.Length;
        for (int i = 0; ; i++)
        {
            bool more = g.Accept(rows.Slice(i * vocab, vocab), emit);
            if (more && i < drafts.Length && g.Next == drafts[i])
            {
                g.NextRan(); // its row already ran in this pass
                stats.AcceptedTokens++;
                stats.AcceptedByDepth[i]++;
                continue;
            }
            g.Drafting.Observe(drafts.Length, Math.Min(i, drafts.Length));
            return more; // the model's token differs from the draft (or follows the last draft): run it next
        }
    }
}
