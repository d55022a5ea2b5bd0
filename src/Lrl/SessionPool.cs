namespace Lrl;

/// <summary>
/// Sessions kept between requests (as llama.cpp's server slots): a request takes the idle session whose held tokens
/// share the longest prefix with its prompt (a repeated system prompt or the previous turn of a chat is not run
/// again), or a new one; on return the session is kept for later requests, up to <see cref="MaxIdle"/> of them (the
/// least recently used beyond that are disposed, releasing their KV memory). Thread-safe.
/// </summary>
public sealed class SessionPool : IDisposable, DecodeLoop.IIdleStates
{
    private readonly LrlModel _model;
    private readonly LinkedList<InferenceSession> _idle = new(); // most recently returned first
    private bool _disposed;

    public SessionPool(LrlModel model, int maxIdle)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (maxIdle < 0) throw new ArgumentOutOfRangeException(nameof(maxIdle), maxIdle, "must be ≥ 0");
        _model = model;
        MaxIdle = maxIdle;
        // Under a KV budget the idle sessions' states count in it: the loop releases them to admit a generation.
        if (model.Loop is { KvBudget: > 0 } loop) loop.Idle = this;
    }

    /// <summary>Bytes the idle sessions' states hold.</summary>
    public long IdleBytes
    {
        get { lock (_idle) return _idle.Sum(s => s.StateBytes); }
    }

    void DecodeLoop.IIdleStates.Release(long bytes)
    {
        // Runs on the loop's thread: a session whose generation the loop has not let go of yet stays (disposing it
        // would wait for the loop).
        var released = new List<InferenceSession>();
        lock (_idle)
        {
            for (var n = _idle.Last; n is not null && bytes > 0;)
            {
                var prev = n.Previous;
                if (!n.Value.InLoop)
                {
                    _idle.Remove(n);
                    bytes -= n.Value.StateBytes;
                    released.Add(n.Value);
                }
                n = prev;
            }
        }
        foreach (var s in released) s.Dispose();
    }

    /// <summary>Most sessions kept while idle.</summary>
    public int MaxIdle { get; }

    /// <summary>Sessions idle in the pool now.</summary>
    public int IdleCount { get { lock (_idle) return _idle.Count; } }

    /// <summary>
    /// A session for <paramref name="prompt"/>: the idle one sharing its longest prefix (computed with the same
    /// <paramref name="adapters"/>; null = none), else a new one.
    /// </summary>
    public Lease Acquire(ReadOnlySpan<int> prompt, IReadOnlyList<Lrl.Models.LoraAdapter>? adapters = null)
    {
        adapters ??= [];
        lock (_idle)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            LinkedListNode<InferenceSession>? best = null;
            int bestLen = 0;
            for (var n = _idle.First; n is not null; n = n.Next)
            {
                int len = n.Value.RunsWith(adapters) ? n.Value.SharedPrefix(prompt) : 0;
                if (len > bestLen) { best = n; bestLen = len; }
            }
            if (best is null && _idle.Count >= MaxIdle && _idle.Last is { } lru) best = lru; // reuse memory rather than grow
            if (best is not null)
            {
                _idle.Remove(best);
                return new Lease(this, best.Value);
            }
        }
        return new Lease(this, _model.CreateSession());
    }

    private void Return(InferenceSession session)
    {
        // Under a KV budget the idle states stay within what the running generations leave of it (read before the
        // pool's lock: the loop takes its own lock, then this one's, when it admits a generation).
        long room = _model.Loop is { KvBudget: > 0 } loop ? loop.KvBudget - loop.KvReserved : long.MaxValue;
        var released = new List<InferenceSession>();
        lock (_idle)
        {
            if (!_disposed && MaxIdle > 0)
            {
                _idle.AddFirst(session);
                long idleBytes = room == long.MaxValue ? 0 : _idle.Sum(s => s.StateBytes);
                while (_idle.Count > 0 && (_idle.Count > MaxIdle || idleBytes > room))
                {
                    var lru = _idle.Last!.Value;
                    _idle.RemoveLast();
                    if (room != long.MaxValue) idleBytes -= lru.StateBytes;
                    released.Add(lru);
                }
            }
            else released.Add(session);
        }
        foreach (var s in released) s.Dispose();
    }

    public void Dispose()
    {
        lock (_idle)
        {
            if (_disposed) return;
            _disposed = true;
            if (_model.Loop is { } loop && ReferenceEquals(loop.Idle, this)) loop.Idle = null;
            foreach (var s in _idle) s.Dispose();
            _idle.Clear();
        }
    }

    /// <summary>A session lent by the pool; <see cref="Dispose"/> returns it.</summary>
    public sealed class Lease(SessionPool pool, InferenceSession session) : IDisposable
    {
        private int _returned;
        public InferenceSession Session { get; } = session;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _returned, 1) == 0) pool.Return(Session);
        }
    }
}
