namespace Lrl.Models;

/// <summary>
/// The state of one sequence of a <see cref="ModelBase"/>: the buffers of its layout (KV caches or recurrent state)
/// and, for recurrent models, how many tokens it holds.
/// </summary>
internal sealed class SequenceState : ISequenceState
{
    private readonly ModelBase _owner;
    private DeviceBuffer[]? _buffers;

    public SequenceState(ModelBase owner, DeviceBuffer[] buffers, int capacity) { _owner = owner; _buffers = buffers; Capacity = capacity; }

    public long Floats => _buffers?.Sum(b => b.Length) ?? 0;
    /// <summary>Positions the per-position buffers (KV caches) hold now; they grow on demand up to the context window.</summary>
    public int Capacity { get; private set; }
    /// <summary>LoRA adapters applied to this sequence's rows (set under the owner's lock).</summary>
    public LoraAdapter[] Adapters { get; set; } = [];
    /// <summary>Tokens consumed since the last reset (recurrent models).</summary>
    public long Position { get; set; }
    public bool IsDisposed => _buffers is null;
    public ModelBase Owner => _owner;

    /// <summary>The buffer of a slot of the owner's state layout.</summary>
    public DeviceBuffer this[int slot] => (_buffers ?? throw new ObjectDisposedException(nameof(ISequenceState)))[slot];

    public IEnumerable<DeviceBuffer> Buffers => _buffers ?? [];

    /// <summary>Replaces the buffer of a slot (growth); the caller copied what it held.</summary>
    internal void Replace(int slot, DeviceBuffer buffer) => _buffers![slot] = buffer;
    internal void SetCapacity(int positions) => Capacity = positions;

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
    // Per slot: floats held regardless of length, and floats per position (KV caches: kvDim), grown on demand.
    private readonly List<(long Fixed, long PerPosition)> _slots = new();
    private readonly HashSet<SequenceState> _states = new();
    private SequenceState? _default;
    private bool _disposed;
    // Linear modules a LoRA adapter may target, by base-model name (aliases share a list), and the adapters loaded.
    private readonly Dictionary<string, List<LoraBinder.Target>> _adaptable = new(StringComparer.Ordinal);
    private int _adaptSlots;
    private readonly Dictionary<string, (int Out, int In)> _adaptableShapes = new(StringComparer.Ordinal);

    /// <summary>The linear modules LoRA adapters may target, by base-model name, with their [out, in] (empty: none).</summary>
    public IReadOnlyDictionary<string, (int Out, int In)> AdaptableModules => _adaptableShapes;
    private readonly HashSet<LoraAdapter> _adapters = new();
    private ILoraOps? _loraOps;

    public abstract string Architecture { get; }
    public abstract int VocabSize { get; }
    public abstract int ContextLength { get; }
    public abstract IBackend Backend { get; }
    public abstract long ParameterCount { get; }
    public abstract string WeightFormat { get; }
    public abstract long WeightBytesPerToken { get; }
    public virtual bool CanRewind => true;

    /// <summary>Floats of one sequence state holding the whole context window.</summary>
    public long StateFloats => FloatsAt(ContextLength);

    private long FloatsAt(int capacity) => _slots.Sum(x => x.Fixed + x.PerPosition * capacity);

    /// <summary>
    /// The capacity a state of <paramref name="capacity"/> positions grows to when it must hold <paramref name="positions"/>:
    /// doubled until it holds them (capped at the context window). <see cref="Reserve"/> grows states so and
    /// <see cref="StateBytes"/> reckons with it, so a KV budget reserves exactly what a generation can grow to.
    /// </summary>
    private int Grown(int capacity, int positions)
    {
        int cap = Math.Min(ContextLength, Math.Max(1, capacity));
        while (cap < positions && cap < ContextLength) cap = (int)Math.Min(ContextLength, 2L * cap);
        return cap;
    }

    /// <summary>Positions a new state holds before it first grows.</summary>
    public const int InitialPositions = 256;

