using System.Reflection;
using System.Runtime.CompilerServices;
using Lrl.Cpu;
using Lrl.Models;
using Lrl.Runtime;
using Lrl.Tokenization;

namespace Lrl;

/// <summary>
/// A model loaded from a Hugging Face folder: weights on a backend and its tokenizer, shared read-only by any number
/// of <see cref="InferenceSession"/>s (one per concurrent conversation, from any threads). The Generate methods here
/// use a default session (reusing the state of the previous prompt, as a chat does); called concurrently they each
/// get a session of their own. After <see cref="Dispose"/> every use is an <see cref="ObjectDisposedException"/>.
/// </summary>
/// <example>
/// <code>
/// using var model = LrlModel.Load("models/stories260k");
/// using var session = model.CreateSession();
/// await foreach (var t in session.GenerateAsync("Once upon a time", new GenerationOptions { MaxTokens = 50 }))
///     Console.Write(t.Text);
/// </code>
/// </example>
public sealed class LrlModel : IDisposable
{
    private readonly IBackend _backend;
    private readonly SharedSession _default;
    private volatile bool _disposed;
    private GenerationStats _lastStats = new();

    public ILanguageModel Model { get; }
    public LrlTokenizer Tokenizer { get; }
    public string Directory { get; }
    /// <summary>Counts and timings of the last generation run through this object's Generate methods.</summary>
    public GenerationStats LastStats => _lastStats;

    private LrlModel(string dir, IBackend backend, ILanguageModel model, LrlTokenizer tokenizer, ModelOptions options)
    {
        Directory = dir; _backend = backend; Model = model; Tokenizer = tokenizer;
        _default = new SharedSession(this);
        int stepRows = options.StepRows > 0 ? options.StepRows : 64;
        if (options.BatchInvariant)
            (model as ModelBase ?? throw new LrlException($"--batch-invariant: {model.Architecture} has no batched step")).KeepRowsExact(stepRows);
        if (options.KvMemory < 0) throw new LrlException($"--kv-memory must be ≥ 0 bytes, got {options.KvMemory}");
        if (options.KvMemory > 0 && options.Parallel <= 1)
            throw new LrlException("--kv-memory budgets the generations decoded together: it needs --parallel above 1");
        if (options.Parallel > 1)
            Loop = new DecodeLoop(model, options.Parallel, stepRows, options.BatchInvariant ? stepRows : options.BatchSize, options.KvMemory);
    }

    /// <summary>The continuous-batching loop every generation runs in (when <see cref="ModelOptions.Parallel"/> &gt; 1).</summary>
    internal DecodeLoop? Loop { get; }

    /// <summary>Most generations decoded together (1: no continuous batching; see <see cref="ModelOptions.Parallel"/>).</summary>
    public int Parallel => Loop?.MaxSequences ?? 1;

    /// <summary>Batched steps the decode loop ran, the rows in them, and the most sequences decoding in one step.</summary>
    public (long Steps, long Rows, int MostSequences) BatchStatistics => Loop is { } l ? (l.Steps, l.Rows, l.MostInStep) : default;

    /// <summary>
    /// The KV cache budget of the decode loop (<see cref="ModelOptions.KvMemory"/>; 0: none), the bytes its running
    /// generations hold reserved now, and the most they held at once.
    /// </summary>
    public (long Budget, long Reserved, long MostReserved) KvBudget => Loop is { } l ? (l.KvBudget, l.KvReserved, l.MostKvReserved) : default;

    /// <summary>Loads a model folder (config.json, safetensors, tokenizer files) onto the chosen device.</summary>
    public static LrlModel Load(string modelDir, ModelOptions? options = null) => Load(modelDir, options, null);

    /// <summary>As <see cref="Load(string, ModelOptions?)"/> onto a backend made by the caller (tests: an emulated GPU); the model owns it.</summary>
    internal static LrlModel Load(string modelDir, ModelOptions? options, IBackend? backendGiven)
    {
        options ??= new ModelOptions();
        if (options.Parallel < 1) throw new LrlException($"--parallel must be ≥ 1, got {options.Parallel}");
        if (options.StepRows < 0) throw new LrlException($"--step-rows must be ≥ 0, got {options.StepRows}");
        var dir = Path.GetFullPath(modelDir);
        if (!System.IO.Directory.Exists(dir)) throw new LrlException($"model folder not found: {dir}");
        var tokenizer = LrlTokenizer.Load(dir);
        if (tokenizer.VocabSize == 0)
            throw new ModelFormatException(dir, "the tokenizer's vocabulary is empty; a model needs the tokens it was trained on");
        var backend = backendGiven ?? Backends.Create(options.Device, options.Threads, options.Mmap);
        try
        {
            var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = options.ContextLength, BatchSize = options.BatchSize });
            try { return new LrlModel(dir, backend, model, tokenizer, options); }
            catch { model.Dispose(); throw; }
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    private readonly List<LoraAdapter> _adapters = new();

