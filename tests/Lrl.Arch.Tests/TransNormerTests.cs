using System.Text.Json.Nodes;
using Lrl.Cpu;
using Lrl.Kernels.Reference;
using Lrl.Loading;

namespace Lrl.Arch.Tests;

/// <summary>
/// TransnormerForCausalLM on small random-weight checkpoints this test writes (HF TransNormerLLM tensor names),
/// against a scalar float64 forward written here from the HF modeling code (quadratic decayed linear attention).
/// </summary>
public class TransNormerTests
{
    internal sealed record Spec(int D, int E, int Layers, int Heads, int Glu, int Vocab, bool Bias, bool Tied, bool ScaleEmbed, int[]? Lrpe = null)
    {
        public bool UsesLrpe(int layer) => Lrpe is not null && layer < Lrpe.Length && Lrpe[layer] != 0;
    }

    internal sealed class TinyModel : IDisposable
    {
        public string Dir { get; } = Directory.CreateTempSubdirectory("lrl-tnl").FullName;
        public Dictionary<string, float[]> T { get; } = new();
        public Spec S { get; }

        public TinyModel(Spec s, int seed)
        {
            S = s;
            var rng = new Random(seed);
            var w = new SafeTensorsWriter();
            void Add(string name, int[] shape, float scale)
            {
                var data = Rand.Uniform(rng, shape.Aggregate(1, (a, b) => a * b), -scale, scale);
                T[name] = data;
                w.Add(name, shape, data);
            }
            Add("model.embed_tokens.weight", [s.Vocab, s.D], 1f);
            if (!s.Tied) Add("lm_head.weight", [s.Vocab, s.D], 1f / MathF.Sqrt(s.D));
            for (int i = 0; i < s.Layers; i++)
            {
                string p = $"model.layers.{i}.";
                Add(p + "token_mixer.qkvu_proj.weight", [4 * s.E, s.D], 1.5f / MathF.Sqrt(s.D));
                Add(p + "token_mixer.out_proj.weight", [s.D, s.E], 1f / MathF.Sqrt(s.E));
                Add(p + "channel_mixer.l1.weight", [s.Glu, s.D], 1f / MathF.Sqrt(s.D));
                Add(p + "channel_mixer.l2.weight", [s.Glu, s.D], 1f / MathF.Sqrt(s.D));
                Add(p + "channel_mixer.l3.weight", [s.D, s.Glu], 1f / MathF.Sqrt(s.Glu));
                if (s.UsesLrpe(i))
                {
                    // HF init 10000^(−2/d·j), d = heads·headDim, perturbed so every θ differs.
                    int d = s.E;
                    var theta = Enumerable.Range(0, d).Select(j => (float)Math.Pow(10000, -2.0 / d * j) * (0.5f + rng.NextSingle())).ToArray();
                    T[p + "token_mixer.lrpe.theta"] = theta;
                    w.Add(p + "token_mixer.lrpe.theta", [s.Heads, 1, d / s.Heads], theta);
                }
                if (s.Bias)
                {
                    Add(p + "token_mixer.qkvu_proj.bias", [4 * s.E], 0.1f);
                    Add(p + "token_mixer.out_proj.bias", [s.D], 0.1f);
                    Add(p + "channel_mixer.l1.bias", [s.Glu], 0.1f);
                    Add(p + "channel_mixer.l2.bias", [s.Glu], 0.1f);
                    Add(p + "channel_mixer.l3.bias", [s.D], 0.1f);
                }
            }
            w.Write(Path.Combine(Dir, "model.safetensors"));
            var cfg = new JsonObject
            {
                ["architectures"] = new JsonArray("TransnormerForCausalLM"),
                ["model_type"] = "transnormer",
                ["decoder_embed_dim"] = s.D, ["hidden_dim"] = s.E, ["decoder_layers"] = s.Layers,
                ["decoder_attention_heads"] = s.Heads, ["glu_dim"] = s.Glu, ["vocab_size"] = s.Vocab,
                ["bias"] = s.Bias, ["tie_word_embeddings"] = s.Tied, ["no_scale_embedding"] = !s.ScaleEmbed,
                ["norm_type"] = "simplermsnorm", ["linear_act_fun"] = "silu", ["linear_use_lrpe_list"] = new JsonArray((s.Lrpe ?? []).Select(v => (JsonNode?)JsonValue.Create(v)).ToArray()),
            };
            File.WriteAllText(Path.Combine(Dir, "config.json"), cfg.ToJsonString());
        }

