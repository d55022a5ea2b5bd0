namespace Lrl.Cli.Tests;

/// <summary>The command line as a terminal user meets it: help and version on stdout, typos answered with the closest match.</summary>
public class CommandLineTests
{
    [Theory]
    [InlineData("--help")]
    [InlineData("help")]
    public void HelpListsTheVerbsOnStdout(string arg)
    {
        var r = CliRunner.Run(arg);
        Assert.Equal(0, r.ExitCode);
        foreach (var verb in new[] { "generate", "chat", "serve", "tokenize", "info", "bench", "quantize", "perplexity", "pull", "synth" })
            Assert.Contains(verb, r.Stdout);
        Assert.Equal("", r.Stderr);
    }

    [Theory]
    [InlineData("generate", "--top-k")]
    [InlineData("serve", "--port")]
    [InlineData("tokenize", "--stats")]
    public void VerbHelpListsOptionsAndExamples(string verb, string option)
    {
        foreach (var args in new[] { new[] { verb, "--help" }, new[] { "help", verb } })
        {
            var r = CliRunner.Run(args);
            Assert.Equal(0, r.ExitCode);
            Assert.Contains(option, r.Stdout);
            Assert.Contains("Examples:", r.Stdout);
            Assert.Contains($"lrlrun {verb} ", r.Stdout);
        }
    }

    [Theory]
    [InlineData("--version")]
    [InlineData("version")]
    public void VersionOnStdout(string arg)
    {
        var r = CliRunner.Run(arg);
        Assert.Equal(0, r.ExitCode);
        Assert.Matches(@"^lrlrun \d+\.\d+\.\d+", r.Stdout);
    }

    [Fact]
    public void UnknownVerbSuggestsTheClosestAndListsTheVerbs()
    {
        var r = CliRunner.Run("genrate", "--model", "x");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("Did you mean 'generate'?", r.Stderr);
        Assert.Contains("tokenize", r.Stderr);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }

    [Fact]
    public void UnknownOptionIsOneLineWithDidYouMean()
    {
        var r = CliRunner.Run("generate", "--model", "x", "--prompt", "hi", "--top_k", "3");
        Assert.Equal(2, r.ExitCode);
        Assert.Single(r.Stderr.Trim().Split('\n'));
        Assert.Contains("'--top_k'", r.Stderr);
        Assert.Contains("Did you mean '--top-k'?", r.Stderr);
        var far = CliRunner.Run("generate", "--model", "x", "--prompt", "hi", "--zzzzzz");
        Assert.Equal(2, far.ExitCode);
        Assert.DoesNotContain("Did you mean", far.Stderr);
    }

    /// <summary>A value of the wrong kind names the option, the value as typed, and what it must be.</summary>
    [Theory]
    [InlineData("--lora-precision", "bogus", "'bogus' is not one of auto, asstored, int8")]
    [InlineData("-n", "abc", "--max-tokens: 'abc' is not a whole number")]
    [InlineData("--temperature", "warm", "--temperature: 'warm' is not a number")]
    public void BadValueNamesTheOptionTheValueAndWhatItMustBe(string option, string value, string expected)
    {
        var r = CliRunner.Run("generate", "--model", "x", "--prompt", "hi", option, value);
        Assert.Equal(2, r.ExitCode);
        Assert.Single(r.Stderr.Trim().Split('\n'));
        Assert.Contains(expected, r.Stderr);
    }

    [Fact]
    public void MissingRequiredOptionNamesIt()
    {
        var r = CliRunner.Run("generate", "--prompt", "hi");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("model", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }
}
