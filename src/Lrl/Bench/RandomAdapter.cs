using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Lrl.Loading;
using Lrl.Models;

namespace Lrl.Bench;

/// <summary>
/// Random PEFT LoRA adapters over every linear module of a model, for measuring the unmerged cost at real shapes
/// (speed depends on shapes, not values). bf16 matrices, as adapters are usually published.
/// </summary>
public static class RandomAdapter
{
    /// <summary>Where the i-th random adapter of this rank for the model's shapes is cached (LRL_CACHE or ~/.cache/lrlrun, under lora/).</summary>
    public static string CachePath(ModelBase model, int rank, int index)
    {
        var root = Environment.GetEnvironmentVariable("LRL_CACHE")
                   ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "lrlrun");
        // The shapes decide the adapter (values are random): a hash of the module list keys the folder.
        var shapes = string.Join(';', model.AdaptableModules.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}:{kv.Value.Out}x{kv.Value.In}"));
        var hash = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(shapes)))[..12].ToLowerInvariant();
        return Path.Combine(root, "lora", $"{hash}-r{rank}-{index}");
    }

    /// <summary>Writes (or reuses) an adapter of <paramref name="rank"/> for the model's modules under <paramref name="dir"/>.</summary>
    public static string Write(ModelBase model, string dir, int rank, int seed)
    {
        if (rank is < 1 or > 1024) throw new LrlException($"--lora-rank must be in 1..1024, got {rank}");
        if (model.AdaptableModules.Count == 0) throw new LrlException($"{model.Architecture} does not take LoRA adapters");
        if (File.Exists(Path.Combine(dir, "adapter_model.safetensors"))) return dir;
        var rng = new Random(seed);
        var w = new SafeTensorsWriter();
        foreach (var (name, (outF, inF)) in model.AdaptableModules.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            w.Add($"base_model.model.{name}.lora_A.weight", DType.BF16, [rank, inF], Bf16(rng, rank * inF, 1f / MathF.Sqrt(inF)));
            w.Add($"base_model.model.{name}.lora_B.weight", DType.BF16, [outF, rank], Bf16(rng, outF * rank, 0.01f));
        }
        var targets = new JsonArray(model.AdaptableModules.Keys.Select(k => k[(k.LastIndexOf('.') + 1)..]).Distinct().Select(k => (JsonNode)k!).ToArray());
        var config = new JsonObject
        {
            ["peft_type"] = "LORA", ["r"] = rank, ["lora_alpha"] = 2 * rank, ["target_modules"] = targets,
            ["fan_in_fan_out"] = false, ["use_rslora"] = false, ["bias"] = "none",
        };
        string tmp = OutputFolder.CreateTemporary(Path.GetFullPath(dir));
        w.Write(Path.Combine(tmp, "adapter_model.safetensors"));
        File.WriteAllText(Path.Combine(tmp, "adapter_config.json"), config.ToJsonString());
        OutputFolder.Commit(tmp, Path.GetFullPath(dir));
        return dir;
    }

    private static byte[] Bf16(Random rng, int n, float scale)
    {
        var v = new ushort[n];
        for (int i = 0; i < n; i++) v[i] = DTypes.FloatToBF16((float)(rng.NextDouble() * 2 - 1) * scale);
        return MemoryMarshal.AsBytes(v.AsSpan()).ToArray();
    }
}
