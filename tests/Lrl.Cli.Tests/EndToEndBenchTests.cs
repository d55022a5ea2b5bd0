using System.Globalization;
using System.Text.RegularExpressions;
using Lrl.Bench;
using Lrl.Cpu;
using Lrl.Models;

namespace Lrl.Cli.Tests;

public class EndToEndBenchTests
{
    /// <summary>Rounds of single repetitions merge into one row per test: mean and spread over rounds, rates scaled with the mean.</summary>
    [Fact]
    public void MergeRoundsAveragesEachTestOverTheRounds()
    {
        static BenchResult Row(string test, double tps, double? roof) =>
            new("m", "Q4_GC", "cpu", 1, test, 8, 1, tps, 0, roof is null ? null : tps * 0.5, roof, roof is null ? tps * 2 : null, roof is null ? tps * 0.01 : null);
        var rounds = new List<List<BenchResult>>
        {
            new() { Row("pp8", 100, null), Row("tg8", 10, 0.5) },
            new() { Row("pp8", 200, null), Row("tg8", 30, 0.7) },
            new() { Row("pp8", 300, null), Row("tg8", 20, 0.9) },
        };
        var merged = EndToEndBench.MergeRounds(rounds);
        Assert.Equal(["pp8", "tg8"], merged.Select(r => r.Test));
        Assert.All(merged, r => Assert.Equal(3, r.Repetitions));
        Assert.Equal(200, merged[0].MeanTokensPerSecond, 9);
        Assert.Equal(100, merged[0].StdDevTokensPerSecond, 9);
        Assert.Equal(400, merged[0].GFlopsPerSecond!.Value, 9);
        Assert.Equal(2, merged[0].FmaPeakFraction!.Value, 9);
        Assert.Null(merged[0].RooflineFraction);
        Assert.Equal(20, merged[1].MeanTokensPerSecond, 9);
        Assert.Equal(10, merged[1].StdDevTokensPerSecond, 9);
        Assert.Equal(10, merged[1].GBPerSecond!.Value, 9);
        Assert.Equal(0.7, merged[1].RooflineFraction!.Value, 9);
        Assert.Same(rounds[0], EndToEndBench.MergeRounds([rounds[0]]));
    }

    /// <summary>
    /// Each generation repetition is compared with the mean of the bandwidth probes on either side of it: with probes
    /// reading 10, 20, 30, 40 GB/s, three repetitions are judged against 15, 25 and 35 GB/s.
    /// </summary>
    [Fact]
    public void GenerationRooflineUsesTheProbesOnEitherSide()
    {
        using var backend = new CpuBackend(1);
        using var model = ModelRegistry.Load(SharedData.Model("stories260k"), backend, new ModelLoadOptions { ContextLength = 16 });
        int calls = 0;
        double Probe() => 10.0 * ++calls;
        var log = new StringWriter();
        var rows = EndToEndBench.Run(model, "stories260k", model.WeightFormat, 1, [], 4, 3, new MachineLimits(100, 100), log, Probe);

        Assert.Equal(4, calls);
        var reps = log.ToString().Split('\n').Where(l => l.Contains("tg rep:")).ToArray();
        Assert.Equal(3, reps.Length);
        double expected = 0;
        for (int i = 0; i < 3; i++)
        {
            var m = Regex.Match(reps[i], @"tg rep: ([\d.]+) tok/s .* probes of ([\d.]+) before and ([\d.]+) GB/s after, mean ([\d.]+)");
            Assert.True(m.Success, reps[i]);
            double tps = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            Assert.Equal(10.0 * (i + 1), double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture));
            Assert.Equal(10.0 * (i + 2), double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture));
            Assert.Equal(10.0 * i + 15, double.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture));
            expected += tps * model.WeightBytesPerToken / 1e9 / (10.0 * i + 15) / 3;
        }
        var tg = Assert.Single(rows);
        Assert.Equal("tg4", tg.Test);
        Assert.InRange(tg.RooflineFraction!.Value, expected * 0.99, expected * 1.01);
    }
}
