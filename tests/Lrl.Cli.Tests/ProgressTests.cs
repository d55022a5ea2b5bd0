namespace Lrl.Cli.Tests;

/// <summary>Progress output: a bar with percent, rate and ETA on a terminal, plain lines in a log, ended before results.</summary>
public class ProgressTests
{
    [Fact]
    public void TerminalLineHasBarPercentRateAndEta()
    {
        var w = new StringWriter();
        var bar = new ProgressBar("model.safetensors", bytes: true, w, terminal: true);
        var line = bar.Line(50L << 20, 200L << 20, 10 << 20, null, bar: true);
        Assert.Contains("[######..................]", line);
        Assert.Contains(" 25.0% 50.0 MiB/200.0 MiB", line);
        Assert.Contains("10.0 MiB/s", line);
        Assert.Contains("ETA 0:15", line);
        bar.Report(1, 4);
        bar.Done("done");
        Assert.StartsWith("\r", w.ToString());
        Assert.EndsWith("\r\u001b[Kdone" + Environment.NewLine, w.ToString());
    }

    [Fact]
    public void LogGetsAPlainLineEveryTenPercent()
    {
        var w = new StringWriter();
        var bar = new ProgressBar("windows", output: w, terminal: false);
        for (int i = 0; i <= 100; i++) bar.Report(i, 100);
        bar.Done();
        var lines = w.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(11, lines.Length);
        Assert.DoesNotContain('\r', w.ToString());
        Assert.All(lines, l => Assert.StartsWith("windows ", l));
    }

    [Fact]
    public void PerplexityEndsItsProgressBeforeTheResult()
    {
        var r = CliRunner.Run("perplexity", "--model", CliRunner.Model("stories260k"), "--file",
            Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "Lrl.Quant.Tests", "data", "heldout.txt"), "--context", "128", "--stride", "64");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.DoesNotContain('\r', r.Stderr); // not a terminal: plain lines
        Assert.Contains("perplexity", r.Stdout);
        Assert.All(r.Stderr.Split('\n').Where(l => l.StartsWith("windows")), l => Assert.DoesNotContain("perplexity", l));
    }
}
