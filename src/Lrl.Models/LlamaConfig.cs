using System.Text.Json.Nodes;
using Lrl.Loading;

namespace Lrl.Models;

/// <summary>rope_scaling of type "llama3" (Llama 3.1/3.2): frequencies below a wavelength band are scaled down.</summary>
public sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositions);

/// <summary>
/// The typed config of the Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): every field read
/// from config.json and every default resolved here, in one place.
/// </summary>
public sealed record LlamaConfig(
    string Architecture,
    int HiddenSize,
    int IntermediateSize,
    int NumLayers,
    int NumHeads,
    int NumKvHeads,
    int HeadDim,
    int VocabSize,
    int MaxPositions,
    double RmsNormEps,
    double RopeTheta,
    Llama3RopeScaling? RopeScaling,
    double LinearRopeFactor,
    bool TieWordEmbeddings,
    bool AttentionBias,
    bool MlpBias)
{
    public int QDim => NumHeads * HeadDim;
    public int KvDim => NumKvHeads * HeadDim;

    public static LlamaConfig From(ModelConfig c)
    {
        string arch = c.Architecture ?? "LlamaForCausalLM";
        int hidden = c.GetInt("hidden_size");
        int heads = c.GetInt("num_attention_heads");
        int kvHeads = c.GetInt("num_key_value_heads", heads);
        int headDim = c.TryGetInt("head_dim") ?? (heads > 0 ? hidden / heads : 0);
        var cfg = new LlamaConfig(
            arch,
            hidden,
            c.GetInt("intermediate_size"),
            c.GetInt("num_hidden_layers"),
            heads,
            kvHeads,
            headDim,
            c.GetInt("vocab_size"),
            c.GetInt("max_position_embeddings", 2048),
            c.GetDouble("rms_norm_eps", 1e-6),
            c.GetDouble("rope_theta", 10000.0),
            ReadLlama3Scaling(c, out double linear),
            linear,
            c.GetBool("tie_word_embeddings", false),
            // Qwen2 has q/k/v biases without saying so in config.json.
            c.GetBool("attention_bias", arch == "Qwen2ForCausalLM" || c.ModelType == "qwen2"),
            c.GetBool("mlp_bias", false));
        cfg.Validate(c.Path);
        return cfg;
    }

    private static Llama3RopeScaling? ReadLlama3Scaling(ModelConfig c, out double linearFactor)
    {
        linearFactor = 1;
        if (c.Json["rope_scaling"] is not JsonObject rs) return null;
        string type = (rs["rope_type"] ?? rs["type"])?.GetValue<string>() ?? "default";
        double Num(string f, double? fallback = null) =>
            rs[f]?.GetValue<double>() ?? fallback ?? throw c.Missing($"rope_scaling.{f}", "a number");
        switch (type)
        {
            case "default": return null;
            case "linear": linearFactor = Num("factor"); return null;
            case "llama3":
                return new Llama3RopeScaling(Num("factor"), Num("low_freq_factor", 1), Num("high_freq_factor", 4),
                    (int)Num("original_max_position_embeddings", 8192));
            default:
                throw new ModelFormatException(c.Path, $"rope_scaling type '{type}' is not supported (supported: default, linear, llama3)");
        }
    }

    private void Validate(string path)
    {
        void Require(bool ok, string what) { if (!ok) throw new ModelFormatException(path, what); }
        Require(HiddenSize > 0 && IntermediateSize > 0 && NumLayers > 0 && VocabSize > 0, "hidden_size, intermediate_size, num_hidden_layers and vocab_size must be positive");
        Require(NumHeads > 0 && NumKvHeads > 0 && NumHeads % NumKvHeads == 0, $"num_attention_heads ({NumHeads}) must be a positive multiple of num_key_value_heads ({NumKvHeads})");
        Require(HeadDim > 0 && HeadDim % 2 == 0, $"head_dim ({HeadDim}) must be positive and even");
        Require(MaxPositions > 0, $"max_position_embeddings ({MaxPositions}) must be positive");
        ConfigLimits.Check(path, ("num_hidden_layers", NumLayers, ConfigLimits.Layers), ("hidden_size", HiddenSize, ConfigLimits.Hidden),
            ("intermediate_size", IntermediateSize, ConfigLimits.Intermediate), ("num_attention_heads", NumHeads, ConfigLimits.Heads),
            ("head_dim", HeadDim, ConfigLimits.Hidden), ("vocab_size", VocabSize, ConfigLimits.Vocab), ("max_position_embeddings", MaxPositions, ConfigLimits.Positions));
        ConfigLimits.Positive(path, "rms_norm_eps", RmsNormEps);
        ConfigLimits.Positive(path, "rope_theta", RopeTheta);
    }

    /// <summary>inv_freq[i] = θ^(-2i/d), adjusted by rope_scaling exactly as HF's _compute_llama3_parameters.</summary>
    public float[] RopeInvFreq()
    {
        int half = HeadDim / 2;
        var inv = new float[half];
        for (int i = 0; i < half; i++)
        {
            double f = 1.0 / Math.Pow(RopeTheta, 2.0 * i / HeadDim) / LinearRopeFactor;
            if (RopeScaling is { } s)
            {
                double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                double wavelen = 2 * Math.PI / f;
                if (wavelen > lowWavelen) f /= s.Factor;
                else if (wavelen >= highWavelen)
                {
                    double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    f = (1 - smooth) * f / s.Factor + smooth * f;
                }
            }
            inv[i] = (float)f;
        }
        return inv;
    }
}
