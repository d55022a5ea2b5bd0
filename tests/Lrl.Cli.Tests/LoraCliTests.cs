using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Lrl.Cli.Tests;

/// <summary>Two random PEFT adapters for stories260k in a temporary folder, shared by the LoRA CLI tests.</summary>
public sealed class LoraAdapters : IDisposable
{
    private readonly LoraFiles.TempDir _tmp = new();
    private readonly Lazy<(string A, string B)> _dirs;

    public LoraAdapters() => _dirs = new(() =>
    {
        var model = CliRunner.Model("stories260k");
        return (LoraFiles.Write(_tmp.Sub("lang-a"), model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 8, 16, seed: 21, magnitude: 0.6f),
                LoraFiles.Write(_tmp.Sub("lang-b"), model, ["q_proj", "v_proj"], 4, 8, seed: 22, magnitude: 0.8f));
    });

    public string A => _dirs.Value.A;
    public string B => _dirs.Value.B;
    public string Sub(string name) => _tmp.Sub(name);
    public void Dispose() => _tmp.Dispose();
}

/// <summary>`--lora` on generate and perplexity, `merge-lora`, and their errors.</summary>
public sealed class LoraCliTests(LoraAdapters adapters) : IClassFixture<LoraAdapters>
{
    private static string Ids(CliRunner.Result r)
    {
        Assert.True(r.ExitCode == 0, r.Stderr);
        return Regex.Match(r.Stderr, @"^ids: (.*)$", RegexOptions.Multiline).Groups[1].Value;
    }

    [Fact]
    public void GenerateWithAnAdapterEqualsTheMergedModel()
    {
        var model = CliRunner.Model("stories260k");
        string merged = adapters.Sub("merged-a");
        var m = CliRunner.Run("merge-lora", "--model", model, "--lora", adapters.A + ":0.7", "--out", merged, "--force");
        Assert.True(m.ExitCode == 0, m.Stderr);
        Assert.Contains("35 matrices merged", m.Stderr);
        string[] gen = ["generate", "--prompt", "Once upon a time", "-n", "40", "--temperature", "0", "--ids"];
        var baseIds = Ids(CliRunner.Run([.. gen, "--model", model]));
        var unmerged = CliRunner.Run([.. gen, "--model", model, "--lora", adapters.A + ":0.7"]);
        var mergedIds = Ids(CliRunner.Run([.. gen, "--model", merged]));
        Assert.Equal(mergedIds, Ids(unmerged));
        Assert.NotEqual(baseIds, mergedIds);
        Assert.Contains("lora: lang-a (r=8, 35 modules, scale 0.7)", unmerged.Stderr);
        // Two adapters stacked (comma-separated) equal both merged.
        string both = adapters.Sub("merged-ab");
        Assert.Equal(0, CliRunner.Run("merge-lora", "--model", model, "--lora", $"{adapters.A}:0.7,{adapters.B}", "--out", both, "--force").ExitCode);
        Assert.Equal(Ids(CliRunner.Run([.. gen, "--model", both])), Ids(CliRunner.Run([.. gen, "--model", model, "--lora", adapters.A + ":0.7", "--lora", adapters.B])));
    }

    [Fact]
    public void PerplexityReportsBitsPerByteWithAndWithoutTheAdapter()
    {
        var model = CliRunner.Model("stories260k");
        string text = adapters.Sub("story.txt");
        File.WriteAllText(text, string.Join(' ', Enumerable.Repeat("Once upon a time, there was a little girl named Lily. She liked to play in the park with her friends.", 12)));
        var r = CliRunner.Run("perplexity", "--model", model, "--file", text, "--lora", adapters.B, "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        using var b = JsonDocument.Parse(lines[0]);
        using var a = JsonDocument.Parse(lines[1]);
        Assert.Equal("base", b.RootElement.GetProperty("adapters").GetString());
        Assert.Equal("lora lang-b", a.RootElement.GetProperty("adapters").GetString());
        double bpbBase = b.RootElement.GetProperty("bits_per_byte").GetDouble(), bpbLora = a.RootElement.GetProperty("bits_per_byte").GetDouble();
        Assert.NotEqual(bpbBase, bpbLora, 3);
        // The adapter's figure is the merged model's; the base's is the plain run's.
        string merged = adapters.Sub("merged-b");
        Assert.Equal(0, CliRunner.Run("merge-lora", "--model", model, "--lora", adapters.B, "--out", merged, "--force").ExitCode);
        using var m = JsonDocument.Parse(CliRunner.Run("perplexity", "--model", merged, "--file", text, "--json").Stdout);
        Assert.Equal(bpbLora, m.RootElement.GetProperty("bits_per_byte").GetDouble(), 4);
        using var plain = JsonDocument.Parse(CliRunner.Run("perplexity", "--model", model, "--file", text, "--json").Stdout);
        Assert.Equal(bpbBase, plain.RootElement.GetProperty("bits_per_byte").GetDouble(), 6);
        var human = CliRunner.Run("perplexity", "--model", model, "--file", text, "--lora", adapters.B);
        Assert.Matches(@"bits per byte: base \d\.\d{4} → lora lang-b \d\.\d{4} \([+-]\d\.\d{4}\)", human.Stdout);
    }

    [Fact]
    public void BadLoraInputIsAOneLineError()
    {
        var model = CliRunner.Model("stories260k");
        var missing = CliRunner.Run("generate", "--model", model, "--prompt", "Hi", "-n", "2", "--lora", adapters.Sub("nope"));
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("adapter folder not found", missing.Stderr);
        var notAdapter = CliRunner.Run("generate", "--model", model, "--prompt", "Hi", "-n", "2", "--lora", model);
        Assert.Contains("adapter_config.json is missing", notAdapter.Stderr);
        var gpt2 = CliRunner.Run("generate", "--model", CliRunner.Model("capp-gpt2-tiny"), "--prompt", "a", "-n", "2", "--lora", adapters.A);
        Assert.NotEqual(0, gpt2.ExitCode);
        Assert.Contains("matches no linear module of GPT2LMHeadModel", gpt2.Stderr);
        var rwkv = CliRunner.Run("generate", "--model", CliRunner.Model("rwkv-tiny-5v2-730K"), "--prompt", "a", "-n", "2", "--lora", adapters.A);
        Assert.NotEqual(0, rwkv.ExitCode);
        Assert.Contains("supported for the Llama family and GPT-2", rwkv.Stderr);
        var badScale = CliRunner.Run("generate", "--model", model, "--prompt", "Hi", "-n", "2", "--lora", adapters.A + ":NaN");
        Assert.Contains("finite", badScale.Stderr);
        foreach (var r in new[] { missing, notAdapter, gpt2, rwkv, badScale })
            Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));