    /// <summary>
    /// The most bytes a sequence state's buffers take once it holds <paramref name="positions"/> positions (capped at the
    /// context window), grown as the model grows states from what <paramref name="state"/> holds now (a new state:
    /// <see cref="InitialPositions"/>): a step that needs one position more doubles the capacity, so a generation that
    /// grows token by token ends at the first doubling that holds it. What its KV cache can come to.
    /// </summary>
    public long StateBytes(int positions, ISequenceState? state = null) =>
        sizeof(float) * FloatsAt(Grown((state as SequenceState)?.Capacity ?? InitialPositions, positions));

    /// <summary>Declares a per-sequence buffer of <paramref name="floats"/> floats (a recurrent state); returns its slot.</summary>
    protected int StateSlot(long floats) { _slots.Add((floats, 0)); return _slots.Count - 1; }

    /// <summary>
    /// Declares a per-sequence buffer of <paramref name="floatsPerPosition"/> floats per position held (a KV cache laid
    /// out [position, floatsPerPosition]); it starts small and grows (doubling, up to the context window) as the
    /// sequence does, so a state costs memory for the positions it holds, not for the whole window.
    /// </summary>
    protected int PositionSlot(long floatsPerPosition) { _slots.Add((0, floatsPerPosition)); return _slots.Count - 1; }

    /// <summary>
    /// Declares a linear module LoRA adapters may target: <paramref name="name"/> is its base-model name (e.g.
    /// "model.layers.0.self_attn.q_proj"), [outF, inF] its full shape; the product it declares computes the module's
    /// outputs [row0, row0 + rows) (GPT-2's fused c_attn is three products: three calls). Returns the slot the forward
    /// pass hands to <see cref="Adapt"/>.
    /// </summary>
    private protected int AdaptableModule(string name, int outF, int inF, int row0 = 0, int rows = -1, string? alias = null) =>
        Adaptable(name, outF, inF, row0, rows, alias, embedding: false);

    /// <summary>
    /// Declares the token embedding [vocab, hidden] as adaptable (PEFT's lora_embedding_A [r, vocab] / lora_embedding_B
    /// [hidden, r]); the forward pass applies it with <see cref="AdaptEmbedding"/> after the lookup. Returns its slot.
    /// </summary>
    private protected int AdaptableEmbedding(string name, int vocab, int hidden, string? alias = null)
    {
        _embedSlot = Adaptable(name, hidden, vocab, 0, -1, alias, embedding: true);
        return _embedSlot;
    }

    /// <summary>Base-model names (and aliases) of the adaptable embedding.</summary>
    internal IReadOnlySet<string> EmbeddingModules => _embeddingNames;
    private readonly HashSet<string> _embeddingNames = new(StringComparer.Ordinal);
    private int _embedSlot = -1;
    private DeviceBuffer? _embedRows; // rows looked up in an adapter's replaced embedding (made on first use)

    /// <summary>The output projection <paramref name="s"/> runs with: its adapter's replaced lm_head (modules_to_save), else the model's (null).</summary>
    private protected static Weight? HeadOf(SequenceState s)
    {
        foreach (var a in s.Adapters)
            if (a.Head is { } h) return h;
        return null;
    }

    private int Adaptable(string name, int outF, int inF, int row0, int rows, string? alias, bool embedding)
    {
        if (!_adaptable.TryGetValue(name, out var list))
        {
            _adaptable[name] = list = new List<LoraBinder.Target>();
            if (alias is not null) _adaptable[alias] = list;
            if (embedding)
            {
                _embeddingNames.Add(name);
                if (alias is not null) _embeddingNames.Add(alias);
            }
            else _adaptableShapes[name] = (outF, inF);
        }
        var t = new LoraBinder.Target(_adaptSlots++, outF, inF, row0, rows < 0 ? outF : rows);
        list.Add(t);
        return t.Slot;
    }

