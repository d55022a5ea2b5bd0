using System.Text.Json.Nodes;
using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// The typed config of TransnormerForCausalLM (OpenNLPLab TransNormerLLM, HF remote-code layout): every field read
/// from config.json and every default resolved here.
/// </summary>
public sealed record TransNormerConfig(
    int EmbedDim,
    int HiddenDim,
    int NumLayers,
    int NumHeads,
    int GluDim,
    int VocabSize,
    bool ScaleEmbedding,
    bool Bias,
    double NormEps,
    bool TieWordEmbeddings,
    bool[] UseLrpe)
{
    /// <summary>Whether layer i applies LRPE to q and k (linear_use_lrpe_list; missing entries are off).</summary>
    public bool LayerUsesLrpe(int layer) => layer < UseLrpe.Length && UseLrpe[layer];

    /// <summary>Per-head q/k/v width: hidden_dim split over the heads.</summary>
    public int HeadDim => HiddenDim / NumHeads;

    public static TransNormerConfig From(ModelConfig c)
    {
        int embed = c.GetInt("decoder_embed_dim");
        int glu = c.GetInt("glu_dim", 2816);
        var cfg = new TransNormerConfig(
            embed,
            c.GetInt("hidden_dim", embed),
            c.GetInt("decoder_layers"),
            c.GetInt("decoder_attention_heads"),
            glu == -1 ? embed : glu,
            c.GetInt("vocab_size"),
            !c.GetBool("no_scale_embedding", false),
            c.GetBool("bias", false),
            c.GetDouble("rms_norm_eps", 1e-6),
            c.GetBool("tie_word_embeddings", false),
            c.Json["linear_use_lrpe_list"] switch
            {
                null => [],
                JsonArray a => a.Select((v, i) => v is JsonValue jv && jv.TryGetValue(out double d) ? d != 0
                    : v is JsonValue jb && jb.TryGetValue(out bool b) ? b
                    : throw c.Bad($"linear_use_lrpe_list[{i}]", v, "0 or 1")).ToArray(),
                var other => throw c.Bad("linear_use_lrpe_list", other, "a list of 0/1 per layer"),
            });
        void Require(bool ok, string what) { if (!ok) throw new ModelFormatException(c.Path, what); }
        Require(embed > 0 && cfg.HiddenDim > 0 && cfg.NumLayers > 0 && cfg.VocabSize > 0 && cfg.GluDim > 0,
            "decoder_embed_dim, hidden_dim, decoder_layers, glu_dim and vocab_size must be positive");
        ConfigLimits.Check(c.Path, ("decoder_layers", cfg.NumLayers, ConfigLimits.Layers), ("decoder_embed_dim", embed, ConfigLimits.Hidden),
            ("hidden_dim", cfg.HiddenDim, ConfigLimits.Hidden), ("glu_dim", cfg.GluDim, ConfigLimits.Intermediate), ("vocab_size", cfg.VocabSize, ConfigLimits.Vocab));
        Require(cfg.NumHeads > 0 && cfg.HiddenDim % cfg.NumHeads == 0,
            $"hidden_dim ({cfg.HiddenDim}) must be a multiple of decoder_attention_heads ({cfg.NumHeads})");
        string act = c.GetString("linear_act_fun") ?? "silu";
        Require(act is "silu" or "swish", $"linear_act_fun '{act}' is not supported (supported: silu, swish)");
        string norm = c.GetString("norm_type") ?? "simplermsnorm";
        Require(norm == "simplermsnorm", $"norm_type '{norm}' is not supported (supported: simplermsnorm)");
        string? gluAct = c.GetString("glu_act");
        Require(gluAct is null or "none" or "identity", $"glu_act '{gluAct}' is not supported (TransNormerLLM's SGLU has no activation)");
        return cfg;
    }

    /// <summary>
    /// Per-layer decay rates, exactly as TransnormerModel: ALiBi-style head slopes s_h (power-of-two recipe), scaled by
    /// (1 − layer/(layers − 1) + 1e-5); the decay per step is λ = exp(−rate).
    /// </summary>
    public float[] LayerSlopes(int layer)
    {
        var s = HeadSlopes(NumHeads);
        double f = NumLayers > 1 ? 1 - (double)layer / (NumLayers - 1) + 1e-5 : 1 + 1e-5;
        var r = new float[NumHeads];
        // torch computes slopes in f32 and scales in f32.
        for (int h = 0; h < NumHeads; h++) r[h] = (float)s[h] * (float)f;
        return r;
    }

    private static double[] HeadSlopes(int n)
    {
        static double[] Pow2(int n)
        {
            double start = Math.Pow(2, -Math.Pow(2, -(Math.Log2(n) - 3)));
            var r = new double[n];
            for (int i = 0; i < n; i++) r[i] = start * Math.Pow(start, i);
            return r;
        }
        if (Math.Log2(n) % 1 == 0) return Pow2(n);
        int closest = 1 << (int)Math.Floor(Math.Log2(n));
        var extra = HeadSlopes(2 * closest).Where((_, i) => i % 2 == 0).Take(n - closest);
        return Pow2(closest).Concat(extra).ToArray();
    }
}
