namespace Lrl;

/// <summary>Which logits a run of a <see cref="StepBatch"/> wants back.</summary>
public enum LogitsWanted
{
    /// <summary>None (a prefill chunk that is not the prompt's last).</summary>
    None,
    /// <summary>The run's last row only (decode, or a prompt's last chunk).</summary>
    Last,
    /// <summary>Every row of the run (perplexity, speculative verification).</summary>
    All,
}

/// <summary>
/// The rows of one batched forward step, in runs: each run is consecutive tokens of one sequence state at consecutive
/// positions. Prefill is one run of n rows; batched decode is B runs of one row; they mix freely in one step, and
/// every matrix product of the step reads each weight once for all rows. Reusable: <see cref="Clear"/> and fill again
/// (no allocation once its arrays have grown to the largest step). Not thread-safe.
/// </summary>
public sealed class StepBatch
{
    /// <summary>One sequence's rows in the batch.</summary>
    /// <param name="State">The sequence's state (KV cache or recurrent state).</param>
    /// <param name="Row0">First row of the run in the batch.</param>
    /// <param name="Rows">Rows (tokens) of the run.</param>
    /// <param name="StartPos">Position of the run's first token; the state holds positions 0 .. StartPos-1.</param>
    /// <param name="Logits">Which logits the run wants.</param>
    /// <param name="LogitsRow">Row of the logits output where the run's first wanted row goes (-1: none).</param>
    public readonly record struct Run(ISequenceState State, int Row0, int Rows, int StartPos, LogitsWanted Logits, int LogitsRow)
    {
        /// <summary>A tree of candidates (<see cref="AddTree"/>): each row's parent row within the run, −1 for the root.</summary>
        public int[]? Parents { get; init; }
    }

    private int[] _tokens;
    private Run[] _runs;

    public StepBatch(int rowCapacity = 64)
    {
        _tokens = new int[Math.Max(1, rowCapacity)];
        _runs = new Run[Math.Max(1, Math.Min(rowCapacity, 64))];
    }

    /// <summary>Rows (tokens) in the batch.</summary>
    public int RowCount { get; private set; }
    /// <summary>Runs (sequences) in the batch.</summary>
    public int RunCount { get; private set; }
    /// <summary>Rows of logits the step writes (the logits span holds LogitsRows · vocab floats).</summary>
    public int LogitsRows { get; private set; }

    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, RowCount);
    public ReadOnlySpan<Run> Runs => _runs.AsSpan(0, RunCount);

    /// <summary>
    /// Where a run's logits go in a step's output: its row(s) of <paramref name="logits"/>, or, for a run that wants
    /// none, <paramref name="discard"/> (made on first use) for the pass to write into.
    /// </summary>
    public static Span<float> LogitsOf(in Run run, Span<float> logits, int vocab, ref float[]? discard) => run.Logits switch
    {
        LogitsWanted.None => discard ??= new float[vocab],
        LogitsWanted.Last => logits.Slice(run.LogitsRow * vocab, vocab),
        _ => logits.Slice(run.LogitsRow * vocab, run.Rows * vocab),
    };

    /// <summary>Empties the batch (keeps its arrays).</summary>
    public void Clear()
    {
        Array.Clear(_runs, 0, RunCount); // drop the state references
        RowCount = RunCount = LogitsRows = 0;
    }

    /// <summary>
    /// Appends a run: <paramref name="tokens"/> of <paramref name="state"/> at positions startPos ... Returns the row of
    /// the logits output where the run's (first) logits go, or -1 when it wants none. A state may appear once per step.
    /// </summary>
    public int Add(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, LogitsWanted logits = LogitsWanted.Last)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (tokens.IsEmpty) throw new ArgumentException("a run needs at least one token", nameof(tokens));
        if (startPos < 0) throw new ArgumentOutOfRangeException(nameof(startPos), startPos, "the start position must be ≥ 0");
        if (logits is < LogitsWanted.None or > LogitsWanted.All) throw new ArgumentOutOfRangeException(nameof(logits));
        for (int i = 0; i < RunCount; i++)
            if (ReferenceEquals(_runs[i].State, state))
                throw new ArgumentException("a sequence state can appear only once in a step (its rows form one run)", nameof(state));
        if (RowCount + tokens.Length > _tokens.Length) Array.Resize(ref _tokens, Math.Max(RowCount + tokens.Length, _tokens.Length * 2));
        if (RunCount == _runs.Length) Array.Resize(ref _runs, _runs.Length * 2);
        int at = logits == LogitsWanted.None ? -1 : LogitsRows;
        tokens.CopyTo(_tokens.AsSpan(RowCount));
        _runs[RunCount++] = new Run(state, RowCount, tokens.Length, startPos, logits, at);
        RowCount += tokens.Length;
        LogitsRows += logits switch { LogitsWanted.Last => 1, LogitsWanted.All => tokens.Length, _ => 0 };
        return at;
    }

    /// <summary>
    /// Appends a tree of candidate tokens after the state's first <paramref name="startPos"/> tokens (speculative
    /// verification; see the model's ForwardTree): row r follows row <paramref name="parents"/>[r] (−1: the root), every
    /// row's logits wanted. Returns the logits row of the root.
    /// </summary>
    public int AddTree(ISequenceState state, ReadOnlySpan<int> tokens, ReadOnlySpan<int> parents, int startPos)
    {
        TreeAttention.Validate(parents, tokens.Length);
        int at = Add(state, tokens, startPos, LogitsWanted.All);
        _runs[RunCount - 1] = _runs[RunCount - 1] with { Parents = parents.ToArray() };
        return at;
    }
}
