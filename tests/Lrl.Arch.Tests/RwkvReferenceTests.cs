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
