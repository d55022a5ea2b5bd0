using System.Globalization;

namespace Lrl.Cli.Tests;

/// <summary>`bench --verify-cost`: k-row verification passes against one decode step, interleaved.</summary>
public class BenchVerifyCostTests
{
    /// <summary>
    /// `bench --lora-random 0,1`: the counts' repetitions interleave (one of each per round), one row per test and count,
    /// and the adapter's cost as the median of the per-round ratios.
    /// </summary>
    [Fact]
    public void LoraCountsInterleaveAndReportTheMedianRatio()
    {
        var bad = CliRunner.Run("bench", "--model", CliRunner.Model("stories260k"), "--lora-random", "0,1", "-r", "0", "-n", "4", "-t", "1");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("-r must be ≥ 1, got 0", bad.Stderr);
        Assert.DoesNotContain("Exception", bad.Stderr);

        var r = CliRunner.Run("bench", "--model", CliRunner.Model("stories260k"), "--lora-random", "0,1", "--lora-rank", "2",
                              "-p", "8", "-n", "8", "-r", "3", "-t", "1");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var rows = r.Stdout.Split('\n').Where(l => l.StartsWith("| ") && !l.StartsWith("| ---") && !l.StartsWith("| model")).ToArray();
        Assert.Equal(["pp8", "tg8", "pp8+lora1", "tg8+lora1"], rows.Select(l => l.Split('|')[5].Trim()));
        Assert.Equal(1, r.Stderr.Split('\n').Count(l => l.StartsWith("with 1 adapter(s)")));
        // The progress lines of the generation tests, in the order they ran: base and adapter alternating.
        var order = r.Stderr.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith("tg8") && l.Contains("tok/s")).Select(l => l.Split(':')[0]);
        Assert.Equal(["tg8", "tg8+lora1", "tg8", "tg8+lora1", "tg8", "tg8+lora1"], order);
        foreach (var test in new[] { "pp8", "tg8" })
        {
            var m = System.Text.RegularExpressions.Regex.Match(r.Stderr, $@"{test}\+lora1: ([\d.]+)x of {test} \(median of 3 interleaved rounds; ([\d.]+)-([\d.]+)\)");
            Assert.True(m.Success, r.Stderr);
            double med = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            double lo = double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), hi = double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture);
            Assert.True(lo <= med && med <= hi && lo > 0, m.Value);
        }
    }

    [Fact]
    public void VerifyCostTimesEachRowCountAgainstADecodeStep()
    {
        var r = CliRunner.Run("bench", "--model", CliRunner.Model("stories260k"), "--verify-cost", "1,3,8", "-p", "10", "-r", "1", "-t", "1");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var rows = r.Stdout.Split('\n').Where(l => l.StartsWith("| ") && !l.StartsWith("| ---") && !l.Contains("median")).ToArray();
        Assert.Equal(["decode step", "verify 1", "verify 3", "verify 8"], rows.Select(l => l.Split('|')[1].Trim()));
        foreach (var row in rows)
        {
            var v = row.Split('|', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(x => double.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            int k = row.Contains("verify") ? int.Parse(row.Split('|')[1].Trim()["verify ".Length..], CultureInfo.InvariantCulture) : 1;
            Assert.True(v[0] > 0 && v[1] > 0, row);                 // a median time and its ratio to the decode step
            Assert.Equal(v[0] / k, v[2], 0.011);                      // ms per row
        }
        Assert.DoesNotContain("probing", r.Stderr);
    }

    /// <summary>With --profile: each pass's ops (a verify pass of k rows makes each layer's calls once, as a decode step does).</summary>
    [Fact]
    public void VerifyCostWithProfileBreaksEachPassIntoOps()
    {
        var r = CliRunner.Run("bench", "--model", CliRunner.Model("stories260k"), "--verify-cost", "4", "-p", "10", "-r", "1", "-t", "1", "--profile");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var lines = r.Stdout.Split('\n');
        int decode = Array.FindIndex(lines, l => l.StartsWith("decode step, ", StringComparison.Ordinal));
        int verify = Array.FindIndex(lines, l => l.StartsWith("verify 4, ", StringComparison.Ordinal));
        Assert.True(decode > 0 && verify > decode, r.Stdout);
        double Calls(int from, string op) => double.Parse(lines.Skip(from + 2).TakeWhile(l => l.Length > 0).First(l => l.StartsWith(op, StringComparison.Ordinal))
                                                   .Split(' ', StringSplitOptions.RemoveEmptyEntries)[2], CultureInfo.InvariantCulture); // op, ms, calls, ...
        Assert.Equal(5, Calls(decode, "attention"));   // stories260k: 5 layers, one attention call each per pass
        Assert.Equal(5, Calls(verify, "attention"));
        Assert.Contains(lines.Skip(verify + 2).TakeWhile(l => l.Length > 0), l => l.StartsWith("download", StringComparison.Ordinal)); // every row's logits
    }

    [Theory]
    [InlineData("0")]
    [InlineData("65")]
    public void VerifyCostRejectsRowCountsOutOfRange(string k)
    {
        var r = CliRunner.Run("bench", "--model", CliRunner.Model("stories260k"), "--verify-cost", k, "-p", "4");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("--verify-cost rows must be in 1..64", r.Stderr);
    }

    [Fact]
    public void VerifyCostOnARecurrentModelSaysItCannotVerify()
    {
        var r = CliRunner.Run("bench", "--model", CliRunner.Model("rwkv-tiny-7v0-834K"), "--verify-cost", "2", "-p", "4");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("cannot be rewound", r.Stderr);
    }
}
