using System.Diagnostics;
using System.Runtime.CompilerServices;
using Lrl.Cpu;
using Lrl.Models;
using Lrl.Runtime;
using Lrl.Tokenization;

namespace Lrl;

/// <summary>
/// A model loaded from a Hugging Face folder, ready to generate: weights on a backend, its tokenizer, one sequence state.
/// Not thread-safe: one generation at a time.
/// </summary>
/// <example>
/// <code>
/// using var model = LrlModel.Load("models/stories260k");
/// await foreach (var t in model.GenerateAsync("Once upon a time", new GenerationOptions { MaxTokens = 50 }))
///     Console.Write(t.Text);
/// </code>
/// </example>
public sealed class LrlModel : IDisposable
{
    private readonly IBackend _backend;
    private readonly float[] _logits;
    private readonly int[] _one = new int[1];
    // Tokens whose state the model holds now (prompt + fed generated tokens): a new prompt that extends them reuses it.
    private readonly List<int> _state;

    public ILanguageModel Model { get; }
    public LrlTokenizer Tokenizer { get; }
    public string Directory { get; }
    /// <summary>Counts and timings of the last generation.</summary>
    public GenerationStats LastStats { get; private set; } = new();

    private LrlModel(string dir, IBackend backend, ILanguageModel model, LrlTokenizer tokenizer)
    {
        Directory = dir; _backend = backend; Model = model; Tokenizer = tokenizer;
        _logits = new float[model.VocabSize];
        _state = new List<int>(model.ContextLength + 1);
    }

    /// <summary>Loads a model folder (config.json, safetensors, tokenizer files) onto the chosen device.</summary>
    public static LrlModel Load(string modelDir, ModelOptions? options = null)
    {
        options ??= new ModelOptions();
        var dir = Path.GetFullPath(modelDir);
        if (!System.IO.Directory.Exists(dir)) throw new LrlException($"model folder not found: {dir}");
        var tokenizer = LrlTokenizer.Load(dir);
        var backend = Backends.Create(options.Device, options.Threads, options.Mmap);
        try
        {
            var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = options.ContextLength, BatchSize = options.BatchSize });
            return new LrlModel(dir, backend, model, tokenizer);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    /// <summary>Streams generated tokens; cancel with <paramref name="cancellationToken"/>.</summary>
    public async IAsyncEnumerable<GeneratedToken> GenerateAsync(string prompt, GenerationOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        await Task.Yield();
        foreach (var t in Generate(prompt, options, cancellationToken))
            yield return t;
    }

    /// <summary>Generates synchronously, token by token.</summary>
    public IEnumerable<GeneratedToken> Generate(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new GenerationOptions();
        options.Validate();
        var ids = Tokenizer.Encode(prompt, options.AddBos);
        return Generate(ids, options, cancellationToken);
    }

    /// <summary>Generates from prompt token ids.</summary>
    public IEnumerable<GeneratedToken> Generate(int[] promptIds, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        options.Validate();
        int ctx = Model.ContextLength;
        if (promptIds.Length == 0) throw new LrlException("the prompt is empty (no tokens to start from)");
        if (promptIds.Length > ctx)
        {
            if (!options.TruncatePrompt)
                throw new LrlException($"the prompt is {promptIds.Length} tokens but the context window holds {ctx}; shorten it, raise --context, or pass --truncate to keep its last tokens");
            // Keep the prompt's last tokens and leave room for the generation (at most half the window).
            int keep = Math.Max(1, ctx - Math.Min(options.MaxTokens, ctx / 2));
            promptIds = promptIds[^keep..];
        }
        return Run(promptIds, options, cancellationToken);
    }

    private IEnumerable<GeneratedToken> Run(int[] prompt, GenerationOptions options, CancellationToken ct)
    {
        var stats = LastStats = new GenerationStats { PromptTokens = prompt.Length };
        var sampler = new Sampler(Model.VocabSize, options.Sampling);
        var decoder = Tokenizer.CreateStreamingDecoder();
        var stops = new StopMatcher(options.StopStrings);
        var history = new int[Model.ContextLength + 1];
        prompt.CopyTo(history, 0);
        int len = prompt.Length;
        var eos = Tokenizer.EosIds;

        // Reuse the state of the longest common prefix with the previous sequence (chat turns, repeated prompts).
        int reuse = 0;
        while (reuse < _state.Count && reuse < prompt.Length && _state[reuse] == prompt[reuse]) reuse++;
        if (reuse == prompt.Length) reuse--; // at least one token must run to produce logits
        if (reuse < _state.Count && !Model.CanRewind) reuse = 0;
        stats.CachedTokens = reuse;
        _state.Clear();

        var clock = Stopwatch.StartNew();
        Model.Forward(prompt.AsSpan(reuse), reuse, _logits);
        _state.AddRange(prompt);
        stats.PrefillTime = clock.Elapsed;
        clock.Restart();
        stats.FinishReason = FinishReason.Length;

        for (int i = 0; i < options.MaxTokens; i++)
        {
            if (ct.IsCancellationRequested) { stats.FinishReason = FinishReason.Cancelled; break; }
            int next = sampler.Sample(_logits, history.AsSpan(0, len));
            if (!options.IgnoreEos && eos.Contains(next)) { stats.FinishReason = FinishReason.EndOfSequence; break; }
            history[len++] = next;
            stats.GeneratedTokens++;
            var text = stops.Push(decoder.Push(next));
            if (stops.Stopped)
            {
                stats.FinishReason = FinishReason.StopString;
                stats.DecodeTime = clock.Elapsed;
                yield return new GeneratedToken(next, text);
                yield break;
            }
            yield return new GeneratedToken(next, text);
            if (i + 1 == options.MaxTokens) break;
            if (len >= Model.ContextLength) { stats.FinishReason = FinishReason.ContextFull; break; }
            _one[0] = next;
            Model.Forward(_one, len - 1, _logits);
            _state.Add(next);
        }
        stats.DecodeTime = clock.Elapsed;
        var rest = stops.Push(decoder.Flush()) + stops.Flush();
        if (rest.Length > 0) yield return new GeneratedToken(-1, rest);
    }

    /// <summary>Forgets the cached sequence state: the next generation starts from an empty context.</summary>
    public void ResetState() => _state.Clear();

    public void Dispose()
    {
        Model.Dispose();
        _backend.Dispose();
    }
}

/// <summary>Creates the backend for a <see cref="Device"/>.</summary>
public static class Backends
{
    /// <summary>cpu: the SIMD backend; cuda: the ILGPU CUDA backend (an error without a GPU); auto: CUDA when present.</summary>
    /// <param name="device">Where to run.</param>
    /// <param name="threads">CPU worker threads including the caller; 0 = one per physical core.</param>
    /// <param name="mmap">CPU: read weights in place (true) or copy them into huge-page memory (false, --no-mmap).</param>
    public static IBackend Create(Device device, int threads = 0, bool mmap = true) => device switch
    {
        Device.Cpu => new CpuBackend(threads, copyWeights: !mmap),
        Device.Cuda => Lrl.Gpu.GpuBackend.CreateCuda(),
        Device.Auto => Lrl.Gpu.GpuBackend.IsCudaAvailable() ? Lrl.Gpu.GpuBackend.CreateCuda() : new CpuBackend(threads, copyWeights: !mmap),
        _ => throw new LrlException($"unknown device '{device}' (expected cpu, cuda or auto)"),
    };
}
