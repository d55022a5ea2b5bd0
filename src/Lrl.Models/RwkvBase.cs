using Lrl.Loading;

namespace Lrl.Models;

/// <summary>The buffers of the sequence state a forward pass runs over, by slot.</summary>
public readonly struct SequenceStateView
{
    private readonly SequenceState _state;
    internal SequenceStateView(SequenceState state) => _state = state;
    public DeviceBuffer this[int slot] => _state[slot];
}

/// <summary>
/// What RWKV v5.2 and v7 share: embedding + ln0, a recurrent state of constant size (token-shift vectors and a
/// [heads, headSize, headSize] WKV matrix per layer), ln_out and the head, and Forward semantics for a state that can
/// only move forward: startPos 0 resets it, any other startPos must continue where the last call ended.
/// </summary>
public abstract class RwkvBase : ModelBase
{
    protected readonly Checkpoint Checkpoint;
    protected readonly OwnedTensors Owned = new();
    protected readonly IBackend B;
    protected readonly ILinearAttentionOps L;
    protected readonly int Batch;
    protected Weight Emb = null!, Ln0W = null!, Ln0B = null!, LnOutW = null!, LnOutB = null!, HeadW = null!;
    private readonly List<DeviceBuffer> _buffers = new();
    private LogitsHead _out = null!;
    /// <summary>The state the running forward pass updates (set under the model's lock).</summary>
    protected SequenceStateView S;

    public RwkvConfig Config { get; }
    public override int VocabSize => Config.VocabSize;
    /// <summary>
    /// The recurrent state has a constant size whatever the sequence length, so this is only a cap on positions:
    /// <see cref="ModelLoadOptions.ContextLength"/> when set, else <see cref="ModelLoadOptions.RecurrentContextCap"/>.
    /// </summary>
    public override int ContextLength { get; }
    /// <summary>False: a recurrent state cannot be rewound (startPos must be 0 or the current length).</summary>
    public override bool CanRewind => false;
    public override IBackend Backend => B;
    public override long ParameterCount => _parameterCount;
    public override long WeightBytesPerToken => _weightBytesPerToken;
    protected long _parameterCount, _weightBytesPerToken;

    protected RwkvBase(Checkpoint checkpoint, RwkvConfig config, IBackend backend, ModelLoadOptions options)
    {
        Checkpoint = checkpoint;
        Config = config;
        B = backend;
        L = backend as ILinearAttentionOps
            ?? throw new LrlException($"backend '{backend.Name}' does not support the linear-attention ops RWKV needs");
        ContextLength = options.ResolveRecurrentContext();
        Batch = options.BatchSize;
    }

    /// <summary>
    /// The checkpoint name of a tensor given its rwkv.cpp name: the same, or in the HF Rwkv5 layout
    /// (emb → rwkv.embeddings, ln0 → pre_ln, att → attention, ffn → feed_forward, time_mix_k → time_mix_key, ...).
    /// </summary>
    protected string Name(string cppName)
    {
        if (!Config.HfLayout) return cppName;
        if (cppName == "head.weight") return cppName;
        string n = cppName.Replace("emb.weight", "embeddings.weight").Replace(".ln0.", ".pre_ln.")
                          .Replace(".att.", ".attention.").Replace(".ffn.", ".feed_forward.");
        foreach (var (a, b) in new[] { ("k", "key"), ("v", "value"), ("r", "receptance"), ("g", "gate") })
            if (n.EndsWith(".time_mix_" + a, StringComparison.Ordinal)) n = n[..^1] + b;
        return "rwkv." + n;
    }

    protected HostTensor Get(string cppName) => Checkpoint.Get(Name(cppName));

    /// <summary>The row count of a 2-D tensor (e.g. a LoRA or FFN width), naming the tensor when it is not 2-D.</summary>
    protected int Rows(string cppName)
    {
        var t = Get(cppName);
        return t.Rank == 2 && t.Shape[0] > 0 ? t.Shape[0]
            : throw new ModelFormatException(t.Source, $"tensor '{t.Name}' has shape {t.ShapeString}; expected a 2-D matrix");
    }
    protected Weight Vec(string name, int n) => B.LoadWeight(OwnedTensors.AsVector(Get(name), n));
    protected Weight Mat(string name, int rows, int cols) => B.LoadWeight(Checkpoint.Get(Name(name), rows, cols));

    /// <summary>Loads emb, blocks.0.ln0, ln_out and head; allocates the head buffers.</summary>
    protected void LoadCommon()
    {
        int C = Config.HiddenSize;
        Emb = Mat("emb.weight", Config.VocabSize, C);
        Ln0W = Vec("blocks.0.ln0.weight", C);
        Ln0B = Vec("blocks.0.ln0.bias", C);
        LnOutW = Vec("ln_out.weight", C);
        LnOutB = Vec("ln_out.bias", C);
        HeadW = Mat("head.weight", Config.VocabSize, C);
        _out = new LogitsHead(B, HeadW, C, Config.VocabSize, Batch);
        _parameterCount = Checkpoint.Tensors.Sum(t => t.ElementCount);
    }

    /// <summary>Declares a per-sequence state buffer of n floats; returns its slot (read it through <see cref="S"/>).</summary>
    protected int State(long n) => StateSlot(n);
    protected DeviceBuffer Buffer(long n) { var b = B.Allocate(n); _buffers.Add(b); return b; }

    private protected override void ForwardCore(SequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        int n = tokens.Length;
        bool all = _out.Begin(n, startPos, ContextLength, logits);
        if (startPos == 0)
        {
            // rwkv_init_state: every state buffer to zero
            foreach (var b in state.Buffers) L.Zero(b, b.Length);
            state.Position = 0;
        }
        else if (startPos != state.Position)
            throw new LrlException($"an RWKV state cannot rewind or skip: it holds {state.Position} tokens, but startPos is {startPos} (use 0 to start over)");
        S = new SequenceStateView(state);
        for (int done = 0; done < n; done += Batch)
        {
            int rows = Math.Min(Batch, n - done);
            var x = RunChunk(tokens.Slice(done, rows));
            state.Position += rows;
            _out.Write(x, rows, done, n, all, logits);
        }
    }

    /// <summary>Runs rows tokens through the blocks, updating the state; returns the buffer holding ln_out(x) [rows, C].</summary>
    protected abstract DeviceBuffer RunChunk(ReadOnlySpan<int> tokens);

    protected override void DisposeCore()
    {
        foreach (var b in _buffers) b.Dispose();
        _out?.Dispose();
        Owned.Dispose();
        Checkpoint.Dispose();
    }
}
