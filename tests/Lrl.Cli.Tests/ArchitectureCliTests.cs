namespace Lrl.Cli.Tests;

/// <summary>`lrlrun generate` end to end on the non-Llama architectures, with their tokenizers.</summary>
public class ArchitectureCliTests
{
    private static int[] Ids(CliRunner.Result r) =>
        r.Stderr.Split('\n').Single(l => l.StartsWith("ids: "))[5..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();

    [Fact]
    public void Gpt2WithWordLevelVocabularyReproducesTheGreedyIds()
    {
        foreach (var p in CliRunner.Reference("capp-gpt2-tiny").GetProperty("prompts").EnumerateArray())
        {
            var prompt = string.Join(" ", p.GetProperty("input_tokens").EnumerateArray().Select(e => e.GetString()));
            var expected = p.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var r = CliRunner.Run("generate", "--model", CliRunner.Model("capp-gpt2-tiny"), "--prompt", prompt,
                "--temperature", "0", "--ignore-eos", "--max-tokens", expected.Length.ToString(), "--ids");
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.Equal(expected, Ids(r));
            Assert.StartsWith(string.Join(" ", p.GetProperty("greedy_tokens").EnumerateArray().Take(2).Select(e => e.GetString())), r.Stdout);
        }
    }

    [Theory]
    [InlineData("rwkv-tiny-5v2-730K")]
    [InlineData("rwkv-tiny-7v0-834K")]
    public void RwkvWithByteVocabularyPredictsRwkvCppsTopToken(string name)
    {
        var reference = CliRunner.Reference(name);
        var r = CliRunner.Run("generate", "--model", CliRunner.Model(name), "--prompt", reference.GetProperty("input_text").GetString()!,
            "--temperature", "0", "--ignore-eos", "--max-tokens", "24", "--ids");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var ids = Ids(r);
        Assert.Equal(24, ids.Length);
        Assert.Equal(reference.GetProperty("top5_next")[0].GetProperty("id").GetInt32(), ids[0]);
    }
}

/// <summary>Device choice from the command line.</summary>
public class DeviceCliTests
{
    [Fact]
    public void CudaWithoutAGpuIsAClearErrorAndAutoFallsBackToTheCpu()
    {
        if (Lrl.Gpu.GpuBackend.IsCudaAvailable()) Assert.Skip("a CUDA device is present");
        var model = CliRunner.Model("stories260k");
        var r = CliRunner.Run("generate", "--model", model, "--prompt", "Once", "--device", "cuda", "--max-tokens", "3");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("no CUDA device", r.Stderr);
        r = CliRunner.Run("generate", "--model", model, "--prompt", "Once", "--device", "auto", "--max-tokens", "3", "--temperature", "0");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("backend: cpu", r.Stderr);
        r = CliRunner.Run("generate", "--model", model, "--prompt", "Once", "--device", "tpu");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--device 'tpu'", r.Stderr);
    }
}
