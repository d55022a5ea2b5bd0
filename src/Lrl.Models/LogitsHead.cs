namespace Lrl.Models;

/// <summary>
/// The output projection every architecture ends with: turns the final hidden rows of each batched chunk into the
/// logits <see cref="ILanguageModel.Forward"/> was asked for — every token's, or only the last token's through a
/// single row of the (large) head. Owns its two buffers.
/// </summary>
internal sealed class LogitsHead : IDisposable
{
    private readonly IBackend _b;
    private readonly Weight _head;
    private readonly int _hidden, _vocab;
    private readonly DeviceBuffer _last;    // [1, hidden] the last row, for last-token logits
    private readonly DeviceBuffer _logits;  // [batch, vocab]
    private DeviceBuffer? _gathered;        // [batch, hidden] rows of a batched step that want logits (made on first use)
    private readonly int _batch;
    private int _count;
    private float[] _captured = []; // host copies of the hidden rows behind the last pass's logits rows

    /// <summary>
    /// While &gt; 0, every pass also keeps the final hidden row behind each logits row it writes, on the host
    /// (<see cref="CapturedRow"/>): draft heads start from it. A count, so overlapping users each hold it.
    /// </summary>
    public int Capture;

    public int HiddenSize => _hidden;
    public int Capacity => _batch;
    public Weight Weight => _head;

    /// <summary>The hidden row behind logits row <paramref name="logitsRow"/> of the last pass (with <see cref="Capture"/> on).</summary>
    public ReadOnlySpan<float> CapturedRow(int logitsRow) =>
        (long)(logitsRow + 1) * _hidden <= _captured.Length ? _captured.AsSpan(logitsRow * _hidden, _hidden)
        : throw new InvalidOperationException($"no hidden row was kept for logits row {logitsRow}");

    private void Keep(DeviceBuffer hidden, long sourceRow, int rows, int at)
    {
        if (Capture <= 0) return;
        long need = (long)(at + rows) * _hidden;
        if (_captured.Length < need) Array.Resize(ref _captured, (int)Math.Max(need, 2L * _captured.Length));
        _b.Download(hidden, sourceRow * _hidden, _captured.AsSpan(at * _hidden, rows * _hidden));
    }

    public LogitsHead(IBackend backend, Weight head, int hidden, int vocab, int batch)
    {
        _b = backend; _head = head; _hidden = hidden; _vocab = vocab; _batch = batch;
        _last = backend.Allocate(hidden);
        _logits = backend.Allocate((long)batch * vocab);
    }

    /// <summary>
    /// Checks a Forward call — tokens to run, positions inside the context window, a logits span of a valid length —
    /// and returns whether the span holds every one of the <paramref name="n"/> tokens' logits (else the last's only).
    /// </summary>
    public bool Begin(int n, int startPos, int contextLength, Span<float> logits)
    {
        if (n == 0) throw new ArgumentException("no tokens to run");
        if (startPos < 0 || (long)startPos + n > contextLength)
            throw new LrlException($"positions {startPos}..{(long)startPos + n - 1} exceed the context window of {contextLength} tokens");
        bool all = logits.Length == (long)n * _vocab;
        if (!all && logits.Length != _vocab)
            throw new ArgumentException($"logits must hold {_vocab} (last token) or {(long)n * _vocab} (every token) values");
        return all;
    }

    /// <summary>
    /// Chunk [done, done + rows) of <paramref name="n"/> tokens left its final hidden rows in <paramref name="hidden"/>;
    /// <paramref name="head"/>: the sequence's own output projection (an adapter's replaced lm_head), null for the model's.
    /// </summary>
    public void Write(DeviceBuffer hidden, int rows, int done, int n, bool all, Span<float> logits, Weight? head = null)
    {
        head ??= _head;
        if (all)
        {
            Keep(hidden, 0, rows, done);
            _b.MatMul(hidden, head, _logits, rows);
            _b.Download(_logits, 0, logits.Slice(done * _vocab, rows * _vocab));
        }
        else if (done + rows == n)
        {
            _b.Copy(hidden, (long)(rows - 1) * _hidden, _last, 0, _hidden);
            Keep(_last, 0, 1, 0);
            _b.MatMul(_last, head, _logits, 1);
            _b.Download(_logits, 0, logits);
        }
    }

