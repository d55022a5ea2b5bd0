using System.Text.Json;
using System.Text.Json.Nodes;
using Lrl.Loading;

namespace Lrl.Tests;

/// <summary>
/// Writes random PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors in PEFT's saved layout) for the
/// linear modules of a Llama-family or GPT-2 model folder. B is random too (PEFT starts it at zero), so the adapter
/// changes the logits and a broken apply path cannot pass.
/// </summary>
public static class LoraFiles
{
    /// <summary>A linear module of the base: name (as the adapter keys it) and its [out, in].</summary>
    public readonly record struct Module(string Name, string Kind, int Out, int In);

    /// <summary>The adaptable linear modules of a model folder (Llama family: q/k/v/o/gate/up/down; GPT-2: c_attn/c_proj/c_fc/mlp.c_proj).</summary>
    public static List<Module> Modules(string modelDir)
    {
        var c = JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")))!.AsObject();
        int I(string k, int fallback = -1) => c[k] is JsonValue v && v.TryGetValue<int>(out int x) ? x : fallback;
        var list = new List<Module>();
        if ((string?)c["model_type"] == "gpt2")
        {
            int C = I("n_embd"), inner = I("n_inner", 4 * C);
            for (int i = 0; i < I("n_layer"); i++)
            {
                string p = $"transformer.h.{i}.";
                list.Add(new(p + "attn.c_attn", "c_attn", 3 * C, C));
                list.Add(new(p + "attn.c_proj", "c_proj", C, C));
                list.Add(new(p + "mlp.c_fc", "c_fc", inner, C));
                list.Add(new(p + "mlp.c_proj", "c_proj", C, inner));
            }
            return list;
        }
        int h = I("hidden_size"), heads = I("num_attention_heads"), kv = I("num_key_value_heads", heads), ffn = I("intermediate_size");
        int hd = I("head_dim", h / heads);
        for (int i = 0; i < I("num_hidden_layers"); i++)
        {
            string p = $"model.layers.{i}.";
            list.Add(new(p + "self_attn.q_proj", "q_proj", heads * hd, h));
            list.Add(new(p + "self_attn.k_proj", "k_proj", kv * hd, h));
            list.Add(new(p + "self_attn.v_proj", "v_proj", kv * hd, h));
            list.Add(new(p + "self_attn.o_proj", "o_proj", h, heads * hd));
            list.Add(new(p + "mlp.gate_proj", "gate_proj", ffn, h));
            list.Add(new(p + "mlp.up_proj", "up_proj", ffn, h));
            list.Add(new(p + "mlp.down_proj", "down_proj", h, ffn));
        }
        return list;
    }

    /// <summary>Writes an adapter for the modules whose kind is in <paramref name="targets"/>; returns the folder.</summary>
    public static string Write(string dir, string modelDir, string[] targets, int rank, double alpha, int seed,
                               bool rsLora = false, DType dtype = DType.F32, float magnitude = 0.3f,
                               Action<JsonObject>? editConfig = null, Action<SafeTensorsWriter, Random>? extraTensors = null,
                               Func<string, string>? renameTensor = null)
    {
        Directory.CreateDirectory(dir);
        var rng = new Random(seed);
        bool gpt2 = Modules(modelDir).Any(m => m.Kind == "c_attn");
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = modelDir,
            ["r"] = rank,
            ["lora_alpha"] = alpha,
            ["lora_dropout"] = 0.0,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
            ["fan_in_fan_out"] = gpt2,
            ["use_rslora"] = rsLora,
            ["bias"] = "none",
            ["modules_to_save"] = null,
        };
        editConfig?.Invoke(config);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var w = new SafeTensorsWriter();
        foreach (var m in Modules(modelDir).Where(m => targets.Contains(m.Kind)))
        {
            // A's rows scaled like PEFT's Kaiming init (~1/√in); B random instead of zero.
            var a = Random(rng, rank * m.In, magnitude / MathF.Sqrt(m.In));
            var b = Random(rng, m.Out * rank, magnitude);
            string pre = "base_model.model." + m.Name;
            Add(w, renameTensor?.Invoke(pre + ".lora_A.weight") ?? pre + ".lora_A.weight", dtype, [rank, m.In], a);
            Add(w, renameTensor?.Invoke(pre + ".lora_B.weight") ?? pre + ".lora_B.weight", dtype, [m.Out, rank], b);
        }
        extraTensors?.Invoke(w, rng);
        w.Write(Path.Combine(dir, "adapter_model.safetensors"));
        return dir;
    }

    public static float[] Random(Random rng, int n, float scale)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return x;
    }

    public static void Add(SafeTensorsWriter w, string name, DType dtype, int[] shape, float[] values)
    {
        switch (dtype)
        {
            case DType.F32: w.Add(name, shape, values); break;
            case DType.F16:
                w.Add(name, DType.F16, shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.Select(v => (Half)v).ToArray().AsSpan()));
                break;
            default:
                w.Add(name, DType.BF16, shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.Select(DTypes.FloatToBF16).ToArray().AsSpan()));
                break;
        }
    }

    /// <summary>A fresh temporary folder (deleted by the caller's using).</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "lrl-lora-" + Guid.NewGuid().ToString("N")[..10]);
        public TempDir() => Directory.CreateDirectory(Path);
        public string Sub(string name) => System.IO.Path.Combine(Path, name);
        public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
    }
}
