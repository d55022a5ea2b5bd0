using Lrl.Loading;

namespace Lrl.Models;

/// <summary>Maps a config.json architecture to the forward pass that runs it.</summary>
public static class ModelRegistry
{
    private delegate ILanguageModel Factory(Checkpoint checkpoint, ModelConfig config, IBackend backend, ModelLoadOptions options);

    private static readonly Dictionary<string, Factory> Factories = new(StringComparer.Ordinal)
    {
        ["LlamaForCausalLM"] = LoadLlama,
        ["MistralForCausalLM"] = LoadLlama,
        ["Qwen2ForCausalLM"] = LoadLlama,
        ["GPT2LMHeadModel"] = (ck, cfg, b, o) => new Gpt2(ck, Gpt2Config.From(cfg), b, o),
        ["RwkvCppTiny"] = LoadRwkv,
        ["Rwkv5ForCausalLM"] = LoadRwkv,
        ["TransnormerForCausalLM"] = (ck, cfg, b, o) => new TransNormer(ck, TransNormerConfig.From(cfg), b, o),
    };

    public static IReadOnlyCollection<string> SupportedArchitectures => Factories.Keys;

    /// <summary>Loads a Hugging Face model folder onto a backend.</summary>
    public static ILanguageModel Load(string modelDir, IBackend backend, ModelLoadOptions? options = null)
    {
        var config = ModelConfig.Load(modelDir);
        var arch = config.Architecture
                   ?? throw new ModelFormatException(config.Path, "neither 'architectures' nor 'model_type' is set");
        if (!Factories.TryGetValue(arch, out var factory))
            throw new ModelFormatException(config.Path,
                $"unknown architecture '{arch}'; supported: {string.Join(", ", SupportedArchitectures)}");
        var checkpoint = Checkpoint.Open(modelDir);
        try { return factory(checkpoint, config, backend, options ?? new ModelLoadOptions()); }
        catch { checkpoint.Dispose(); throw; }
    }

    private static ILanguageModel LoadLlama(Checkpoint ck, ModelConfig cfg, IBackend b, ModelLoadOptions o) =>
        new Llama(ck, LlamaConfig.From(cfg), b, o);

    /// <summary>
    /// RWKV: the version is model_type (rwkv5 = v5.2, rwkv7 = v7); RwkvCppTiny is the rwkv.cpp tensor layout,
    /// Rwkv5ForCausalLM the Hugging Face one.
    /// </summary>
    private static ILanguageModel LoadRwkv(Checkpoint ck, ModelConfig cfg, IBackend b, ModelLoadOptions o)
    {
        var c = RwkvConfig.From(cfg);
        return c.ModelType switch
        {
            "rwkv5" => new Rwkv5(ck, c, b, o),
            "rwkv7" when !c.HfLayout => new Rwkv7(ck, c, b, o),
            _ when c.HfLayout => throw new ModelFormatException(cfg.Path, $"Rwkv5ForCausalLM needs model_type 'rwkv5', not '{c.ModelType}'"),
            _ => throw new ModelFormatException(cfg.Path, $"model_type '{c.ModelType}' is not a supported RWKV version (supported: rwkv5, rwkv7)"),
        };
    }
}
