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

    public LogitsHead(IBackend backend, Weight head, int hidden, int vocab, int batch)
    {
        _b = backend; _head = head; _hidden = hidden; _vocab = vocab;
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

    /// <summary>Chunk [done, done + rows) of <paramref name="n"/> tokens left its final hidden rows in <paramref name="hidden"/>.</summary>
    public void Write(DeviceBuffer hidden, int rows, int done, int n, bool all, Span<float> logits)
    {
        if (all)
        {
            _b.MatMul(hidden, _head, _logits, rows);
            _b.Download(_logits, 0, logits.Slice(done * _vocab, rows * _vocab));
        }
        else if (done + rows == n)
        {
            _b.Copy(hidden, (long)(rows - 1) * _hidden, _last, 0, _hidden);
            _b.MatMul(_last, _head, _logits, 1);
            _b.Download(_logits, 0, logits);
        }
    }

    public void Dispose()
    {
        _last.Dispose();
        _logits.Dispose();
    }
}
