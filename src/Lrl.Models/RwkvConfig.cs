using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// The typed config of an RWKV checkpoint stored as rwkv.cpp stores its tensors (config "architectures": ["RwkvCppTiny"],
/// model_type rwkv5 or rwkv7), or for v5.2 also in the Hugging Face Rwkv5ForCausalLM layout (<see cref="HfLayout"/>:
/// rwkv.blocks.N.attention.time_mix_key, raw time_decay, ...). Head count and sizes come from the tensors themselves.
/// </summary>
public sealed record RwkvConfig(
    string ModelType,
    bool HfLayout,
    int HiddenSize,
    int NumLayers,
    int VocabSize,
    double LayerNormEps,
    double GroupNormEps)
{
    public static RwkvConfig From(ModelConfig c)
    {
        string type = c.ModelType ?? throw c.Missing("model_type", "rwkv5 or rwkv7");
        var cfg = new RwkvConfig(
            type,
            c.Architecture == "Rwkv5ForCausalLM",
            c.GetInt("hidden_size"),
            c.GetInt("num_hidden_layers"),
            c.GetInt("vocab_size"),
            c.GetDouble("layer_norm_epsilon", 1e-5),
            // The per-head GroupNorm of the WKV output: rwkv.cpp uses eps 1e-5 for v5.2 and 64e-5 for v7 (as the
            // x070 reference does); both confirmed against rwkv.cpp's expected logits.
            c.GetDouble("group_norm_epsilon", type == "rwkv5" ? 1e-5 : 64e-5));
        if (cfg.HiddenSize <= 0 || cfg.NumLayers <= 0 || cfg.VocabSize <= 0)
            throw new ModelFormatException(c.Path, "hidden_size, num_hidden_layers and vocab_size must be positive");
        ConfigLimits.Check(c.Path, ("num_hidden_layers", cfg.NumLayers, ConfigLimits.Layers), ("hidden_size", cfg.HiddenSize, ConfigLimits.Hidden),
            ("vocab_size", cfg.VocabSize, ConfigLimits.Vocab));
        return cfg;
    }
}
