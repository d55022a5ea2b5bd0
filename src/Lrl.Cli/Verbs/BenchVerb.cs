using System.Globalization;
using CommandLine;
using Lrl.Bench;
using Lrl.Models;

namespace Lrl.Cli;

[Verb("bench", HelpText = "Benchmark prompt processing and generation (llama-bench style), or kernels with `bench kernels`.")]
public sealed class BenchVerb
{
    /// <summary>Shown under the options by `lrlrun bench --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun bench --preset SmolLM2-135M --dtype q4 -p 128 -n 64 -r 3",
        "lrlrun bench --model ../shared/models/stories260k -p 32,128 -n 128 --json",
        "lrlrun bench kernels --device cpu",
        "lrlrun bench serve --preset SmolLM2-135M --dtype q4 --streams 1,4,16 -p 32 -n 32",
        "lrlrun bench --preset SmolLM2-135M --dtype q4 -p 0 -n 64 --lora-random 0,1,4 --lora-rank 16",
        "lrlrun bench ptx --arch sm_80,sm_90",
    ];

    [Value(0, MetaName = "what", Required = false, HelpText = "Omit for end-to-end; 'kernels' for kernel microbenchmarks; 'serve' for concurrent streams against `serve` on loopback (continuous batching vs one request at a time); 'ptx' to compile every CUDA kernel to PTX and assemble it with ptxas (no GPU needed).")]
    public string? What { get; set; }

    [Option('m', "model", HelpText = "Model folder to benchmark.")]
    public string? Model { get; set; }

    [Option("preset", HelpText = "Benchmark a random-weight checkpoint of a preset in models/presets (e.g. SmolLM2-135M).")]
    public string? Preset { get; set; }

    [Option("dtype", Default = "bf16", HelpText = "With --preset: f32, f16, bf16, q8 or q4 (int8/int4 quantized from bf16).")]
    public string DType { get; set; } = "bf16";

    [Option('p', "n-prompt", Separator = ',', HelpText = "Prompt sizes, comma-separated (default 128,512); 0 = skip.")]
    public IEnumerable<int> PromptSizes { get; set; } = [];

    [Option('n', "n-gen", Default = 128, HelpText = "Tokens generated in the tg test; 0 = skip.")]
    public int GenTokens { get; set; }

    [Option('r', "repetitions", Default = 5, HelpText = "Repetitions per test.")]
    public int Reps { get; set; }

    [Option('t', "threads", Default = 0, HelpText = "CPU threads; 0 = one per physical core.")]
    public int Threads { get; set; }

    [Option("device", Default = "cpu", HelpText = "cpu, cuda or auto.")]
    public string DeviceName { get; set; } = "cpu";

    [Option("no-mmap", HelpText = "Copy the weights into memory (huge pages) instead of reading the mapped file in place.")]
    public bool NoMmap { get; set; }

    [Option("profile", HelpText = "Instead of the benchmark, print where a decoded token's time goes, op by op.")]
    public bool Profile { get; set; }

    [Option("memory", HelpText = "Instead of the benchmark, run one prompt of -p tokens and -n decoded tokens (no probes) and print the process's peak resident memory, file-backed and anonymous.")]
    public bool Memory { get; set; }

    [Option("json", HelpText = "Print JSON.")]
    public bool Json { get; set; }

    [Option("csv", HelpText = "Print CSV.")]
    public bool Csv { get; set; }

    [Option("plot", HelpText = "Also write a bar chart of the results to this file: PNG or SVG by its extension (.png, .svg).")]
    public string? Plot { get; set; }

    [Option("load", Default = 0, HelpText = "Start this many busy threads of its own (a competing load, e.g. one per core) while benchmarking.")]
    public int Load { get; set; }

    [Option("batch", Separator = ',', HelpText = "Also decode this many sequences together (comma-separated, e.g. 4,16,64): test tgN xB, aggregate tok/s of one batched step per token.")]
    public IEnumerable<int> Batch { get; set; } = [];

    [Option("streams", Separator = ',', HelpText = "bench serve: concurrent client streams, comma-separated (default 1,4,16,64).")]
    public IEnumerable<int> Streams { get; set; } = [];

    [Option("requests", Default = 1, HelpText = "bench serve: requests each stream sends one after another.")]
    public int Requests { get; set; }

    [Option("modes", Default = "batched,serial", HelpText = "bench serve: batched (continuous batching, --parallel = the most streams) and/or serial (--parallel 1).")]
    public string Modes { get; set; } = "batched,serial";

    [Option("batch-invariant", HelpText = "Products of up to --step-rows rows run each row's one-row arithmetic (as serve --batch-invariant): measures what batch invariance costs a float model in --batch steps and bench serve.")]
    public bool BatchInvariant { get; set; }

    [Option("kv-memory", HelpText = "bench serve: the batched server's KV cache budget (as serve --kv-memory, e.g. 64M).")]
    public string? KvMemory { get; set; }

    [Option("step-rows", Default = 64, HelpText = "bench serve: most tokens in one batched step while streams decode.")]
    public int StepRows { get; set; }

    [Option("lora", Separator = ',', HelpText = "LoRA adapter folder(s) (DIR or DIR:SCALE) applied unmerged in every test.")]
    public IEnumerable<string> Lora { get; set; } = [];

    [Option("lora-random", Separator = ',', HelpText = "Also run every test with this many random adapters over all linear modules (comma-separated counts, e.g. 0,1,4): the unmerged cost.")]
    public IEnumerable<int> LoraRandom { get; set; } = [];

    [Option("lora-rank", Default = 16, HelpText = "Rank of the --lora-random adapters.")]
    public int LoraRank { get; set; }

    [Option("lora-precision", Default = AdapterPrecision.Auto, HelpText = "How adapters are held: auto (int8 over int8/int4 models, else as stored), asstored, int8.")]
    public AdapterPrecision LoraPrecision { get; set; }

    [Option("speculative", HelpText = "Speculative decoding against plain decoding in the same run: lookup, early-exit, draft (comma-separated to compare several); greedy, -n tokens from --prompt.")]
    public string? Speculative { get; set; }

    [Option("verify-cost", Separator = ',', HelpText = "Instead of the benchmark, time verification passes of these many rows (e.g. 1,2,4,8,16: a pending token and its drafts, every row's logits) against one plain decode step, interleaved pass by pass after a -p prompt (first size): medians and their ratio, what speculative decoding's speedup rests on.")]
    public IEnumerable<int> VerifyCost { get; set; } = [];

    [Option("prompt", Default = "Once upon a time", HelpText = "With --speculative: the prompt text (lookup shines on text the output repeats).")]
    public string PromptText { get; set; } = "Once upon a time";

    [Option("draft-tokens", Default = 6, HelpText = "With --speculative: most draft tokens per verify step.")]
    public int DraftTokens { get; set; }

    [Option("draft-length", Separator = ',', HelpText = "With --speculative: the draft length rules to run, comma-separated: cost (default) and/or acceptance (see generate --help).")]
    public IEnumerable<string> DraftLength { get; set; } = [];

    [Option("draft-layers", Separator = ',', HelpText = "With --speculative early-exit: draft depths to try, comma-separated (default half the layers).")]
    public IEnumerable<int> DraftLayers { get; set; } = [];

    [Option("draft-model", HelpText = "With --speculative draft: the draft model folder.")]
    public string? DraftModel { get; set; }

    [Option("heads", HelpText = "With --speculative heads: the draft heads folder (`lrlrun heads train` output or Medusa's).")]
    public string? Heads { get; set; }

    [Option("heads-bits", Default = 0, HelpText = "With --heads: run the heads' matrices as f32 (0) or quantized per channel to 8 or 4 bits.")]
    public int HeadsBits { get; set; }

    [Option("tree", Separator = ',', HelpText = "With --speculative heads: also verify a tree of candidates, this many top tokens of each head per node (e.g. 3,2,2,1).")]
    public IEnumerable<int> Tree { get; set; } = [];

    [Option("arch", Default = "sm_80,sm_90", HelpText = "bench ptx: CUDA architectures, comma-separated (sm_50 .. sm_90).")]
    public string Arch { get; set; } = "sm_80,sm_90";

    [Option("ptx-out", HelpText = "bench ptx: also write each kernel's PTX into this folder.")]
    public string? PtxOut { get; set; }

    public int Run()
    {
        if (Load < 0 || Load > 1024) throw new LrlException($"--load must be in 0..1024, got {Load}");
        using var load = new BusyLoad(Load);
        return RunCore();
    }

    /// <summary>Threads that spin until disposed: a deliberate competing load (a busy laptop or shared server).</summary>
    private sealed class BusyLoad : IDisposable
    {
        private volatile bool _stop;
        private readonly Thread[] _threads;

        public BusyLoad(int n)
        {
            _threads = Enumerable.Range(0, n).Select(i => new Thread(() =>
            {
                double x = 1;
                while (!_stop) for (int k = 0; k < 100_000; k++) x = x * 1.0000001 + 1e-9;
                GC.KeepAlive(x);
            }) { IsBackground = true, Name = $"lrl-bench-load-{i}" }).ToArray();
            foreach (var t in _threads) t.Start();
            if (n > 0) Console.Error.WriteLine($"competing load: {n} busy threads");
        }

        public void Dispose()
        {
            _stop = true;
            foreach (var t in _threads) t.Join();
        }
    }

    /// <summary>
    /// Peak resident memory of one generation: the folder's size, then after loading, after a prompt of
    /// <paramref name="p"/> tokens and after <paramref name="n"/> greedy tokens, the process's resident memory (Linux
    /// /proc/self/status: VmHWM peak, RssFile mapped weights and libraries, RssAnon heaps and caches).
    /// </summary>
    private int RunMemory(ILanguageModel model, string dir, int p, int n)
    {
        static Dictionary<string, long> Status()
        {
            var d = new Dictionary<string, long>();
            if (!File.Exists("/proc/self/status")) return d;
            foreach (var line in File.ReadLines("/proc/self/status"))
            {
                int colon = line.IndexOf(':');
                var parts = line[(colon + 1)..].Trim().Split(' ');
                if (colon > 0 && parts.Length == 2 && parts[1] == "kB" && long.TryParse(parts[0], out long kb)) d[line[..colon]] = kb * 1024;
            }
            return d;
        }
        if (!File.Exists("/proc/self/status")) throw new LrlException("bench --memory reads /proc/self/status (Linux only)");
        long folder = new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
        var rows = new List<(string Stage, Dictionary<string, long> S)> { ("loaded", Status()) };
        var mb = (ModelBase)model;
        using var state = model.CreateState();
        var rng = new Random(1);
        var prompt = Enumerable.Range(0, Math.Max(1, p)).Select(_ => rng.Next(3, model.VocabSize)).ToArray();
        int token = mb.ForwardArgmax(state, prompt, 0);
        rows.Add(($"prompt of {prompt.Length}", Status()));
        for (int i = 0; i < n; i++) token = mb.ForwardArgmax(state, [token], prompt.Length + i);
        rows.Add(($"{n} decoded", Status()));
        var o = Console.Out;
        o.WriteLine($"model folder: {folder / 1e6:F1} MB");
        o.WriteLine("| stage | resident MB | peak MB | file-backed MB | anonymous MB |");
        o.WriteLine("| --- | ---: | ---: | ---: | ---: |");
        foreach (var (stage, st) in rows)
            o.WriteLine($"| {stage} | {st.GetValueOrDefault("VmRSS") / 1e6:F1} | {st.GetValueOrDefault("VmHWM") / 1e6:F1} | {st.GetValueOrDefault("RssFile") / 1e6:F1} | {st.GetValueOrDefault("RssAnon") / 1e6:F1} |");
        return 0;
    }

    private int RunCore()
    {
        if (string.Equals(What, "serve", StringComparison.OrdinalIgnoreCase)) return RunServe();
        if (string.Equals(What, "ptx", StringComparison.OrdinalIgnoreCase)) return RunPtx();
        if (string.Equals(What, "kernels", StringComparison.OrdinalIgnoreCase))
        {
            using var kb = Backends.Create(ModelVerbBase.ParseDevice(DeviceName), Threads);
            return Lrl.Gpu.KernelBenchmark.Run(kb, Json, Console.Out, Math.Max(20, Reps), quick: false);
        }
        if (What is not null) throw new LrlException($"bench: unknown target '{What}' (use 'kernels', 'serve', 'ptx' or omit it)");
        if ((Model is null) == (Preset is null)) throw new LrlException("bench: give exactly one of --model DIR or --preset NAME");
        if (Speculative is not null) return RunSpeculative();
        var sizes = PromptSizes.Any() ? PromptSizes.ToArray() : [128, 512];
        if (sizes.All(p => p == 0) && GenTokens == 0) throw new LrlException("bench: -p 0 and -n 0 leave nothing to measure");
        var log = Console.Error;

        string dir = Model ?? Synthesizer.Cached(Preset!, DType, log);
        string name = Preset ?? Path.GetFileName(Path.GetFullPath(dir).TrimEnd('/'));
        var device = ModelVerbBase.ParseDevice(DeviceName);
        using var inner = Backends.Create(device, Threads, mmap: !NoMmap);
        var profiler = Profile ? new ProfilingBackend(inner) : null;
        IBackend backend = profiler ?? inner;
        int threads = inner is Lrl.Cpu.CpuBackend cpu ? cpu.Threads : 0;
        int context = Memory ? sizes.Max() + Math.Max(1, GenTokens)
            : VerifyCost.Any() ? Math.Max(1, sizes[0]) + Math.Max(0, VerifyCost.Max()) : Math.Max(sizes.Max(), GenTokens);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = context, BatchSize = Math.Max(256, sizes.Max()) });
        string format = model.WeightFormat;

        log.WriteLine($"{name}: {model.ParameterCount / 1e6:F1}M parameters, {model.WeightBytesPerToken / 1e6:F1} MB of weights read per token ({format})");
        if (Memory) return RunMemory(model, dir, sizes.Max(), GenTokens);
        if (VerifyCost.Any()) return RunVerifyCost((ModelBase)model, name, format, sizes[0], profiler);
        log.WriteLine("probing the machine: read bandwidth, FMA and int8 dot peaks ...");
        int probeThreads = threads > 0 ? threads : Environment.ProcessorCount;
        using var probe = new MachineProbe.BandwidthProbe(probeThreads, 256L << 20);
        var probes = new List<double> { probe.Measure(5) };
        var fma = MachineProbe.FmaPeakGFlops(probeThreads);
        var int8 = MachineProbe.Int8PeakGOps(probeThreads);
        double Probe() { double gbs = probe.Measure(); probes.Add(gbs); return gbs; }
        var mb = (ModelBase)model;
        if (BatchInvariant) mb.KeepRowsExact(StepRows);
        var given = Lora.Select(ModelVerbBase.ParseLora).Select(x => mb.LoadAdapter(x.Dir, x.Scale, precision: LoraPrecision)).ToArray();
        var counts = LoraRandom.Any() ? LoraRandom.Distinct().ToArray() : [0];
        if (counts.Any(c => c is < 0 or > 64)) throw new LrlException("--lora-random counts must be in 0..64");
        var randomAdapters = new List<LoraAdapter>();
        for (int i = 0; i < counts.Max(); i++)
        {
            randomAdapters.Add(mb.LoadAdapter(RandomAdapter.Write(mb, RandomAdapter.CachePath(mb, LoraRank, i), LoraRank, seed: i + 1), name: $"random{i}", precision: LoraPrecision));
        }
        if (given.Length + randomAdapters.Count > 0)
        {
            // Loading left the files' f32 copies behind: collect them now, not in a background GC during the timings.
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
        }
        if (profiler is not null) return RunProfile(model, profiler, given.Concat(randomAdapters).ToArray());
        var results = new List<BenchResult>();
        // Several adapter counts: the repetitions interleave them (one repetition of each count per round), so a host
        // whose speed drifts during the run (a noisy neighbour) moves every count alike; the unmerged cost is then the
        // median of the per-round ratios. One count: its repetitions in one call, as before.
        if (Reps < 1) throw new LrlException($"-r must be ≥ 1, got {Reps}");
        int rounds = counts.Length > 1 ? Reps : 1, repsEach = counts.Length > 1 ? 1 : Reps;
        var byCount = counts.ToDictionary(c => c, _ => new List<List<BenchResult>>());
        for (int round = 0; round < rounds; round++)
            foreach (int count in counts)
            {
                var adapters = given.Concat(randomAdapters.Take(count)).ToArray();
                if (adapters.Length > 0 && round == 0)
                    log.WriteLine($"with {adapters.Length} adapter(s): {string.Join(", ", adapters.Select(a => a.ToString()))}, {adapters.Sum(a => a.ByteSize) / 1e6:F1} MB read per token");
                byCount[count].Add(EndToEndBench.Run(model, name, format, threads, sizes, GenTokens, repsEach,
                                                     new MachineLimits(probes[0], fma, int8), log, bandwidthProbe: inner is Lrl.Cpu.CpuBackend ? Probe : null,
                                                     batches: Batch.ToArray(), adapters: adapters));
            }
        foreach (int count in counts) results.AddRange(EndToEndBench.MergeRounds(byCount[count]));
        if (rounds > 1 && byCount.TryGetValue(0, out var bases))
            foreach (int count in counts.Where(c => c > 0))
                for (int i = 0; i < bases[0].Count; i++)
                {
                    var ratios = Enumerable.Range(0, rounds).Select(r => byCount[count][r][i].MeanTokensPerSecond / bases[r][i].MeanTokensPerSecond).Order().ToArray();
                    log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{byCount[count][0][i].Test}: {ratios[rounds / 2]:F3}x of {bases[0][i].Test} (median of {rounds} interleaved rounds; {ratios[0]:F3}-{ratios[^1]:F3})"));
                }
        var limits = new MachineLimits(probes.Max(), fma, int8);
        if (probes.Max() > 1.15 * probes.Min())
            log.WriteLine($"note: the read bandwidth moved between {probes.Min():F1} and {probes.Max():F1} GB/s during this run; each tg roofline is taken against the probes on either side of its repetition");

        Console.Out.Write(Json ? EndToEndBench.ToJson(results, limits) + "\n" : Csv ? EndToEndBench.ToCsv(results) : EndToEndBench.ToMarkdown(results, limits));
        if (Plot is not null)
        {
            BenchPlot.Save(results, $"lrlrun bench: {name}, {format}, {backend.Name}, {(threads > 0 ? threads : Environment.ProcessorCount)} threads", Plot);
            log.WriteLine($"plot written to {Plot}");
        }
        return 0;
    }

    /// <summary>
    /// `bench serve`: for each mode, one server on loopback over the model, and for each stream count a bounded load of
    /// streaming greedy completions (prompt of -p random token ids, -n tokens each); prints aggregate tok/s, TTFT and
    /// inter-token latency per run.
    /// </summary>
    private int RunServe()
    {
        if ((Model is null) == (Preset is null)) throw new LrlException("bench serve: give exactly one of --model DIR or --preset NAME");
        var streams = Streams.Any() ? Streams.ToArray() : [1, 4, 16, 64];
        if (streams.Any(s => s is < 1 or > 256)) throw new LrlException("bench serve: --streams must be in 1..256");
        if (Requests < 1) throw new LrlException($"bench serve: --requests must be ≥ 1, got {Requests}");
        if (GenTokens < 1) throw new LrlException($"bench serve: -n must be ≥ 1, got {GenTokens}");
        if (StepRows < 1) throw new LrlException($"bench serve: --step-rows must be ≥ 1, got {StepRows}");
        var modes = Modes.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (modes.Length == 0 || modes.Any(m => m is not ("batched" or "serial")))
            throw new LrlException($"bench serve: --modes '{Modes}' must list batched and/or serial");
        int promptLen = PromptSizes.FirstOrDefault(32);
        if (promptLen < 1) throw new LrlException("bench serve: -p must be ≥ 1 (the prompt length)");
        var log = Console.Error;
        string dir = Model ?? Synthesizer.Cached(Preset!, DType, log);
        string name = Preset ?? Path.GetFileName(Path.GetFullPath(dir).TrimEnd('/'));
        long kvMemory = ModelVerbBase.ParseBytes(KvMemory, "kv-memory");
        if (kvMemory > 0 && streams.Max() < 2) throw new LrlException("bench serve: --kv-memory budgets the batched server: give --streams above 1");
        var results = new List<Lrl.Cli.Serve.LoadGenerator.Result>();
        foreach (var mode in modes)
        {
            int parallel = mode == "batched" ? streams.Max() : 1;
            using var model = LrlModel.Load(dir, new ModelOptions
            {
                Device = ModelVerbBase.ParseDevice(DeviceName), Threads = Threads, Mmap = !NoMmap,
                ContextLength = Math.Min(4096, promptLen + GenTokens + 8), Parallel = parallel, StepRows = StepRows,
                BatchInvariant = BatchInvariant, KvMemory = mode == "batched" ? kvMemory : 0,
            });
            var rng = new Random(1);
            int[] prompt = Enumerable.Range(0, promptLen).Select(_ => rng.Next(3, model.Model.VocabSize)).ToArray();
            var server = Lrl.Cli.Serve.OpenAiServer.StartAsync(model, new Lrl.Cli.Serve.ServerOptions
            {
                Host = "127.0.0.1", Port = 0, QueueLimit = 2 * streams.Max() + 1, ModelId = name,
            }).GetAwaiter().GetResult();
            try
            {
                // Warm-up: one short request (first-call JIT and page faults out of the figures).
                Lrl.Cli.Serve.LoadGenerator.RunAsync(server.Address, mode, 1, 1, prompt, 4).GetAwaiter().GetResult();
                foreach (int n in streams)
                {
                    log.WriteLine($"{name} {model.Model.WeightFormat}: {mode}, {n} streams × {Requests} requests × {GenTokens} tokens ...");
                    var r = Lrl.Cli.Serve.LoadGenerator.RunAsync(server.Address, mode, n, Requests, prompt, GenTokens).GetAwaiter().GetResult();
                    results.Add(r);
                    log.WriteLine(FormattableString.Invariant($"  {r.TokensPerSecond:F1} tok/s, TTFT p50 {r.TtftP50:F0} ms, ITL p95 {r.ItlP95:F1} ms"));
                }
            }
            finally { server.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
        }
        if (Json) Console.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(results.Select(r => new
        {
            r.Mode, r.Streams, r.Requests, r.Tokens, r.Seconds, r.TokensPerSecond, r.TtftP50, r.TtftP95, r.ItlP50, r.ItlP95, r.Failed,
        })));
        else Console.Out.Write(Lrl.Cli.Serve.LoadGenerator.ToMarkdown(results));
        return results.Any(r => r.Failed > 0) ? 1 : 0;
    }

    /// <summary>
    /// `bench --speculative M[,M...]`: greedy generation of -n tokens from --prompt, plainly and with each method, in one
    /// run (each -r times, alternating): tok/s of both, the median of their per-repetition ratio, tokens per verify step and
    /// acceptance by draft depth.
    /// </summary>
    private int RunSpeculative()
    {
        string dir = Model ?? Synthesizer.Cached(Preset!, DType, Console.Error);
        int n = GenTokens;
        if (n < 2) throw new LrlException("bench --speculative needs -n ≥ 2");
        var opts = new ModelOptions { Device = ModelVerbBase.ParseDevice(DeviceName), Threads = Threads, Mmap = !NoMmap };
        using var model = LrlModel.Load(dir, opts);
        using var draft = DraftModel is null ? null : LrlModel.Load(DraftModel, opts);
        using var heads = Heads is null ? null : Lrl.Models.DraftHeads.Load(Heads);
        if (heads is not null) heads.Bits = HeadsBits;
        var plain = new GenerationOptions { MaxTokens = n, IgnoreEos = true, Sampling = Lrl.Runtime.SamplingOptions.Greedy };
        var runs = new List<(string Name, GenerationOptions Options)> { ("plain", plain) };
        var lengths = DraftLength.Any() ? DraftLength.Select(SamplingVerbBase.ParseDraftLength).Distinct().ToArray() : [Lrl.DraftLength.Cost];
        foreach (var m in Speculative!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var method = SamplingVerbBase.ParseSpeculative(m);
            if (method == SpeculativeMethod.None) continue;
            foreach (var length in lengths)
            {
                // Named by the rule only when several are compared.
                string rule = lengths.Length > 1 ? $" ({length.ToString().ToLowerInvariant()})" : "";
                var o = plain with { Speculative = method, DraftTokens = DraftTokens, DraftLength = length };
                if (method == SpeculativeMethod.EarlyExit && DraftLayers.Any())
                    foreach (int l in DraftLayers) runs.Add(($"early-exit {l}{rule}", o with { DraftLayers = l }));
                else runs.Add(($"{m}{rule}", o with { DraftModel = draft, DraftHeads = heads }));
                if (method == SpeculativeMethod.Heads && Tree.Any())
                    runs.Add(($"heads tree {string.Join(',', Tree)}{rule}", o with { DraftHeads = heads, DraftTree = Tree.ToArray() }));
            }
        }
        foreach (var (_, o) in runs) o.Validate();
        var prompt = model.Tokenizer.Encode(PromptText, true);
        var speeds = runs.Select(_ => new List<double>()).ToArray();
        var stats = new GenerationStats[runs.Count];
        int[]? reference = null;
        for (int rep = -1; rep < Math.Max(1, Reps); rep++) // rep -1: warm-up
            for (int i = 0; i < runs.Count; i++)
            {
                using var session = model.CreateSession();
                var ids = session.Generate(prompt, runs[i].Options).Where(t => t.Id >= 0).Select(t => t.Id).ToArray();
                reference ??= ids;
                if (!ids.SequenceEqual(reference))
                {
                    int at = 0;
                    while (at < ids.Length && at < reference.Length && ids[at] == reference[at]) at++;
                    throw new LrlException($"{runs[i].Name}: the output differs from plain greedy decoding at generated token {at} " +
                                           $"({(at < ids.Length ? ids[at] : -1)} against {(at < reference.Length ? reference[at] : -1)})");
                }
                if (rep < 0) continue;
                var s = session.LastStats;
                speeds[i].Add((s.GeneratedTokens - 1) / Math.Max(1e-9, s.DecodeTime.TotalSeconds));
                stats[i] = s;
            }
        Console.Out.WriteLine($"| {Path.GetFileName(Path.GetFullPath(dir).TrimEnd('/'))} | decode tok/s | vs plain | tokens per verify step | drafts accepted | accepted by depth |");
        Console.Out.WriteLine("| --- | ---: | ---: | ---: | ---: | --- |");
        for (int i = 0; i < runs.Count; i++)
        {
            var s = stats[i];
            // vs plain: the median over repetitions of this run's speed over plain decoding's in the same repetition
            // (each pair ran back to back, so a machine that slows down between repetitions slows both).
            double ratio = Median(speeds[i].Zip(speeds[0], (a, b) => a / b));
            Console.Out.WriteLine($"| {runs[i].Name} | {speeds[i].Average():F1} ± {Std(speeds[i]):F1} | {ratio:F2}x | " +
                                  (s.VerifySteps == 0 ? "1 | | |" : $"{s.TokensPerStep:F2} | {s.AcceptedTokens}/{s.DraftedTokens} | {string.Join(' ', s.AcceptedByDepth)} |"));
        }
        Console.Error.WriteLine($"every method's output equals plain greedy decoding ({n} tokens)");
        return 0;
    }

    /// <summary>
    /// `bench --verify-cost K[,K...]`: after a prompt of <paramref name="promptLen"/> tokens, verification passes of K rows
    /// (<see cref="ModelBase.ForwardVerify"/>, every row's logits, at the same positions each time) and one-row decode
    /// steps (<see cref="ModelBase.ForwardArgmax"/>, plain greedy decoding's step) take turns pass by pass, so a busy
    /// machine slows all of them alike; the table gives each one's median and its ratio to the decode step's.
    /// </summary>
    private int RunVerifyCost(ModelBase model, string name, string format, int promptLen, ProfilingBackend? profiler)
    {
        if (!model.CanRewind)
            throw new LrlException($"--verify-cost: {model.Architecture} holds one recurrent state that cannot be rewound, so it cannot verify drafts (speculative decoding runs plainly on it)");
        var ks = VerifyCost.Distinct().ToArray();
        if (ks.Any(k => k < 1 || k > ModelBase.VerifyRowsExact))
            throw new LrlException($"--verify-cost rows must be in 1..{ModelBase.VerifyRowsExact}, got {string.Join(',', ks)}");
        promptLen = Math.Max(1, promptLen);
        if (promptLen + ks.Max() > model.ContextLength)
            throw new LrlException($"--verify-cost: a {promptLen}-token prompt and {ks.Max()} rows exceed the context of {model.ContextLength} tokens");
        var rng = new Random(7);
        int vocab = model.VocabSize;
        var prompt = Enumerable.Range(0, promptLen).Select(_ => rng.Next(vocab)).ToArray();
        var rows = Enumerable.Range(0, ks.Max()).Select(_ => rng.Next(vocab)).ToArray();
        using var state = model.CreateState();
        model.Forward(state, prompt, 0, new float[vocab]);
        var logits = new float[(long)ks.Max() * vocab];
        var times = new List<double>[ks.Length + 1];
        for (int i = 0; i < times.Length; i++) times[i] = [];
        int rounds = Math.Max(30, Reps * 10);
        var sw = new System.Diagnostics.Stopwatch();
        for (int r = -3; r < rounds; r++) // three rounds of warm-up
            for (int i = 0; i <= ks.Length; i++)
            {
                sw.Restart();
                if (i == 0) model.ForwardArgmax(state, rows.AsSpan(0, 1), promptLen);
                else model.ForwardVerify(state, rows.AsSpan(0, ks[i - 1]), promptLen, logits.AsSpan(0, ks[i - 1] * vocab));
                double ms = sw.Elapsed.TotalMilliseconds;
                if (r >= 0) times[i].Add(ms);
            }
        double step = Median(times[0]);
        var o = Console.Out;
        o.WriteLine($"| {name} {format} | ms (median of {rounds}) | × decode step | ms per row |");
        o.WriteLine("| --- | ---: | ---: | ---: |");
        o.WriteLine($"| decode step | {step:F2} | 1.00 | {step:F2} |");
        for (int i = 0; i < ks.Length; i++)
        {
            double t = Median(times[i + 1]);
            o.WriteLine($"| verify {ks[i]} | {t:F2} | {t / step:F2} | {t / ks[i]:F2} |");
        }
        if (profiler is null) return 0;
        // --profile: where each pass's time goes, op by op (each op synchronized), after the timings above.
        for (int i = 0; i <= ks.Length; i++)
        {
            profiler.Reset();
            profiler.Enabled = true;
            const int passes = 10;
            for (int r = 0; r < passes; r++)
            {
                if (i == 0) model.ForwardArgmax(state, rows.AsSpan(0, 1), promptLen);
                else model.ForwardVerify(state, rows.AsSpan(0, ks[i - 1]), promptLen, logits.AsSpan(0, ks[i - 1] * vocab));
            }
            profiler.Enabled = false;
            o.WriteLine();
            WriteProfile(i == 0 ? "decode step" : $"verify {ks[i - 1]}", profiler, passes, "pass");
        }
        return 0;
    }

    /// <summary>The profiler's ops per <paramref name="unit"/> (of <paramref name="n"/>), by time: ms, calls, share, GB/s.</summary>
    private static void WriteProfile(string title, ProfilingBackend profiler, int n, string unit)
    {
        var rows = profiler.Report().ToList();
        double total = rows.Sum(r => r.Ms) / n;
        var o = Console.Out;
        o.WriteLine($"{title}, {total:F3} ms/{unit} in ops (each op synchronized)");
        o.WriteLine($"{"op",-44} {"ms/" + unit,9} {"calls/" + unit,10} {"share",7} {"GB/s",8}");
        foreach (var r in rows)
            o.WriteLine($"{r.Op,-44} {r.Ms / n,9:F3} {(double)r.Calls / n,10:F1} {r.Ms / n / total,7:P1} {(r.GBs > 0 ? r.GBs.ToString("F1") : ""),8}");
    }

    private static double Median(IEnumerable<double> x)
    {
        var a = x.Order().ToArray();
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    private static double Std(List<double> x)
    {
        double m = x.Average();
        return x.Count < 2 ? 0 : Math.Sqrt(x.Sum(v => (v - m) * (v - m)) / (x.Count - 1));
    }

    /// <summary>
    /// `bench ptx`: every kernel compiled to PTX per --arch and, with ptxas found ($LRL_PTXAS, the fetch-ptxas cache,
    /// PATH), assembled: a table of registers, shared memory, stack and spills; exit 1 on any error or spill.
    /// </summary>
    private int RunPtx()
    {
        var archs = Arch.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(a =>
        {
            var m = System.Text.RegularExpressions.Regex.Match(a, @"^sm_(\d+)$");
            int sm = m.Success ? int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
            return sm is >= 50 and <= 90
                ? (Name: a, Arch: new ILGPU.Runtime.Cuda.CudaArchitecture(sm / 10, sm % 10))
                : throw new LrlException($"--arch '{a}' is not a CUDA architecture from sm_50 to sm_90 (what ptxas 11.8 assembles)");
        }).ToList();
        if (archs.Count == 0) throw new LrlException("--arch lists no architecture");
        var ptxas = Lrl.Gpu.PtxCheck.FindPtxas();
        var log = Console.Error;
        log.WriteLine(ptxas is null ? "ptxas not found ($LRL_PTXAS, bench/fetch-ptxas.sh, PATH): compiling to PTX only" : $"assembling with {ptxas}");
        if (PtxOut is not null) Directory.CreateDirectory(PtxOut);
        var rows = new List<Lrl.Gpu.PtxCheck.Assembled>();
        int kernels = 0;
        bool failed = false;
        foreach (var (archName, arch) in archs)
        {
            foreach (var (k, ptx) in Lrl.Gpu.PtxCheck.Compile(arch))
            {
                kernels++;
                if (PtxOut is not null) File.WriteAllText(Path.Combine(PtxOut, System.Text.RegularExpressions.Regex.Replace(k.Name, "[^A-Za-z0-9_.]", "_") + $".{archName}.ptx"), ptx);
                if (ptxas is null) continue;
                var r = Lrl.Gpu.PtxCheck.Assemble(ptxas, k.Name, ptx, archName);
                rows.Add(r);
                failed |= r.Error is not null || r.SpillStoreBytes > 0 || r.SpillLoadBytes > 0;
            }
        }
        if (ptxas is null)
        {
            Console.Out.WriteLine($"{kernels} kernel compilations to PTX ({string.Join(", ", archs.Select(a => a.Name))}) succeeded; no ptxas to assemble them");
            return 0;
        }
        Console.Out.WriteLine("| kernel | arch | registers | shared bytes | stack bytes | spill stores | spill loads | |");
        Console.Out.WriteLine("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
        foreach (var r in rows)
            Console.Out.WriteLine($"| {r.Kernel} | {r.Arch} | {r.Registers} | {r.SharedBytes} | {r.StackBytes} | {r.SpillStoreBytes} | {r.SpillLoadBytes} | {(r.Error ?? (r.SpillStoreBytes + r.SpillLoadBytes > 0 ? "SPILLS" : "ok"))} |");
        Console.Out.WriteLine($"{rows.Count} kernel builds, {rows.Count(r => r.Error is null)} assembled, most registers {rows.Max(r => r.Registers)}, " +
                              $"most shared memory {rows.Max(r => r.SharedBytes)} bytes, spills in {rows.Count(r => r.SpillStoreBytes + r.SpillLoadBytes > 0)}");
        return failed ? 1 : 0;
    }

    private int RunProfile(ILanguageModel model, ProfilingBackend profiler, LoraAdapter[] adapters)
    {
        int n = Math.Max(GenTokens, 8);
        var logits = new float[model.VocabSize];
        var one = new int[1];
        // With --batch B: the profile of a batched decode step of B sequences (per step, not per token).
        int b = Batch.Any() ? Batch.Max() : 1;
        // With adapters (--lora, --lora-random N: the most given), every sequence runs them.
        if (b == 1 && adapters.Length > 0) b = -1;
        var states = b != 1 ? Enumerable.Range(0, Math.Abs(b)).Select(_ => model.CreateState()).ToArray() : [];
        foreach (var st in states) ((ModelBase)model).SetAdapters(st, adapters);
        if (b < 0) b = 1;
        bool own = states.Length > 0;
        var batch = new StepBatch(b);
        var outB = new float[b * model.VocabSize];
        void Decode()
        {
            for (int i = 0; i < n; i++)
            {
                if (b == 1 && !own) { one[0] = i % model.VocabSize; model.Forward(one, i, logits); continue; }
                batch.Clear();
                for (int j = 0; j < b; j++) batch.Add(states[j], [(i + j) % model.VocabSize], i);
                model.Forward(batch, outB);
            }
        }
        EndToEndBench.WarmUp(Decode);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Decode();
        double before = clock.Elapsed.TotalMilliseconds / n;
        profiler.Enabled = true;
        Decode();
        profiler.Enabled = false;
        // Timed again after the profiled pass, so a machine whose speed drifts shows it (the two should agree).
        clock.Restart();
        Decode();
        double after = clock.Elapsed.TotalMilliseconds / n;
        double unprofiled = (before + after) / 2;
        if (b > 1) Console.Out.WriteLine($"batched decode of {b} sequences: figures per step ({b} tokens)");
        WriteProfile($"decode profile over {n} tokens: {unprofiled:F3} ms/token unprofiled ({before:F3} before, {after:F3} after the profiled pass)", profiler, n, "token");
        return 0;
    }
}
