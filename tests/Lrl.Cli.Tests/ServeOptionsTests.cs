using System.Net;
using System.Text;
using System.Text.Json;

namespace Lrl.Cli.Tests;

/// <summary>A server started with --api-key, --cors and --template.</summary>
public sealed class SecuredServerProcess : ServerProcess
{
    public const string Key = "s3cret-key";
    public const string Origin = "http://localhost:5173";
    protected override string[] ExtraArgs => ["--api-key", Key, "--cors", Origin, "--template", "chatml"];
}

/// <summary>`lrlrun serve` options a deployment needs: API key, CORS, chat template; OpenAI penalties and logit bias.</summary>
public sealed class ServeOptionsTests(SecuredServerProcess server) : IClassFixture<SecuredServerProcess>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task<(HttpStatusCode Status, JsonElement Json, HttpResponseMessage Response)> PostAsync(string path, string body, string? key = SecuredServerProcess.Key, string? origin = null)
    {
        server.Start();
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        if (key is not null) request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        if (origin is not null) request.Headers.Add("Origin", origin);
        var response = await server.Http.SendAsync(request, Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        return (response.StatusCode, text.Length > 0 ? JsonDocument.Parse(text).RootElement.Clone() : default, response);
    }

    private const string Greedy = """{"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}""";

    [Fact]
    public async Task RequestsWithoutTheRightKeyAre401_HealthStaysOpen()
    {
        var (missing, json, response) = await PostAsync("/v1/completions", Greedy, key: null);
        Assert.Equal(HttpStatusCode.Unauthorized, missing);
        Assert.Equal("authentication_error", json.GetProperty("error").GetProperty("type").GetString());
        Assert.Contains("Bearer", response.Headers.WwwAuthenticate.ToString());
        var (wrong, _, _) = await PostAsync("/v1/completions", Greedy, key: "s3cret-kez");
        Assert.Equal(HttpStatusCode.Unauthorized, wrong);
        var (ok, okJson, _) = await PostAsync("/v1/completions", Greedy);
        Assert.Equal(HttpStatusCode.OK, ok);
        Assert.NotEmpty(okJson.GetProperty("choices")[0].GetProperty("text").GetString()!);
        Assert.Equal(HttpStatusCode.OK, (await server.Http.GetAsync("/health", Ct)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await server.Http.GetAsync("/v1/models", Ct)).StatusCode);
    }

    [Fact]
    public async Task CorsPreflightAndHeadersForTheAllowedOriginOnly()
    {
        server.Start();
        using var preflight = new HttpRequestMessage(HttpMethod.Options, "/v1/chat/completions");
        preflight.Headers.Add("Origin", SecuredServerProcess.Origin);
        preflight.Headers.Add("Access-Control-Request-Method", "POST");
        preflight.Headers.Add("Access-Control-Request-Headers", "authorization, content-type");
        var r = await server.Http.SendAsync(preflight, Ct);
        Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        Assert.Equal(SecuredServerProcess.Origin, r.Headers.GetValues("Access-Control-Allow-Origin").Single());
        Assert.Contains("POST", r.Headers.GetValues("Access-Control-Allow-Methods").Single());
        Assert.Contains("authorization", r.Headers.GetValues("Access-Control-Allow-Headers").Single());
        var (status, _, response) = await PostAsync("/v1/completions", Greedy, origin: SecuredServerProcess.Origin);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(SecuredServerProcess.Origin, response.Headers.GetValues("Access-Control-Allow-Origin").Single());
        var (_, _, other) = await PostAsync("/v1/completions", Greedy, origin: "http://evil.example");
        Assert.False(other.Headers.Contains("Access-Control-Allow-Origin"));
    }

    [Fact]
    public async Task TheTemplateOptionFormatsChatRequests()
    {
        server.Start();
        Assert.Contains("chat template chatml", server.Stderr);
        var (status, json, _) = await PostAsync("/v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        // "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" in stories260k's byte-fallback vocabulary is dozens of tokens.
        Assert.True(json.GetProperty("usage").GetProperty("prompt_tokens").GetInt32() > 20);
    }

    [Fact]
    public async Task PenaltiesAndLogitBiasChangeTheGreedyOutput()
    {
        var (_, plain, _) = await PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "ignore_eos": true}""");
        var plainText = plain.GetProperty("choices")[0].GetProperty("text").GetString()!;
        var (s1, penalized, _) = await PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "ignore_eos": true, "frequency_penalty": 2, "presence_penalty": 2}""");
        Assert.Equal(HttpStatusCode.OK, s1);
        Assert.NotEqual(plainText, penalized.GetProperty("choices")[0].GetProperty("text").GetString());
        // Ban the first generated token: the greedy continuation must start differently.
        var (_, tokens, _) = await PostAsync("/v1/completions", """{"prompt": "Once upon a time", "max_tokens": 1, "temperature": 0}""");
        var first = tokens.GetProperty("choices")[0].GetProperty("text").GetString()!;
        var tok = Lrl.Tokenization.LrlTokenizer.Load(CliRunner.Model("stories260k"));
        int firstId = tok.Encode("Once upon a time" + first, false)[tok.Encode("Once upon a time", false).Length];
        var (s2, banned, _) = await PostAsync("/v1/completions", "{\"prompt\": \"Once upon a time\", \"max_tokens\": 1, \"temperature\": 0, \"logit_bias\": {\"" + firstId + "\": -100}}");
        Assert.Equal(HttpStatusCode.OK, s2);
        Assert.NotEqual(first, banned.GetProperty("choices")[0].GetProperty("text").GetString());
    }
}