        public void Dispose() => Directory.Delete(Dir, true);
    }

    /// <summary>ALiBi-style slopes of the HF code, computed independently.</summary>
    private static double[] Slopes(int n) => n switch
    {
        3 => [Math.Pow(2, -4), Math.Pow(2, -8), Math.Pow(2, -2)], // pow2(2) + get_slopes(4)[0::2][:1]
        4 => [Math.Pow(2, -2), Math.Pow(2, -4), Math.Pow(2, -6), Math.Pow(2, -8)],
        _ => throw new ArgumentException("test covers 3 and 4 heads"),
    };

    /// <summary>The float64 forward: logits for every position.</summary>
    internal static double[] Forward64(TinyModel m, int[] tokens)
    {
        var s = m.S; var T = m.T;
        int n = tokens.Length, D = s.D, E = s.E, H = s.Heads, hd = E / H;
        double[] Lin(double[] x, string name, int outF, int inF, string? bias)
        {
            var W = T[name]; var y = new double[outF];
            for (int o = 0; o < outF; o++)
            {
                double acc = bias is null ? 0 : T[bias][o];
                for (int i = 0; i < inF; i++) acc += W[o * inF + i] * x[i];
                y[o] = acc;
            }
            return y;
        }
        double[] Srms(double[] x) { double ms = x.Sum(v => v * v) / x.Length; return x.Select(v => v / Math.Sqrt(ms + 1e-6)).ToArray(); }
        double Silu(double v) => v / (1 + Math.Exp(-v));
        var x = new double[n][];
        for (int t = 0; t < n; t++)
            x[t] = T["model.embed_tokens.weight"].AsSpan(tokens[t] * D, D).ToArray().Select(v => v * (s.ScaleEmbed ? Math.Sqrt(D) : 1)).ToArray();
        var slopes = Slopes(H);
        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            int kd = s.UsesLrpe(l) ? 2 * hd : hd; // key width per head
            var q = new double[n][]; var k = new double[n][]; var v = new double[n][]; var u = new double[n][];
            for (int t = 0; t < n; t++)
            {
                var qkvu = Lin(Srms(x[t]), p + "token_mixer.qkvu_proj.weight", 4 * E, D, s.Bias ? p + "token_mixer.qkvu_proj.bias" : null);
                q[t] = qkvu[..E].Select(Silu).ToArray(); k[t] = qkvu[E..(2 * E)].Select(Silu).ToArray();
                if (s.UsesLrpe(l))
                {
                    // LRPE: q·k becomes Σ_i q_i·k_i·cos(θ_i(t − s)) (checked here in that closed form via features).
                    var th = T[p + "token_mixer.lrpe.theta"];
                    double[] Feat(double[] x) => Enumerable.Range(0, H).SelectMany(h =>
                        Enumerable.Range(0, hd).Select(i => x[h * hd + i] * Math.Cos(th[h * hd + i] * (double)t))
                        .Concat(Enumerable.Range(0, hd).Select(i => x[h * hd + i] * Math.Sin(th[h * hd + i] * (double)t)))).ToArray();
                    q[t] = Feat(q[t]); k[t] = Feat(k[t]);
                }
                v[t] = qkvu[(2 * E)..(3 * E)]; u[t] = qkvu[(3 * E)..];
            }
            for (int t = 0; t < n; t++)
            {
                var o = new double[E];
                for (int h = 0; h < H; h++)
                {
                    double rate = (float)slopes[h] * (float)(s.Layers > 1 ? 1 - (double)l / (s.Layers - 1) + 1e-5 : 1 + 1e-5);
                    for (int j = 0; j <= t; j++)
                    {
                        double dot = 0;
                        for (int i = 0; i < kd; i++) dot += q[t][h * kd + i] * k[j][h * kd + i];
                        double wgt = Math.Exp(-rate * (t - j)) * dot;
                        for (int i = 0; i < hd; i++) o[h * hd + i] += wgt * v[j][h * hd + i];
                    }
                }
                var g = Srms(o).Select((val, i) => val * u[t][i]).ToArray();
                var delta = Lin(g, p + "token_mixer.out_proj.weight", D, E, s.Bias ? p + "token_mixer.out_proj.bias" : null);
                for (int i = 0; i < D; i++) x[t][i] += delta[i];
            }
            for (int t = 0; t < n; t++)
            {
                var xn = Srms(x[t]);
                var a = Lin(xn, p + "channel_mixer.l1.weight", s.Glu, D, s.Bias ? p + "channel_mixer.l1.bias" : null);
                var b = Lin(xn, p + "channel_mixer.l2.weight", s.Glu, D, s.Bias ? p + "channel_mixer.l2.bias" : null);
                var delta = Lin(a.Select((av, i) => av * b[i]).ToArray(), p + "channel_mixer.l3.weight", D, s.Glu, s.Bias ? p + "channel_mixer.l3.bias" : null);
                for (int i = 0; i < D; i++) x[t][i] += delta[i];
            }
        }
        var logits = new double[n * s.Vocab];
        string head = s.Tied ? "model.embed_tokens.weight" : "lm_head.weight";
        for (int t = 0; t < n; t++) Lin(Srms(x[t]), head, s.Vocab, D, null).CopyTo(logits, t * s.Vocab);
        return logits;
    }

    public static TheoryData<string, int, bool, bool> Cases => new()
    {
        { "cpu", 3, false, false }, { "reference", 3, false, false }, { "cpu", 4, true, false }, { "reference", 4, true, false },
        { "cpu", 4, false, true }, { "reference", 3, true, true },
    };

    [Theory, MemberData(nameof(Cases))]
    public void PrefillAndDecodeMatchFloat64Forward(string backendName, int heads, bool biasAndTied, bool lrpe)
    {
        var spec = new Spec(D: 24, E: heads * 6, Layers: 3, Heads: heads, Glu: 40, Vocab: 37, Bias: biasAndTied, Tied: biasAndTied,
                            ScaleEmbed: !biasAndTied, Lrpe: lrpe ? [1, 0, 1] : null);
        using var m = new TinyModel(spec, heads * 7 + (biasAndTied ? 1 : 0));
        var rng = new Random(5);
        var tokens = Enumerable.Range(0, 40).Select(_ => rng.Next(spec.Vocab)).ToArray();
        var expected = Forward64(m, tokens);
        using var backend = RwkvReferenceTests.Make(backendName);
        // Prefill all 40 positions at once (chunked form), every position's logits.
        using (var model = ModelRegistry.Load(m.Dir, backend, new ModelLoadOptions { BatchSize = 64 }))
        {
            Assert.Equal("TransnormerForCausalLM", model.Architecture);
            var all = new float[tokens.Length * spec.Vocab];
            model.Forward(tokens, 0, all);
            double err = Rand.RelErr(all, expected);
            Assert.True(err < 1e-4, $"prefill: relative error {err:E2}");
            // Prefill 25, then decode one token at a time (recurrent form from the carried state).
            var last = new float[spec.Vocab];
            model.Forward(tokens[..25], 0, last);
            var decoded = new List<float>();
            for (int t = 25; t < tokens.Length; t++) { model.Forward([tokens[t]], t, last); decoded.AddRange(last); }
            err = Rand.RelErr(decoded.ToArray(), expected[(25 * spec.Vocab)..]);
            Assert.True(err < 1e-4, $"decode: relative error {err:E2}");
            // The state cannot rewind.
            Assert.Throws<LrlException>(() => model.Forward([1], 3, last));
        }
    }

    [Fact]
    public void LongPrefillSpansSeveralBlocksAndChunks()
    {
        var spec = new Spec(D: 16, E: 16, Layers: 2, Heads: 4, Glu: 24, Vocab: 29, Bias: false, Tied: false, ScaleEmbed: true);
        using var m = new TinyModel(spec, 99);
        var rng = new Random(6);
        var tokens = Enumerable.Range(0, 300).Select(_ => rng.Next(spec.Vocab)).ToArray();
        var expected = Forward64(m, tokens);
        using var backend = new CpuBackend(2);
        foreach (int batch in new[] { 512, 128 }) // one pass of two 256-blocks; three passes carrying the state
        {
            using var model = ModelRegistry.Load(m.Dir, backend, new ModelLoadOptions { BatchSize = batch });
            var all = new float[tokens.Length * spec.Vocab];
            model.Forward(tokens, 0, all);
            double err = Rand.RelErr(all, expected);
            Assert.True(err < 1e-4, $"batch {batch}: relative error {err:E2}");
        }
    }

    [Fact]
    public void LayerSlopesFollowTheHfRecipe()
    {
        var cfg = new TransNormerConfig(8, 8, 3, 8, 8, 10, true, false, 1e-6, false, []);
        var s0 = cfg.LayerSlopes(0);
        for (int h = 0; h < 8; h++) Assert.Equal(Math.Pow(0.5, h + 1) * (1 + 1e-5), s0[h], 1e-7);
        var s2 = cfg.LayerSlopes(2);
        Assert.Equal(0.5 * 1e-5, s2[0], 1e-9);
    }

    [Fact]
    public void MalformedLrpeListIsAClearError()
    {
        using var m = new TinyModel(new Spec(8, 8, 1, 2, 8, 5, false, false, true), 1);
        var cfgPath = Path.Combine(m.Dir, "config.json");
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
        cfg["linear_use_lrpe_list"] = new JsonArray("yes");
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        using var backend = new CpuBackend(1);
        var e = Assert.Throws<ModelFormatException>(() => ModelRegistry.Load(m.Dir, backend));
        Assert.Contains("linear_use_lrpe_list[0]", e.Message);
        // LRPE on but the theta tensor missing: the error names the tensor.
        cfg["linear_use_lrpe_list"] = new JsonArray(1);
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        var e2 = Assert.Throws<ModelFormatException>(() => ModelRegistry.Load(m.Dir, backend));
        Assert.Contains("lrpe.theta", e2.Message);
    }
}

