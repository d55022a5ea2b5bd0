using Lrl.Runtime;

namespace Lrl.Models.Tests;

public class SamplerTests
{
    [Fact]
    public void FrequencyPresenceAndLogitBiasShiftTheLogitsAsOpenAIDefines()
    {
        var o = new SamplingOptions { Temperature = 0, FrequencyPenalty = 0.5f, PresencePenalty = 0.25f, RepeatLastN = 4,
            LogitBias = new Dictionary<int, float> { [3] = 2f } };
        var logits = new float[] { 1, 1, 1, 1, 1 };
        // Window = the last 4 tokens [1, 1, 2, 0]: token 1 twice, 2 and 0 once; token 4 (older) is outside it.
        new Sampler(5, o).Sample(logits, [4, 1, 1, 2, 0]);
        Assert.Equal(1 - 0.5f - 0.25f, logits[0], 5);
        Assert.Equal(1 - 2 * 0.5f - 0.25f, logits[1], 5);
        Assert.Equal(1 - 0.5f - 0.25f, logits[2], 5);
        Assert.Equal(3f, logits[3], 5);
        Assert.Equal(1f, logits[4], 5);
        var ban = new SamplingOptions { Temperature = 0, LogitBias = new Dictionary<int, float> { [2] = -100 } };
        Assert.NotEqual(2, new Sampler(3, ban).Sample(new float[] { 0, 1, 5 }, []));
        Assert.Throws<LrlException>(() => new SamplingOptions { FrequencyPenalty = 3 }.Validate());
        Assert.Throws<LrlException>(() => new SamplingOptions { LogitBias = new Dictionary<int, float> { [1] = 101 } }.Validate());
    }

    private static float[] Logits(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 8 - 4)).ToArray();
    }

    [Fact]
    public void GreedyIsArgMax()
    {
        var l = Logits(500, 1);
        int expected = Array.IndexOf(l, l.Max());
        Assert.Equal(expected, new Sampler(500, SamplingOptions.Greedy).Sample(l.ToArray(), []));
    }

    [Fact]
    public void TopKOneIsArgMaxEvenAtHighTemperature()
    {
        var l = Logits(300, 2);
        var s = new Sampler(300, new SamplingOptions { Temperature = 5, TopK = 1, Seed = 3 });
        for (int i = 0; i < 20; i++) Assert.Equal(Array.IndexOf(l, l.Max()), s.Sample(l.ToArray(), []));
    }

    [Fact]
    public void SamplesOnlyFromTheTopKAndFollowTheDistribution()
    {
        var l = Logits(200, 4);
        var top = l.Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(5).Select(p => p.i).ToHashSet();
        var s = new Sampler(200, new SamplingOptions { Temperature = 1, TopK = 5, TopP = 1, MinP = 0, Seed = 11 });
        var counts = new Dictionary<int, int>();
        for (int i = 0; i < 20000; i++) { int t = s.Sample(l.ToArray(), []); counts[t] = counts.GetValueOrDefault(t) + 1; }
        Assert.Subset(top, counts.Keys.ToHashSet());
        double z = top.Sum(i => Math.Exp(l[i]));
        foreach (var i in top) Assert.InRange(counts.GetValueOrDefault(i) / 20000.0, Math.Exp(l[i]) / z - 0.02, Math.Exp(l[i]) / z + 0.02);
    }

    [Fact]
    public void TopPKeepsTheSmallestNucleus()
    {
        // Probabilities 0.5, 0.3, 0.2 (logits = log p): top-p 0.75 keeps the first two only.
        float[] l = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.2f)];
        var s = new Sampler(3, new SamplingOptions { Temperature = 1, TopK = 0, TopP = 0.75f, MinP = 0, Seed = 5 });
        var seen = Enumerable.Range(0, 3000).Select(_ => s.Sample(l.ToArray(), [])).ToHashSet();
        Assert.Equal(new HashSet<int> { 0, 1 }, seen);
    }

    [Fact]
    public void MinPDropsUnlikelyTokens()
    {
        float[] l = [MathF.Log(0.6f), MathF.Log(0.35f), MathF.Log(0.05f)];
        var s = new Sampler(3, new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0.1f, Seed = 5 });
        var seen = Enumerable.Range(0, 3000).Select(_ => s.Sample(l.ToArray(), [])).ToHashSet();
        Assert.Equal(new HashSet<int> { 0, 1 }, seen);
    }

    [Fact]
    public void RepeatPenaltyDemotesRecentTokens()
    {
        float[] l = [2.0f, 1.9f, -1f];
        var s = new Sampler(3, new SamplingOptions { Temperature = 0, RepeatPenalty = 1.5f });
        Assert.Equal(1, s.Sample(l, [0, 0, 2]));
        Assert.Equal(2.0f / 1.5f, l[0], 5);
        Assert.Equal(-1.5f, l[2], 5);
    }

    [Fact]
    public void SameSeedSameSequence()
    {
        var l = Logits(100, 9);
        var o = new SamplingOptions { Temperature = 1.2f, TopK = 0, TopP = 1, MinP = 0, Seed = 42 };
        var a = new Sampler(100, o); var b = new Sampler(100, o);
        for (int i = 0; i < 50; i++) Assert.Equal(a.Sample(l.ToArray(), []), b.Sample(l.ToArray(), []));
    }

    [Theory]
    [InlineData(-0.5f, 40, 0.9f, 0f, 1f)]
    [InlineData(1f, -1, 0.9f, 0f, 1f)]
    [InlineData(1f, 40, 0f, 0f, 1f)]
    [InlineData(1f, 40, 0.9f, 1.5f, 1f)]
    [InlineData(1f, 40, 0.9f, 0f, 0f)]
    public void BadValuesAreRejected(float t, int k, float p, float minP, float rep) =>
        Assert.Throws<LrlException>(() => new Sampler(10, new SamplingOptions { Temperature = t, TopK = k, TopP = p, MinP = minP, RepeatPenalty = rep }));

    [Fact]
    public void StopMatcherHoldsBackPartialMatchesAndCutsBeforeTheStop()
    {
        var m = new StopMatcher(["END"]);
        Assert.Equal("abc ", m.Push("abc E"[..4]));
        Assert.Equal("", m.Push("E"));
        Assert.Equal("", m.Push("N"));
        Assert.Equal("", m.Push("Dxyz"));
        Assert.True(m.Stopped);
        var n = new StopMatcher(["END"]);
        Assert.Equal("x", n.Push("xE"));
        Assert.Equal("Ey", n.Push("y"));
        Assert.Equal("", n.Flush());
        Assert.False(n.Stopped);
    }
}
