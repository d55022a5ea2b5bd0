using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// RWKV v7 ("Goose", x070) with tensors as rwkv.cpp stores them: x_rwkvag [6, 1, C] (the r, w, k, v, a, g lerps),
/// LoRA matrices in the Linear layout (w1 [Dw, C], w2 [C, Dw], ...), w0/a0/v0/k_k/k_a [1, 1, C], r_k [H, N].
/// Time mixing: decay w = exp(−e^−½·sigmoid(w0 + tanh(x·w1)·w2)), in-context learning rate a, normalised removal
/// key kk, value residual to layer 0's v, the generalised delta-rule state update, GroupNorm(H) plus the r·k·r_k bonus,
/// output gate g. Channel mixing: V·relu(K·x)².
/// </summary>
public sealed class Rwkv7 : RwkvBase
{
    private sealed record Layer(Weight Ln1W, Weight Ln1B, Weight Ln2W, Weight Ln2B,
                                Weight Xr, Weight Xw, Weight Xk, Weight Xv, Weight Xa, Weight Xg,
                                Weight W0, Weight W1, Weight W2, Weight A0, Weight A1, Weight A2,
                                Weight? V0, Weight? V1, Weight? V2, Weight G1, Weight G2,
                                Weight KK, Weight KA, Weight RK,
                                Weight Wr, Weight Wk, Weight Wv, Weight Wo, Weight LnxW, Weight LnxB,
                                Weight FMixK, Weight FKey, Weight FValue,
                                int AttShift, int FfnShift, int Wkv);   // state slots

    private readonly Layer[] _layers;
    private readonly DeviceBuffer _x, _xn, _prev, _xr, _xw, _xk, _xv, _xa, _xg;
    private readonly DeviceBuffer _r, _w, _k, _v, _a, _g, _kk, _vFirst, _vGate, _o, _delta, _lora, _hid;

    public int Heads { get; }
    public int HeadSize { get; }
    public int FfnSize { get; }
    public override string Architecture => "Rwkv7";
    public override string WeightFormat => _layers[0].Wk.Format;

