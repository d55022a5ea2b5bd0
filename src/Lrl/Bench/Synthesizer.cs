using System.Text.Json.Nodes;
using Lrl.Loading;
using Lrl.Models;

namespace Lrl.Bench;

/// <summary>
/// Writes random-weight checkpoints in the exact shapes of a real model family (models/presets/*.json), for benchmarks:
/// speed depends on shapes and storage format, not on values. Weights ~ U(-0.04, 0.04), norms = 1, biases = 0.
/// </summary>
public static class Synthesizer
{
    public static readonly string[] DenseFormats = ["f32", "f16", "bf16"];

    /// <summary>The presets folder: models/presets beside the repository root, or LRL_PRESETS.</summary>
    public static string PresetsDirectory()
    {
        var env = Environment.GetEnvironmentVariable("LRL_PRESETS");
        if (!string.IsNullOrEmpty(env)) return env;
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
            for (var d = new DirectoryInfo(start); d != null; d = d.Parent)
            {
                var p = Path.Combine(d.FullName, "models", "presets");
                if (Directory.Exists(p)) return p;
            }
        throw new LrlException("models/presets not found; run from the repository or set LRL_PRESETS");
    }

    public static IReadOnlyList<string> Presets() =>
        Directory.GetFiles(PresetsDirectory(), "*.json").Select(f => Path.GetFileNameWithoutExtension(f)!).Order().ToList();

    public static string PresetConfigPath(string preset)
    {
        var path = Path.Combine(PresetsDirectory(), preset + ".json");
        if (!File.Exists(path)) throw new LrlException($"--preset '{preset}' is not one of: {string.Join(", ", Presets())}");
        return path;
    }

    /// <summary>Writes config.json and model.safetensors for <paramref name="preset"/> in a dense dtype into <paramref name="outDir"/>.</summary>
    /// <summary>Writes the checkpoint into <paramref name="outDir"/> (a temporary folder renamed into place); an existing
    /// non-empty folder is an error unless <paramref name="force"/>.</summary>
    public static void Write(string preset, string dtypeName, string outDir, TextWriter? progress = null, bool force = false)
    {
        DType dtype = dtypeName.ToLowerInvariant() switch
        {
            "f32" => DType.F32, "f16" => DType.F16, "bf16" => DType.BF16,
            _ => throw new LrlException($"--dtype '{dtypeName}' is not one of: {string.Join(", ", DenseFormats)} (and q8, q4 for `lrlrun bench --preset`)"),
        };
        var configPath = PresetConfigPath(preset);
        var json = (JsonObject)JsonNode.Parse(File.ReadAllText(configPath))!;
        // Random weights have no tokenizer of their own: declare the byte vocabulary so `lrlrun generate` runs too.
        json["tokenizer"] = "byte-level: token id = byte value (0..255); synthetic random-weight checkpoint";
        json[VersionKey] = CacheVersion;
        json["torch_dtype"] = dtype switch { DType.F32 => "float32", DType.F16 => "float16", _ => "bfloat16" };
        var c = LlamaConfig.From(ModelConfig.FromJson(json.ToJsonString(), configPath));

        var writer = new SafeTensorsWriter();
        writer.AddMetadata("format", "pt").AddMetadata("lrl.synthetic", preset);
        int seed = 1;
        void Matrix(string name, int rows, int cols) => writer.Add(name, dtype, [rows, cols], s => Fill(s, dtype, (long)rows * cols, seed++, 0.04f, false));
        void Vector(string name, int n, bool ones) => writer.Add(name, dtype, [n], s => Fill(s, dtype, n, seed++, 0, ones));

        Matrix("model.embed_tokens.weight", c.VocabSize, c.HiddenSize);
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Vector(p + "input_layernorm.weight", c.HiddenSize, true);
            Matrix(p + "self_attn.q_proj.weight", c.QDim, c.HiddenSize);
            Matrix(p + "self_attn.k_proj.weight", c.KvDim, c.HiddenSize);
            Matrix(p + "self_attn.v_proj.weight", c.KvDim, c.HiddenSize);
            if (c.AttentionBias)
            {
                Vector(p + "self_attn.q_proj.bias", c.QDim, false);
                Vector(p + "self_attn.k_proj.bias", c.KvDim, false);
                Vector(p + "self_attn.v_proj.bias", c.KvDim, false);
            }
            Matrix(p + "self_attn.o_proj.weight", c.HiddenSize, c.QDim);
            Vector(p + "post_attention_layernorm.weight", c.HiddenSize, true);
            Matrix(p + "mlp.gate_proj.weight", c.IntermediateSize, c.HiddenSize);
            Matrix(p + "mlp.up_proj.weight", c.IntermediateSize, c.HiddenSize);
            Matrix(p + "mlp.down_proj.weight", c.HiddenSize, c.IntermediateSize);
        }
        Vector("model.norm.weight", c.HiddenSize, true);
        if (!c.TieWordEmbeddings) Matrix("lm_head.weight", c.VocabSize, c.HiddenSize);

