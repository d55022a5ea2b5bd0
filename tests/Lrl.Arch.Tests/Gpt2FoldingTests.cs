using Lrl.Cpu;
using Lrl.Loading;

namespace Lrl.Arch.Tests;

/// <summary>
/// LayerNorm → RMSNorm folding for GPT-2: if every write into the residual stream is made mean-free (token and position
/// embeddings centred per row; each Conv1D c_proj centred along its output dimension, bias included), the stream stays
/// zero-mean, so LayerNorm(x)·w + b = RMSNorm(x)·w + b. Proven here by (1) the folded checkpoint giving the original
/// logits through the LayerNorm model, and (2) a float64 forward of the folded weights with RMSNorm (no centring)
/// giving the original logits too.
/// </summary>
public class Gpt2FoldingTests
{
    private static Dictionary<string, (int[] Shape, double[] Data)> Fold(Checkpoint ck, int C)
    {
        var t = ck.Tensors.ToDictionary(x => x.Name, x => (x.Shape, x.ToFloatArray().Select(v => (double)v).ToArray()));
        void CenterRows(string name, int width)
        {
            var d = t[name].Item2;
            for (int o = 0; o < d.Length; o += width)
            {
                double mean = 0;
                for (int i = 0; i < width; i++) mean += d[o + i];
                mean /= width;
                for (int i = 0; i < width; i++) d[o + i] -= mean;
            }
        }
        // The tied head must keep the original embeddings: untie it first.
        t["lm_head.weight"] = (t["transformer.wte.weight"].Item1, (double[])t["transformer.wte.weight"].Item2.Clone());
        CenterRows("transformer.wte.weight", C);
        CenterRows("transformer.wpe.weight", C);
        foreach (var name in t.Keys.Where(n => n.EndsWith("attn.c_proj.weight") || n.EndsWith("mlp.c_proj.weight")).ToList())
        {
            CenterRows(name, C); // Conv1D [in, out]: each input row's outputs
            CenterRows(name.Replace(".weight", ".bias"), C);
        }
        return t;
    }