/// <summary>The TransNormer architecture through the public API (what `lrlrun generate` runs), with a byte vocabulary.</summary>
public class TransNormerGenerateTests
{
    [Fact]
    public void GreedyGenerationFollowsTheFloat64Forward()
    {
        var spec = new TransNormerTests.Spec(D: 24, E: 24, Layers: 2, Heads: 4, Glu: 40, Vocab: 300, Bias: false, Tied: true, ScaleEmbed: false);
        using var m = new TransNormerTests.TinyModel(spec, 11);
        var cfgPath = Path.Combine(m.Dir, "config.json");
        var cfg = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
        cfg["tokenizer"] = "byte-level: token id = byte value (0..255)";
        File.WriteAllText(cfgPath, cfg.ToJsonString());

        using var model = LrlModel.Load(m.Dir, new ModelOptions { Threads = 1 });
        var options = new GenerationOptions { MaxTokens = 6, IgnoreEos = true, Sampling = Lrl.Runtime.SamplingOptions.Greedy };
        var ids = model.Generate("ab", options).Where(t => t.Id >= 0).Select(t => t.Id).ToList();
        Assert.Equal(6, ids.Count);

        // Each generated id is the float64 forward's argmax after the prompt and the ids before it.
        var seq = new List<int> { 'a', 'b' };
        foreach (var id in ids)
        {
            var logits = TransNormerTests.Forward64(m, seq.ToArray());
            var last = logits.AsSpan((seq.Count - 1) * spec.Vocab, spec.Vocab);
            int best = 0;
            for (int i = 1; i < last.Length; i++) if (last[i] > last[best]) best = i;
            Assert.Equal(best, id);
            seq.Add(id);
        }
        Assert.False(model.Model.CanRewind);
    }
}
