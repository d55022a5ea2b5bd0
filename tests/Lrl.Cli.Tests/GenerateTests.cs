namespace Lrl.Cli.Tests;

/// <summary>`lrlrun generate` and `lrlrun info` end to end, on the real checkpoints.</summary>
public class GenerateTests
{
    public static TheoryData<string> Models => new() { "stories260k", "stories260k-fp16", "stories260k-bf16-sharded" };

    [Theory, MemberData(nameof(Models))]
    public void GreedyGenerationReproducesTheReferenceIdsAndText(string name)
    {
        var dir = CliRunner.Model(name);
        foreach (var p in CliRunner.Reference(name).GetProperty("prompts").EnumerateArray())
        {
            var expectedIds = p.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var r = CliRunner.Run("generate", "--model", dir, "--prompt", p.GetProperty("text").GetString()!,
                "--temperature", "0", "--ignore-eos", "--max-tokens", expectedIds.Length.ToString(), "--ids");
            Assert.True(r.ExitCode == 0, r.Stderr);
            var idsLine = r.Stderr.Split('\n').Single(l => l.StartsWith("ids: "));
            Assert.Equal(expectedIds, idsLine[5..].Trim().Split(' ').Select(int.Parse).ToArray());
            Assert.Equal(p.GetProperty("greedy_text").GetString()!.TrimEnd('\n'), r.Stdout.TrimEnd('\n'));
            Assert.Matches(@"prompt: \d+ tokens, [\d.]+ tok/s \| generated: \d+ tokens, [\d.]+ tok/s", r.Stderr);
        }
    }

    [Fact]
    public void SeededSamplingIsReproducible()
    {
        var dir = CliRunner.Model("stories260k");
        string[] args = ["generate", "--model", dir, "--prompt", "Once upon a time", "--max-tokens", "30",
            "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.02", "--repeat-penalty", "1.1", "--seed", "7"];
        var a = CliRunner.Run(args);
        var b = CliRunner.Run(args);
        Assert.Equal(0, a.ExitCode);
        Assert.Equal(a.Stdout, b.Stdout);
        Assert.True(a.Stdout.Length > 20);
    }

    [Fact]
    public void StopStringEndsGenerationBeforeIt()
    {
        var dir = CliRunner.Model("stories260k");
        var r = CliRunner.Run("generate", "--model", dir, "--prompt", "Once upon a time", "--temperature", "0",
            "--max-tokens", "60", "--stop", "Lily");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(", there was a little girl named ", r.Stdout.TrimEnd('\n'));
        Assert.Contains("finish: StopString", r.Stderr);
    }

    [Fact]
    public void PromptLongerThanTheContextIsAClearError()
    {
        var dir = CliRunner.Model("stories260k");
        var longPrompt = string.Concat(Enumerable.Repeat("The cat sat on the mat. ", 40));
        var r = CliRunner.Run("generate", "--model", dir, "--prompt", longPrompt, "--context", "64");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("context window holds 64", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);

        var t = CliRunner.Run("generate", "--model", dir, "--prompt", longPrompt, "--context", "64", "--truncate", "--max-tokens", "5", "--temperature", "0");
        Assert.Equal(0, t.ExitCode);
    }

    [Theory]
    [InlineData("--temperature", "-1", "--temperature")]
    [InlineData("--top-p", "1.5", "--top-p")]
    [InlineData("--device", "tpu", "--device 'tpu'")]
    [InlineData("--max-tokens", "-3", "--max-tokens")]
    public void BadOptionValuesNameTheOption(string option, string value, string expected)
    {
        var dir = CliRunner.Model("stories260k");
        var r = CliRunner.Run("generate", "--model", dir, "--prompt", "hi", option, value);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(expected, r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void MissingModelFolderIsAClearError()
    {
        var r = CliRunner.Run("generate", "--model", "/nonexistent/model", "--prompt", "hi");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("/nonexistent/model", r.Stderr);
    }

    [Fact]
    public void InfoPrintsArchitectureTensorsDtypesAndParameters()
    {
        var r = CliRunner.Run("info", "--model", CliRunner.Model("stories260k-bf16-sharded"));
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("LlamaForCausalLM", r.Stdout);
        Assert.Contains("BF16", r.Stdout);
        Assert.Contains("model.layers.4.mlp.down_proj.weight", r.Stdout);
        Assert.Matches(@"parameters:\s+[\d,]+", r.Stdout);
        Assert.Contains("model-00002-of-00002.safetensors", r.Stdout);
    }
}
