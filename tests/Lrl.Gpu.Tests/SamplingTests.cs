namespace Lrl.Gpu.Tests;

/// <summary>Device argmax and top-k/top-p sampling against a host implementation of the same rule.</summary>
[Collection("gpu")]
public class SamplingTests
{
    public static TheoryData<string> Kinds => new(Backends.KernelKinds);

    [Theory, MemberData(nameof(Kinds))]
    public void ArgmaxFindsFirstLargest(string kind)
    {
        var g = Backends.Get(kind);
        using var arena = new RandomTensors(Random.Shared.Next());
        foreach (int n in new[] { 1, 33, 577, 5000 })
        {
            var v = arena.Floats(n, 10f);
            int expected = 0;
            for (int i = 1; i < n; i++) if (v[i] > v[expected]) expected = i;
            using var buf = Check.Buffer(g, v);
            Assert.Equal(expected, g.Argmax(buf, n));
            if (n > 3)
            {
                int a = arena.Rng.Next(n / 2), b = n / 2 + arena.Rng.Next(n / 2);
                v[a] = v[b] = 100f; // tie: the lower id wins
                g.Upload(v, buf);
                Assert.Equal(a, g.Argmax(buf, n));
            }
        }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void SampleMatchesHostRule(string kind)
    {
        var g = Backends.Get(kind);
        using var arena = new RandomTensors(Random.Shared.Next());
        // Each device sample is a single group making 32 passes over the logits: slow on the simulated device, so
        // the combinations are drawn at random rather than enumerated.
        foreach (int n in new[] { 33, 577, 3001 })
        {
            var logits = arena.Floats(n, 4f);
            using var buf = Check.Buffer(g, logits);
            float[] temps = [0.7f, 1f], topPs = [1f, 0.9f, 0.5f], minPs = [0f, 0.05f, 0.3f];
            foreach (int topK in new[] { 1, 5, 40, 0 })
                for (int draw = 0; draw < 3; draw++)
                {
                    float u = (float)arena.Rng.NextDouble();
                    float temp = temps[arena.Rng.Next(temps.Length)], topP = topPs[arena.Rng.Next(topPs.Length)], minP = minPs[arena.Rng.Next(minPs.Length)];
                    int expected = HostSample(logits, temp, topK, topP, u, minP);
                    int k = topK == 0 ? GpuBackend.MaxDeviceTopK : topK;
                    // The device, and the host mirror backends without device sampling use (IBackend.Sample's default),
                    // both in float, give the double rule's token, or at a boundary (a cumulative mass, a min-p floor
                    // or the draw within float rounding of a cut) the token of the rule with that cut nudged.
                    foreach (var (what, got) in new[] { ("device", g.Sample(buf, n, temp, topK, topP, u, minP)), ("host mirror", Logits.SampleTopK(logits, temp, k, topP, u, minP)) })
                        Assert.True(got == expected || AtABoundary(logits, temp, topK, topP, u, minP, got),
                                    $"{what}: n={n} T={temp} k={topK} p={topP} min-p={minP} u={u}: {got}, the rule {expected}");
                }
            Assert.Equal(g.Argmax(buf, n), g.Sample(buf, n, 0f, 40, 0.9f, 0.5f));
        }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void SampleRejectsBadSettings(string kind)
    {
        var g = Backends.Get(kind);
        using var buf = Check.Buffer(g, new float[8]);
        Assert.Throws<LrlException>(() => g.Sample(buf, 8, -1f, 0, 1f, 0.5f));
        Assert.Throws<LrlException>(() => g.Sample(buf, 8, 1f, -3, 1f, 0.5f));
        Assert.Throws<LrlException>(() => g.Sample(buf, 8, 1f, 0, 0f, 0.5f));
        Assert.Throws<LrlException>(() => g.Sample(buf, 8, 1f, 0, 1f, 0.5f, 1.5f));
    }

    /// <summary>Whether <paramref name="got"/> is the rule's token once top-p, min-p or the draw moves by 1e-5 (float rounding at a cut).</summary>
    private static bool AtABoundary(float[] logits, float temp, int topK, float topP, float u, float minP, int got)
    {
        const float e = 1e-5f;
        foreach (float dp in new[] { -e, 0, e })
            foreach (float du in new[] { -e, 0, e })
                foreach (float dm in new[] { -e, 0, e })
                    if (HostSample(logits, temp, topK, Math.Min(1f, topP + dp), Math.Clamp(u + du, 0f, 0.9999999f), Math.Max(0f, minP + dm)) == got)
                        return true;
        return false;
    }

    /// <summary>The documented rule, in double: top-k (ties: lower id), softmax at temperature, top-p prefix, walk.</summary>
    private static int HostSample(float[] logits, float temp, int topK, float topP, float u, float minP = 0)
    {
        int k = topK == 0 ? GpuBackend.MaxDeviceTopK : Math.Min(topK, GpuBackend.MaxDeviceTopK);
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(k).ToArray();
        double max = logits[order[0]];
        var p = order.Select(i => Math.Exp((logits[i] - max) / temp)).ToArray();
        double sum = p.Sum();
        for (int i = 0; i < p.Length; i++) p[i] /= sum;
        int keep = p.Length;
        double total = 0;
        for (int i = 0; i < p.Length; i++)
        {
            total += p[i];
            if (topP < 1 && total >= topP) { keep = i + 1; break; }
        }
        if (minP > 0)
        {
            int kept = 1;
            while (kept < keep && p[kept] >= minP * p[0]) kept++;
            if (kept < keep) { keep = kept; total = p.Take(keep).Sum(); }
        }
        double r = u * total;
        for (int i = 0; i < keep; i++)
        {
            r -= p[i];
            if (r < 0) return order[i];
        }
        return order[keep - 1];
    }
}