    private static double[] RmsForward(Dictionary<string, (int[] Shape, double[] Data)> t, Gpt2Config c, int[] ids)
    {
        int C = c.HiddenSize, n = ids.Length, H = c.NumHeads, hd = C / H, F = c.InnerSize;
        double[] P(string name) => t["transformer." + name].Data;
        double[] Norm(double[] x, string name)
        {
            double ms = x.Sum(v => v * v) / C, inv = 1 / Math.Sqrt(ms + c.LayerNormEps);
            var w = P(name + ".weight"); var b = P(name + ".bias");
            return x.Select((v, i) => v * inv * w[i] + b[i]).ToArray();
        }
        double[] Conv(double[] x, string name, int inF, int outF)
        {
            var w = P(name + ".weight"); var b = P(name + ".bias");
            var y = (double[])b.Clone();
            for (int i = 0; i < inF; i++) for (int o = 0; o < outF; o++) y[o] += x[i] * w[i * outF + o];
            return y;
        }
        var x = new double[n][];
        for (int s = 0; s < n; s++)
            x[s] = Enumerable.Range(0, C).Select(i => P("wte.weight")[ids[s] * C + i] + P("wpe.weight")[s * C + i]).ToArray();
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"h.{l}.";
            var qkv = x.Select(r => Conv(Norm(r, p + "ln_1"), p + "attn.c_attn", C, 3 * C)).ToArray();
            for (int s = 0; s < n; s++)
            {
                var att = new double[C];
                for (int h = 0; h < H; h++)
                {
                    var sc = new double[s + 1];
                    for (int j = 0; j <= s; j++)
                    {
                        for (int i = 0; i < hd; i++) sc[j] += qkv[s][h * hd + i] * qkv[j][C + h * hd + i];
                        sc[j] /= Math.Sqrt(hd);
                    }
                    double mx = sc.Max(), sum = sc.Sum(v => Math.Exp(v - mx));
                    for (int j = 0; j <= s; j++)
                        for (int i = 0; i < hd; i++) att[h * hd + i] += Math.Exp(sc[j] - mx) / sum * qkv[j][2 * C + h * hd + i];
                }
                var delta = Conv(att, p + "attn.c_proj", C, C);
                for (int i = 0; i < C; i++) x[s][i] += delta[i];
            }
            for (int s = 0; s < n; s++)
            {
                var hdn = Conv(Norm(x[s], p + "ln_2"), p + "mlp.c_fc", C, F);
                const double k = 0.7978845608028654;
                hdn = hdn.Select(v => 0.5 * v * (1 + Math.Tanh(k * (v + 0.044715 * v * v * v)))).ToArray();
                var delta = Conv(hdn, p + "mlp.c_proj", F, C);
                for (int i = 0; i < C; i++) x[s][i] += delta[i];
            }
        }
        var head = t["lm_head.weight"].Data;
        var logits = new double[n * c.VocabSize];
        for (int s = 0; s < n; s++)
        {
            var xn = Norm(x[s], "ln_f");
            for (int v = 0; v < c.VocabSize; v++)
                for (int i = 0; i < C; i++) logits[s * c.VocabSize + v] += xn[i] * head[v * C + i];
        }
        return logits;
    }

    [Fact]
    public void FoldedWeightsWithRmsNormEqualTheLayerNormModel()
    {
        var src = SharedData.Model("capp-gpt2-tiny");
        var cfg = Gpt2Config.From(ModelConfig.Load(src));
        int[] ids = [49, 0, 7, 15, 17, 21, 26, 50];
        using var backend = new CpuBackend(2);
        using var original = ModelRegistry.Load(src, backend);
        var expected = new float[ids.Length * original.VocabSize];
        original.Forward(ids, 0, expected);

        Dictionary<string, (int[] Shape, double[] Data)> folded;
        using (var ck = Checkpoint.Open(src)) folded = Fold(ck, cfg.HiddenSize);

        // (2) float64 forward with RMSNorm instead of LayerNorm on the folded weights.
        var rms = RmsForward(folded, cfg, ids);
        double err = Rand.RelErr(expected, rms);
        Assert.True(err < 1e-5, $"folded RMSNorm forward vs LayerNorm model: relative error {err:E2}");

        // The folding is not vacuous: RMSNorm on the unfolded weights gives different logits.
        using (var ck = Checkpoint.Open(src))
        {
            var unfolded = ck.Tensors.ToDictionary(x => x.Name, x => (x.Shape, x.ToFloatArray().Select(v => (double)v).ToArray()));
            unfolded["lm_head.weight"] = unfolded["transformer.wte.weight"];
            double bad = Rand.RelErr(expected, RmsForward(unfolded, cfg, ids));
            Assert.True(bad > 1e-3, $"RMSNorm without folding should differ, relative error only {bad:E2}");
        }

        // (1) The folded checkpoint through the LayerNorm model (Gpt2 + lm_head) gives the original logits.
        var dir = Directory.CreateTempSubdirectory("lrl-gpt2-fold").FullName;
        try
        {
            File.Copy(Path.Combine(src, "config.json"), Path.Combine(dir, "config.json"));
            var w = new SafeTensorsWriter();
            foreach (var (name, (shape, data)) in folded) w.Add(name, shape, data.Select(v => (float)v).ToArray());
            w.Write(Path.Combine(dir, "model.safetensors"));
            using var model = ModelRegistry.Load(dir, backend);
            var got = new float[ids.Length * model.VocabSize];
            model.Forward(ids, 0, got);
            double e1 = Rand.RelErr(got, expected);
            Assert.True(e1 < 1e-5, $"folded checkpoint through LayerNorm: relative error {e1:E2}");
        }
        finally { Directory.Delete(dir, true); }
    }
}
