using Lrl.Cpu;
using Lrl.Kernels.Reference;

namespace Lrl.Models.Tests;

/// <summary>stories260k (f32, f16, bf16 sharded) against float64 PyTorch: last-position logits and greedy continuations.</summary>
public class LlamaReferenceTests
{
    public static TheoryData<string> Models => new() { "stories260k", "stories260k-fp16", "stories260k-bf16-sharded" };

    [Theory, MemberData(nameof(Models))]
    public void LastLogitsMatchFloat64Reference(string name)
    {
        var dir = SharedData.Model(name);
        var reference = SharedData.Reference(name);
        using var backend = new CpuBackend();
        using var model = ModelRegistry.Load(dir, backend);
        foreach (var p in reference.GetProperty("prompts").EnumerateArray())
        {
            var ids = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var expected = p.GetProperty("last_logits").EnumerateArray().Select(e => e.GetDouble()).ToList();
            var logits = new float[model.VocabSize];
            model.Forward(ids, 0, logits);
            double err = SharedData.RelativeL2(logits, expected);
            Assert.True(err < 1e-4, $"{name} '{p.GetProperty("text").GetString()}': relative L2 error {err:E2}");
        }
    }

    [Theory, MemberData(nameof(Models))]
    public void GreedyContinuationMatchesTokenForToken(string name)
    {
        var dir = SharedData.Model(name);
        var reference = SharedData.Reference(name);
        using var backend = new CpuBackend();
        using var model = ModelRegistry.Load(dir, backend);
        var logits = new float[model.VocabSize];
        foreach (var p in reference.GetProperty("prompts").EnumerateArray())
        {
            var ids = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var expected = p.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            model.Forward(ids, 0, logits);
            int pos = ids.Length;
            var got = new List<int>();
            for (int i = 0; i < expected.Length; i++)
            {
                int next = ArgMax(logits);
                got.Add(next);
                model.Forward([next], pos++, logits);
            }
            Assert.Equal(expected, got);
        }
    }

    [Fact]
    public void CpuBackendMatchesScalarReferenceBackendOnEveryPosition()
    {
        var dir = SharedData.Model("stories260k");
        using var cpu = new CpuBackend();
        using var refBackend = new ReferenceBackend();
        using var a = ModelRegistry.Load(dir, cpu);
        using var b = ModelRegistry.Load(dir, refBackend);
        int[] ids = [1, 403, 407, 261, 378, 432, 260, 300];
        var la = new float[ids.Length * a.VocabSize];
        var lb = new float[ids.Length * b.VocabSize];
        a.Forward(ids, 0, la);
        b.Forward(ids, 0, lb);
        double err = SharedData.RelativeL2(la, lb.Select(v => (double)v).ToList());
        Assert.True(err < 1e-5, $"relative L2 error {err:E2}");
    }

    internal static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
