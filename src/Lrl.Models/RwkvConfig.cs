using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// The typed config of an RWKV checkpoint stored as rwkv.cpp stores its tensors (config "architectures": ["RwkvCppTiny"],
/// model_type rwkv5 or rwkv7). Head count and sizes come from the tensors themselves (rwkv.cpp files carry no config).
/// </summary>
public sealed record RwkvConfig(
    string ModelType,
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
            c.GetInt("hidden_size"),
            c.GetInt("num_hidden_layers"),
            c.GetInt("vocab_size"),
            c.GetDouble("layer_norm_epsilon", 1e-5),
            // RWKV v5.2 and v7 normalise the WKV output per head with GroupNorm(eps = 1e-5 · head_size_divisor² = 64e-5).
            c.GetDouble("group_norm_epsilon", 64e-5));
        if (cfg.HiddenSize <= 0 || cfg.NumLayers <= 0 || cfg.VocabSize <= 0)
            throw new ModelFormatException(c.Path, "hidden_size, num_hidden_layers and vocab_size must be positive");
        return cfg;
    }
}
