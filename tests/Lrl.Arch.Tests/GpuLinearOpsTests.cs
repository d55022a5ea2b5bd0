using Lrl.Gpu;

namespace Lrl.Arch.Tests;

/// <summary>
/// The GPU backend's shared instance on ILGPU's CPU accelerator (created once: context start-up is slow). Groups of 8
/// threads (warps of 4): GpuBackend's tiled prefill attention kernel gives each of its 8 query rows to thread t &lt; 8, so
/// the default 4-thread simulated groups leave rows 4..7 of every tile unwritten (reported; not this project's code).
/// </summary>
public static class GpuSim
{
    private static readonly Lazy<GpuBackend> Instance = new(() => GpuBackend.CreateCpuAccelerator(4, 2, 1));
    public static GpuBackend Backend => Instance.Value;
}

[CollectionDefinition("gpu-sim", DisableParallelization = true)]
public sealed class GpuSimCollection;

/// <summary>
/// Every ILinearAttentionOps kernel of GpuBackend (ILGPU, run on the CPU accelerator) against the float64 reference,
/// on random inputs at odd and even sizes with NaN-poisoned outputs; lightning attention also against the naive sum.
/// </summary>
[Collection("gpu-sim")]
public class GpuLinearOpsTests
{
    public static TheoryData<int, int, int> Shapes => new() { { 1, 1, 8 }, { 3, 2, 7 }, { 4, 3, 16 }, { 2, 1, 33 } };

    [Theory, MemberData(nameof(Shapes))]
    public void ElementwiseAndNormOps(int rows, int heads, int headSize)
    {
        int w = heads * headSize, n = rows * w;
        var rng = new Random(n * 37 + rows);
        var x = Rand.Uniform(rng, n, -4, 4); var y = Rand.Uniform(rng, n, -2, 2); var t = Rand.Uniform(rng, n, 0, 1);
        var mix = Rand.Uniform(rng, w, -0.5f, 1.5f); var state = Rand.Uniform(rng, w);
        var g = Rand.Uniform(rng, w); var b = Rand.Uniform(rng, w); var theta = Rand.Uniform(rng, w, 0.01f, 1f);
        var (gpu, rf) = Rand.OnBoth(GpuSim.Backend, e =>
        {
            var outs = new List<float[]>();
            foreach (var op in new Action<DeviceBuffer>[] { d => e.L.Sigmoid(d, n), d => e.L.Silu(d, n), d => e.L.Tanh(d, n),
                         d => e.L.ReluSquare(d, n), d => e.L.Scale(d, 0.37f, n), d => e.L.Rwkv7Decay(d, n) })
            {
                var d = e.Buf(x);
                op(d);
                outs.Add(e.Get(d));
            }
            var a = e.Buf(x); e.L.Multiply(a, e.Buf(y), n); outs.Add(e.Get(a));
            var mr = e.Poison(n); e.L.MultiplyRow(e.Buf(x), e.Vec(mix), mr, rows); outs.Add(e.Get(mr));
            var lr = e.Poison(n); e.L.LerpRow(e.Buf(x), e.Buf(y), e.Vec(mix), lr, rows); outs.Add(e.Get(lr));
            var le = e.Poison(n); e.L.Lerp(e.Buf(x), e.Buf(y), e.Buf(t), le, n); outs.Add(e.Get(le));
            var st = e.Buf(state); var prev = e.Poison(n);
            e.L.TokenShift(e.Buf(x), st, prev, rows, w); outs.Add(e.Get(prev)); outs.Add(e.Get(st));
            var ks = e.Buf(x); e.L.Rwkv7KeyScale(ks, e.Buf(t), e.Vec(mix), rows); outs.Add(e.Get(ks));
            var z = e.Buf(x); e.L.Zero(z, n); outs.Add(e.Get(z));
            var gn = e.Poison(n); e.L.GroupNorm(e.Buf(x), e.Vec(g), e.Vec(b), gn, rows, heads, 1e-5f); outs.Add(e.Get(gn));
            var gi = e.Buf(x); e.L.GroupNorm(gi, e.Vec(g), e.Vec(b), gi, rows, heads, 64e-5f); outs.Add(e.Get(gi));
            var l2 = e.Buf(x); e.L.L2NormalizeGroups(l2, rows, w, headSize, 1e-12f); outs.Add(e.Get(l2));
            var lp = e.Poison(2L * n); e.L.Lrpe(e.Buf(x), e.Vec(theta), lp, rows, heads, headSize, 3); outs.Add(e.Get(lp));
            return outs.ToArray();
        });
        Rand.AssertClose(gpu, rf, 1e-5, $"gpu elementwise/norm rows={rows} heads={heads} size={headSize}");
    }

