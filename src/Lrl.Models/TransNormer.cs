using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// TransnormerForCausalLM (TransNormerLLM, HF layout): scaled embeddings, per layer a SimpleRMSNorm (no weight) before
/// a lightning-attention token mixer (qkvu projection, silu on q and k, linear attention with per-head exponential
/// decay, optionally LRPE on q and k per linear_use_lrpe_list, SimpleRMSNorm, gate u, out_proj) and a SimpleRMSNorm before an SGLU channel mixer (l3((l1 x)·(l2 x))).
/// Prefill uses the chunked form, decode the recurrent form; the [heads, d, d] state per layer never grows.
/// </summary>
public sealed class TransNormer : ModelBase
{
    /// <summary>Rows per block of the chunked prefill (the HF implementation's BLOCK).</summary>
    public const int BlockSize = 256;

    private sealed record Layer(Weight Wq, Weight Wk, Weight Wv, Weight Wu, Weight? Bq, Weight? Bk, Weight? Bv, Weight? Bu,
                                Weight Out, Weight? BOut, Weight L1, Weight L2, Weight L3, Weight? B1, Weight? B2, Weight? B3,
                                Weight Slopes, Weight? Theta, int State);   // state slot: [heads, keyDim, headDim]

    private readonly Checkpoint _checkpoint;
    private readonly OwnedTensors _owned = new();
    private readonly IBackend _b;
    private readonly ILinearAttentionOps _l;
    private readonly Layer[] _layers;
    private readonly Weight _embed, _head, _onesD, _onesE;
    private readonly int _batch;
    private readonly DeviceBuffer _x, _xn, _q, _k, _v, _u, _o, _delta, _h1, _h2;
    private readonly LogitsHead _out;
    private readonly DeviceBuffer? _qL, _kL; // [batch, heads·2·headDim] LRPE features, when any layer uses LRPE

    public TransNormerConfig Config { get; }
    public override string Architecture => "TransnormerForCausalLM";
    public override int VocabSize => Config.VocabSize;
    /// <summary>A cap on positions only (the recurrent state has a constant size); see <see cref="ModelLoadOptions.RecurrentContextCap"/>.</summary>
    public override int ContextLength { get; }
    /// <summary>False: a recurrent state cannot be rewound (startPos must be 0 or the current length).</summary>
    public override bool CanRewind => false;
    public override IBackend Backend => _b;
    public override long ParameterCount { get; }
    public override long WeightBytesPerToken { get; }
    public override string WeightFormat => _layers[0].Wq.Format;

    public TransNormer(Checkpoint checkpoint, TransNormerConfig config, IBackend backend, ModelLoadOptions options)
    {
        _checkpoint = checkpoint;
        _b = backend;
        _l = backend as ILinearAttentionOps
             ?? throw new LrlException($"backend '{backend.Name}' does not support the linear-attention ops TransNormerLLM needs");
        Config = config;
        var c = config;
        ContextLength = options.ResolveRecurrentContext();
        _batch = options.BatchSize;
        int D = c.EmbedDim, E = c.HiddenDim, G = c.GluDim;
        try
        {
            Weight W(string name, params int[] shape) => _b.LoadWeight(checkpoint.Get(name, shape));
            Weight? Bias(string name, int n) => c.Bias ? W(name, n) : null;
            _embed = W("model.embed_tokens.weight", c.VocabSize, D);
            _head = checkpoint.Contains("lm_head.weight") ? W("lm_head.weight", c.VocabSize, D)
                : c.TieWordEmbeddings ? _embed : throw new ModelFormatException(checkpoint.Directory, "missing tensor 'lm_head.weight'");
            _onesD = _b.LoadWeight(_owned.Floats("simplermsnorm(ones)", Enumerable.Repeat(1f, D).ToArray(), checkpoint.Directory));
            _onesE = _b.LoadWeight(_owned.Floats("simplermsnorm(ones)", Enumerable.Repeat(1f, E).ToArray(), checkpoint.Directory));
            _layers = new Layer[c.NumLayers];
            for (int i = 0; i < c.NumLayers; i++)
            {
                string p = $"model.layers.{i}.";
                var qkvu = checkpoint.Get(p + "token_mixer.qkvu_proj.weight", 4 * E, D);
                Weight Part(int j) => _b.LoadWeight(OwnedTensors.View(qkvu, (long)j * E * D, [E, D], $"{qkvu.Name}[{j}]"));
                Weight? PartBias(int j) => c.Bias
                    ? _b.LoadWeight(OwnedTensors.View(checkpoint.Get(p + "token_mixer.qkvu_proj.bias", 4 * E), (long)j * E, [E]))
                    : null;
                _layers[i] = new Layer(Part(0), Part(1), Part(2), Part(3), PartBias(0), PartBias(1), PartBias(2), PartBias(3),
                    W(p + "token_mixer.out_proj.weight", D, E), Bias(p + "token_mixer.out_proj.bias", D),
                    W(p + "channel_mixer.l1.weight", G, D), W(p + "channel_mixer.l2.weight", G, D), W(p + "channel_mixer.l3.weight", D, G),
                    Bias(p + "channel_mixer.l1.bias", G), Bias(p + "channel_mixer.l2.bias", G), Bias(p + "channel_mixer.l3.bias", D),
                    _b.LoadWeight(_owned.Floats($"slopes[{i}]", c.LayerSlopes(i), checkpoint.Directory)),
                    c.LayerUsesLrpe(i) ? _b.LoadWeight(OwnedTensors.AsVector(checkpoint.Get(p + "token_mixer.lrpe.theta"), E)) : null,
                    StateSlot((long)c.NumHeads * (c.LayerUsesLrpe(i) ? 2 : 1) * c.HeadDim * c.HeadDim));
            }
        }
        catch { _owned.Dispose(); throw; }
        _x = _b.Allocate((long)_batch * D);
        _xn = _b.Allocate((long)_batch * D);
        _q = _b.Allocate((long)_batch * E);
        _k = _b.Allocate((long)_batch * E);
        _v = _b.Allocate((long)_batch * E);
        _u = _b.Allocate((long)_batch * E);
        _o = _b.Allocate((long)_batch * E);
        _delta = _b.Allocate((long)_batch * D);
        _h1 = _b.Allocate((long)_batch * G);
        _h2 = _b.Allocate((long)_batch * G);
        if (_layers.Any(l => l.Theta is not null))
        {
            _qL = _b.Allocate((long)_batch * 2 * E);
            _kL = _b.Allocate((long)_batch * 2 * E);
        }
        _out = new LogitsHead(_b, _head, D, c.VocabSize, _batch);
        ParameterCount = checkpoint.Tensors.Sum(t => t.ElementCount);
        WeightBytesPerToken = _layers.Sum(l => new[] { l.Wq, l.Wk, l.Wv, l.Wu, l.Out, l.L1, l.L2, l.L3 }.Sum(w => w.ByteSize)) + _head.ByteSize;
    }

