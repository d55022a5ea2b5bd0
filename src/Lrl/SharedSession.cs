namespace Lrl;

/// <summary>
/// A session kept across calls (created on first use), so a prompt that extends the previous one reuses its state,
/// lent to one call at a time; a call that overlaps a running one gets a temporary session of its own, disposed when
/// the call ends. Used by <see cref="LrlModel"/>'s Generate methods and by <see cref="LrlChatClient"/>.
/// </summary>
internal sealed class SharedSession(LrlModel model) : IDisposable
{
    private InferenceSession? _session;
    private int _busy;

    /// <summary>The kept session, if one was created.</summary>
    public InferenceSession? Current => _session;

    public Lease Acquire()
    {
        if (Interlocked.Exchange(ref _busy, 1) == 1) return new Lease(null, model.CreateSession());
        try { return new Lease(this, _session ??= model.CreateSession()); }
        catch { Volatile.Write(ref _busy, 0); throw; }
    }

    public void Dispose() => _session?.Dispose();

    /// <summary>A lent session: returned to its owner (kept) or disposed (temporary) by <see cref="Dispose"/>.</summary>
    public readonly struct Lease(SharedSession? owner, InferenceSession session) : IDisposable
    {
        public InferenceSession Session { get; } = session;

        public void Dispose()
        {
            if (owner is not null) Volatile.Write(ref owner._busy, 0);
            else Session.Dispose();
        }
    }
}