    public Rwkv7(Checkpoint checkpoint, RwkvConfig config, IBackend backend, ModelLoadOptions options)
        : base(checkpoint, config, backend, options)
    {
        int C = config.HiddenSize;
        var rk0 = checkpoint.Get("blocks.0.att.r_k");
        Heads = rk0.Rank == 2 ? rk0.Shape[0] : 0;
        if (Heads <= 0 || rk0.ElementCount != C || C % Heads != 0)
            throw new ModelFormatException(rk0.Source, $"tensor '{rk0.Name}' has shape {rk0.ShapeString}; expected [heads, {C}/heads]");
        HeadSize = C / Heads;
        FfnSize = Rows("blocks.0.ffn.key.weight");
        int F = FfnSize;
        int Lora(string name) => Rows(name);
        int maxLora = 1;

        LoadCommon();
        _layers = new Layer[config.NumLayers];
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"blocks.{i}.";
            var mix = checkpoint.Get(p + "att.x_rwkvag");
            if (mix.ElementCount != 6L * C)
                throw new ModelFormatException(mix.Source, $"tensor '{mix.Name}' has shape {mix.ShapeString}; expected [6, 1, {C}]");
            Weight Mix(int j) => B.LoadWeight(OwnedTensors.View(mix, (long)j * C, [C], $"{mix.Name}[{j}]"));
            int dw = Lora(p + "att.w1"), da = Lora(p + "att.a1"), dg = Lora(p + "att.g1");
            bool hasV = i > 0;
            int dv = hasV ? Lora(p + "att.v1") : 0;
            maxLora = Math.Max(maxLora, Math.Max(Math.Max(dw, da), Math.Max(dg, dv)));
            _layers[i] = new Layer(
                Vec(p + "ln1.weight", C), Vec(p + "ln1.bias", C), Vec(p + "ln2.weight", C), Vec(p + "ln2.bias", C),
                Mix(0), Mix(1), Mix(2), Mix(3), Mix(4), Mix(5),
                Vec(p + "att.w0", C), Mat(p + "att.w1", dw, C), Mat(p + "att.w2", C, dw),
                Vec(p + "att.a0", C), Mat(p + "att.a1", da, C), Mat(p + "att.a2", C, da),
                hasV ? Vec(p + "att.v0", C) : null, hasV ? Mat(p + "att.v1", dv, C) : null, hasV ? Mat(p + "att.v2", C, dv) : null,
                Mat(p + "att.g1", dg, C), Mat(p + "att.g2", C, dg),
                Vec(p + "att.k_k", C), Vec(p + "att.k_a", C), Vec(p + "att.r_k", C),
                Mat(p + "att.receptance.weight", C, C), Mat(p + "att.key.weight", C, C), Mat(p + "att.value.weight", C, C),
                Mat(p + "att.output.weight", C, C), Vec(p + "att.ln_x.weight", C), Vec(p + "att.ln_x.bias", C),
                Vec(p + "ffn.x_k", C), Mat(p + "ffn.key.weight", F, C), Mat(p + "ffn.value.weight", C, F),
                State(C), State(C), State((long)Heads * HeadSize * HeadSize));
        }
        long bc = (long)Batch * C;
        _x = Buffer(bc); _xn = Buffer(bc); _prev = Buffer(bc);
        _xr = Buffer(bc); _xw = Buffer(bc); _xk = Buffer(bc); _xv = Buffer(bc); _xa = Buffer(bc); _xg = Buffer(bc);
        _r = Buffer(bc); _w = Buffer(bc); _k = Buffer(bc); _v = Buffer(bc); _a = Buffer(bc); _g = Buffer(bc);
        _kk = Buffer(bc); _vFirst = Buffer(bc); _vGate = Buffer(bc); _o = Buffer(bc); _delta = Buffer(bc);
        _lora = Buffer((long)Batch * maxLora);
        _hid = Buffer((long)Batch * F);
        _weightBytesPerToken = _layers.Sum(l => new[] { l.Wr, l.Wk, l.Wv, l.Wo, l.W1, l.W2, l.A1, l.A2, l.G1, l.G2, l.FKey, l.FValue }
                                  .Sum(w => w.ByteSize) + (l.V1?.ByteSize ?? 0) + (l.V2?.ByteSize ?? 0)) + HeadW.ByteSize;
    }

    protected override DeviceBuffer RunChunk(ReadOnlySpan<int> tokens)
    {
        int rows = tokens.Length, C = Config.HiddenSize;
        long n = (long)rows * C;
        float eps = (float)Config.LayerNormEps, gnEps = (float)Config.GroupNormEps;
        B.Embed(Emb, tokens, _xn);
        B.LayerNorm(_xn, Ln0W, Ln0B, _x, rows, eps);
        for (int i = 0; i < _layers.Length; i++)
        {
            var l = _layers[i];
            // Time mixing: x + (x_prev − x)·mix for each of r, w, k, v, a, g.
            B.LayerNorm(_x, l.Ln1W, l.Ln1B, _xn, rows, eps);
            L.TokenShift(_xn, S[l.AttShift], _prev, rows, C);
            L.LerpRow(_xn, _prev, l.Xr, _xr, rows);
            L.LerpRow(_xn, _prev, l.Xw, _xw, rows);
            L.LerpRow(_xn, _prev, l.Xk, _xk, rows);
            L.LerpRow(_xn, _prev, l.Xv, _xv, rows);
            L.LerpRow(_xn, _prev, l.Xa, _xa, rows);
            L.LerpRow(_xn, _prev, l.Xg, _xg, rows);
            B.MatMul(_xr, l.Wr, _r, rows);
            B.MatMul(_xw, l.W1, _lora, rows);
            L.Tanh(_lora, (long)rows * l.W1.Rows);
            B.MatMul(_lora, l.W2, _w, rows, l.W0);
            L.Rwkv7Decay(_w, n);
            B.MatMul(_xk, l.Wk, _k, rows);
            B.MatMul(_xv, l.Wv, _v, rows);
            B.MatMul(_xa, l.A1, _lora, rows);
            B.MatMul(_lora, l.A2, _a, rows, l.A0);
            L.Sigmoid(_a, n);
            B.MatMul(_xg, l.G1, _lora, rows);
            L.Sigmoid(_lora, (long)rows * l.G1.Rows);
            B.MatMul(_lora, l.G2, _g, rows);
            L.MultiplyRow(_k, l.KK, _kk, rows);
            L.L2NormalizeGroups(_kk, rows, C, HeadSize, 1e-12f);
            L.Rwkv7KeyScale(_k, _a, l.KA, rows);
            if (i == 0) B.Copy(_v, 0, _vFirst, 0, n);
            else
            {
                B.MatMul(_xv, l.V1!, _lora, rows);
                B.MatMul(_lora, l.V2!, _vGate, rows, l.V0);
                L.Sigmoid(_vGate, n);
                L.Lerp(_v, _vFirst, _vGate, _v, n);
            }
            L.Wkv7(_r, _w, _k, _v, _kk, _a, S[l.Wkv], _o, rows, Heads, HeadSize);
            L.GroupNorm(_o, l.LnxW, l.LnxB, _o, rows, Heads, gnEps);
            L.Rwkv7Bonus(_r, _k, _v, l.RK, _o, rows, Heads, HeadSize);
            L.Multiply(_o, _g, n);
            B.MatMul(_o, l.Wo, _delta, rows);
            B.Add(_x, _delta, n);
            // Channel mixing.
            B.LayerNorm(_x, l.Ln2W, l.Ln2B, _xn, rows, eps);
            L.TokenShift(_xn, S[l.FfnShift], _prev, rows, C);
            L.LerpRow(_xn, _prev, l.FMixK, _xk, rows);
            B.MatMul(_xk, l.FKey, _hid, rows);
            L.ReluSquare(_hid, (long)rows * FfnSize);
            B.MatMul(_hid, l.FValue, _delta, rows);
            B.Add(_x, _delta, n);
        }
        B.LayerNorm(_x, LnOutW, LnOutB, _xn, rows, eps);
        return _xn;
    }
}
