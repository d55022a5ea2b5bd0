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
    ];

    [Value(0, MetaName = "what", Required = false, HelpText = "Omit for end-to-end; 'kernels' for kernel microbenchmarks.")]
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

    [Option("json", HelpText = "Print JSON.")]
    public bool Json { get; set; }

    [Option("csv", HelpText = "Print CSV.")]
    public bool Csv { get; set; }

    [Option("plot", HelpText = "Also write a bar chart of the results to this file: PNG or SVG by its extension (.png, .svg).")]
    public string? Plot { get; set; }

    public int Run()
    {
        if (string.Equals(What, "kernels", StringComparison.OrdinalIgnoreCase))
        {
            using var kb = Backends.Create(ModelVerbBase.ParseDevice(DeviceName), Threads);
            return Lrl.Gpu.KernelBenchmark.Run(kb, Json, Console.Out, Math.Max(20, Reps), quick: false);
        }
        if (What is not null) throw new LrlException($"bench: unknown target '{What}' (use 'kernels' or omit it)");
        if ((Model is null) == (Preset is null)) throw new LrlException("bench: give exactly one of --model DIR or --preset NAME");
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
        int context = Math.Max(sizes.Max(), GenTokens);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = context, BatchSize = Math.Max(256, sizes.Max()) });
        string format = model.WeightFormat;

        log.WriteLine($"{name}: {model.ParameterCount / 1e6:F1}M parameters, {model.WeightBytesPerToken / 1e6:F1} MB of weights read per token ({format})");
        if (profiler is not null) return RunProfile(model, profiler);
        log.WriteLine("probing the machine: read bandwidth and FMA peak ...");
        int probeThreads = threads > 0 ? threads : Environment.ProcessorCount;
        using var probe = new MachineProbe.BandwidthProbe(probeThreads, 256L << 20);
        var probes = new List<double> { probe.Measure(5) };
        var fma = MachineProbe.FmaPeakGFlops(probeThreads);
        double Probe() { double gbs = probe.Measure(); probes.Add(gbs); return gbs; }
        var results = EndToEndBench.Run(model, name, format, threads, sizes, GenTokens, Reps,
                                        new MachineLimits(probes[0], fma), log, bandwidthProbe: inner is Lrl.Cpu.CpuBackend ? Probe : null);
        var limits = new MachineLimits(probes.Max(), fma);
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

    private int RunProfile(ILanguageModel model, ProfilingBackend profiler)
    {
        int n = Math.Max(GenTokens, 8);
        var logits = new float[model.VocabSize];
        var one = new int[1];
        void Decode() { for (int i = 0; i < n; i++) { one[0] = i % model.VocabSize; model.Forward(one, i, logits); } }
        EndToEndBench.WarmUp(Decode);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Decode();
        double unprofiled = clock.Elapsed.TotalMilliseconds / n;
        profiler.Enabled = true;
        Decode();
        profiler.Enabled = false;
        var rows = profiler.Report().ToList();
        double total = rows.Sum(r => r.Ms) / n;
        Console.Out.WriteLine($"decode profile over {n} tokens: {unprofiled:F3} ms/token unprofiled, {total:F3} ms/token in ops (each op synchronized)");
        Console.Out.WriteLine($"{"op",-44} {"ms/token",9} {"calls/tok",9} {"share",7} {"GB/s",8}");
        foreach (var r in rows)
            Console.Out.WriteLine($"{r.Op,-44} {r.Ms / n,9:F3} {(double)r.Calls / n,9:F1} {r.Ms / n / total,7:P1} {(r.GBs > 0 ? r.GBs.ToString("F1") : ""),8}");
        return 0;
    }
}