    [Theory, MemberData(nameof(Shapes))]
    public void Wkv5Wkv7AndBonus(int rows, int heads, int headSize)
    {
        int c = heads * headSize, n = rows * c, ss = heads * headSize * headSize;
        var rng = new Random(n + 41);
        var r = Rand.Uniform(rng, n); var k = Rand.Uniform(rng, n); var v = Rand.Uniform(rng, n);
        var w = Rand.Uniform(rng, n, 0.5f, 0.99f); var a = Rand.Uniform(rng, n, 0, 1); var kk = Rand.Uniform(rng, n, -0.3f, 0.3f);
        var decay = Rand.Uniform(rng, c, 0.3f, 0.99f); var bonus = Rand.Uniform(rng, c, -0.5f, 0.5f); var rk = Rand.Uniform(rng, c);
        var s0 = Rand.Uniform(rng, ss, -0.2f, 0.2f);
        var (gpu, rf) = Rand.OnBoth(GpuSim.Backend, e =>
        {
            var st5 = e.Buf(s0); var o5 = e.Poison(n);
            e.L.Wkv5(e.Buf(r), e.Buf(k), e.Buf(v), e.Vec(decay), e.Vec(bonus), st5, o5, rows, heads, headSize);
            var st7 = e.Buf(s0); var o7 = e.Poison(n);
            e.L.Wkv7(e.Buf(r), e.Buf(w), e.Buf(k), e.Buf(v), e.Buf(kk), e.Buf(a), st7, o7, rows, heads, headSize);
            var bo = e.Buf(v);
            e.L.Rwkv7Bonus(e.Buf(r), e.Buf(k), e.Buf(v), e.Vec(rk), bo, rows, heads, headSize);
            return [e.Get(o5), e.Get(st5), e.Get(o7), e.Get(st7), e.Get(bo)];
        });
        Rand.AssertClose(gpu, rf, 1e-5, $"gpu wkv rows={rows} heads={heads} size={headSize}");
    }

    [Theory]
    [InlineData(1, 1, 4, 4, 4)]
    [InlineData(7, 2, 5, 3, 3)]
    [InlineData(20, 3, 8, 6, 8)]
    public void LightningChunkedAndRecurrentEqualNaive(int rows, int heads, int dk, int dv, int block)
    {
        var rng = new Random(rows * 7 + dk);
        var q = Rand.Uniform(rng, rows * heads * dk); var k = Rand.Uniform(rng, rows * heads * dk);
        var v = Rand.Uniform(rng, rows * heads * dv); var slopes = Rand.Uniform(rng, heads, 0.01f, 1.5f);
        var naive = new double[rows * heads * dv];
        for (int h = 0; h < heads; h++)
            for (int t = 0; t < rows; t++)
                for (int s = 0; s <= t; s++)
                {
                    double dot = 0;
                    for (int i = 0; i < dk; i++) dot += (double)q[(t * heads + h) * dk + i] * k[(s * heads + h) * dk + i];
                    double wgt = Math.Exp(-(double)slopes[h] * (t - s)) * dot;
                    for (int j = 0; j < dv; j++) naive[(t * heads + h) * dv + j] += wgt * v[(s * heads + h) * dv + j];
                }
        var (gpu, rf) = Rand.OnBoth(GpuSim.Backend, e =>
        {
            var sl = e.Vec(slopes);
            var s1 = e.Buf(new float[heads * dk * dv]); var o1 = e.Poison(rows * heads * dv);
            e.L.LightningChunked(e.Buf(q), e.Buf(k), e.Buf(v), sl, s1, o1, rows, heads, dk, dv, block);
            var s2 = e.Buf(new float[heads * dk * dv]); var o2 = e.Poison(rows * heads * dv);
            e.L.LightningRecurrent(e.Buf(q), e.Buf(k), e.Buf(v), sl, s2, o2, rows, heads, dk, dv);
            return [e.Get(o1), e.Get(s1), e.Get(o2), e.Get(s2)];
        });
        Rand.AssertClose(gpu, rf, 1e-5, $"gpu lightning rows={rows} block={block}");
        Assert.True(Rand.RelErr(gpu[0], naive) < 1e-5, "gpu chunked vs naive");
        Assert.True(Rand.RelErr(gpu[2], naive) < 1e-5, "gpu recurrent vs naive");
    }
}

