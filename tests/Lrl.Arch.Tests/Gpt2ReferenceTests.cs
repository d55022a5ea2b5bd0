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

/// <summary>The Conv1D transpose at load works in the stored dtype: f16 and bf16 copies of capp-gpt2-tiny.</summary>
public class Gpt2HalfPrecisionTests
{
    [Theory]
    [InlineData(DType.F16, 2e-3)]
    [InlineData(DType.BF16, 2e-2)]
    public void HalfPrecisionCopyMatchesF32WithinDtypeTolerance(DType dtype, double tol)
    {
        var src = SharedData.Model("capp-gpt2-tiny");
        var dir = Directory.CreateTempSubdirectory("lrl-gpt2-half").FullName;
        try
        {
            File.Copy(Path.Combine(src, "config.json"), Path.Combine(dir, "config.json"));
            using (var ck = Lrl.Loading.Checkpoint.Open(src))
            {
                var w = new Lrl.Loading.SafeTensorsWriter();
                foreach (var t in ck.Tensors)
                {
                    var f = t.ToFloatArray();
                    var bytes = new byte[f.Length * 2];
                    for (int i = 0; i < f.Length; i++)
                    {
                        ushort bits = dtype == DType.F16 ? BitConverter.HalfToUInt16Bits((Half)f[i]) : DTypes.FloatToBF16(f[i]);
                        BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), bits);
                    }
                    w.Add(t.Name, dtype, t.Shape, bytes);
                }
                w.Write(Path.Combine(dir, "model.safetensors"));
            }
            using var backend = new Lrl.Cpu.CpuBackend(2);
            using var full = ModelRegistry.Load(src, backend);
            using var half = ModelRegistry.Load(dir, backend);
            Assert.Equal(dtype.ToString(), half.WeightFormat);
            int[] ids = [49, 0, 7, 15, 17, 21, 26, 50];
            var a = new float[ids.Length * full.VocabSize];
            var b = new float[ids.Length * half.VocabSize];
            full.Forward(ids, 0, a);
            half.Forward(ids, 0, b);
            double err = Gpt2ReferenceTests.Rel(b, a);
            Assert.True(err < tol, $"{dtype}: relative L2 error {err:E2} vs the f32 checkpoint");
            Assert.Equal(Gpt2ReferenceTests.ArgMax(a.AsSpan(^full.VocabSize..)), Gpt2ReferenceTests.ArgMax(b.AsSpan(^half.VocabSize..)));
        }
        finally { Directory.Delete(dir, true); }
    }
}
