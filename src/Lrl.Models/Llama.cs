using System.Runtime.InteropServices;
using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// The Llama family forward pass (Llama, Mistral, Qwen2, SmolLM): RMSNorm, RoPE (rotate_half), grouped-query attention
/// with a preallocated KV cache, SwiGLU MLP, optionally tied embeddings and q/k/v biases. Written once over <see cref="IBackend"/>.
/// </summary>
public sealed class Llama : ModelBase
{
    private sealed record Layer(Weight AttnNorm, Weight Wq, Weight Wk, Weight Wv, Weight Wo,
                                Weight? Bq, Weight? Bk, Weight? Bv, Weight MlpNorm, Weight Gate, Weight Up, Weight Down,
                                int KCache, int VCache,    // state slots: [context, kvDim] each
                                int Lora);                 // adapter slots: q, k, v, o, gate, up, down from here

    private readonly Checkpoint _checkpoint;
    private readonly IBackend _b;
    private readonly Layer[] _layers;
    private readonly Weight _embed, _finalNorm, _lmHead;
    private readonly RopeTable _rope;
    private readonly int _batch;
    // Activations for up to _batch rows, allocated once (shape comments: [rows, width]).
    private readonly DeviceBuffer _x;      // [batch, hidden] residual stream
    private readonly DeviceBuffer _xb;     // [batch, hidden] normed input of a block
    private readonly DeviceBuffer _q;      // [batch, heads·headDim]
    private readonly DeviceBuffer _k, _v;  // [batch, kvHeads·headDim]
    private readonly DeviceBuffer _att;    // [batch, heads·headDim]
    private readonly List<SequenceRows> _seqRows = []; // a chunk's causal sequences, for one attention call
    private readonly DeviceBuffer _delta;  // [batch, hidden] block output before the residual add
    private readonly DeviceBuffer _gate, _up; // [batch, intermediate]
    private readonly LogitsHead _out;

    public LlamaConfig Config { get; }
    public override string Architecture => Config.Architecture;
    public override int VocabSize => Config.VocabSize;
    public override int ContextLength { get; }
    public override IBackend Backend => _b;
    public override long ParameterCount { get; }
    public override long WeightBytesPerToken { get; }
    public override string WeightFormat => _layers[0].Wq.Format;
    public override int LayerCount => _layers.Length;
    private protected override int ChunkRows => _batch;
    private protected override LogitsHead? Head => _out;
    private protected override DeviceBuffer? FinalHidden => _xb;

