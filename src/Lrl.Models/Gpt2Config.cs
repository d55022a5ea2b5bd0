using Lrl.Loading;

namespace Lrl.Models;

/// <summary>The typed config of GPT2LMHeadModel: every field read from config.json and every default resolved here.</summary>
public sealed record Gpt2Config(
    int HiddenSize,
    int NumLayers,
    int NumHeads,
    int InnerSize,
    int VocabSize,
    int MaxPositions,
    double LayerNormEps,
    bool ScaleAttnWeights,
    bool ScaleAttnByInverseLayerIdx)
{
    public int HeadDim => HiddenSize / NumHeads;

    public static Gpt2Config From(ModelConfig c)
    {
        int hidden = c.GetInt("n_embd");
        var cfg = new Gpt2Config(
            hidden,
            c.GetInt("n_layer"),
            c.GetInt("n_head"),
            c.TryGetInt("n_inner") ?? 4 * hidden,
            c.GetInt("vocab_size"),
            c.TryGetInt("n_positions") ?? c.GetInt("n_ctx", 1024),
            c.GetDouble("layer_norm_epsilon", 1e-5),
            c.GetBool("scale_attn_weights", true),
            c.GetBool("scale_attn_by_inverse_layer_idx", false));
        string act = c.GetString("activation_function") ?? "gelu_new";
        if (act is not ("gelu_new" or "gelu_pytorch_tanh"))
            throw new ModelFormatException(c.Path, $"activation_function '{act}' is not supported (supported: gelu_new, gelu_pytorch_tanh)");
        if (c.GetBool("reorder_and_upcast_attn", false))
            throw new ModelFormatException(c.Path, "reorder_and_upcast_attn = true is not supported");
        void Require(bool ok, string what) { if (!ok) throw new ModelFormatException(c.Path, what); }
        Require(hidden > 0 && cfg.NumLayers > 0 && cfg.VocabSize > 0 && cfg.InnerSize > 0, "n_embd, n_layer, n_inner and vocab_size must be positive");
        Require(cfg.NumHeads > 0 && hidden % cfg.NumHeads == 0, $"n_embd ({hidden}) must be a multiple of n_head ({cfg.NumHeads})");
        Require(cfg.MaxPositions > 0, $"n_positions ({cfg.MaxPositions}) must be positive");
        ConfigLimits.Check(c.Path, ("n_layer", cfg.NumLayers, ConfigLimits.Layers), ("n_embd", hidden, ConfigLimits.Hidden), ("n_inner", cfg.InnerSize, ConfigLimits.Intermediate),
            ("n_head", cfg.NumHeads, ConfigLimits.Heads), ("vocab_size", cfg.VocabSize, ConfigLimits.Vocab), ("n_positions", cfg.MaxPositions, ConfigLimits.Positions));
        ConfigLimits.Positive(c.Path, "layer_norm_epsilon", cfg.LayerNormEps);
        return cfg;
    }
}
