namespace Lrl.Models;

/// <summary>
/// The state of one sequence of a <see cref="ModelBase"/>: the buffers of its layout (KV caches or recurrent state)
/// and, for recurrent models, how many tokens it holds.
/// </summary>
internal sealed class SequenceState : ISequenceState
{
    private readonly ModelBase _owner;
    private DeviceBuffer[]? _buffers;

    public SequenceState(ModelBase owner, DeviceBuffer[] buffers) { _owner = owner; _buffers = buffers; Floats = buffers.Sum(b => b.Length); }

    public long Floats { get; }
    /// <summary>Tokens consumed since the last reset (recurrent models).</summary>
    public long Position { get; set; }
    public bool IsDisposed => _buffers is null;
    public ModelBase Owner => _owner;

    /// <summary>The buffer of a slot of the owner's state layout.</summary>
    public DeviceBuffer this[int slot] => (_buffers ?? throw new ObjectDisposedException(nameof(ISequenceState)))[slot];

    public IEnumerable<DeviceBuffer> Buffers => _buffers ?? [];

    public void Dispose() => _owner.Release(this);

    /// <summary>Frees the buffers (under the owner's lock, so never while a forward pass uses them).</summary>
    internal void Free()
    {
        var b = _buffers;
        _buffers = null;
        if (b is not null) foreach (var x in b) x.Dispose();
    }
}

/// <summary>
/// What every architecture shares around its forward pass: the per-sequence state layout (slots of given sizes),
/// a default state for single-sequence callers, states created for sessions, one lock that serializes forward passes
/// over the model's scratch buffers, and disposal that waits for a running pass and frees every state it made.
/// </summary>
public abstract class ModelBase : ILanguageModel
{
    private readonly object _gate = new();
    private readonly List<long> _slots = new();
    private readonly HashSet<SequenceState> _states = new();
    private SequenceState? _default;
    private bool _disposed;

    public abstract string Architecture { get; }
    public abstract int VocabSize { get; }
    public abstract int ContextLength { get; }
    public abstract IBackend Backend { get; }
    public abstract long ParameterCount { get; }
    public abstract string WeightFormat { get; }
    public abstract long WeightBytesPerToken { get; }
    public virtual bool CanRewind => true;

    /// <summary>Floats of one sequence state (constant: the layout is fixed at load).</summary>
    public long StateFloats => _slots.Sum();

    /// <summary>Declares a per-sequence buffer of <paramref name="floats"/> floats; returns its slot.</summary>
    protected int StateSlot(long floats) { _slots.Add(floats); return _slots.Count - 1; }

    public ISequenceState CreateState()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var s = Allocate();
            _states.Add(s);
            return s;
        }
    }

    private SequenceState Allocate()
    {
        var buffers = new DeviceBuffer[_slots.Count];
        try { for (int i = 0; i < buffers.Length; i++) buffers[i] = Backend.Allocate(_slots[i]); }
        catch { foreach (var b in buffers) b?.Dispose(); throw; }
        return new SequenceState(this, buffers);
    }

    public void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _default ??= Allocate();
            ForwardCore(_default, tokens, startPos, logits);
        }
    }

    public void Forward(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state is not SequenceState s || s.Owner != this)
            throw new LrlException("the sequence state was created by another model; create it with this model's CreateState()");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            ObjectDisposedException.ThrowIf(s.IsDisposed, state);
            ForwardCore(s, tokens, startPos, logits);
        }
    }

    public void Forward(StepBatch batch, Span<float> logits)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (batch.RowCount == 0) return;
        if (logits.Length < (long)batch.LogitsRows * VocabSize)
            throw new ArgumentException($"logits must hold {batch.LogitsRows} rows of {VocabSize} values for this step", nameof(logits));
        foreach (var run in batch.Runs)
        {
            if (run.State is not SequenceState s || s.Owner != this)
                throw new LrlException("a sequence state of the step was created by another model; create it with this model's CreateState()");
            if (run.StartPos < 0 || (long)run.StartPos + run.Rows > ContextLength)
                throw new LrlException($"positions {run.StartPos}..{(long)run.StartPos + run.Rows - 1} exceed the context window of {ContextLength} tokens");
        }
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            foreach (var run in batch.Runs) ObjectDisposedException.ThrowIf(((SequenceState)run.State).IsDisposed, run.State);
            ForwardBatchCore(batch, logits);
        }
    }

    private float[]? _discard;

    /// <summary>
    /// One batched step; called under the model's lock with validated runs. The default runs each sequence's rows as
    /// its own forward pass (architectures with a true batched pass override it).
    /// </summary>
    private protected virtual void ForwardBatchCore(StepBatch batch, Span<float> logits)
    {
        int v = VocabSize;
        foreach (var run in batch.Runs)
        {
            var tokens = batch.Tokens.Slice(run.Row0, run.Rows);
            var state = (SequenceState)run.State;
            switch (run.Logits)
            {
                case LogitsWanted.None:
                    ForwardCore(state, tokens, run.StartPos, _discard ??= new float[v]);
                    break;
                case LogitsWanted.Last:
                    ForwardCore(state, tokens, run.StartPos, logits.Slice(run.LogitsRow * v, v));
                    break;
                default:
                    ForwardCore(state, tokens, run.StartPos, logits.Slice(run.LogitsRow * v, run.Rows * v));
                    break;
            }
        }
    }

    /// <summary>The forward pass over one sequence's state; called under the model's lock.</summary>
    private protected abstract void ForwardCore(SequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits);

    internal void Release(SequenceState s)
    {
        lock (_gate)
        {
            _states.Remove(s);
            s.Free();
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            _default?.Free();
            foreach (var s in _states) s.Free();
            _states.Clear();
            DisposeCore();
        }
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees weights and scratch buffers.</summary>
    protected abstract void DisposeCore();
}
