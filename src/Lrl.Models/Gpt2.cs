using System.Runtime.InteropServices;
using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// GPT2LMHeadModel: LayerNorm, learned absolute positions, fused c_attn, gelu_new MLP, tied head. Conv1D weights are
/// stored [in, out]; they are transposed once at load into the [out, in] Linear layout the backend expects (and c_attn
/// split into q, k, v), in the stored dtype. KV cache per sequence state; a true batched pass over the runs of a step
/// (each its own positions and cache); no allocation per token.
/// </summary>
public sealed class Gpt2 : ModelBase
{
    private sealed record Layer(Weight Ln1W, Weight Ln1B, Weight Wq, Weight Wk, Weight Wv, Weight Bq, Weight Bk, Weight Bv,
                                Weight Wo, Weight Bo, Weight Ln2W, Weight Ln2B, Weight Fc, Weight BFc, Weight Proj, Weight BProj,
                                int KCache, int VCache,    // state slots: [context, hidden] each
                                int Lora);                 // adapter slots: q, k, v (c_attn), c_proj, c_fc, mlp c_proj from here

    private readonly Checkpoint _checkpoint;
    private readonly OwnedTensors _owned = new();
    private readonly IBackend _b;
    private readonly Layer[] _layers;
    private readonly Weight _wte, _wpe, _lnfW, _lnfB, _head;
    private readonly int _batch;
    private readonly int[] _positions;
    private readonly DeviceBuffer _x, _xb, _pe, _q, _k, _v, _att, _delta, _h;
    private readonly List<SequenceRows> _seqRows = []; // a chunk's sequences, for one attention call
    private readonly LogitsHead _out;

    public Gpt2Config Config { get; }
    public override string Architecture => "GPT2LMHeadModel";
    public override int VocabSize => Config.VocabSize;
    public override int ContextLength { get; }
    public override IBackend Backend => _b;
    public override long ParameterCount { get; }
    public override long WeightBytesPerToken { get; }
    public override string WeightFormat => _layers[0].Wq.Format;