        string q = adapters.Sub("q8");
        Assert.Equal(0, CliRunner.Run("quantize", "--model", model, "--bits", "8", "--out", q, "--force").ExitCode);
        var quantBase = CliRunner.Run("merge-lora", "--model", q, "--lora", adapters.A, "--out", adapters.Sub("never"));
        Assert.NotEqual(0, quantBase.ExitCode);
        Assert.Contains("the base is quantized", quantBase.Stderr);
        Assert.False(Directory.Exists(adapters.Sub("never")));
        // A quantized base still takes the adapter unmerged.
        Assert.Equal(0, CliRunner.Run("generate", "--model", q, "--prompt", "Hi", "-n", "4", "--lora", adapters.A).ExitCode);
    }
}

/// <summary>A server with two adapters: --lora lang-a --lora lang-b:0.5.</summary>
public sealed class LoraServerProcess : ServerProcess
{
    public LoraAdapters Adapters { get; } = new();
    protected override string[] ExtraArgs => ["--lora", Adapters.A, "--lora", Adapters.B + ":0.5", "--parallel", "4"];
    public override void Dispose() { base.Dispose(); Adapters.Dispose(); }
}

/// <summary>`serve --lora`: /v1/models lists base and adapters; a request's 'model' picks one.</summary>
public sealed class LoraServeTests(LoraServerProcess server) : IClassFixture<LoraServerProcess>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task<(HttpStatusCode Status, JsonElement Json)> PostAsync(string body)
    {
        server.Start();
        using var response = await server.Http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        using var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct));
        return (response.StatusCode, doc.RootElement.Clone());
    }

    private static string Greedy(string model) =>
        $$"""{"model": "{{model}}", "prompt": "Once upon a time", "max_tokens": 30, "temperature": 0}""";

    [Fact]
    public async Task ModelFieldPicksTheAdapter()
    {
        server.Start();
        var models = JsonDocument.Parse(await server.Http.GetStringAsync("/v1/models", Ct)).RootElement.GetProperty("data");
        Assert.Equal(["stories260k", "lang-a", "lang-b"], models.EnumerateArray().Select(m => m.GetProperty("id").GetString()!).ToArray());
        Assert.Equal("stories260k", models[1].GetProperty("parent").GetString());
        Assert.Equal(0.5, models[2].GetProperty("lora").GetProperty("scale").GetDouble());

        var model = CliRunner.Model("stories260k");
        string Cli(params string[] extra) => CliRunner.Run(["generate", "--model", model, "--prompt", "Once upon a time", "-n", "30", "--temperature", "0", .. extra]).Stdout.TrimEnd('\n');
        // Concurrent requests for different adapters run in the same batched steps; each gets its own adapter.
        var tasks = new[] { "lang-a", "stories260k", "lang-b", "lang-a" }.Select(m => PostAsync(Greedy(m))).ToArray();
        var results = await Task.WhenAll(tasks);
        Assert.All(results, r => Assert.Equal(HttpStatusCode.OK, r.Status));
        string Text(int i) => results[i].Json.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.Equal(Cli("--lora", server.Adapters.A), Text(0));
        Assert.Equal(Cli(), Text(1));
        Assert.Equal(Cli("--lora", server.Adapters.B + ":0.5"), Text(2));
        Assert.Equal(Text(0), Text(3));
        Assert.NotEqual(Text(0), Text(1));

        var (status, error) = await PostAsync(Greedy("lang-c"));
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Contains("'lang-c' does not exist", error.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(HttpStatusCode.OK, (await server.Http.GetAsync("/v1/models/lang-b", Ct)).StatusCode);
    }
}
