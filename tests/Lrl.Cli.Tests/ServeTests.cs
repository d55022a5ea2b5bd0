using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Lrl.Cli.Tests;

/// <summary>One `lrlrun serve --port 0` process on stories260k, shared by the tests of <see cref="ServeTests"/>.</summary>
public class ServerProcess : IDisposable
{
    private readonly object _lock = new();
    private Process? _process;
    private readonly StringBuilder _stderr = new();
    public HttpClient Http { get; } = new() { Timeout = TimeSpan.FromSeconds(60) };

    /// <summary>Starts the server on first use (skipping the test when shared/ is missing) and returns its base address.</summary>
    public Uri Start()
    {
        var model = CliRunner.Model("stories260k");
        lock (_lock)
        {
            if (Http.BaseAddress is not null) return Http.BaseAddress;
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, StandardErrorEncoding = Encoding.UTF8 };
            foreach (var a in ((string[])[Path.Combine(AppContext.BaseDirectory, "lrlrun.dll"), "serve", "--model", model, "--port", "0", "--threads", "1", "--temperature", "0.7"]).Concat(ExtraArgs))
                psi.ArgumentList.Add(a);
            var listening = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
            _process = Process.Start(psi)!;
            _process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null) { listening.TrySetException(new Exception($"lrlrun serve exited:\n{Stderr}")); return; }
                lock (_stderr) _stderr.AppendLine(e.Data);
                var m = Regex.Match(e.Data, @"^lrlrun: listening on (http://\S+)$");
                if (m.Success) listening.TrySetResult(m.Groups[1].Value);
            };
            _process.BeginErrorReadLine();
            _process.OutputDataReceived += (_, _) => { };
            _process.BeginOutputReadLine();
            if (!listening.Task.Wait(TimeSpan.FromSeconds(30))) throw new TimeoutException($"lrlrun serve did not start:\n{Stderr}");
            Http.BaseAddress = new Uri(listening.Task.Result);
            return Http.BaseAddress;
        }
    }

    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

    /// <summary>The server's process id (after <see cref="Start"/>).</summary>
    public int ProcessId => _process?.Id ?? throw new InvalidOperationException("the server is not started");

    /// <summary>More `lrlrun serve` options for a fixture that needs them.</summary>
    protected virtual string[] ExtraArgs => [];

    public virtual void Dispose()
    {
        if (_process is { HasExited: false }) { _process.Kill(true); _process.WaitForExit(10_000); }
        _process?.Dispose();
        Http.Dispose();
    }
}