    public Llama(Checkpoint checkpoint, LlamaConfig config, IBackend backend, ModelLoadOptions options)
    {
        _checkpoint = checkpoint;
        _b = backend;
        Config = config;
        var c = config;
        ContextLength = options.ResolveContext(c.MaxPositions);
        _batch = Math.Min(options.BatchSize, ContextLength);

        Weight W(string name, params int[] shape) => WeightLoader.Load(checkpoint, _b, name, shape);
        _embed = W("model.embed_tokens.weight", c.VocabSize, c.HiddenSize);
        _finalNorm = W("model.norm.weight", c.HiddenSize);
        AdaptableEmbedding("model.embed_tokens", c.VocabSize, c.HiddenSize);
        _lmHead = c.TieWordEmbeddings && !WeightLoader.Exists(checkpoint, "lm_head.weight") ? _embed : W("lm_head.weight", c.VocabSize, c.HiddenSize);
        _layers = new Layer[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Weight? Bias(string name, int n) => c.AttentionBias ? W(p + name, n) : null;
            _layers[i] = new Layer(
                W(p + "input_layernorm.weight", c.HiddenSize),
                W(p + "self_attn.q_proj.weight", c.QDim, c.HiddenSize),
                W(p + "self_attn.k_proj.weight", c.KvDim, c.HiddenSize),
                W(p + "self_attn.v_proj.weight", c.KvDim, c.HiddenSize),
                W(p + "self_attn.o_proj.weight", c.HiddenSize, c.QDim),
                Bias("self_attn.q_proj.bias", c.QDim), Bias("self_attn.k_proj.bias", c.KvDim), Bias("self_attn.v_proj.bias", c.KvDim),
                W(p + "post_attention_layernorm.weight", c.HiddenSize),
                W(p + "mlp.gate_proj.weight", c.IntermediateSize, c.HiddenSize),
                W(p + "mlp.up_proj.weight", c.IntermediateSize, c.HiddenSize),
                W(p + "mlp.down_proj.weight", c.HiddenSize, c.IntermediateSize),
                PositionSlot(c.KvDim), PositionSlot(c.KvDim),
                AddAdaptableModules(p, c));
        }
        _rope = new RopeTable(c.RopeInvFreq());

        _x = _b.Allocate((long)_batch * c.HiddenSize);
        _xb = _b.Allocate((long)_batch * c.HiddenSize);
        _q = _b.Allocate((long)_batch * c.QDim);
        _k = _b.Allocate((long)_batch * c.KvDim);
        _v = _b.Allocate((long)_batch * c.KvDim);
        _att = _b.Allocate((long)_batch * c.QDim);
        _delta = _b.Allocate((long)_batch * c.HiddenSize);
        _gate = _b.Allocate((long)_batch * c.IntermediateSize);
        _up = _b.Allocate((long)_batch * c.IntermediateSize);
        _out = new LogitsHead(_b, _lmHead, c.HiddenSize, c.VocabSize, _batch);

        ParameterCount = WeightLoader.ParameterCount(checkpoint);
        WeightBytesPerToken = _layers.Sum(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down }.Sum(w => w.ByteSize))
                              + _lmHead.ByteSize;
    }

    private int AddAdaptableModules(string p, LlamaConfig c)
    {
        int first = AdaptableModule(p + "self_attn.q_proj", c.QDim, c.HiddenSize);
        AdaptableModule(p + "self_attn.k_proj", c.KvDim, c.HiddenSize);
        AdaptableModule(p + "self_attn.v_proj", c.KvDim, c.HiddenSize);
        AdaptableModule(p + "self_attn.o_proj", c.HiddenSize, c.QDim);
        AdaptableModule(p + "mlp.gate_proj", c.IntermediateSize, c.HiddenSize);
        AdaptableModule(p + "mlp.up_proj", c.IntermediateSize, c.HiddenSize);
        AdaptableModule(p + "mlp.down_proj", c.HiddenSize, c.IntermediateSize);
        return first;
    }

    private protected override void ForwardCore(SequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        int n = tokens.Length;
        bool all = _out.Begin(n, startPos, ContextLength, logits);
        for (int done = 0; done < n; done += _batch)
        {
            int rows = Math.Min(_batch, n - done);
            RunChunk(state, tokens.Slice(done, rows), startPos + done);
            _out.Write(_xb, rows, done, n, all, logits, HeadOf(state));
        }
    }

    /// <summary>
    /// Runs the blocks for the rows of a chunk, each piece of rows at its own positions over its own state's cache,
    /// leaving the final-normed hidden state in _xb.
    /// </summary>
    private protected override void RunChunk(ReadOnlySpan<Piece> pieces, ReadOnlySpan<int> tokens)
    {
        var c = Config;
        int rows = tokens.Length;
        float eps = (float)c.RmsNormEps, scale = 1f / MathF.Sqrt(c.HeadDim);

        bool adapted = false;
        foreach (var p in pieces) adapted |= Adapted(p.State);
        bool fusedLora = adapted && FusedLora;
        _b.Embed(_embed, tokens, _x);
        if (adapted) foreach (var p in pieces) AdaptEmbedding(p.State, tokens.Slice(p.Row, p.Rows), p.Row, _x);
        _b.RmsNorm(_x, _layers[0].AttnNorm, _xb, rows, eps);
        int layerCount = Math.Min(_layers.Length, LayerLimit);
        for (int i = 0; i < layerCount; i++)
        {
            var l = _layers[i];
            // Attention: project, rotate, append to the cache, attend causally, project back. Each sequence's rows
            // rotate by their own positions and attend over their own cache.
            if ((!adapted || fusedLora) && pieces.Length == 1 && pieces[0] is { Parents: null, Row: 0 } one && one.Rows == rows)
            {
                // One sequence's consecutive rows: the products, RoPE and the cache writes as one op (one launch on a GPU;
                // with staged adapter updates, the products, then the updates with RoPE and the cache writes).
                if (adapted)
                {
                    Adapt(one.State, l.Lora, _xb, 0, rows, _q, after: false);
                    Adapt(one.State, l.Lora + 1, _xb, 0, rows, _k, after: false);
                    Adapt(one.State, l.Lora + 2, _xb, 0, rows, _v, after: false);
                }
                DeviceBuffer kc = one.State[l.KCache], vc = one.State[l.VCache];
                _b.MatMul3RopeAndCache(_xb, rows, l.Wq, _q, l.Bq, l.Wk, _k, l.Bk, l.Wv, _v, l.Bv, c.NumHeads, c.NumKvHeads, c.HeadDim,
                                       one.Pos, _rope, kc, vc);
                _seqRows.Add(new SequenceRows(0, rows, one.Pos, kc, vc));
            }
            else
            {
                if (adapted)
                    foreach (var p in pieces)
                    {
                        Adapt(p.State, l.Lora, _xb, p.Row, p.Rows, _q, after: false);
                        Adapt(p.State, l.Lora + 1, _xb, p.Row, p.Rows, _k, after: false);
                        Adapt(p.State, l.Lora + 2, _xb, p.Row, p.Rows, _v, after: false);
                    }
                _b.MatMul3(_xb, rows, l.Wq, _q, l.Bq, l.Wk, _k, l.Bk, l.Wv, _v, l.Bv);
                foreach (var p in pieces)
                {
                    DeviceBuffer kCache = p.State[l.KCache], vCache = p.State[l.VCache];
                    if (adapted)
                    {
                        Adapt(p.State, l.Lora, _xb, p.Row, p.Rows, _q, after: true);
                        Adapt(p.State, l.Lora + 1, _xb, p.Row, p.Rows, _k, after: true);
                        Adapt(p.State, l.Lora + 2, _xb, p.Row, p.Rows, _v, after: true);
                    }
                    if (p.Parents is { } parents)
                    {
                        // A tree of candidates: each node rotates by its depth, its K/V go to the next cache slot in node
                        // order, and it attends to the sequence and its own ancestors.
                        long kvDim = c.KvDim;
                        for (int r = 0, depth; r < p.Rows; r++)
                        {
                            depth = 0;
                            for (int a = parents[r]; a >= 0; a = parents[a]) depth++;
                            _b.RopeRows(_q, p.Row + r, 1, c.NumHeads, c.HeadDim, p.Pos + depth, _rope);
                            _b.RopeRows(_k, p.Row + r, 1, c.NumKvHeads, c.HeadDim, p.Pos + depth, _rope);
                        }
                        _b.Copy(_k, p.Row * kvDim, kCache, p.Pos * kvDim, p.Rows * kvDim);
                        _b.Copy(_v, p.Row * kvDim, vCache, p.Pos * kvDim, p.Rows * kvDim);
                        _b.AttentionTree(_q, kCache, vCache, _att, p.Row, p.Rows, p.Pos, parents, c.NumHeads, c.NumKvHeads, c.HeadDim, scale);
                        continue;
                    }
                    _seqRows.Add(new SequenceRows(p.Row, p.Rows, p.Pos, kCache, vCache));
                }
                // Every causal sequence's RoPE and cache writes in one call (one launch on a GPU for up to eight).
                if (_seqRows.Count > 0)
                    _b.RopeAndCacheSequences(_q, _k, _v, CollectionsMarshal.AsSpan(_seqRows), c.NumHeads, c.NumKvHeads, c.HeadDim, _rope);
            }
            // Every causal sequence's attention in one call (one dispatch on the CPU instead of one per sequence).
            if (_seqRows.Count > 0) _b.AttentionSequences(_q, _att, CollectionsMarshal.AsSpan(_seqRows), c.NumHeads, c.NumKvHeads, c.HeadDim, scale);
            _seqRows.Clear();
            // The output projection, then the residual add fused with the MLP's norm (one launch on a GPU).
            if (!adapted) _b.MatMulAddRmsNorm(_att, l.Wo, _delta, rows, _x, l.MlpNorm, _xb, eps);
            else
            {
                foreach (var p in pieces) Adapt(p.State, l.Lora + 3, _att, p.Row, p.Rows, _delta, after: false);
                // Staged updates land between the product and the add+norm (a GPU runs the update with the norm).
                if (fusedLora) _b.MatMulAddRmsNorm(_att, l.Wo, _delta, rows, _x, l.MlpNorm, _xb, eps);
                else
                {
                    _b.MatMul(_att, l.Wo, _delta, rows);
                    foreach (var p in pieces) Adapt(p.State, l.Lora + 3, _att, p.Row, p.Rows, _delta, after: true);
                    _b.AddRmsNorm(_x, _delta, l.MlpNorm, _xb, rows, eps);
                }
            }
            // SwiGLU MLP. Adapter updates of gate and up come before the activation: fused into the products by a backend
            // that fuses them, else with the two products and the activation run apart.
            if (!adapted || fusedLora)
            {
                if (adapted)
                    foreach (var p in pieces)
                    {
                        Adapt(p.State, l.Lora + 4, _xb, p.Row, p.Rows, _gate, after: false);
                        Adapt(p.State, l.Lora + 5, _xb, p.Row, p.Rows, _up, after: false);
                    }
                _b.GateUpSwiGlu(_xb, rows, l.Gate, l.Up, _gate, _up);
            }
            else
            {
                _b.MatMul(_xb, l.Gate, _gate, rows);
                _b.MatMul(_xb, l.Up, _up, rows);
                foreach (var p in pieces)
                {
                    Adapt(p.State, l.Lora + 4, _xb, p.Row, p.Rows, _gate, after: true);
                    Adapt(p.State, l.Lora + 5, _xb, p.Row, p.Rows, _up, after: true);
                }
                _b.SwiGlu(_gate, _up, _gate, (long)rows * c.IntermediateSize);
            }
            // The down projection, then the residual add fused with the next block's norm (or the final norm).
            var nextNorm = i + 1 < layerCount ? _layers[i + 1].AttnNorm : _finalNorm;
            if (!adapted) _b.MatMulAddRmsNorm(_gate, l.Down, _delta, rows, _x, nextNorm, _xb, eps);
            else
            {
                foreach (var p in pieces) Adapt(p.State, l.Lora + 6, _gate, p.Row, p.Rows, _delta, after: false);
                if (fusedLora) _b.MatMulAddRmsNorm(_gate, l.Down, _delta, rows, _x, nextNorm, _xb, eps);
                else
                {
                    _b.MatMul(_gate, l.Down, _delta, rows);
                    foreach (var p in pieces) Adapt(p.State, l.Lora + 6, _gate, p.Row, p.Rows, _delta, after: true);
                    _b.AddRmsNorm(_x, _delta, nextNorm, _xb, rows, eps);
                }
            }
        }
    }

    public override bool SupportsTrees => true;

    private protected override void KeepPath(SequenceState s, int pos0, ReadOnlySpan<int> path)
    {
        long kvDim = Config.KvDim;
        foreach (var l in _layers)
            for (int j = 1; j < path.Length; j++)
            {
                if (path[j] == j) continue;
                _b.Copy(s[l.KCache], (pos0 + path[j]) * kvDim, s[l.KCache], (pos0 + j) * kvDim, kvDim);
                _b.Copy(s[l.VCache], (pos0 + path[j]) * kvDim, s[l.VCache], (pos0 + j) * kvDim, kvDim);
            }
    }

    protected override void DisposeCore()
    {
        foreach (var buf in new[] { _x, _xb, _q, _k, _v, _att, _delta, _gate, _up }) buf.Dispose();
        _out.Dispose();
        _checkpoint.Dispose();
    }
}