    /// <summary>
    /// The greedy token of the last of the chunk's <paramref name="rows"/> hidden rows: the head over that row, then the
    /// backend's argmax (on a GPU only the id is copied back).
    /// </summary>
    public int WriteArgmax(DeviceBuffer hidden, int rows, Weight? head = null)
    {
        LastRowLogits(hidden, rows, head);
        return _b.Argmax(_logits, _vocab);
    }

    /// <summary>
    /// As <see cref="WriteArgmax"/>, sampling instead (<see cref="IBackend.Sample"/>: on a GPU only the id comes back).
    /// </summary>
    public int WriteSample(DeviceBuffer hidden, int rows, float temperature, int topK, float topP, float minP, float uniform01, Weight? head = null)
    {
        LastRowLogits(hidden, rows, head);
        return _b.Sample(_logits, _vocab, temperature, topK, topP, uniform01, minP);
    }

    private void LastRowLogits(DeviceBuffer hidden, int rows, Weight? head)
    {
        _b.Copy(hidden, (long)(rows - 1) * _hidden, _last, 0, _hidden);
        Keep(_last, 0, 1, 0);
        _b.MatMul(_last, head ?? _head, _logits, 1);
    }

    /// <summary>
    /// Batched step: queues <paramref name="rows"/> hidden rows from row <paramref name="row"/> for <see cref="Flush"/>,
    /// through <paramref name="head"/> (a sequence's replaced lm_head) or the model's (null).
    /// </summary>
    public void Gather(DeviceBuffer hidden, int row, int rows, Weight? head = null)
    {
        if (_count + rows > _batch) throw new InvalidOperationException("more logits rows gathered than one chunk holds");
        _gathered ??= _b.Allocate((long)_batch * _hidden);
        _b.Copy(hidden, (long)row * _hidden, _gathered, (long)_count * _hidden, (long)rows * _hidden);
        if (head is not null && !ReferenceEquals(head, _head)) _own.Add((_count, rows, head));
        _count += rows;
    }

    // Gathered rows [At, At + Rows) whose sequence has its own head (recomputed through it at Flush).
    private readonly List<(int At, int Rows, Weight Head)> _own = new();
    private DeviceBuffer? _ownIn, _ownOut;

    /// <summary>
    /// Runs the head over the gathered rows and writes their logits to <paramref name="logits"/> (count · vocab), the
    /// pass's logits rows from <paramref name="at"/> (where kept hidden rows go).
    /// </summary>
    public int Flush(Span<float> logits, int at = 0)
    {
        int n = _count;
        if (n == 0) return 0;
        _count = 0;
        Keep(_gathered!, 0, n, at);
        _b.MatMul(_gathered!, _head, _logits, n);
        foreach (var (from, rows, head) in _own)
        {
            // Those rows again through their sequence's head, over the model head's logits.
            _ownIn ??= _b.Allocate((long)_batch * _hidden);
            _ownOut ??= _b.Allocate((long)_batch * _vocab);
            _b.Copy(_gathered!, (long)from * _hidden, _ownIn, 0, (long)rows * _hidden);
            _b.MatMul(_ownIn, head, _ownOut, rows);
            _b.Copy(_ownOut, 0, _logits, (long)from * _vocab, (long)rows * _vocab);
        }
        _own.Clear();
        _b.Download(_logits, 0, logits.Slice(0, n * _vocab));
        return n;
    }

    public void Dispose()
    {
        _gathered?.Dispose();
        _ownIn?.Dispose();
        _ownOut?.Dispose();
        _last.Dispose();
        _logits.Dispose();
    }
}