/// <summary>`lrlrun serve`: the OpenAI-compatible endpoints, streaming, chat, and 400s for bad requests.</summary>
public sealed class ServeTests(ServerProcess server) : IClassFixture<ServerProcess>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task<(HttpStatusCode Status, JsonElement Json)> PostAsync(string path, string body)
    {
        server.Start();
        using var response = await server.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"), Ct);
        var text = await response.Content.ReadAsStringAsync(Ct);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        using var doc = JsonDocument.Parse(text);
        return (response.StatusCode, doc.RootElement.Clone());
    }

    /// <summary>Posts a streaming request; returns the JSON of every data event (the last event must be [DONE]).</summary>
    private async Task<List<JsonElement>> StreamAsync(string path, string body)
    {
        server.Start();
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var raw = await response.Content.ReadAsStringAsync(Ct);
        var events = raw.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.All(events, e => Assert.StartsWith("data: ", e));
        Assert.Equal("data: [DONE]", events[^1]);
        return events[..^1].Select(e => { using var d = JsonDocument.Parse(e[6..]); return d.RootElement.Clone(); }).ToList();
    }

    private static string Greedy(string prompt, int n, string extra = "") =>
        $$"""{"model": "stories260k", "prompt": {{JsonSerializer.Serialize(prompt)}}, "max_tokens": {{n}}, "temperature": 0{{extra}}}""";

    private static string ReferenceText => CliRunner.Reference("stories260k").GetProperty("prompts")[0].GetProperty("greedy_text").GetString()!;

    [Fact]
    public async Task HealthAndModels()
    {
        server.Start();
        using var health = JsonDocument.Parse(await server.Http.GetStringAsync("/health", Ct));
        Assert.Equal("ok", health.RootElement.GetProperty("status").GetString());
        using var models = JsonDocument.Parse(await server.Http.GetStringAsync("/v1/models", Ct));
        Assert.Equal("list", models.RootElement.GetProperty("object").GetString());
        var m = Assert.Single(models.RootElement.GetProperty("data").EnumerateArray());
        Assert.Equal("stories260k", m.GetProperty("id").GetString());
        Assert.Equal("model", m.GetProperty("object").GetString());
    }

    [Fact]
    public async Task GreedyCompletionReproducesTheReferenceAndReportsUsage()
    {
        var (status, json) = await PostAsync("/v1/completions", Greedy("Once upon a time", 20));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", json.GetProperty("object").GetString());
        var choice = Assert.Single(json.GetProperty("choices").EnumerateArray());
        var text = choice.GetProperty("text").GetString()!;
        Assert.True(text.Length > 40, text);
        Assert.StartsWith(text, ReferenceText);
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        var usage = json.GetProperty("usage");
        Assert.Equal(5, usage.GetProperty("prompt_tokens").GetInt32()); // BOS + 4, as the reference's input_ids
        Assert.Equal(20, usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(25, usage.GetProperty("total_tokens").GetInt32());

        // The same prompt given as token ids gives the same text.
        var (_, byIds) = await PostAsync("/v1/completions", """{"prompt": [1, 403, 407, 261, 378], "max_tokens": 20, "temperature": 0}""");
        Assert.Equal(text, byIds.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    [Fact]
    public async Task StreamedChunksConcatenateToTheNonStreamedText()
    {
        var (_, whole) = await PostAsync("/v1/completions", Greedy("Once upon a time", 25));
        var chunks = await StreamAsync("/v1/completions", Greedy("Once upon a time", 25, """, "stream": true, "stream_options": {"include_usage": true}"""));
        var withChoices = chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0).ToList();
        Assert.True(withChoices.Count > 5);
        Assert.All(chunks, c => Assert.Equal("text_completion", c.GetProperty("object").GetString()));
        Assert.Single(chunks.Select(c => c.GetProperty("id").GetString()).Distinct());
        var text = string.Concat(withChoices.Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.Equal(whole.GetProperty("choices")[0].GetProperty("text").GetString(), text);
        Assert.Equal("length", withChoices[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.All(withChoices[..^1], c => Assert.Equal(JsonValueKind.Null, c.GetProperty("choices")[0].GetProperty("finish_reason").ValueKind));
        Assert.Equal(25, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task StopStringsEndWithFinishReasonStop()
    {
        var (_, one) = await PostAsync("/v1/completions", Greedy("Once upon a time", 60, """, "stop": "Lily" """));
        Assert.Equal(", there was a little girl named ", one.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal("stop", one.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        var (_, many) = await PostAsync("/v1/completions", Greedy("Once upon a time", 60, """, "stop": ["park", "girl"]"""));
        Assert.Equal(", there was a little ", many.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    [Fact]
    public async Task SeededSamplingIsReproducibleAndServerDefaultsApply()
    {
        const string body = """{"prompt": "Once upon a time", "max_tokens": 30, "temperature": 1.0, "top_k": 0, "top_p": 1, "min_p": 0, "seed": 1234}""";
        var (_, a) = await PostAsync("/v1/completions", body);
        var (_, b) = await PostAsync("/v1/completions", body);
        var text = a.GetProperty("choices")[0].GetProperty("text").GetString();
        Assert.Equal(text, b.GetProperty("choices")[0].GetProperty("text").GetString());
        var (_, other) = await PostAsync("/v1/completions", body.Replace("1234", "99"));
        Assert.NotEqual(text, other.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    [Fact]
    public async Task ChatCompletionStreamsTheSameTextItReturns()
    {
        const string messages = """ "messages": [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": [{"type": "text", "text": "Tell me about Lily."}]}] """;
        var (status, json) = await PostAsync("/v1/chat/completions", $$"""{{{messages}}, "max_tokens": 20, "temperature": 0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("chat.completion", json.GetProperty("object").GetString());
        var choice = json.GetProperty("choices")[0];
        Assert.Equal("assistant", choice.GetProperty("message").GetProperty("role").GetString());
        var content = choice.GetProperty("message").GetProperty("content").GetString()!;
        Assert.NotEmpty(content);
        Assert.Contains(choice.GetProperty("finish_reason").GetString(), new[] { "stop", "length" });
        Assert.True(json.GetProperty("usage").GetProperty("prompt_tokens").GetInt32() > 5);

        var chunks = await StreamAsync("/v1/chat/completions", $$"""{{{messages}}, "max_tokens": 20, "temperature": 0, "stream": true}""");
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString()));
        Assert.Equal("assistant", chunks[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        var streamed = string.Concat(chunks.Select(c => c.GetProperty("choices")[0].GetProperty("delta"))
            .Select(d => d.TryGetProperty("content", out var t) ? t.GetString() : ""));
        Assert.Equal(content, streamed);
        Assert.Equal(choice.GetProperty("finish_reason").GetString(), chunks[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task ConcurrentRequestsAreServedOneAtATimeAndAgree()
    {
        server.Start();
        var tasks = Enumerable.Range(0, 4).Select(_ => PostAsync("/v1/completions", Greedy("Once upon a time", 20))).ToArray();
        var results = await Task.WhenAll(tasks);
        var texts = results.Select(r => r.Json.GetProperty("choices")[0].GetProperty("text").GetString()).Distinct().ToList();
        Assert.Single(texts);
        Assert.StartsWith(texts[0]!, ReferenceText);
    }

    [Fact]
    public async Task AClientThatHangsUpMidStreamFreesTheServer()
    {
        server.Start();
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
               { Content = new StringContent(Greedy("Once upon a time", 400, """, "ignore_eos": true, "stream": true"""), Encoding.UTF8, "application/json") })
        using (var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(Ct));
            Assert.StartsWith("data: {", await reader.ReadLineAsync(Ct));
        } // hang up
        var (status, json) = await PostAsync("/v1/completions", Greedy("Once upon a time", 5));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.StartsWith(json.GetProperty("choices")[0].GetProperty("text").GetString()!, ReferenceText);
    }

    [Theory]
    [InlineData("/v1/completions", """{"prompt": "hi", "temperature": -1}""", "temperature")]
    [InlineData("/v1/completions", """{"prompt": "hi", "temperature": "hot"}""", "temperature")]
    [InlineData("/v1/completions", """{"prompt": "hi", "top_p": 1.5}""", "top_p")]
    [InlineData("/v1/completions", """{"prompt": "hi", "top_k": -2}""", "top_k")]
    [InlineData("/v1/completions", """{"prompt": "hi", "min_p": 2}""", "min_p")]
    [InlineData("/v1/completions", """{"prompt": "hi", "repeat_penalty": 0}""", "repeat_penalty")]
    [InlineData("/v1/completions", """{"prompt": "hi", "max_tokens": -1}""", "max_tokens")]
    [InlineData("/v1/completions", """{"prompt": "hi", "max_tokens": 2.5}""", "max_tokens")]
    [InlineData("/v1/completions", """{"prompt": "hi", "seed": "x"}""", "seed")]
    [InlineData("/v1/completions", """{"prompt": "hi", "stop": 5}""", "stop")]
    [InlineData("/v1/completions", """{"prompt": "hi", "stream": "yes"}""", "stream")]
    [InlineData("/v1/completions", """{"prompt": "hi", "n": 3}""", "n")]
    [InlineData("/v1/completions", """{"prompt": "hi", "frequency_penalty": 2.5}""", "frequency_penalty")]
    [InlineData("/v1/completions", """{"prompt": "hi", "presence_penalty": "x"}""", "presence_penalty")]
    [InlineData("/v1/completions", """{"prompt": "hi", "logit_bias": {"x": 1}}""", "logit_bias")]
    [InlineData("/v1/completions", """{"prompt": "hi", "logit_bias": {"5": 200}}""", "logit_bias")]
    [InlineData("/v1/chat/completions", """{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}""", "tools")]
    [InlineData("/v1/completions", """{"prompt": "hi", "logprobs": 5}""", "logprobs")]
    [InlineData("/v1/completions", """{"prompt": [1, 99999]}""", "prompt")]
    [InlineData("/v1/completions", """{"prompt": {"text": "hi"}}""", "prompt")]
    [InlineData("/v1/completions", """{"max_tokens": 5}""", "prompt")]
    [InlineData("/v1/completions", """{"prompt": "hi",""", "JSON")]
    [InlineData("/v1/completions", """[1, 2]""", "JSON object")]
    [InlineData("/v1/completions", "", "empty")]
    [InlineData("/v1/chat/completions", """{"prompt": "hi"}""", "messages")]
    [InlineData("/v1/chat/completions", """{"messages": []}""", "messages")]
    [InlineData("/v1/chat/completions", """{"messages": [{"content": "hi"}]}""", "messages[0].role")]
    [InlineData("/v1/chat/completions", """{"messages": [{"role": "user", "content": 7}]}""", "messages[0].content")]
    [InlineData("/v1/chat/completions", """{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "hi"}]}""", "messages[1].role")]
    [InlineData("/v1/chat/completions", """{"messages": [{"role": "user", "content": "hi"}], "temperature": -0.5}""", "temperature")]
    public async Task BadRequestsAre400sNamingTheField(string path, string body, string field)
    {
        var (status, json) = await PostAsync(path, body);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        var error = json.GetProperty("error");
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        Assert.Contains(field, error.GetProperty("message").GetString());
        Assert.DoesNotContain("   at ", json.GetRawText());
    }

    [Fact]
    public async Task APromptLongerThanTheContextIsA400()
    {
        var longPrompt = string.Concat(Enumerable.Repeat("The cat sat on the mat. ", 80));
        var (status, json) = await PostAsync("/v1/completions", Greedy(longPrompt, 5));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("prompt", json.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("context window holds 512", json.GetProperty("error").GetProperty("message").GetString());
        var (chatStatus, chat) = await PostAsync("/v1/chat/completions", $$"""{"messages": [{"role": "user", "content": "{{longPrompt}}"}]}""");
        Assert.Equal(HttpStatusCode.BadRequest, chatStatus);
        Assert.Equal("messages", chat.GetProperty("error").GetProperty("param").GetString());
    }

    [Fact]
    public async Task UnknownEndpointsAndMethodsAreJsonErrors()
    {
        server.Start();
        using var missing = await server.Http.GetAsync("/v1/engines", Ct);
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Contains("\"error\"", await missing.Content.ReadAsStringAsync(Ct));
        using var wrongMethod = await server.Http.GetAsync("/v1/completions", Ct);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, wrongMethod.StatusCode);
        Assert.Contains("\"error\"", await wrongMethod.Content.ReadAsStringAsync(Ct));
    }

    [Fact]
    public void APortInUseOrOutOfRangeIsAClearError()
    {
        var model = CliRunner.Model("stories260k");
        var busy = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        busy.Start();
        try
        {
            int port = ((IPEndPoint)busy.LocalEndpoint).Port;
            var r = CliRunner.Run("serve", "--model", model, "--port", port.ToString());
            Assert.Equal(2, r.ExitCode);
            Assert.Contains($"cannot listen on 127.0.0.1:{port}", r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr);
        }
        finally { busy.Stop(); }
        var range = CliRunner.Run("serve", "--model", model, "--port", "70000");
        Assert.Equal(2, range.ExitCode);
        Assert.Contains("--port", range.Stderr);
    }
}