    /// <summary>
    /// Loads a Hugging Face PEFT LoRA adapter folder onto this model's backend, unmerged, scaled by
    /// <paramref name="scale"/> on top of its own lora_alpha / r, held as <paramref name="precision"/> says (by default
    /// int8 over int8/int4 bases). Errors name the adapter's file and tensor.
    /// </summary>
    public LoraAdapter LoadAdapter(string directory, float scale = 1, string? name = null, AdapterPrecision precision = AdapterPrecision.Auto)
    {
        ArgumentNullException.ThrowIfNull(directory);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            var a = LoraBinder.Load(this, _adaptable, directory, scale, name, precision);
            _adapters.Add(a);
            return a;
        }
    }

    /// <summary>
    /// Sets the adapters applied to a sequence's rows from its next forward pass on (empty: the base model). The state's
    /// cached positions were computed with the adapters it had then; restart the sequence when they change.
    /// </summary>
    public void SetAdapters(ISequenceState state, IReadOnlyList<LoraAdapter> adapters)
    {
        ArgumentNullException.ThrowIfNull(adapters);
        var s = Own(state);
        foreach (var a in adapters)
        {
            ArgumentNullException.ThrowIfNull(a, nameof(adapters));
            if (a.Owner != this) throw new LrlException($"adapter {a.Name} was loaded by another model; load it with this model's LoadAdapter()");
            ObjectDisposedException.ThrowIf(a.IsDisposed, a);
        }
        foreach (var (what, pick) in new (string, Func<LoraAdapter, Weight?>)[] { ("lm_head", a => a.Head), ("the token embedding", a => a.Embedding) })
            if (adapters.Count(a => pick(a) is not null) > 1)
                throw new LrlException($"adapters {string.Join(" and ", adapters.Where(a => pick(a) is not null).Select(a => a.Name))} both replace {what} (modules_to_save); attach one of them");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(s.IsDisposed, state);
            s.Adapters = adapters.ToArray();
        }
    }

    /// <summary>The adapters a state runs with.</summary>
    public IReadOnlyList<LoraAdapter> AdaptersOf(ISequenceState state) => Own(state).Adapters;

    private SequenceState Own(ISequenceState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        return state is SequenceState s && s.Owner == this ? s
            : throw new LrlException("the sequence state was created by another model; create it with this model's CreateState()");
    }

    /// <summary>Whether any of the states runs with adapters.</summary>
    private protected static bool Adapted(SequenceState s) => s.Adapters.Length > 0;

    /// <summary>Whether the backend fuses adapter updates into its products (see <see cref="ILoraOps.FusesLora"/>).</summary>
    private protected bool FusedLora => LoraOps?.FusesLora == true;

    private ILoraOps? LoraOps => _loraOps ??= Backend as ILoraOps;

    /// <summary>
    /// The adapters of <paramref name="s"/> for <paramref name="slot"/>, on y's rows [row, row + rows) from x's. Call it
    /// before the product that writes y (<paramref name="after"/> false) and again after it (true): a backend that fuses
    /// the update into its products gets it staged before, any other computes it after.
    /// </summary>
    private protected void Adapt(SequenceState s, int slot, DeviceBuffer x, int row, int rows, DeviceBuffer y, bool after)
    {
        var list = s.Adapters;
        if (list.Length == 0) return;
        var ops = LoraOps ?? throw new LrlException($"the {Backend.Name} backend cannot run LoRA adapters");
        bool fused = ops.FusesLora;
        if (fused == after) return;
        for (int i = 0; i < list.Length; i++)
        {
            var a = list[i];
            if (a.Slots[slot] is not { } w) continue;
            if (fused) ops.StageLora(x, row, rows, w, a.Scales[slot], y);
            else ops.LoraRows(x, row, rows, w, a.Scales[slot], y);
        }
    }

    /// <summary>
    /// The adapted embedding of <paramref name="s"/>'s adapters on y's rows [row, row + tokens): an adapter's replaced
    /// table (modules_to_save) looked up instead of the base's, then the embedding pairs' updates added.
    /// </summary>
    private protected void AdaptEmbedding(SequenceState s, ReadOnlySpan<int> tokens, int row, DeviceBuffer y)
    {
        if (s.Adapters.Length == 0) return;
        foreach (var a in s.Adapters)
            if (a.Embedding is { } table)
            {
                int hidden = table.Cols;
                _embedRows ??= Backend.Allocate((long)Math.Max(1, ChunkRows) * hidden);
                Backend.Embed(table, tokens, _embedRows);
                Backend.Copy(_embedRows, 0, y, (long)row * hidden, (long)tokens.Length * hidden);
            }
        if (_embedSlot < 0) return;
        foreach (var a in s.Adapters)
            if (a.Slots[_embedSlot] is { } w)
                (LoraOps ?? throw new LrlException($"the {Backend.Name} backend cannot run LoRA adapters")).LoraEmbedRows(tokens, row, w, a.Scales[_embedSlot], y);
    }

    internal void Release(LoraAdapter a)
    {
        lock (_gate)
        {
            if (!_disposed) Backend.Enter();
            _adapters.Remove(a);
            a.Free();
        }
    }

    private static void CheckAdapters(SequenceState s)
    {
        foreach (var a in s.Adapters) ObjectDisposedException.ThrowIf(a.IsDisposed, a);
    }

    public ISequenceState CreateState()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            var s = Allocate(Math.Min(ContextLength, InitialPositions));
            _states.Add(s);
            return s;
        }
    }

    private SequenceState Allocate(int positions)
    {
        var buffers = new DeviceBuffer[_slots.Count];
        try { for (int i = 0; i < buffers.Length; i++) buffers[i] = Backend.Allocate(_slots[i].Fixed + _slots[i].PerPosition * positions); }
        catch { foreach (var b in buffers) b?.Dispose(); throw; }
        return new SequenceState(this, buffers, positions);
    }

    /// <summary>Grows the state's per-position buffers to hold at least <paramref name="positions"/> (under the lock).</summary>
    private void Reserve(SequenceState s, int positions)
    {
        if (positions <= s.Capacity) return;
        int grown = Grown(s.Capacity, positions);
        for (int i = 0; i < _slots.Count; i++)
        {
            long per = _slots[i].PerPosition;
            if (per == 0) continue;
            var old = s[i];
            var next = Backend.Allocate(_slots[i].Fixed + per * grown);
            Backend.Copy(old, 0, next, 0, _slots[i].Fixed + per * s.Capacity);
            s.Replace(i, next);
            old.Dispose();
        }
        s.SetCapacity(grown);
    }

    public void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            _default ??= Allocate(Math.Min(ContextLength, InitialPositions));
            if (startPos >= 0) Reserve(_default, (int)Math.Min(ContextLength, (long)startPos + tokens.Length));
            ForwardCore(_default, tokens, startPos, logits);
        }
    }

    public void Forward(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits) =>
        ForwardOwn(Own(state), tokens, startPos, logits, int.MaxValue);

    /// <summary>
    /// One sequence's pass through the first <paramref name="layers"/> layers (all: int.MaxValue), under the lock;
    /// <paramref name="verify"/>: a verification pass (<see cref="VerifyRowsExact"/>).
    /// </summary>
    private void ForwardOwn(SequenceState s, ReadOnlySpan<int> tokens, int startPos, Span<float> logits, int layers, bool verify = false)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            ObjectDisposedException.ThrowIf(s.IsDisposed, s);
            CheckAdapters(s);
            if (startPos >= 0) Reserve(s, (int)Math.Min(ContextLength, (long)startPos + tokens.Length));
            LayerLimit = layers;
            using var exact = verify ? Exact() : default;
            try { ForwardCore(s, tokens, startPos, logits); }
            finally { LayerLimit = int.MaxValue; }
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
            if (run.Parents is not null && (!SupportsTrees || run.Rows > ChunkRows))
                throw new LrlException(SupportsTrees ? $"a tree of {run.Rows} nodes exceeds the model's batch of {ChunkRows} rows"
                                                     : $"{Architecture} cannot verify a tree of candidates");
        }
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            foreach (var run in batch.Runs)
            {
                var s = (SequenceState)run.State;
                ObjectDisposedException.ThrowIf(s.IsDisposed, run.State);
                CheckAdapters(s);
                Reserve(s, run.StartPos + run.Rows);
            }
            bool verify = false;
            foreach (var run in batch.Runs) verify |= run.Rows > 1 && (run.Logits == LogitsWanted.All || run.Parents is not null); // not a lone pending token
            using (verify ? Exact() : default) ForwardBatchCore(batch, logits);
        }
    }

    /// <summary>
    /// Most rows of a verification pass (the pending token and its drafts, or a tree's nodes) whose products run each
    /// row's one-row arithmetic (<see cref="IBackend.ExactRows"/>): every candidate's logits are then exactly those of
    /// decoding it alone, on float models too (whose products past 16 rows otherwise take a faster GEMM with other
    /// rounding), so greedy speculation picks plain decoding's tokens. A step beside other sequences covers them as well.
    /// </summary>
    public const int VerifyRowsExact = 64;

    /// <summary>Raises the backend's exact rows for the pass in progress (under the lock); disposing restores them (default: no-op).</summary>
    private ExactScope Exact()
    {
        int keep = Backend.ExactRows;
        Backend.ExactRows = Math.Max(keep, VerifyRowsExact);
        return new ExactScope(Backend, keep);
    }

    private readonly struct ExactScope(IBackend backend, int keep) : IDisposable
    {
        public void Dispose() { if (backend is not null) backend.ExactRows = keep; }
    }

    /// <summary>
    /// A verification pass over one sequence: as <see cref="Forward(ISequenceState, ReadOnlySpan{int}, int, Span{float})"/>
    /// with every row's logits (<paramref name="logits"/> holds tokens × vocabulary), each row's exactly what decoding it
    /// alone gives (see <see cref="VerifyRowsExact"/>).
    /// </summary>
    public void ForwardVerify(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        if (logits.Length != (long)tokens.Length * VocabSize) throw new ArgumentException($"logits must hold {tokens.Length} × {VocabSize} values", nameof(logits));
        ForwardOwn(Own(state), tokens, startPos, logits, int.MaxValue, verify: true);
    }

    /// <summary>
    /// From now on every product of up to <paramref name="rows"/> rows gives each row its one-row bits, so a sequence's
    /// logits never depend on what it is batched with (batch invariance); an error on a backend without per-row products.
    /// </summary>
    public void KeepRowsExact(int rows)
    {
        if (rows < 1) throw new LrlException($"batch invariance needs at least one row per step, got {rows}");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.ExactRows = rows;
            if (Backend.ExactRows != rows)
                throw new LrlException($"--batch-invariant needs per-row products, which the {Backend.Name} backend does not have (the CPU and CUDA backends do)");
        }
    }

    /// <summary>
    /// As <see cref="Forward(ISequenceState, ReadOnlySpan{int}, int, Span{float})"/> returning only the last token's
    /// greedy choice (the first largest logit): the argmax runs where the logits are (the device, on a GPU), so only
    /// one id comes back per token. Greedy decoding without penalties or biases uses it.
    /// </summary>
    public int ForwardArgmax(ISequenceState state, ReadOnlySpan<int> tokens, int startPos) =>
        ForwardChoice(state, tokens, startPos, 0, 0, 1, 0, 0);

    /// <summary>
    /// As <see cref="ForwardArgmax"/>, sampling the last token's next one (<see cref="IBackend.Sample"/>: top-k /
    /// top-p at a temperature given the uniform draw), where the logits are: on a GPU one id comes back per token.
    /// </summary>
    public int ForwardSample(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, float temperature, int topK, float topP, float minP, float uniform01)
    {
        if (!(temperature > 0)) throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "sampling needs a temperature above 0 (0 is ForwardArgmax)");
        return ForwardChoice(state, tokens, startPos, temperature, topK, topP, minP, uniform01);
    }

    private int ForwardChoice(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, float temperature, int topK, float topP, float minP, float uniform01)
    {
        if (ChunkRows == 0 || Head is null || FinalHidden is null)
        {
            var l = new float[VocabSize];
            Forward(state, tokens, startPos, l);
            return temperature == 0 ? Logits.ArgMax(l) : Logits.SampleTopK(l, temperature, topK, topP, uniform01, minP);
        }
        var s = Own(state);
        int n = tokens.Length;
        if (n == 0) throw new ArgumentException("no tokens to run");
        if (startPos < 0 || (long)startPos + n > ContextLength)
            throw new LrlException($"positions {startPos}..{(long)startPos + n - 1} exceed the context window of {ContextLength} tokens");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            ObjectDisposedException.ThrowIf(s.IsDisposed, s);
            CheckAdapters(s);
            Reserve(s, startPos + n);
            int rows = 0;
            for (int done = 0; done < n; done += rows)
            {
                rows = Math.Min(ChunkRows, n - done);
                RunChunk(s, tokens.Slice(done, rows), startPos + done);
            }
            var w = HeadOf(s);
            return temperature == 0 ? Head.WriteArgmax(FinalHidden, rows, w) : Head.WriteSample(FinalHidden, rows, temperature, topK, topP, minP, uniform01, w);
        }
    }

    /// <summary>Layers of the model (the most an early-exit draft can run is one fewer); 0 when not layered.</summary>
    public virtual int LayerCount => 0;

    /// <summary>
    /// As <see cref="Forward(ISequenceState, ReadOnlySpan{int}, int, Span{float})"/> through the first
    /// <paramref name="layers"/> layers only, then the final norm and head (an early-exit draft). The state's cache
    /// entries of those layers at these positions are written; a later full pass over the same positions overwrites
    /// them. Only models that support it (the Llama family).
    /// </summary>
    public void ForwardLayers(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits, int layers)
    {
        if (LayerCount == 0) throw new LrlException($"{Architecture} cannot run an early-exit draft");
        if (layers < 1 || layers > LayerCount) throw new LrlException($"--draft-layers must be in 1..{LayerCount}, got {layers}");
        ForwardOwn(Own(state), tokens, startPos, logits, layers);
    }

    /// <summary>Width of the final hidden rows (what draft heads read); 0 when the model has no batched pass.</summary>
    public int HiddenSize => Head?.HiddenSize ?? 0;

    /// <summary>
    /// Keeps, from now until the returned handle is disposed, the final hidden row behind every logits row each pass
    /// writes (<see cref="CopyCapturedHidden"/>): draft heads start from the hidden state of the last accepted token.
    /// </summary>
    public IDisposable CaptureHidden()
    {
        var head = Head ?? throw new LrlException($"{Architecture} does not expose its hidden states (draft heads need a Llama-family or GPT-2 model)");
        lock (_gate) head.Capture++;
        return new CaptureHandle(() => { lock (_gate) head.Capture--; });
    }

    private sealed class CaptureHandle(Action release) : IDisposable
    {
        private Action? _release = release;
        public void Dispose() => Interlocked.Exchange(ref _release, null)?.Invoke();
    }

    /// <summary>The final hidden row behind logits row <paramref name="logitsRow"/> of the last pass (while captured).</summary>
    public void CopyCapturedHidden(int logitsRow, Span<float> destination)
    {
        lock (_gate) Head!.CapturedRow(logitsRow).CopyTo(destination);
    }

    /// <summary>
    /// Logits of every draft head for one hidden row: <paramref name="logits"/> holds heads.Count rows of the
    /// vocabulary. Heads sharing the model's output projection run it once over all their rows.
    /// </summary>
    public void RunDraftHeads(DraftHeads heads, ReadOnlySpan<float> hidden, Span<float> logits)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var head = Head ?? throw new LrlException($"{Architecture} cannot run draft heads");
            Backend.Enter();
            int keep = head.Capture;
            head.Capture = 0; // the heads' own rows must not replace the pass's kept hidden rows
            try { heads.Run(Backend, head, hidden, logits); }
            finally { head.Capture = keep; }
        }
    }

    /// <summary>Whether <see cref="ForwardTree"/> runs on this model (the Llama family).</summary>
    public virtual bool SupportsTrees => false;

    /// <summary>
    /// Verifies a tree of candidate tokens in one pass: node r (row r of <paramref name="tokens"/>) follows its parent
    /// node <paramref name="parents"/>[r] (−1 for the root, which follows the sequence's first <paramref name="pos0"/>
    /// tokens), sits at position pos0 + its depth and attends to the sequence and its own ancestors only. Every node's
    /// logits go to <paramref name="logits"/> (rows × vocabulary). The nodes' cache entries occupy positions pos0 ..
    /// pos0 + rows − 1 in node order until <see cref="KeepTreePath"/> keeps the accepted path.
    /// </summary>
    public void ForwardTree(ISequenceState state, ReadOnlySpan<int> tokens, ReadOnlySpan<int> parents, int pos0, Span<float> logits)
    {
        if (!SupportsTrees) throw new LrlException($"{Architecture} cannot verify a tree of candidates");
        var s = Own(state);
        int n = tokens.Length;
        TreeAttention.Validate(parents, n);
        if (n > ChunkRows) throw new LrlException($"a tree of {n} nodes exceeds the model's batch of {ChunkRows} rows");
        if (logits.Length != (long)n * VocabSize) throw new ArgumentException($"logits must hold {n} × {VocabSize} values");
        foreach (int t in tokens)
            if ((uint)t >= (uint)VocabSize) throw new LrlException($"token id {t} is outside the vocabulary (0..{VocabSize - 1})");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            ObjectDisposedException.ThrowIf(s.IsDisposed, s);
            CheckAdapters(s);
            var head = Head!;
            head.Begin(n, pos0, ContextLength, logits);
            Reserve(s, pos0 + n);
            _one[0] = new Piece(s, 0, n, pos0) { Parents = parents.ToArray() };
            using var exact = Exact();
            try { RunPieces(_one, tokens); }
            finally { _one[0] = default; }
            head.Write(FinalHidden!, n, 0, n, all: true, logits, HeadOf(s));
        }
    }

    /// <summary>
    /// After <see cref="ForwardTree"/> at <paramref name="pos0"/>: keeps the cache entries of the accepted path
    /// (node indices, root first, each the next one's parent) at positions pos0, pos0 + 1, ...
    /// </summary>
    public void KeepTreePath(ISequenceState state, int pos0, ReadOnlySpan<int> path)
    {
        var s = Own(state);
        for (int j = 0; j < path.Length; j++)
            if (path[j] < j || (j > 0 && path[j] <= path[j - 1])) throw new ArgumentException("a tree path's node indices rise from the root (0)");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Backend.Enter();
            KeepPath(s, pos0, path);
        }
    }

    /// <summary>Moves the cache entries of path nodes to consecutive positions (a model with trees overrides it).</summary>
    private protected virtual void KeepPath(SequenceState s, int pos0, ReadOnlySpan<int> path) =>
        throw new LrlException($"{Architecture} cannot verify a tree of candidates");

    /// <summary>The output projection's weights (draft-head training reads them).</summary>
    public Weight OutputWeight => Head?.Weight ?? throw new LrlException($"{Architecture} has no output projection to share");

    /// <summary>Layers the current pass runs (an early-exit draft sets it below <see cref="LayerCount"/>).</summary>
    private protected int LayerLimit { get; private set; } = int.MaxValue;

    private float[]? _discard;

    /// <summary>Part of a batched step's run that falls in one chunk: rows [Row, Row + Rows) of the chunk at positions Pos...</summary>
    private protected record struct Piece(SequenceState State, int Row, int Rows, int Pos)
    {
        /// <summary>A tree of candidates instead of consecutive tokens: each row's parent row (−1: the root), see <see cref="ForwardTree"/>.</summary>
        public int[]? Parents { get; init; }
    }

    private Piece[] _pieces = new Piece[8];
    private readonly Piece[] _one = new Piece[1];

    /// <summary>Rows a true batched pass runs at once (its scratch buffers' height); 0: the model has none.</summary>
    private protected virtual int ChunkRows => 0;

    /// <summary>The output projection of a model with a true batched pass.</summary>
    private protected virtual LogitsHead? Head => null;

    /// <summary>Where <see cref="RunChunk(ReadOnlySpan{Piece}, ReadOnlySpan{int})"/> leaves the final-normed hidden rows.</summary>
    private protected virtual DeviceBuffer? FinalHidden => null;

    /// <summary>
    /// The blocks of a true batched pass over the rows of one chunk (at most <see cref="ChunkRows"/>), each piece of
    /// rows at its own positions over its own state, leaving the final-normed hidden rows where <see cref="Head"/> reads.
    /// </summary>
    private protected virtual void RunChunk(ReadOnlySpan<Piece> pieces, ReadOnlySpan<int> tokens) =>
        throw new NotSupportedException($"{Architecture} has no batched pass");

    /// <summary>One sequence's rows as the only piece of a chunk.</summary>
    private protected void RunChunk(SequenceState state, ReadOnlySpan<int> tokens, int pos)
    {
        _one[0] = new Piece(state, 0, tokens.Length, pos);
        RunPieces(_one, tokens);
        _one[0] = default;
    }

    /// <summary>
    /// <see cref="RunChunk(ReadOnlySpan{Piece}, ReadOnlySpan{int})"/> after dropping any adapter update still staged on
    /// the backend (a pass that stopped at an exception between staging an update and its product left it there: it
    /// must not land on this pass's products).
    /// </summary>
    private void RunPieces(ReadOnlySpan<Piece> pieces, ReadOnlySpan<int> tokens)
    {
        LoraOps?.ClearStagedLora();
        RunChunk(pieces, tokens);
    }

    /// <summary>
    /// One batched step; called under the model's lock with validated runs. A model with a true batched pass
    /// (<see cref="ChunkRows"/> &gt; 0) runs the step's rows in chunks of that many, every product over all of a
    /// chunk's rows and each run's attention over its own cache, and gathers the wanted rows' logits; the others run
    /// each sequence's rows as its own forward pass.
    /// </summary>
    private protected virtual void ForwardBatchCore(StepBatch batch, Span<float> logits)
    {
        if (ChunkRows == 0 || Head is not { } head || FinalHidden is not { } hidden)
        {
            foreach (var run in batch.Runs)
                ForwardCore((SequenceState)run.State, batch.Tokens.Slice(run.Row0, run.Rows), run.StartPos,
                            StepBatch.LogitsOf(run, logits, VocabSize, ref _discard));
            return;
        }
        var tokens = batch.Tokens;
        var runs = batch.Runs;
        int next = 0, logitsAt = 0, chunk = ChunkRows;
        for (int c0 = 0, rows; c0 < batch.RowCount; c0 += rows)
        {
            rows = Math.Min(chunk, batch.RowCount - c0);
            int end = c0 + rows, n = 0;
            // A tree run is never split: the chunk ends before one that would straddle its end.
            for (int r = next; r < runs.Length && runs[r].Row0 < end; r++)
                if (runs[r].Parents is not null && runs[r].Row0 > c0 && runs[r].Row0 + runs[r].Rows > end)
                {
                    rows = runs[r].Row0 - c0; end = c0 + rows;
                    break;
                }
            // The runs overlapping rows [c0, end), clipped to them.
            for (int r = next; r < runs.Length && runs[r].Row0 < end; r++)
            {
                var x = runs[r];
                int a = Math.Max(c0, x.Row0), b = Math.Min(end, x.Row0 + x.Rows);
                if (n == _pieces.Length) Array.Resize(ref _pieces, n * 2);
                _pieces[n++] = new Piece((SequenceState)x.State, a - c0, b - a, x.StartPos + (a - x.Row0)) { Parents = x.Parents };
            }
            RunPieces(_pieces.AsSpan(0, n), tokens.Slice(c0, rows));
            Array.Clear(_pieces, 0, n);
            // Logits of the rows that want them, in run order (runs and their rows are in row order).
            for (; next < runs.Length && runs[next].Row0 < end; next++)
            {
                var x = runs[next];
                int a = Math.Max(c0, x.Row0), b = Math.Min(end, x.Row0 + x.Rows);
                var w = HeadOf((SequenceState)x.State);
                if (x.Logits == LogitsWanted.All) head.Gather(hidden, a - c0, b - a, w);
                else if (x.Logits == LogitsWanted.Last && b == x.Row0 + x.Rows) head.Gather(hidden, b - 1 - c0, 1, w);
                if (b < x.Row0 + x.Rows) break; // the run goes on in the next chunk
            }
            logitsAt += head.Flush(logits.Slice(logitsAt * VocabSize), logitsAt);
        }
    }

    /// <summary>The forward pass over one sequence's state; called under the model's lock.</summary>
    private protected abstract void ForwardCore(SequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits);

    internal void Release(SequenceState s)
    {
        lock (_gate)
        {
            if (!_disposed) Backend.Enter();
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
            Backend.Enter();
            _default?.Free();
            foreach (var s in _states) s.Free();
            _states.Clear();
            foreach (var a in _adapters) a.Free();
            _adapters.Clear();
            _embedRows?.Dispose();
            DisposeCore();
        }
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees weights and scratch buffers.</summary>
    protected abstract void DisposeCore();
}