    public Gpt2(Checkpoint checkpoint, Gpt2Config config, IBackend backend, ModelLoadOptions options)
    {
        _checkpoint = checkpoint;
        _b = backend;
        Config = config;
        var c = config;
        int C = c.HiddenSize;
        ContextLength = options.ResolveContext(c.MaxPositions);
        _batch = Math.Min(options.BatchSize, ContextLength);
        try
        {
            // HF GPT-2 checkpoints come with or without the "transformer." prefix.
            string pre = checkpoint.Contains("transformer.wte.weight") ? "transformer." : "";
            Weight W(string name, params int[] shape) => _b.LoadWeight(checkpoint.Get(pre + name, shape));
            // A Conv1D weight [in, out]: columns [start, start + count) transposed to a Linear [count, in].
            Weight Conv(string name, int inF, int outF, int start, int count) =>
                _b.LoadWeight(_owned.TransposeColumns(checkpoint.Get(pre + name, inF, outF), start, count, $"{pre}{name}[{start}:{start + count}]ᵀ"));
            Weight BiasSlice(string name, int total, int start, int count) =>
                _b.LoadWeight(OwnedTensors.View(checkpoint.Get(pre + name, total), start, [count], $"{pre}{name}[{start}:{start + count}]"));

            _wte = W("wte.weight", c.VocabSize, C);
            _wpe = W("wpe.weight", c.MaxPositions, C);
            _lnfW = W("ln_f.weight", C);
            _lnfB = W("ln_f.bias", C);
            AdaptableEmbedding("transformer.wte", c.VocabSize, C, alias: "wte");
            _head = checkpoint.Contains("lm_head.weight") ? _b.LoadWeight(checkpoint.Get("lm_head.weight", c.VocabSize, C)) : _wte;
            _layers = new Layer[c.NumLayers];
            for (int i = 0; i < c.NumLayers; i++)
            {
                string p = $"h.{i}.";
                _layers[i] = new Layer(
                    W(p + "ln_1.weight", C), W(p + "ln_1.bias", C),
                    Conv(p + "attn.c_attn.weight", C, 3 * C, 0, C), Conv(p + "attn.c_attn.weight", C, 3 * C, C, C), Conv(p + "attn.c_attn.weight", C, 3 * C, 2 * C, C),
                    BiasSlice(p + "attn.c_attn.bias", 3 * C, 0, C), BiasSlice(p + "attn.c_attn.bias", 3 * C, C, C), BiasSlice(p + "attn.c_attn.bias", 3 * C, 2 * C, C),
                    Conv(p + "attn.c_proj.weight", C, C, 0, C), W(p + "attn.c_proj.bias", C),
                    W(p + "ln_2.weight", C), W(p + "ln_2.bias", C),
                    Conv(p + "mlp.c_fc.weight", C, c.InnerSize, 0, c.InnerSize), W(p + "mlp.c_fc.bias", c.InnerSize),
                    Conv(p + "mlp.c_proj.weight", c.InnerSize, C, 0, C), W(p + "mlp.c_proj.bias", C),
                    PositionSlot(C), PositionSlot(C),
                    AddAdaptableModules(i, C, c.InnerSize));
            }
        }
        catch { _owned.Dispose(); throw; }

        _positions = new int[_batch];
        _x = _b.Allocate((long)_batch * C);
        _xb = _b.Allocate((long)_batch * C);
        _pe = _b.Allocate((long)_batch * C);
        _q = _b.Allocate((long)_batch * C);
        _k = _b.Allocate((long)_batch * C);
        _v = _b.Allocate((long)_batch * C);
        _att = _b.Allocate((long)_batch * C);
        _delta = _b.Allocate((long)_batch * C);
        _h = _b.Allocate((long)_batch * c.InnerSize);
        _out = new LogitsHead(_b, _head, C, c.VocabSize, _batch);

        ParameterCount = checkpoint.Tensors.Sum(t => t.ElementCount);
        WeightBytesPerToken = _layers.Sum(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Fc, l.Proj }.Sum(w => w.ByteSize)) + _head.ByteSize;
    }

    /// <summary>GPT-2's adaptable Conv1D modules, under the checkpoint's names and the other prefix form.</summary>
    private int AddAdaptableModules(int i, int C, int inner)
    {
        int M(string name, int outF, int inF, int row0 = 0, int rows = -1) =>
            AdaptableModule("transformer.h." + i + "." + name, outF, inF, row0, rows, alias: "h." + i + "." + name);
        int first = M("attn.c_attn", 3 * C, C, 0, C);
        M("attn.c_attn", 3 * C, C, C, C);
        M("attn.c_attn", 3 * C, C, 2 * C, C);
        M("attn.c_proj", C, C);
        M("mlp.c_fc", inner, C);
        M("mlp.c_proj", C, inner);
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

    private protected override int ChunkRows => _batch;
    private protected override LogitsHead? Head => _out;
    private protected override DeviceBuffer? FinalHidden => _xb;

    /// <summary>
    /// Runs the blocks for the rows of a chunk, each piece of rows at its own positions over its own state's cache,
    /// leaving the final-normed hidden state in _xb.
    /// </summary>
    private protected override void RunChunk(ReadOnlySpan<Piece> pieces, ReadOnlySpan<int> tokens)
    {
        var c = Config;
        int rows = tokens.Length, C = c.HiddenSize;
        float eps = (float)c.LayerNormEps;
        bool adapted = false;
        foreach (var p in pieces)
        {
            adapted |= Adapted(p.State);
            for (int r = 0; r < p.Rows; r++) _positions[p.Row + r] = p.Pos + r;
        }
        _b.Embed(_wte, tokens, _x);
        if (adapted) foreach (var p in pieces) AdaptEmbedding(p.State, tokens.Slice(p.Row, p.Rows), p.Row, _x);
        _b.Embed(_wpe, _positions.AsSpan(0, rows), _pe);
        _b.Add(_x, _pe, (long)rows * C);
        for (int i = 0; i < _layers.Length; i++)
        {
            var l = _layers[i];
            float scale = c.ScaleAttnWeights ? 1f / MathF.Sqrt(c.HeadDim) : 1f;
            if (c.ScaleAttnByInverseLayerIdx) scale /= i + 1;
            _b.LayerNorm(_x, l.Ln1W, l.Ln1B, _xb, rows, eps);
            if (adapted) foreach (var p in pieces) AdaptQkv(p, l, after: false);
            _b.MatMul(_xb, l.Wq, _q, rows, l.Bq);
            _b.MatMul(_xb, l.Wk, _k, rows, l.Bk);
            _b.MatMul(_xb, l.Wv, _v, rows, l.Bv);
            foreach (var p in pieces)
            {
                if (adapted) AdaptQkv(p, l, after: true);
                _seqRows.Add(new SequenceRows(p.Row, p.Rows, p.Pos, p.State[l.KCache], p.State[l.VCache]));
            }
            // Every sequence's cache writes in one call (one launch on a GPU for up to eight).
            _b.CacheSequences(_k, _v, CollectionsMarshal.AsSpan(_seqRows), C);
            _b.AttentionSequences(_q, _att, CollectionsMarshal.AsSpan(_seqRows), c.NumHeads, c.NumHeads, c.HeadDim, scale);
            _seqRows.Clear();
            if (adapted) foreach (var p in pieces) Adapt(p.State, l.Lora + 3, _att, p.Row, p.Rows, _delta, after: false);
            _b.MatMul(_att, l.Wo, _delta, rows, l.Bo);
            if (adapted) foreach (var p in pieces) Adapt(p.State, l.Lora + 3, _att, p.Row, p.Rows, _delta, after: true);
            _b.Add(_x, _delta, (long)rows * C);
            _b.LayerNorm(_x, l.Ln2W, l.Ln2B, _xb, rows, eps);
            if (adapted) foreach (var p in pieces) Adapt(p.State, l.Lora + 4, _xb, p.Row, p.Rows, _h, after: false);
            _b.MatMul(_xb, l.Fc, _h, rows, l.BFc);
            if (adapted) foreach (var p in pieces) Adapt(p.State, l.Lora + 4, _xb, p.Row, p.Rows, _h, after: true);
            _b.Gelu(_h, (long)rows * c.InnerSize);
            if (adapted) foreach (var p in pieces) Adapt(p.State, l.Lora + 5, _h, p.Row, p.Rows, _delta, after: false);
            _b.MatMul(_h, l.Proj, _delta, rows, l.BProj);
            if (adapted) foreach (var p in pieces) Adapt(p.State, l.Lora + 5, _h, p.Row, p.Rows, _delta, after: true);
            _b.Add(_x, _delta, (long)rows * C);
        }
        _b.LayerNorm(_x, _lnfW, _lnfB, _xb, rows, eps);
    }

    private void AdaptQkv(Piece p, Layer l, bool after)
    {
        Adapt(p.State, l.Lora, _xb, p.Row, p.Rows, _q, after);
        Adapt(p.State, l.Lora + 1, _xb, p.Row, p.Rows, _k, after);
        Adapt(p.State, l.Lora + 2, _xb, p.Row, p.Rows, _v, after);
    }

    protected override void DisposeCore()
    {
        foreach (var l in _layers)
            foreach (var w in new[] { l.Ln1W, l.Ln1B, l.Wq, l.Wk, l.Wv, l.Bq, l.Bk, l.Bv, l.Wo, l.Bo, l.Ln2W, l.Ln2B, l.Fc, l.BFc, l.Proj, l.BProj }) w.Dispose();
        foreach (var w in new[] { _wte, _wpe, _lnfW, _lnfB }) w.Dispose();
        if (!ReferenceEquals(_head, _wte)) _head.Dispose();
        foreach (var buf in new[] { _x, _xb, _pe, _q, _k, _v, _att, _delta, _h }) buf.Dispose();
        _out.Dispose();
        _owned.Dispose();
        _checkpoint.Dispose();
    }
}
