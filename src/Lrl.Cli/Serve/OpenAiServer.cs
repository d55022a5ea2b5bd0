using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Lrl.Cli.Serve;

/// <summary>How <see cref="OpenAiServer"/> listens and what a request gets when it leaves an option out.</summary>
public sealed record ServerOptions
{
    /// <summary>IP address or host name to bind ("127.0.0.1", "0.0.0.0", "localhost", "::").</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 = any free port (see <see cref="OpenAiServer.Address"/>).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>
    /// The base model's id in /v1/models. Without adapters, requests may name any model (there is one); with adapters,
    /// a request's 'model' picks the base or an adapter and an unknown id is a 404.
    /// </summary>
    public string ModelId { get; init; } = "model";
    /// <summary>LoRA adapters served over the base, by model id (listed in /v1/models; a request picks one by 'model').</summary>
    public IReadOnlyDictionary<string, Lrl.Models.LoraAdapter> Adapters { get; init; } = new Dictionary<string, Lrl.Models.LoraAdapter>();
    /// <summary>Generation options for fields a request omits.</summary>
    public GenerationOptions Defaults { get; init; } = new();
    /// <summary>Where one line per request is logged; null = nowhere.</summary>
    public TextWriter? Log { get; init; }
    /// <summary>The chat template for chat requests; null = the one the model declares.</summary>
    public ChatTemplate? Template { get; init; }
    /// <summary>Origins browsers may call from (CORS); "*" allows any; empty = no CORS headers.</summary>
    public IReadOnlyList<string> CorsOrigins { get; init; } = [];
    /// <summary>When set, every request but /health and CORS preflights needs "Authorization: Bearer KEY".</summary>
    public string? ApiKey { get; init; }
    /// <summary>Completion requests admitted at once (running or waiting); more are answered 503 with Retry-After.</summary>
    public int QueueLimit { get; init; } = 16;
    /// <summary>Largest request body in bytes (a larger one is a 413 before it is read).</summary>
    public long MaxRequestBytes { get; init; } = 8 << 20;
}

