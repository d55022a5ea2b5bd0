using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// RWKV v5.2 ("Eagle") with tensors as rwkv.cpp stores them (or in the HF Rwkv5ForCausalLM layout, see
/// <see cref="RwkvBase.Name"/>): time_mix_* squeezed to [C], time_decay already
/// exp(−exp(w)) as [H, S, 1], time_faaaa (the bonus u) as [H, S, 1]. Time mixing: token shift, lerps, r/k/v/g
/// projections, the WKV recurrence over a [H, S, S] state, GroupNorm(H) · silu(g); channel mixing: sigmoid(r) ·
/// V·relu(K·x)².
/// </summary>
public sealed class Rwkv5 : RwkvBase
{
    private sealed record Layer(Weight Ln1W, Weight Ln1B, Weight Ln2W, Weight Ln2B,
                                Weight MixK, Weight MixV, Weight MixR, Weight MixG, Weight Decay, Weight Bonus,
                                Weight Wr, Weight Wk, Weight Wv, Weight Wg, Weight Wo, Weight LnxW, Weight LnxB,
                                Weight FMixK, Weight FMixR, Weight FKey, Weight FRec, Weight FValue,
                                int AttShift, int FfnShift, int Wkv);   // state slots

    private readonly Layer[] _layers;
    private readonly DeviceBuffer _x, _xn, _prev, _xk, _xv, _xr, _xg, _r, _k, _v, _g, _o, _delta, _hid;

    public int Heads { get; }
    public int HeadSize { get; }
    public int FfnSize { get; }
    public override string Architecture => Config.HfLayout ? "Rwkv5ForCausalLM" : "Rwkv5";
    public override string WeightFormat => _layers[0].Wk.Format;

    public Rwkv5(Checkpoint checkpoint, RwkvConfig config, IBackend backend, ModelLoadOptions options)
        : base(checkpoint, config, backend, options)
    {
        int C = config.HiddenSize;
        var decay0 = Get("blocks.0.att.time_decay");
        Heads = decay0.Rank >= 1 ? decay0.Shape[0] : 0;
        if (Heads <= 0 || C % Heads != 0 || decay0.ElementCount != C)
            throw new ModelFormatException(decay0.Source, $"tensor '{decay0.Name}' has shape {decay0.ShapeString}; expected [heads, {C}/heads, 1]");
        HeadSize = C / Heads;
        FfnSize = Rows("blocks.0.ffn.key.weight");
        int F = FfnSize;

        LoadCommon();
        _layers = new Layer[config.NumLayers];
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"blocks.{i}.";
            _layers[i] = new Layer(
                Vec(p + "ln1.weight", C), Vec(p + "ln1.bias", C), Vec(p + "ln2.weight", C), Vec(p + "ln2.bias", C),
                Vec(p + "att.time_mix_k", C), Vec(p + "att.time_mix_v", C), Vec(p + "att.time_mix_r", C), Vec(p + "att.time_mix_g", C),
                Decay(p + "att.time_decay", C), Vec(p + "att.time_faaaa", C),
                Mat(p + "att.receptance.weight", C, C), Mat(p + "att.key.weight", C, C), Mat(p + "att.value.weight", C, C),
                Mat(p + "att.gate.weight", C, C), Mat(p + "att.output.weight", C, C),
                Vec(p + "att.ln_x.weight", C), Vec(p + "att.ln_x.bias", C),
                Vec(p + "ffn.time_mix_k", C), Vec(p + "ffn.time_mix_r", C),
                Mat(p + "ffn.key.weight", F, C), Mat(p + "ffn.receptance.weight", C, C), Mat(p + "ffn.value.weight", C, F),
                State(C), State(C), State((long)Heads * HeadSize * HeadSize));
        }
        long bc = (long)Batch * C;
        _x = Buffer(bc); _xn = Buffer(bc); _prev = Buffer(bc);
        _xk = Buffer(bc); _xv = Buffer(bc); _xr = Buffer(bc); _xg = Buffer(bc);
        _r = Buffer(bc); _k = Buffer(bc); _v = Buffer(bc); _g = Buffer(bc); _o = Buffer(bc); _delta = Buffer(bc);
        _hid = Buffer((long)Batch * F);
        _weightBytesPerToken = _layers.Sum(l => new[] { l.Wr, l.Wk, l.Wv, l.Wg, l.Wo, l.FKey, l.FRec, l.FValue }.Sum(w => w.ByteSize)) + HeadW.ByteSize;
    }

    /// <summary>The per-channel decay w = exp(−exp(time_decay)): stored so by rwkv.cpp, computed here for the HF layout.</summary>
    private Weight Decay(string name, int n)
    {
        if (!Config.HfLayout) return Vec(name, n);
        var raw = OwnedTensors.AsVector(Get(name), n);
        var w = new float[n];
        for (int i = 0; i < n; i++) w[i] = (float)Math.Exp(-Math.Exp(raw.GetFloat(i)));
        return B.LoadWeight(Owned.Floats(raw.Name + " (exp(−exp))", w, raw.Source));
    }

    protected override DeviceBuffer RunChunk(ReadOnlySpan<int> tokens)
    {
        int rows = tokens.Length, C = Config.HiddenSize;
        long n = (long)rows * C;
        float eps = (float)Config.LayerNormEps, gnEps = (float)Config.GroupNormEps;
        B.Embed(Emb, tokens, _xn);
        B.LayerNorm(_xn, Ln0W, Ln0B, _x, rows, eps);
        foreach (var l in _layers)
        {
            // Time mixing.
            B.LayerNorm(_x, l.Ln1W, l.Ln1B, _xn, rows, eps);
            L.TokenShift(_xn, S[l.AttShift], _prev, rows, C);
            L.LerpRow(_prev, _xn, l.MixK, _xk, rows);
            L.LerpRow(_prev, _xn, l.MixV, _xv, rows);
            L.LerpRow(_prev, _xn, l.MixR, _xr, rows);
            L.LerpRow(_prev, _xn, l.MixG, _xg, rows);
            B.MatMul(_xr, l.Wr, _r, rows);
            B.MatMul(_xk, l.Wk, _k, rows);
            B.MatMul(_xv, l.Wv, _v, rows);
            B.MatMul(_xg, l.Wg, _g, rows);
            L.Silu(_g, n);
            L.Wkv5(_r, _k, _v, l.Decay, l.Bonus, S[l.Wkv], _o, rows, Heads, HeadSize);
            L.GroupNorm(_o, l.LnxW, l.LnxB, _o, rows, Heads, gnEps);
            L.Multiply(_o, _g, n);
            B.MatMul(_o, l.Wo, _delta, rows);
            B.Add(_x, _delta, n);
            // Channel mixing.
            B.LayerNorm(_x, l.Ln2W, l.Ln2B, _xn, rows, eps);
            L.TokenShift(_xn, S[l.FfnShift], _prev, rows, C);
            L.LerpRow(_prev, _xn, l.FMixK, _xk, rows);
            L.LerpRow(_prev, _xn, l.FMixR, _xr, rows);
            B.MatMul(_xr, l.FRec, _r, rows);
            L.Sigmoid(_r, n);
            B.MatMul(_xk, l.FKey, _hid, rows);
            L.ReluSquare(_hid, (long)rows * FfnSize);
            B.MatMul(_hid, l.FValue, _delta, rows);
            L.Multiply(_delta, _r, n);
            B.Add(_x, _delta, n);
        }
        B.LayerNorm(_x, LnOutW, LnOutB, _xn, rows, eps);
        return _xn;
    }
}