    private protected override void ForwardCore(SequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        int n = tokens.Length;
        bool all = _out.Begin(n, startPos, ContextLength, logits);
        if (startPos == 0)
        {
            foreach (var b in state.Buffers) _l.Zero(b, b.Length);
            state.Position = 0;
        }
        else if (startPos != state.Position)
            throw new LrlException($"a TransNormer state cannot rewind or skip: it holds {state.Position} tokens, but startPos is {startPos} (use 0 to start over)");
        for (int done = 0; done < n; done += _batch)
        {
            int rows = Math.Min(_batch, n - done);
            RunStateChunk(state, tokens.Slice(done, rows), (int)state.Position);
            state.Position += rows;
            _out.Write(_xn, rows, done, n, all, logits);
        }
    }

    private void RunStateChunk(SequenceState state, ReadOnlySpan<int> tokens, int pos)
    {
        var c = Config;
        int rows = tokens.Length, D = c.EmbedDim, E = c.HiddenDim;
        float eps = (float)c.NormEps;
        _b.Embed(_embed, tokens, _x);
        if (c.ScaleEmbedding) _l.Scale(_x, MathF.Sqrt(D), (long)rows * D);
        foreach (var l in _layers)
        {
            _b.RmsNorm(_x, _onesD, _xn, rows, eps);
            _b.MatMul(_xn, l.Wq, _q, rows, l.Bq);
            _b.MatMul(_xn, l.Wk, _k, rows, l.Bk);
            _b.MatMul(_xn, l.Wv, _v, rows, l.Bv);
            _b.MatMul(_xn, l.Wu, _u, rows, l.Bu);
            _l.Silu(_q, (long)rows * E);
            _l.Silu(_k, (long)rows * E);
            DeviceBuffer q = _q, k = _k;
            int keyDim = c.HeadDim;
            if (l.Theta is not null)
            {
                // LRPE: [x·cos(θp), x·sin(θp)] doubles the key width.
                _l.Lrpe(_q, l.Theta, _qL!, rows, c.NumHeads, c.HeadDim, pos);
                _l.Lrpe(_k, l.Theta, _kL!, rows, c.NumHeads, c.HeadDim, pos);
                (q, k, keyDim) = (_qL!, _kL!, 2 * c.HeadDim);
            }
            var st = state[l.State];
            if (rows == 1) _l.LightningRecurrent(q, k, _v, l.Slopes, st, _o, 1, c.NumHeads, keyDim, c.HeadDim);
            else _l.LightningChunked(q, k, _v, l.Slopes, st, _o, rows, c.NumHeads, keyDim, c.HeadDim, BlockSize);
            _b.RmsNorm(_o, _onesE, _o, rows, eps);
            _l.Multiply(_o, _u, (long)rows * E);
            _b.MatMul(_o, l.Out, _delta, rows, l.BOut);
            _b.Add(_x, _delta, (long)rows * D);
            _b.RmsNorm(_x, _onesD, _xn, rows, eps);
            _b.MatMul(_xn, l.L1, _h1, rows, l.B1);
            _b.MatMul(_xn, l.L2, _h2, rows, l.B2);
            _l.Multiply(_h1, _h2, (long)rows * c.GluDim);
            _b.MatMul(_h1, l.L3, _delta, rows, l.B3);
            _b.Add(_x, _delta, (long)rows * D);
        }
        _b.RmsNorm(_x, _onesD, _xn, rows, eps);
    }

    protected override void DisposeCore()
    {
        foreach (var buf in new[] { _x, _xn, _q, _k, _v, _u, _o, _delta, _h1, _h2 }) buf.Dispose();
        _out.Dispose();
        _qL?.Dispose();
        _kL?.Dispose();
        _owned.Dispose();
        _checkpoint.Dispose();
    }
}
