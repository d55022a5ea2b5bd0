using System.Globalization;

namespace Lrl.Cli.Tests;

/// <summary>`bench --memory`: the folder's size and the process's resident memory after loading, a prompt and decoding.</summary>
public class BenchMemoryTests
{
    [Fact]
    public void MemoryReportsResidentSizesPerStage()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("reads /proc/self/status");
        var r = CliRunner.Run("bench", "--model", CliRunner.Model("stories260k"), "--memory", "-p", "12", "-n", "6");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("model folder:", r.Stdout);
        var rows = r.Stdout.Split('\n').Where(l => l.StartsWith("| ") && !l.StartsWith("| stage") && !l.StartsWith("| ---")).ToArray();
        Assert.Equal(["loaded", "prompt of 12", "6 decoded"], rows.Select(l => l.Split('|')[1].Trim()));
        foreach (var row in rows)
        {
            var v = row.Split('|', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(x => double.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            Assert.True(v[0] > 10 && v[1] >= v[0] && v[2] > 0 && v[3] > 0, row); // resident, peak ≥ resident, file-backed, anonymous
        }
        // Loading maps the weights; nothing is probed or preallocated for timings.
        Assert.DoesNotContain("probing", r.Stderr);
    }
}
