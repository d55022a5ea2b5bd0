namespace Lrl.Cli.Tests;

/// <summary>`lrlrun info --check` scans every tensor.</summary>
public class InfoCheckTests
{
    [Fact]
    public void ACleanModelPassesTheCheck()
    {
        var r = CliRunner.Run("info", "--model", CliRunner.Model("stories260k"), "--check");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("every value of the", r.Stdout);
    }
}