        outDir = OutputFolder.Prepare(outDir, force);
        progress?.WriteLine($"writing {preset} ({dtype}, {writer.DataLength / 1e6:F0} MB) to {outDir}");
        var tmp = OutputFolder.CreateTemporary(outDir);
        try
        {
            writer.Write(Path.Combine(tmp, "model.safetensors"));
            File.WriteAllText(Path.Combine(tmp, "config.json"), json.ToJsonString(new() { WriteIndented = true }));
            OutputFolder.Commit(tmp, outDir);
        }
        catch
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>
    /// A cached synthetic checkpoint (written on first use) under the user's cache folder. Besides the dense dtypes,
    /// "q8" and "q4" quantize the bf16 checkpoint with `lrlrun quantize`'s defaults (adaptive groups).
    /// </summary>
    public static string Cached(string preset, string dtype, TextWriter? progress = null)
    {
        PresetConfigPath(preset); // a clear error for an unknown preset before touching the cache
        var root = Environment.GetEnvironmentVariable("LRL_CACHE")
                   ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "lrlrun");
        var key = dtype.ToLowerInvariant();
        var dir = Path.Combine(root, "synthetic", $"{preset}-{key}");
        if (IsCurrent(dir)) return dir;
        if (Directory.Exists(dir))
        {
            // Written by an older lrlrun (e.g. without the byte-level tokenizer declaration): write it again.
            progress?.WriteLine($"{dir} was written by an older lrlrun; writing it again");
            Directory.Delete(dir, recursive: true);
        }
        if (key is "q8" or "q4")
        {
            var dense = Cached(preset, "bf16", progress);
            progress?.WriteLine($"quantizing {preset} to {key} into {dir}");
            Lrl.Quant.Quantizer.QuantizeModel(dense, dir, new Lrl.Quant.QuantizeOptions { Bits = key == "q8" ? 8 : 4, Overwrite = true },
                progress is null ? null : new Progress<string>(_ => { }));
            return dir;
        }
        Write(preset, dtype, dir, progress, force: true);
        return dir;
    }

    /// <summary>Bumped when synthetic checkpoints change, so that older cached ones are written again.</summary>
    public const int CacheVersion = 3; // 3: q8/q4 quantize the token embeddings and tied head (int8) by default
    private const string VersionKey = "lrl_synthetic_version";

    private static bool IsCurrent(string dir)
    {
        var config = Path.Combine(dir, "config.json");
        if (!File.Exists(config)) return false;
        try
        {
            return JsonNode.Parse(File.ReadAllText(config)) is JsonObject o && o[VersionKey] is JsonValue v &&
                   v.TryGetValue<int>(out int version) && version == CacheVersion;
        }
        catch (System.Text.Json.JsonException) { return false; }
    }

    private static void Fill(Stream s, DType dtype, long count, int seed, float scale, bool ones)
    {
        const int Chunk = 1 << 16;
        int size = dtype.Size();
        var buf = new byte[Chunk * size];
        ulong state = (ulong)seed * 0x9E3779B97F4A7C15UL + 1;
        for (long done = 0; done < count; done += Chunk)
        {
            int n = (int)Math.Min(Chunk, count - done);
            for (int i = 0; i < n; i++)
            {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                float v = ones ? 1f : ((state >> 40) / (float)(1 << 24) * 2 - 1) * scale;
                switch (dtype)
                {
                    case DType.F32: BitConverter.TryWriteBytes(buf.AsSpan(i * 4), v); break;
                    case DType.F16: BitConverter.TryWriteBytes(buf.AsSpan(i * 2), (Half)v); break;
                    default: BitConverter.TryWriteBytes(buf.AsSpan(i * 2), DTypes.FloatToBF16(v)); break;
                }
            }
            s.Write(buf, 0, n * size);
        }
    }
}
