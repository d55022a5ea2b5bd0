namespace Lrl.Cli.Tests;

/// <summary>`bench serve`: the in-process server under the bounded load generator, batched and serial, with a KV budget.</summary>
public sealed class BenchServeTests
{
    [Fact]
    public void BenchServeTimesBothModesAndHonoursAKvBudget()
    {
        var model = CliRunner.Model("stories260k");
        var r = CliRunner.Run("bench", "serve", "--model", model, "--streams", "1,4", "-p", "8", "-n", "8", "--threads", "1", "--kv-memory", "2M");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var rows = r.Stdout.Split('\n').Where(l => l.StartsWith("| batched |") || l.StartsWith("| serial |")).ToArray();
        Assert.Equal(4, rows.Length);
        foreach (var row in rows)
        {
            var cells = row.Split('|', StringSplitOptions.TrimEntries);
            Assert.Equal("0", cells[^2]); // failed requests
            Assert.True(double.Parse(cells[6], System.Globalization.CultureInfo.InvariantCulture) > 0, row);
        }
        var bad = CliRunner.Run("bench", "serve", "--model", model, "--streams", "2", "--kv-memory", "lots");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("--kv-memory", bad.Stderr);
    }
}
