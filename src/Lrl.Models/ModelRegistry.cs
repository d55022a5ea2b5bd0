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
}
