using System.Text.Json;

namespace Lrl.Cli.Tests;

/// <summary>`lrlrun synth` and `lrlrun bench` on a tiny preset (the real presets are hundreds of MB).</summary>
public sealed class SynthBenchTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("lrl-synth").FullName;
    private readonly Dictionary<string, string> _env;

    public SynthBenchTests()
    {
        var presets = Directory.CreateDirectory(Path.Combine(_dir, "presets")).FullName;
        File.WriteAllText(Path.Combine(presets, "Tiny.json"), """
            {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 256,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2}
            """);
        _env = new() { ["LRL_PRESETS"] = presets, ["LRL_CACHE"] = Path.Combine(_dir, "cache") };
    }

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    [Fact]
    public void SynthWritesALoadableCheckpointThatGenerates()
    {
        var outDir = Path.Combine(_dir, "tiny-bf16");
        var s = CliRunner.RunWith(_env, "synth", "--preset", "Tiny", "--dtype", "bf16", "--out", outDir);
        Assert.True(s.ExitCode == 0, s.Stderr);
        var info = CliRunner.Run("info", "--model", outDir);
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Contains("BF16", info.Stdout);
        var g = CliRunner.Run("generate", "--model", outDir, "--prompt", "abc", "--max-tokens", "5", "--temperature", "0", "--ignore-eos", "--ids");
        Assert.True(g.ExitCode == 0, g.Stderr);
        Assert.Equal(5, g.Stderr.Split('\n').Single(l => l.StartsWith("ids: "))[5..].Trim().Split(' ').Length);
    }

    [Fact]
    public void BenchReportsRooflineAsJson()
    {
        var r = CliRunner.RunWith(_env, "bench", "--preset", "Tiny", "--dtype", "f16", "-p", "16", "-n", "8", "-r", "2", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var doc = JsonDocument.Parse(r.Stdout);
        var text = doc.RootElement.GetRawText();
        Assert.Contains("pp16", text);
        Assert.Contains("tg8", text);
        Assert.Contains("roofline", text, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void StaleCachedCheckpointIsWrittenAgain()
    {
        // A cached checkpoint from an older lrlrun: config without the version (and tokenizer) fields.
        var stale = Directory.CreateDirectory(Path.Combine(_dir, "cache", "synthetic", "Tiny-f16")).FullName;
        File.WriteAllText(Path.Combine(stale, "config.json"), "{\"architectures\": [\"LlamaForCausalLM\"]}");
        var r = CliRunner.RunWith(_env, "bench", "--preset", "Tiny", "--dtype", "f16", "-p", "8", "-n", "4", "-r", "1");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("older lrlrun", r.Stderr);
        var config = File.ReadAllText(Path.Combine(stale, "config.json"));
        Assert.Contains("lrl_synthetic_version", config);
        Assert.Contains("byte-level", config);
        Assert.True(File.Exists(Path.Combine(stale, "model.safetensors")));
    }

    [Fact]
    public void BadOptionsAreClearErrors()
    {
        var r = CliRunner.RunWith(_env, "synth", "--preset", "Tiny", "--dtype", "q3", "--out", Path.Combine(_dir, "x"));
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--dtype 'q3'", r.Stderr);
        r = CliRunner.RunWith(_env, "bench", "--preset", "Nope");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("Tiny", r.Stderr);
        r = CliRunner.Run("bench", "--model", _dir, "--preset", "Tiny");
        Assert.Equal(2, r.ExitCode);
        r = CliRunner.RunWith(_env, "bench", "--preset", "Tiny", "--dtype", "f16", "-p", "-3", "-n", "4", "-r", "1");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("-p -3", r.Stderr);
        r = CliRunner.RunWith(_env, "bench", "--preset", "Tiny", "--dtype", "f16", "-p", "0", "-n", "0");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("nothing to measure", r.Stderr);
        r = CliRunner.RunWith(_env, "bench", "--preset", "Tiny", "--dtype", "f16", "-p", "8", "-n", "-2");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("-n must be", r.Stderr);
    }

    [Fact]
    public void PromptSizeZeroSkipsPromptProcessing()
    {
        var r = CliRunner.RunWith(_env, "bench", "--preset", "Tiny", "--dtype", "f16", "-p", "0", "-n", "4", "-r", "1", "--csv");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.DoesNotContain(",pp", r.Stdout);
        Assert.Contains(",tg4,", r.Stdout);
    }
}