/// <summary>Whole models on GpuBackend (ILGPU CPU accelerator): the RWKV tiny checkpoints against rwkv.cpp's logits.</summary>
[Collection("gpu-sim")]
public class GpuModelTests
{
    [Theory]
    [InlineData("rwkv-tiny-5v2-730K", "5v2-730K")]
    [InlineData("rwkv-tiny-7v0-834K", "7v0-834K")]
    public void RwkvOnGpuMatchesRwkvCppExpectedLogits(string name, string version)
    {
        var dir = SharedData.Model(name);
        var expected = RwkvReferenceTests.ExpectedLogits(dir, version);
        using var model = ModelRegistry.Load(dir, GpuSim.Backend, new ModelLoadOptions { BatchSize = 4 });
        var logits = new float[model.VocabSize];
        int[] ids = [34, 105, 110];
        for (int i = 0; i < ids.Length; i++) model.Forward([ids[i]], i, logits);
        double diff = 0;
        for (int i = 0; i < expected.Length; i++) diff += Math.Abs(logits[i] - expected[i]);
        TestContext.Current.TestOutputHelper?.WriteLine($"{name} gpu-sim: Σ|Δlogit| = {diff:E3}");
        Assert.True(diff <= 1e-3, $"{name} on the GPU backend: summed absolute logit difference {diff:E3}");
        // Batched prefill of the same bytes.
        var all = new float[ids.Length * model.VocabSize];
        model.Forward(ids, 0, all);
        Assert.True(Rand.RelErr(all[(2 * model.VocabSize)..], expected) < 1e-5, "batched prefill on the GPU backend");
    }

    [Fact]
    public void TransNormerWithLrpeOnGpuMatchesFloat64Forward()
    {
        var spec = new TransNormerTests.Spec(16, 16, 2, 4, 24, 29, false, false, true, [1, 0]);
        using var m = new TransNormerTests.TinyModel(spec, 21);
        var rng = new Random(8);
        var tokens = Enumerable.Range(0, 12).Select(_ => rng.Next(spec.Vocab)).ToArray();
        var expected = TransNormerTests.Forward64(m, tokens);
        using var model = ModelRegistry.Load(m.Dir, GpuSim.Backend);
        var all = new float[tokens.Length * spec.Vocab];
        model.Forward(tokens, 0, all);
        Assert.True(Rand.RelErr(all, expected) < 1e-4, $"gpu prefill: relative error {Rand.RelErr(all, expected):E2}");
        var last = new float[spec.Vocab];
        model.Forward(tokens[..8], 0, last);
        for (int t = 8; t < tokens.Length; t++) model.Forward([tokens[t]], t, last);
        double err = Rand.RelErr(last, expected[((tokens.Length - 1) * spec.Vocab)..]);
        Assert.True(err < 1e-4, $"gpu decode: relative error {err:E2}");
    }

    [Fact]
    public void Gpt2OnGpuMatchesFloat64ReferenceTop5()
    {
        var dir = SharedData.Model("capp-gpt2-tiny");
        var reference = SharedData.Reference("capp-gpt2-tiny");
        using var model = ModelRegistry.Load(dir, GpuSim.Backend);
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
        }
    }
}
