using Lrl.Cpu;
using Lrl.Kernels.Reference;

namespace Lrl.Arch.Tests;

/// <summary>
/// RWKV v5.2 and v7 tiny checkpoints (rwkv.cpp layout) against rwkv.cpp's own expected logits: the 3 bytes of "\"in"
/// fed one at a time from a zero state; rwkv.cpp's test accepts a summed absolute logit difference ≤ 0.001 (FP32).
/// </summary>
public class RwkvReferenceTests
{
    public static TheoryData<string, string> Models => new()
    {
        { "rwkv-tiny-5v2-730K", "5v2-730K" },
        { "rwkv-tiny-7v0-834K", "7v0-834K" },
    };

    internal static float[] ExpectedLogits(string dir, string version)
    {
        var path = Path.Combine(dir, "rwkvcpp", $"expected-logits-{version}.bin");
        var bytes = File.ReadAllBytes(path);
        // The file is the raw little-endian f32 logits (n_vocab values), as rwkv.cpp's test reads it.
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray();
    }

    internal static IBackend Make(string backend) => backend == "cpu" ? new CpuBackend(2) : new ReferenceBackend();

    [Theory, MemberData(nameof(Models))]
    public void OneTokenAtATimeMatchesRwkvCppExpectedLogits(string name, string version)
    {
        var dir = SharedData.Model(name);
        var reference = SharedData.Reference(name);
        var ids = reference.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var expected = ExpectedLogits(dir, version);
        foreach (var backendName in new[] { "cpu", "reference" })
        {
            using var backend = Make(backendName);
            using var model = ModelRegistry.Load(dir, backend);
            Assert.Equal(expected.Length, model.VocabSize);
            var logits = new float[model.VocabSize];
            for (int i = 0; i < ids.Length; i++) model.Forward([ids[i]], i, logits);
            double diff = 0;
            for (int i = 0; i < expected.Length; i++) diff += Math.Abs(logits[i] - expected[i]);
            TestContext.Current.TestOutputHelper?.WriteLine($"{name} {backendName}: Σ|Δlogit| = {diff:E3}");
            Assert.True(diff <= 1e-3, $"{name} on {backendName}: summed absolute logit difference {diff:E3} > 0.001");
            // The JSON reference carries the same logits rounded to 6 decimals.
            var json = reference.GetProperty("logits").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            for (int i = 0; i < json.Length; i++) Assert.True(Math.Abs(logits[i] - json[i]) < 1e-4, $"logit {i}: {logits[i]} vs {json[i]}");
        }
    }

    [Theory, MemberData(nameof(Models))]
    public void BatchedPrefillEqualsOneTokenAtATime(string name, string version)
    {
        var dir = SharedData.Model(name);
        var expected = ExpectedLogits(dir, version);
        int[] ids = [34, 105, 110];
        using var backend = new CpuBackend(2);
        using var model = ModelRegistry.Load(dir, backend);
        var all = new float[ids.Length * model.VocabSize];
        model.Forward(ids, 0, all);
        double diff = 0;
        for (int i = 0; i < expected.Length; i++) diff += Math.Abs(all[2 * model.VocabSize + i] - expected[i]);
        Assert.True(diff <= 1e-3, $"batched prefill: summed absolute logit difference {diff:E3}");
        // startPos 0 resets the state: running again gives the same logits (last-token mode runs the head as a GEMV
        // instead of a 3-row product, so allow f32 rounding differences).
        var again = new float[model.VocabSize];
        model.Forward(ids, 0, again);
        double err = Rand.RelErr(again, all.AsSpan(2 * model.VocabSize).ToArray());
        Assert.True(err < 1e-6, $"rerun after reset: relative error {err:E2}");
    }
}

/// <summary>
/// The HF Rwkv5ForCausalLM layout: the tiny rwkv.cpp v5.2 checkpoint rewritten with HF names and raw time_decay
/// (log(−log w)) must give rwkv.cpp's expected logits too.
/// </summary>
public class RwkvHfLayoutTests
{
    private static string HfName(string cpp)
    {
        if (cpp == "head.weight") return cpp;
        string n = cpp.Replace("emb.weight", "embeddings.weight").Replace(".ln0.", ".pre_ln.").Replace(".att.", ".attention.").Replace(".ffn.", ".feed_forward.");
        n = n.Replace("time_mix_k", "time_mix_key").Replace("time_mix_v", "time_mix_value").Replace("time_mix_r", "time_mix_receptance").Replace("time_mix_g", "time_mix_gate");
        return "rwkv." + n;
    }

    [Fact]
    public void HfLayoutCopyOfRwkv5MatchesRwkvCppExpectedLogits()
    {
        var src = SharedData.Model("rwkv-tiny-5v2-730K");
        var dir = Directory.CreateTempSubdirectory("lrl-rwkv5-hf").FullName;
        try
        {
            using (var ck = Lrl.Loading.Checkpoint.Open(src))
            {
                var w = new Lrl.Loading.SafeTensorsWriter();
                foreach (var t in ck.Tensors)
                {
                    var data = t.ToFloatArray();
                    var shape = t.Shape;
                    if (t.Name.EndsWith(".time_decay")) data = data.Select(x => (float)Math.Log(-Math.Log(x))).ToArray();
                    if (t.Name.Contains(".time_")) shape = t.Name.Contains("time_mix") ? [1, 1, data.Length] : [shape[0], shape[1]];
                    w.Add(HfName(t.Name), shape, data);
                }
                w.Write(Path.Combine(dir, "model.safetensors"));
            }
            File.WriteAllText(Path.Combine(dir, "config.json"),
                """{"architectures": ["Rwkv5ForCausalLM"], "model_type": "rwkv5", "hidden_size": 64, "num_hidden_layers": 12, "vocab_size": 256, "head_size": 8, "attention_hidden_size": 64, "layer_norm_epsilon": 1e-05, "rescale_every": 6}""");
            var expected = RwkvReferenceTests.ExpectedLogits(src, "5v2-730K");
            using var backend = new Lrl.Cpu.CpuBackend(2);
            using var model = ModelRegistry.Load(dir, backend);
            Assert.Equal("Rwkv5ForCausalLM", model.Architecture);
            var logits = new float[model.VocabSize];
            int[] ids = [34, 105, 110];
            for (int i = 0; i < ids.Length; i++) model.Forward([ids[i]], i, logits);
            double diff = 0;
            for (int i = 0; i < expected.Length; i++) diff += Math.Abs(logits[i] - expected[i]);
            Assert.True(diff <= 1e-3, $"HF layout: summed absolute logit difference {diff:E3}");
        }
        finally { Directory.Delete(dir, true); }
    }
}