/// <summary>A server with a KV cache budget that holds one first-size state and a half (stories260k, two slots).</summary>
public sealed class BudgetedServerProcess : ServerProcess
{
    protected override string[] ExtraArgs
    {
        get
        {
            using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
            long each = ((Lrl.Models.ModelBase)model.Model).StateBytes(1);
            return ["--parallel", "2", "--kv-memory", $"{(each + each / 2) / 1024}K"];
        }
    }
}

/// <summary>`serve --kv-memory`: requests that fit run; one whose cache could outgrow the budget is a 400 naming it.</summary>
public sealed class ServeKvBudgetTests(BudgetedServerProcess server) : IClassFixture<BudgetedServerProcess>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task<(HttpStatusCode Status, JsonElement Json)> PostAsync(string body)
    {
        server.Start();
        using var response = await server.Http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
    }

    [Fact]
    public async Task ARequestThatCouldOutgrowTheBudgetIsA400_OthersRun()
    {
        var (status, json) = await PostAsync("""{"prompt": "Once upon a time", "max_tokens": 100000, "temperature": 0}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        var message = json.GetProperty("error").GetProperty("message").GetString()!;
        Assert.Contains("--kv-memory", message);
        Assert.Contains("max_tokens", message);
        Assert.Contains("KV cache", server.Stderr); // the startup line states the budget
        var ok = await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => PostAsync("""{"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}""")));
        Assert.All(ok, r => Assert.Equal(HttpStatusCode.OK, r.Status));
        Assert.All(ok, r => Assert.Equal(ok[0].Json.GetProperty("choices")[0].GetProperty("text").GetString(), r.Json.GetProperty("choices")[0].GetProperty("text").GetString()));
    }

    [Theory]
    [InlineData("1048576", 1L << 20)]
    [InlineData("512M", 512L << 20)]
    [InlineData("1.5G", 3L << 29)]
    [InlineData("4GiB", 4L << 30)]
    [InlineData("64kb", 64L << 10)]
    [InlineData("0", 0L)]
    public void SizesParse(string text, long bytes) => Assert.Equal(bytes, ModelVerbBase.ParseBytes(text, "kv-memory"));

    [Theory]
    [InlineData("12X")]
    [InlineData("-1G")]
    [InlineData("G")]
    [InlineData("1e30T")]
    [InlineData("NaN")]
    public void BadSizesAreErrorsNamingTheOption(string text) =>
        Assert.Contains("--kv-memory", Assert.Throws<LrlException>(() => ModelVerbBase.ParseBytes(text, "kv-memory")).Message);
}
