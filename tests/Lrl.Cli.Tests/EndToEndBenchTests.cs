using System.Globalization;
using System.Text.RegularExpressions;
using Lrl.Bench;
using Lrl.Cpu;
using Lrl.Models;

namespace Lrl.Cli.Tests;

public class EndToEndBenchTests
{
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
