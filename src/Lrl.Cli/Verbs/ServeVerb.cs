using CommandLine;
using Lrl.Cli.Serve;

namespace Lrl.Cli;

[Verb("serve", HelpText = "Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health).")]
public sealed class ServeVerb : SamplingVerbBase
{
    /// <summary>Shown under the options by `lrlrun serve --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun serve --model ../shared/models/stories260k --port 8080",
        "lrlrun serve --model ../shared/models/stories260k --host 0.0.0.0 --port 0",
        "lrlrun serve --model ../shared/models/stories260k --parallel 16 --queue 64",
        "lrlrun serve --model ../shared/models/stories260k --cors http://localhost:5173 --api-key secret --template chatml",
        "lrlrun serve --model ../shared/models/stories260k --speculative draft --draft-model ../shared/models/stories260k-bf16-sharded",
        "lrlrun serve --model ../shared/models/stories260k --lora models/adapters/stories260k-demo --port 0   # request \"model\": \"stories260k-demo\"",
    ];

    [Option("host", Default = "127.0.0.1", HelpText = "Address to listen on (0.0.0.0 = every interface).")]
    public string Host { get; set; } = "127.0.0.1";

    [Option("port", Default = 8080, HelpText = "TCP port; 0 = any free port (the one chosen is printed).")]
    public int Port { get; set; }

    [Option("name", HelpText = "Model id reported by /v1/models (default: the model folder's name).")]
    public string? Name { get; set; }

    [Option('n', "max-tokens", Default = 256, HelpText = "max_tokens for requests that give none (the sampling options are request defaults too).")]
    public int MaxTokens { get; set; }

    [Option("template", HelpText = "Chat template family for chat requests: chatml, llama3, inst, gemma, phi, plain (default: the model's).")]
    public string? Template { get; set; }

    [Option("cors", Separator = ',', HelpText = "Origins browser apps may call from (comma-separated, or * for any): adds CORS headers and answers preflights.")]
    public IEnumerable<string> Cors { get; set; } = [];

    [Option("api-key", HelpText = "Require 'Authorization: Bearer KEY' on every request but /health (401 otherwise); default: $LRL_API_KEY, else none.")]
    public string? ApiKey { get; set; }

    [Option("queue", Default = 16, HelpText = "Completion requests admitted at once (running or waiting); more get 503 with Retry-After.")]
    public int Queue { get; set; }

    [Option("parallel", Default = 8, HelpText = "Requests decoded together (continuous batching: each step reads the weights once for all of them); 1 = one request at a time.")]
    public int Parallel { get; set; }

    [Option("kv-memory", HelpText = "Most memory the KV caches may take together, running requests' and idle sessions' (e.g. 2G, 512M; default: no budget beyond --parallel × --context): a request waits until what its cache can grow to (prompt + max_tokens) fits, and one that never could gets 400.")]
    public string? KvMemory { get; set; }

    [Option("step-rows", Default = 64, HelpText = "Most tokens in one batched step while requests decode (prompts are admitted in chunks of what is left): lower keeps the time between tokens short.")]
    public int StepRows { get; set; }

    [Option("batch-invariant", HelpText = "Every request's output bit-identical whatever it is batched with, on float models too (their batched steps and prompts then run per-row products: slower).")]
    public bool BatchInvariant { get; set; }

    [Option("max-request-bytes", Default = 8L << 20, HelpText = "Largest request body in bytes; larger ones get 413 before they are read.")]
    public long MaxRequestBytes { get; set; }

    public int Run() => RunAsync().GetAwaiter().GetResult();

    private async Task<int> RunAsync()
    {
        var defaults = new GenerationOptions
        {
            MaxTokens = MaxTokens,
            Sampling = Sampling(),
        };
        defaults.Validate();
        if (Port is < 0 or > 65535) throw new LrlException($"--port must be in 0..65535, got {Port}");
        if (Queue < 1) throw new LrlException($"--queue must be ≥ 1, got {Queue}");
        if (Parallel < 1) throw new LrlException($"--parallel must be ≥ 1, got {Parallel}");
        if (StepRows < 1) throw new LrlException($"--step-rows must be ≥ 1, got {StepRows}");
        if (MaxRequestBytes < 1024) throw new LrlException($"--max-request-bytes must be ≥ 1024, got {MaxRequestBytes}");
        var template = Template is null ? null : ChatTemplate.ByName(Template);
        var apiKey = ApiKey ?? Environment.GetEnvironmentVariable("LRL_API_KEY");
        if (apiKey is { Length: 0 }) throw new LrlException("--api-key is empty");
        foreach (var o in Cors)
            if (o != "*" && !(Uri.TryCreate(o, UriKind.Absolute, out var u) && u.Scheme is "http" or "https"))
                throw new LrlException($"--cors '{o}' is not an origin like https://example.com (or *)");
        long kvMemory = ParseBytes(KvMemory, "kv-memory");
        using var model = LoadModel(Parallel, StepRows, BatchInvariant, kvMemory);
        defaults = WithSpeculation(defaults, out var draftModel);
        using var draftOwner = draftModel;
        var adapters = new Dictionary<string, Lrl.Models.LoraAdapter>(StringComparer.Ordinal);
        foreach (var a in LoadAdapters(model))
            if (!adapters.TryAdd(a.Name, a)) throw new LrlException($"--lora: two adapters are named '{a.Name}' (the folder name is the model id); rename a folder");
        template ??= ChatTemplate.Load(model.Directory);
        if (template.Warning is { } warning) Console.Error.WriteLine($"lrlrun: warning: {warning}");
        var options = new ServerOptions
        {
            Host = Host, Port = Port, Defaults = defaults, Log = Console.Error, Template = template,
            CorsOrigins = Cors.ToList(), ApiKey = apiKey, QueueLimit = Queue, MaxRequestBytes = MaxRequestBytes,
            ModelId = string.IsNullOrWhiteSpace(Name) ? Path.GetFileName(model.Directory.TrimEnd(Path.DirectorySeparatorChar)) : Name,
            Adapters = adapters,
        };
        if (adapters.ContainsKey(options.ModelId)) throw new LrlException($"--lora: adapter '{options.ModelId}' has the base model's id; rename its folder or pass --name");
        await using var server = await OpenAiServer.StartAsync(model, options);
        Console.Error.WriteLine($"lrlrun: serving {options.ModelId} ({model.Model.Backend.Name}, context {model.Model.ContextLength}, {model.Parallel} requests decoded together{(kvMemory > 0 ? $" within {kvMemory / 1048576.0:F0} MiB of KV cache" : "")}, chat template {server.ChatTemplateName})");
        foreach (var (id, a) in adapters) Console.Error.WriteLine($"lrlrun: adapter '{id}': {a}");
        Console.Error.WriteLine($"lrlrun: listening on {server.Address.GetLeftPart(UriPartial.Authority)}");
        await server.WaitForShutdownAsync();
        return 0;
    }
}