    /// <summary>
    /// Loads a Hugging Face PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) onto this model,
    /// unmerged: one base serves any number of adapters, each generation choosing its own
    /// (<see cref="GenerationOptions.Adapters"/>, <see cref="InferenceSession.Adapters"/>). <paramref name="scale"/>
    /// multiplies the adapter's own lora_alpha / r. Over an int8/int4 base the adapter is held as int8 unless
    /// <paramref name="precision"/> says otherwise (<see cref="AdapterPrecision"/>). Disposed with the model.
    /// </summary>
    public LoraAdapter LoadAdapter(string directory, float scale = 1, string? name = null, AdapterPrecision precision = AdapterPrecision.Auto)
    {
        ThrowIfDisposed();
        var model = Model as ModelBase ?? throw new LrlException($"{Model.Architecture} does not take LoRA adapters");
        var a = model.LoadAdapter(directory, scale, name, precision);
        lock (_adapters) _adapters.Add(a);
        return a;
    }

    /// <summary>The adapters loaded so far (in load order).</summary>
    public IReadOnlyList<LoraAdapter> Adapters { get { lock (_adapters) return _adapters.ToArray(); } }

    /// <summary>A new session with its own state over this model's weights; dispose it to release that state.</summary>
    public InferenceSession CreateSession()
    {
        ThrowIfDisposed();
        return new InferenceSession(this);
    }

    /// <summary>Streams generated tokens; the forward passes run on the thread pool, never on the caller's context.</summary>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(string prompt, GenerationOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        if (Loop is null) return OffContext.Stream(() => Generate(prompt, options, cancellationToken));
        ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= new GenerationOptions();
        var ids = InferenceSession.CheckPrompt(Model, Tokenizer.Encode(prompt, options.AddBos), options);
        return RunInSessionAsync(ids, options, cancellationToken);
    }

    private async IAsyncEnumerable<GeneratedToken> RunInSessionAsync(int[] prompt, GenerationOptions options,
        [EnumeratorCancellation] CancellationToken ct)
    {
        using var lease = _default.Acquire();
        var session = lease.Session;
        await foreach (var t in session.RunAsync(prompt, options, ct).ConfigureAwait(false))
        {
            _lastStats = session.LastStats;
            yield return t;
        }
        _lastStats = session.LastStats;
    }

    /// <summary>Generates synchronously, token by token.</summary>
    public IEnumerable<GeneratedToken> Generate(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= new GenerationOptions();
        return Generate(Tokenizer.Encode(prompt, options.AddBos), options, cancellationToken);
    }

    /// <summary>Generates from prompt token ids.</summary>
    public IEnumerable<GeneratedToken> Generate(int[] promptIds, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        // Validate eagerly (errors at the call), then run in whichever session is free when enumerated.
        var prompt = InferenceSession.CheckPrompt(Model, promptIds, options);
        return RunInSession(prompt, options, cancellationToken);
    }

    private IEnumerable<GeneratedToken> RunInSession(int[] prompt, GenerationOptions options, CancellationToken ct)
    {
        using var lease = _default.Acquire();
        var session = lease.Session;
        foreach (var t in session.Run(prompt, options, ct))
        {
            _lastStats = session.LastStats;
            yield return t;
        }
        _lastStats = session.LastStats;
    }

    /// <summary>Forgets the default session's state: the next generation starts from an empty context.</summary>
    public void ResetState() => _default.Current?.Reset();

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>Frees the weights, every session's state and the backend (waiting for a forward pass in progress).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Loop?.Dispose();
        _default.Dispose();
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
    /// <remarks>The CUDA backend lives in the Lrl.Gpu assembly (its own package, so CPU-only apps do not carry ILGPU);
    /// it is found at run time when the application references it.</remarks>
    public static IBackend Create(Device device, int threads = 0, bool mmap = true) => device switch
    {
        Device.Cpu => new CpuBackend(threads, copyWeights: !mmap),
        Device.Cuda => Gpu.Create() ?? throw new LrlException("--device cuda needs the Lrl.Gpu package (lrlrun's CUDA backend); add it to the application"),
        Device.Auto => Gpu.IsCudaAvailable() ? Gpu.Create()! : new CpuBackend(threads, copyWeights: !mmap),
        _ => throw new LrlException($"unknown device '{device}' (expected cpu, cuda or auto)"),
    };

    /// <summary>Lrl.Gpu.GpuBackend's CreateCuda and IsCudaAvailable, when the assembly is there.</summary>
    private static class Gpu
    {
        private static readonly Type? Backend = Type.GetType("Lrl.Gpu.GpuBackend, Lrl.Gpu", throwOnError: false);

        public static bool IsCudaAvailable() =>
            Backend?.GetMethod("IsCudaAvailable", BindingFlags.Public | BindingFlags.Static)?.Invoke(null, null) is true;

        public static IBackend? Create()
        {
            var create = Backend?.GetMethod("CreateCuda", BindingFlags.Public | BindingFlags.Static);
            if (create is null) return null;
            try { return (IBackend)create.Invoke(null, [0])!; }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
                throw;
            }
        }
    }
}
