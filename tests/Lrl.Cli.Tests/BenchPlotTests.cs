using Lrl.Bench;

namespace Lrl.Cli.Tests;

/// <summary>`lrlrun bench --plot`: a PNG or SVG chart with both tests on their own axes.</summary>
public class BenchPlotTests
{
    private static readonly BenchResult[] Rows =
    [
        new("SmolLM2-135M", "Q4", "cpu", 2, "pp128", 128, 3, 742.4, 21.5, null, null, 180, 0.55),
        new("SmolLM2-135M", "Q4", "cpu", 2, "pp512", 512, 3, 701.2, 12.0, null, null, 170, 0.52),
        new("SmolLM2-135M", "Q4", "cpu", 2, "tg128", 128, 3, 341.4, 30.1, 37.6, 1.19, null, null),
    ];

    [Fact]
    public void PngAndSvgAreWrittenAtomically()
    {
        var dir = Directory.CreateTempSubdirectory("lrl-plot").FullName;
        var png = Path.Combine(dir, "bench.png");
        BenchPlot.Save(Rows, "lrlrun bench: SmolLM2-135M, Q4, cpu, 2 threads", png);
        var bytes = File.ReadAllBytes(png);
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], bytes[..4]);
        var svg = Path.Combine(dir, "bench.svg");
        BenchPlot.Save(Rows, "title", svg);
        Assert.Contains("<svg", File.ReadAllText(svg));
        Assert.Equal(["bench.png", "bench.svg"], Directory.GetFiles(dir).Select(f => Path.GetFileName(f)!).Order().ToArray());
        Assert.Throws<LrlException>(() => BenchPlot.Save(Rows, "title", Path.Combine(dir, "bench.txt")));
    }

    [Fact]
    public void GenerationHasItsOwnAxisAndLabelsArePlainNumbers()
    {
        var plot = BenchPlot.Build(Rows, "t");
        Assert.Equal(2, plot.GetPlottables().OfType<ScottPlot.Plottables.BarPlot>().Count());
        var tg = plot.GetPlottables().OfType<ScottPlot.Plottables.BarPlot>().Last();
        Assert.Same(plot.Axes.Right, tg.Axes.YAxis);
        Assert.Equal("1,234,567", BenchPlot.Format(1234567));
        Assert.Equal("341", BenchPlot.Format(341.4));
        Assert.Equal("37.6", BenchPlot.Format(37.6));
        Assert.Equal("0.05", BenchPlot.Format(0.05));
    }

    [Fact]
    public void BenchVerbWritesThePlot()
    {
        var png = Path.Combine(Directory.CreateTempSubdirectory("lrl-plot").FullName, "b.png");
        var r = CliRunner.Run("bench", "--model", CliRunner.Model("stories260k"), "-p", "16", "-n", "8", "-r", "1", "--plot", png);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.True(new FileInfo(png).Length > 1000);
    }
}
