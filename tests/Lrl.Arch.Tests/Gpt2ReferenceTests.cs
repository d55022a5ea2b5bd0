using Lrl.Cpu;
using Lrl.Kernels.Reference;

namespace Lrl.Arch.Tests;

/// <summary>capp-gpt2-tiny (GPT2LMHeadModel, f32) against the float64 PyTorch reference: top-5 logits, greedy continuation.</summary>
public class Gpt2ReferenceTests
{
    public static TheoryData<string> Backends => new() { "cpu", "reference" };

    [Theory, MemberData(nameof(Backends))]
    public void Top5LogitsAndFirstLogitsMatchFloat64Reference(string backendName)
    {
        var dir = SharedData.Model("capp-gpt2-tiny");
        var reference = SharedData.Reference("capp-gpt2-tiny");
        using var backend = RwkvReferenceTests.Make(backendName);
        using var model = ModelRegistry.Load(dir, backend);
        Assert.Equal("GPT2LMHeadModel", model.Architecture);
        var logits = new float[model.VocabSize];
        foreach (var p in reference.GetProperty("prompts").EnumerateArray())
        {
            var ids = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            model.Forward(ids, 0, logits);
            var top = logits.Select((v, i) => (v, i)).OrderByDescending(t => t.v).Take(5).ToArray();
            var expected = p.GetProperty("top5_next").EnumerateArray().ToArray();
            for (int j = 0; j < 5; j++)
            {
                Assert.Equal(expected[j].GetProperty("id").GetInt32(), top[j].i);
                Assert.Equal(expected[j].GetProperty("logit").GetDouble(), top[j].v, 1e-4);
            }
            var first8 = p.GetProperty("last_logits_first8").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            for (int j = 0; j < 8; j++) Assert.Equal(first8[j], logits[j], 1e-4);
            Assert.Equal(p.GetProperty("last_logits_sum").GetDouble(), logits.Sum(v => (double)v), 1e-3);
            double l2 = Math.Sqrt(logits.Sum(v => (double)v * v));
            Assert.Equal(p.GetProperty("last_logits_l2").GetDouble(), l2, 1e-4);
        }
    }

    [Theory, MemberData(nameof(Backends))]
    public void GreedyContinuationAndPerPositionArgmaxMatch(string backendName)
    {
        var dir = SharedData.Model("capp-gpt2-tiny");
        var reference = SharedData.Reference("capp-gpt2-tiny");
        using var backend = RwkvReferenceTests.Make(backendName);
        using var model = ModelRegistry.Load(dir, backend);
        int V = model.VocabSize;
        foreach (var p in reference.GetProperty("prompts").EnumerateArray())
        {
            var ids = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            // Every position's logits from one batched prefill.
            var all = new float[ids.Length * V];
            model.Forward(ids, 0, all);
            var argmax = p.GetProperty("argmax_per_position").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            for (int t = 0; t < ids.Length; t++) Assert.Equal(argmax[t], ArgMax(all.AsSpan(t * V, V)));
            // Greedy decode one token at a time through the KV cache.
            var expected = p.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var logits = all.AsSpan((ids.Length - 1) * V, V).ToArray();
            int pos = ids.Length;
            var got = new List<int>();
            foreach (var _ in expected)
            {
                int next = ArgMax(logits);
                got.Add(next);
                model.Forward([next], pos++, logits);
            }
            Assert.Equal(expected, got);
        }
    }

    [Fact]
    public void CpuMatchesReferenceBackendOnEveryPosition()
    {
        var dir = SharedData.Model("capp-gpt2-tiny");
        using var cpu = new CpuBackend(2);
        using var rb = new ReferenceBackend();
        using var a = ModelRegistry.Load(dir, cpu, new ModelLoadOptions { BatchSize = 5 });
        using var b = ModelRegistry.Load(dir, rb);
        int[] ids = [49, 0, 7, 15, 17, 21, 26, 50, 33, 40, 2];
        var la = new float[ids.Length * a.VocabSize];
        var lb = new float[ids.Length * b.VocabSize];
        a.Forward(ids, 0, la); // chunks of 5, 5, 1
        b.Forward(ids, 0, lb);
        Assert.True(Rel(la, lb) < 1e-5, $"relative L2 {Rel(la, lb):E2}");
        Assert.True(a.ParameterCount > 0 && a.WeightBytesPerToken > 0);
        Assert.Equal("F32", a.WeightFormat);
    }

    internal static double Rel(float[] a, float[] b)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { double d = a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
        return Math.Sqrt(num / den);
    }

    internal static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