/// <summary>
/// An OpenAI-compatible HTTP server over one <see cref="LrlModel"/> (ASP.NET Core minimal APIs on Kestrel):
/// GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions, with Server-Sent-Events streaming.
/// With continuous batching (the model loaded with Parallel &gt; 1) concurrent requests decode together in the model's
/// decode loop; otherwise they run one at a time. A client that disconnects cancels its generation.
/// Errors are OpenAI-style JSON: 400 for requests the client can fix, never a stack trace.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    private readonly LrlModel _model;
    private readonly ServerOptions _options;
    private readonly ChatTemplate _template;
    private readonly SemaphoreSlim _gate = new(1, 1);
    // Sessions kept between requests, picked by shared prompt prefix (a repeated system prompt runs once).
    private readonly SessionPool _sessions;
    // Bounds the requests holding memory (body, tokens, output) at once; taken before the body is read.
    private readonly SemaphoreSlim _admission;
    private readonly WebApplication _app;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    /// <summary>Readable JSON: non-ASCII text and apostrophes as themselves (quotes and control characters still escaped).</summary>
    private static readonly System.Text.Json.JsonSerializerOptions Json = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The bound address, with the real port when <see cref="ServerOptions.Port"/> was 0.</summary>
    public Uri Address { get; private set; } = null!;

    private OpenAiServer(LrlModel model, ServerOptions options, ChatTemplate template)
    {
        _model = model; _options = options; _template = template;
        if (options.QueueLimit < 1) throw new LrlException($"--queue must be ≥ 1, got {options.QueueLimit}");
        if (options.MaxRequestBytes < 1024) throw new LrlException($"--max-request-bytes must be ≥ 1024, got {options.MaxRequestBytes}");
        _admission = new SemaphoreSlim(options.QueueLimit, options.QueueLimit);
        _sessions = new SessionPool(model, model.Parallel);
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(5));
        var ip = ResolveHost(options.Host);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxRequestBytes;
            k.Listen(ip, options.Port);
        });
        _app = builder.Build();
        _app.Use(ErrorsAndLogging);
        _app.Use(CorsAndAuthentication);
        _app.MapGet("/health", () => Results.Json(new JsonObject { ["status"] = "ok", ["model"] = options.ModelId }, Json));
        _app.MapGet("/v1/models", () => Results.Json(new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray([ModelObject(), .. options.Adapters.Select(kv => (JsonNode)AdapterObject(kv.Key, kv.Value))]),
        }, Json));
        _app.MapGet("/v1/models/{id}", (string id) => id == options.ModelId ? Results.Json(ModelObject(), Json)
            : options.Adapters.TryGetValue(id, out var a) ? Results.Json(AdapterObject(id, a), Json)
            : throw new ApiException(404, $"model '{id}' does not exist; this server serves {ModelIds()}", "model", "not_found_error"));
        _app.MapPost("/v1/completions", ctx => HandleAsync(ctx, chat: false));
        _app.MapPost("/v1/chat/completions", ctx => HandleAsync(ctx, chat: true));
        _app.MapFallback(ctx =>
        {
            var path = ctx.Request.Path.Value ?? "/";
            if (path is "/v1/completions" or "/v1/chat/completions" or "/health" or "/v1/models")
                throw new ApiException(405, $"{ctx.Request.Method} is not allowed on {path}", null);
            throw new ApiException(404, $"unknown endpoint {ctx.Request.Method} {path}; try /v1/completions, /v1/chat/completions, /v1/models or /health", null, "not_found_error");
        });
    }

    /// <summary>Binds and starts serving; an address already in use is an <see cref="LrlException"/> naming it.</summary>
    public static async Task<OpenAiServer> StartAsync(LrlModel model, ServerOptions options, CancellationToken cancellationToken = default)
    {
        if (options.Port is < 0 or > 65535) throw new LrlException($"--port must be in 0..65535, got {options.Port}");
        options.Defaults.Validate();
        var server = new OpenAiServer(model, options, options.Template ?? ChatTemplate.Load(model.Directory));
        try
        {
            await server._app.StartAsync(cancellationToken);
        }
        catch (IOException e)
        {
            await server._app.DisposeAsync();
            throw new LrlException($"cannot listen on {options.Host}:{options.Port}: {e.Message}");
        }
        var bound = server._app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        var port = new Uri(bound).Port;
        var host = options.Host.Contains(':') && !options.Host.StartsWith('[') ? $"[{options.Host}]" : options.Host;
        server.Address = new Uri($"http://{host}:{port}");
        return server;
    }

    /// <summary>The chat template chat requests are formatted with.</summary>
    public string ChatTemplateName => _template.Name;

    /// <summary>Completes when the host is told to stop (Ctrl+C, SIGTERM) or <paramref name="cancellationToken"/> fires.</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.DisposeAsync();
        _sessions.Dispose();
        _gate.Dispose();
        _admission.Dispose();
    }

    private static IPAddress ResolveHost(string host)
    {
        var h = host.Trim('[', ']');
        if (h is "localhost") return IPAddress.Loopback;
        if (h is "*" or "+" or "") return IPAddress.Any;
        if (IPAddress.TryParse(h, out var ip)) return ip;
        try
        {
            var all = Dns.GetHostAddresses(h);
            return all.FirstOrDefault(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork) ?? all.First();
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or InvalidOperationException or ArgumentException)
        {
            throw new LrlException($"--host '{host}' is not an IP address or a host name that resolves: {e.Message}");
        }
    }

    private JsonObject ModelObject() => new()
    {
        ["id"] = _options.ModelId, ["object"] = "model", ["created"] = _created, ["owned_by"] = "lrlrun",
        ["context_length"] = _model.Model.ContextLength,
    };

    // As vLLM lists LoRA modules: the adapter's id, its folder as root, the base as parent.
    private JsonObject AdapterObject(string id, Lrl.Models.LoraAdapter a) => new()
    {
        ["id"] = id, ["object"] = "model", ["created"] = _created, ["owned_by"] = "lrlrun",
        ["root"] = a.Directory, ["parent"] = _options.ModelId, ["context_length"] = _model.Model.ContextLength,
        ["lora"] = new JsonObject { ["rank"] = a.Rank, ["scale"] = a.Scale, ["modules"] = a.Modules.Count },
    };

    private string ModelIds() => string.Join(", ", new[] { _options.ModelId }.Concat(_options.Adapters.Keys).Select(x => $"'{x}'"));

    /// <summary>The adapters a request's 'model' asks for: an adapter's id → it; the base's id (or any id on a server without adapters) → none.</summary>
    private IReadOnlyList<Lrl.Models.LoraAdapter> AdaptersFor(string? model)
    {
        if (model is not null && _options.Adapters.TryGetValue(model, out var a)) return [a];
        if (model is null || model == _options.ModelId || _options.Adapters.Count == 0) return [];
        throw new ApiException(404, $"model '{model}' does not exist; this server serves {ModelIds()}", "model", "model_not_found");
    }

    private async Task ErrorsAndLogging(HttpContext ctx, RequestDelegate next)
    {
        var clock = Stopwatch.StartNew();
        string note = "";
        try
        {
            await next(ctx);
            note = ctx.RequestAborted.IsCancellationRequested ? "client disconnected" : ctx.Items["usage"] as string ?? "";
        }
        catch (ApiException e)
        {
            note = e.Message;
            await WriteErrorAsync(ctx, e.Status, e.Message, e.Type, e.Param);
        }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e)
        {
            note = e.Message;
            await WriteErrorAsync(ctx, e.StatusCode, e.Message, "invalid_request_error", null);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            note = "client disconnected";
        }
        catch (IOException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            note = "client disconnected";
        }
        catch (Exception e)
        {
            note = $"{e.GetType().Name}: {e.Message}";
            await WriteErrorAsync(ctx, 500, $"internal error: {e.Message}", "server_error", null);
        }
        _options.Log?.WriteLine($"lrlrun: {ctx.Request.Method} {ctx.Request.Path} {ctx.Response.StatusCode} {clock.Elapsed.TotalSeconds:F2}s{(note.Length > 0 ? " " + note : "")}");
    }

    /// <summary>CORS headers and preflights for the configured origins, then the API key check (constant time).</summary>
    private async Task CorsAndAuthentication(HttpContext ctx, RequestDelegate next)
    {
        var origin = ctx.Request.Headers.Origin.ToString();
        bool corsAllowed = origin.Length > 0 && _options.CorsOrigins.Any(o => o == "*" || string.Equals(o.TrimEnd('/'), origin, StringComparison.OrdinalIgnoreCase));
        if (corsAllowed)
        {
            var h = ctx.Response.Headers;
            h.AccessControlAllowOrigin = _options.CorsOrigins.Contains("*") && _options.ApiKey is null ? "*" : origin;
            h.Vary = "Origin";
            if (HttpMethods.IsOptions(ctx.Request.Method))
            {
                h.AccessControlAllowMethods = "GET, POST, OPTIONS";
                h.AccessControlAllowHeaders = ctx.Request.Headers.AccessControlRequestHeaders.ToString() is { Length: > 0 } asked ? asked : "Authorization, Content-Type";
                h.AccessControlMaxAge = "600";
                ctx.Response.StatusCode = 204;
                return;
            }
        }
        if (_options.ApiKey is { } key && ctx.Request.Path != "/health" && !HttpMethods.IsOptions(ctx.Request.Method))
        {
            var auth = ctx.Request.Headers.Authorization.ToString();
            var given = auth.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? auth[7..].Trim() : "";
            // Compare fixed-size digests so neither the content nor the length of the key leaks through timing.
            bool ok = System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(
                System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(given)),
                System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(key)));
            if (!ok)
            {
                ctx.Response.Headers.WWWAuthenticate = "Bearer";
                throw new ApiException(401, given.Length == 0 ? "missing API key: send 'Authorization: Bearer KEY'" : "invalid API key", null, "authentication_error");
            }
        }
        await next(ctx);
    }

    private static async Task WriteErrorAsync(HttpContext ctx, int status, string message, string type, string? param)
    {
        var error = new JsonObject
        {
            ["error"] = new JsonObject { ["message"] = message, ["type"] = type, ["param"] = param, ["code"] = null },
        };
        if (ctx.Response.HasStarted)
        {
            // Mid-stream: headers are gone, so the error travels as one more event.
            try { await ctx.Response.WriteAsync($"data: {error.ToJsonString(Json)}\n\n"); }
            catch (Exception e) when (e is IOException or OperationCanceledException or InvalidOperationException) { }
            return;
        }
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(error.ToJsonString(Json));
    }

    private async Task HandleAsync(HttpContext ctx, bool chat)
    {
        if (!_admission.Wait(0))
        {
            ctx.Response.Headers.RetryAfter = "1";
            throw new ApiException(503, $"the server is busy ({_options.QueueLimit} requests running or queued); retry later", null, "server_busy");
        }
        try { await AdmittedAsync(ctx, chat); }
        finally { _admission.Release(); }
    }

    private async Task AdmittedAsync(HttpContext ctx, bool chat)
    {
        var ct = ctx.RequestAborted;
        var body = await ReadBodyAsync(ctx.Request, _options.MaxRequestBytes, ct);
        var request = RequestParser.Parse(body, chat, _options.Defaults);
        var adapters = AdaptersFor(request.Model);
        var options = request.Options with { Adapters = adapters };
        int[] ids;
        string field = chat ? "messages" : "prompt";
        if (request.IsChat)
        {
            string text;
            try { text = _template.Format(request.Messages!, addGenerationPrompt: true); }
            catch (LrlException e) { throw new ApiException(400, e.Message, "messages"); }
            // A template that writes BOS itself (e.g. "<s>[INST] ...") must not get a second one from the tokenizer.
            var tok = _model.Tokenizer;
            bool bosInText = tok.BosId is int bos && tok.TokenText(bos) is { Length: > 0 } bosText && text.StartsWith(bosText, StringComparison.Ordinal);
            ids = tok.Encode(text, addSpecial: !bosInText);
            options = options with { StopStrings = [.. options.StopStrings, .. _template.StopStrings] };
        }
        else if (request.PromptIds is { } pids)
        {
            int vocab = _model.Model.VocabSize;
            if (pids.FirstOrDefault(id => id >= vocab, -1) is var bad and >= 0)
                throw ApiException.BadRequest("prompt", $"'prompt' holds token id {bad}, outside the vocabulary (0..{vocab - 1})");
            ids = pids;
        }
        else
        {
            ids = _model.Tokenizer.Encode(request.Prompt!, options.AddBos);
        }
        int ctxLen = _model.Model.ContextLength;
        if (ids.Length == 0) throw ApiException.BadRequest(field, $"'{field}' is empty (no tokens to start from)");
        if (ids.Length > ctxLen)
            throw ApiException.BadRequest(field, $"'{field}' is {ids.Length} tokens but the context window holds {ctxLen}; shorten it (or restart the server with a larger --context)");

        // Without continuous batching the model runs one generation at a time: requests wait their turn here.
        bool serial = _model.Parallel == 1;
        if (serial) await _gate.WaitAsync(ct);
        try
        {
            using var lease = _sessions.Acquire(ids, adapters);
            var session = lease.Session;
            IAsyncEnumerable<GeneratedToken> tokens;
            try { tokens = session.GenerateAsync(ids, options, ct); }
            catch (LrlException e) { throw new ApiException(400, e.Message, field); }
            var id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N")[..24];
            long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            if (request.Stream) await StreamAsync(ctx, request, tokens, session, id, created, ct);
            else await RespondAsync(ctx, chat, tokens, session, id, created, ct);
        }
        finally
        {
            if (serial) _gate.Release();
        }
    }

    private async Task RespondAsync(HttpContext ctx, bool chat, IAsyncEnumerable<GeneratedToken> tokens, InferenceSession session, string id, long created, CancellationToken ct)
    {
        var sb = new System.Text.StringBuilder();
        await foreach (var t in tokens.ConfigureAwait(false)) sb.Append(t.Text);
        var text = sb.ToString();
        var stats = session.LastStats;
        if (stats.FinishReason == FinishReason.Cancelled) return;
        ctx.Items["usage"] = UsageNote(stats);
        var choice = new JsonObject { ["index"] = 0 };
        if (chat) choice["message"] = new JsonObject { ["role"] = "assistant", ["content"] = text };
        else choice["text"] = text;
        choice["logprobs"] = null;
        choice["finish_reason"] = FinishReasonName(stats.FinishReason);
        var response = Envelope(id, chat ? "chat.completion" : "text_completion", created);
        response["choices"] = new JsonArray(choice);
        response["usage"] = Usage(stats);
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(response.ToJsonString(Json), ct);
    }

    private async Task StreamAsync(HttpContext ctx, CompletionRequest request, IAsyncEnumerable<GeneratedToken> tokens, InferenceSession session, string id, long created, CancellationToken ct)
    {
        bool chat = request.IsChat;
        string kind = chat ? "chat.completion.chunk" : "text_completion";
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["X-Accel-Buffering"] = "no";
        await ctx.Response.StartAsync(ct);
        if (chat) await SendAsync(Chunk(new JsonObject { ["role"] = "assistant", ["content"] = "" }, null));
        // One chunk per generated token (as OpenAI streams), its text empty while a character is incomplete; the
        // held-back text that ends a generation (id -1) only when there is some.
        await foreach (var t in tokens.ConfigureAwait(false))
        {
            if (t.Id < 0 && t.Text.Length == 0) continue;
            await SendAsync(Chunk(chat ? new JsonObject { ["content"] = t.Text } : t.Text, null));
        }
        var stats = session.LastStats;
        if (stats.FinishReason == FinishReason.Cancelled) return;
        ctx.Items["usage"] = UsageNote(stats);
        await SendAsync(Chunk(chat ? new JsonObject() : "", FinishReasonName(stats.FinishReason)));
        if (request.IncludeUsage)
        {
            var last = Envelope(id, kind, created);
            last["choices"] = new JsonArray();
            last["usage"] = Usage(stats);
            await SendAsync(last);
        }
        await ctx.Response.WriteAsync("data: [DONE]\n\n", ct);
        await ctx.Response.Body.FlushAsync(ct);

        JsonObject Chunk(JsonNode content, string? finish)
        {
            var choice = new JsonObject { ["index"] = 0 };
            choice[chat ? "delta" : "text"] = content;
            choice["logprobs"] = null;
            choice["finish_reason"] = finish;
            var chunk = Envelope(id, kind, created);
            chunk["choices"] = new JsonArray(choice);
            return chunk;
        }

        async Task SendAsync(JsonObject o)
        {
            await ctx.Response.WriteAsync($"data: {o.ToJsonString(Json)}\n\n", ct);
            await ctx.Response.Body.FlushAsync(ct);
        }
    }

    private JsonObject Envelope(string id, string kind, long created) => new()
    {
        ["id"] = id, ["object"] = kind, ["created"] = created, ["model"] = _options.ModelId,
    };

    private static string UsageNote(GenerationStats s) =>
        $"prompt {s.PromptTokens} tokens ({s.CachedTokens} cached), generated {s.GeneratedTokens} at {s.DecodeTokensPerSecond:F1} tok/s, {FinishReasonName(s.FinishReason)}";

    private static JsonObject Usage(GenerationStats s)
    {
        var u = new JsonObject
        {
            ["prompt_tokens"] = s.PromptTokens, ["completion_tokens"] = s.GeneratedTokens, ["total_tokens"] = s.PromptTokens + s.GeneratedTokens,
        };
        if (s.VerifySteps > 0)
            u["speculative"] = new JsonObject
            {
                ["verify_steps"] = s.VerifySteps, ["drafted_tokens"] = s.DraftedTokens, ["accepted_tokens"] = s.AcceptedTokens,
                ["tokens_per_step"] = Math.Round(s.TokensPerStep, 3), ["accepted_by_depth"] = new JsonArray([.. s.AcceptedByDepth.Select(x => (JsonNode)x)]),
            };
        return u;
    }

    /// <summary>OpenAI's finish_reason: "stop" for end-of-sequence or a stop string, "length" for the token or context limit.</summary>
    public static string FinishReasonName(FinishReason reason) => reason switch
    {
        FinishReason.EndOfSequence or FinishReason.StopString => "stop",
        _ => "length",
    };

    private static async Task<byte[]> ReadBodyAsync(HttpRequest request, long limit, CancellationToken ct)
    {
        if (request.ContentLength > limit)
            throw new ApiException(413, $"the request body is {request.ContentLength} bytes; this server takes at most {limit} (--max-request-bytes)", null);
        using var ms = new MemoryStream();
        var buffer = new byte[64 << 10];
        int n;
        while ((n = await request.Body.ReadAsync(buffer, ct)) > 0)
        {
            if (ms.Length + n > limit)
                throw new ApiException(413, $"the request body is over {limit} bytes, the most this server takes (--max-request-bytes)", null);
            ms.Write(buffer, 0, n);
        }
        return ms.ToArray();
    }
}
