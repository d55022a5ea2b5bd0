using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Lrl.Models;

namespace Lrl.Bench;

/// <summary>One llama-bench style row: a test (pp = prompt processing, tg = text generation) with its speed over repetitions.</summary>
public sealed record BenchResult(
    string Model, string Format, string Backend, int Threads, string Test, int Tokens, int Repetitions,
    double MeanTokensPerSecond, double StdDevTokensPerSecond,
    double? GBPerSecond, double? RooflineFraction, double? GFlopsPerSecond, double? FmaPeakFraction);

/// <summary>The machine limits the results are compared with (bandwidth: the largest probe of the run).</summary>
/// <summary>The machine's measured limits; <see cref="Int8PeakGOps"/> (0: not measured) is the ceiling of quantized formats' arithmetic.</summary>
public sealed record MachineLimits(double BandwidthGBs, double FmaPeakGFlops, double Int8PeakGOps = 0)
{
    /// <summary>The peak a format's products run against: int8 dot products for quantized formats ("Q…"), else f32 FMA.</summary>
    public double PeakFor(string format) => format.StartsWith('Q') && Int8PeakGOps > 0 ? Int8PeakGOps : FmaPeakGFlops;
}

/// <summary>
/// Prompt processing: one batched forward pass over p random tokens from an empty state.
/// Generation: n single-token forward passes (the first from an empty state), as llama-bench's tg test. With a
/// bandwidth probe, the generation repetitions are interleaved with probes and each repetition's roofline fraction is
/// taken against the mean of the probes on either side of it (the row reports the mean fraction over repetitions), so
/// a machine whose bandwidth shifts during a run is compared with the bandwidth of the moment.
/// </summary>
public static class EndToEndBench
{
    public static List<BenchResult> Run(ILanguageModel model, string name, string format, int threads,
        IReadOnlyList<int> promptSizes, int genTokens, int reps, MachineLimits limits, TextWriter? progress = null,
        Func<double>? bandwidthProbe = null, IReadOnlyList<int>? batches = null, IReadOnlyList<LoraAdapter>? adapters = null)
    {
        adapters ??= [];
        // With adapters, every sequence runs in a state of its own that carries them; without, the model's default state.
        using var own = adapters.Count > 0 ? model.CreateState() : null;
        if (own is not null) ((ModelBase)model).SetAdapters(own, adapters);
        void Forward(ReadOnlySpan<int> t, int pos, Span<float> l)
        {
            if (own is null) model.Forward(t, pos, l);
            else model.Forward(own, t, pos, l);
        }
        string suffix = adapters.Count > 0 ? $"+lora{adapters.Count}" : "";
        long adapterBytes = adapters.Sum(a => a.ByteSize);
        if (reps < 1) throw new LrlException($"-r must be ≥ 1, got {reps}");
        if (genTokens < 0) throw new LrlException($"-n must be ≥ 0 (0 skips generation), got {genTokens}");
        var rng = new Random(1234);
        var results = new List<BenchResult>();
        var logits = new float[model.VocabSize];
        double flopsPerToken = 2.0 * model.ParameterCount;

        foreach (int p in promptSizes)
        {
            if (p == 0) continue; // as llama-bench: -p 0 skips prompt processing
            if (p < 0 || p > model.ContextLength) throw new LrlException($"-p {p} must be between 0 (skip) and the context ({model.ContextLength})");
            var tokens = Enumerable.Range(0, p).Select(_ => rng.Next(model.VocabSize)).ToArray();
            WarmUp(() => Forward(tokens, 0, logits));
            var speeds = Repeat(reps, () => { var sw = Stopwatch.StartNew(); Forward(tokens, 0, logits); return p / sw.Elapsed.TotalSeconds; });
            double gflops = speeds.Mean * flopsPerToken / 1e9;
            results.Add(new BenchResult(name, format, model.Backend.Name, threads, $"pp{p}{suffix}", p, reps, speeds.Mean, speeds.Std,
                null, null, gflops, gflops / limits.PeakFor(format)));
            progress?.WriteLine($"  pp{p}: {speeds.Mean:F1} ± {speeds.Std:F1} tok/s");
        }

        if (genTokens > 0)
        {
            if (genTokens > model.ContextLength) throw new LrlException($"-n {genTokens} exceeds the context ({model.ContextLength})");
            var one = new int[1];
            void Generate()
            {
                for (int i = 0; i < genTokens; i++) { one[0] = rng.Next(model.VocabSize); Forward(one, i, logits); }
            }
            // Warm up for at least a second: .NET compiles a method fully optimized only after it has run a while
            // (tiered compilation), and a single pass of a fast model can end before the hot loops are promoted.
            WarmUp(Generate);
            var fractions = new List<double>();
            // The bandwidth during a repetition: the mean of the probes just before and just after it (each probe after
            // one repetition is the probe before the next), so a drift during the repetition counts half each way.
            double before = bandwidthProbe?.Invoke() ?? limits.BandwidthGBs;
            var speeds = Repeat(reps, () =>
            {
                var sw = Stopwatch.StartNew();
                Generate();
                double tps = genTokens / sw.Elapsed.TotalSeconds;
                double after = bandwidthProbe?.Invoke() ?? before, bandwidth = (before + after) / 2;
                fractions.Add(tps * (model.WeightBytesPerToken + adapterBytes) / 1e9 / bandwidth);
                if (bandwidthProbe is not null)
                    progress?.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"    tg rep: {tps:F2} tok/s = {tps * model.WeightBytesPerToken / 1e9:F1} GB/s against probes of {before:F1} before and {after:F1} GB/s after, mean {bandwidth:F1} ({fractions[^1]:P1})"));
                before = after;
                return tps;
            });
            double gbs = speeds.Mean * (model.WeightBytesPerToken + adapterBytes) / 1e9;
            results.Add(new BenchResult(name, format, model.Backend.Name, threads, $"tg{genTokens}{suffix}", genTokens, reps, speeds.Mean, speeds.Std,
                gbs, fractions.Average(), null, null));
            progress?.WriteLine($"  tg{genTokens}{suffix}: {speeds.Mean:F2} ± {speeds.Std:F2} tok/s");
        }
        foreach (int b in batches ?? [])
        {
            if (b < 1 || b > 1024) throw new LrlException($"--batch {b} must be in 1..1024");
            if (b == 1) continue; // the tg row
            if (genTokens < 1) throw new LrlException("--batch needs -n ≥ 1 (tokens each sequence decodes)");
            // Batched decode: b sequences, each decoding genTokens tokens, one row per sequence per step (StepBatch);
            // aggregate tokens per second over all of them.
            var states = Enumerable.Range(0, b).Select(_ => model.CreateState()).ToArray();
            if (adapters.Count > 0) foreach (var st in states) ((ModelBase)model).SetAdapters(st, adapters);
            try
            {
                var batch = new StepBatch(b);
                var out_ = new float[b * model.VocabSize];
                void Decode()
                {
                    for (int i = 0; i < genTokens; i++)
                    {
                        batch.Clear();
                        foreach (var st in states) batch.Add(st, [rng.Next(model.VocabSize)], i);
                        model.Forward(batch, out_);
                    }
                }
                WarmUp(Decode);
                var speeds = Repeat(reps, () => { var sw = Stopwatch.StartNew(); Decode(); return (double)b * genTokens / sw.Elapsed.TotalSeconds; });
                results.Add(new BenchResult(name, format, model.Backend.Name, threads, $"tg{genTokens}x{b}{suffix}", genTokens * b, reps, speeds.Mean, speeds.Std,
                    null, null, speeds.Mean * flopsPerToken / 1e9, speeds.Mean * flopsPerToken / 1e9 / limits.PeakFor(format)));
                progress?.WriteLine($"  tg{genTokens}x{b}: {speeds.Mean:F2} ± {speeds.Std:F2} tok/s (all {b} sequences)");
            }
            finally { foreach (var st in states) st.Dispose(); }
        }
        return results;
    }

    /// <summary>
    /// One row per test from rounds of single repetitions (each round's rows in the same order): the mean and standard
    /// deviation over the rounds; GB/s and GFLOP/s scale with the mean, the roofline fraction is the rounds' average.
    /// </summary>
    public static List<BenchResult> MergeRounds(IReadOnlyList<List<BenchResult>> rounds)
    {
        if (rounds.Count == 1) return rounds[0];
        var merged = new List<BenchResult>();
        for (int i = 0; i < rounds[0].Count; i++)
        {
            var rows = rounds.Select(r => r[i]).ToArray();
            var first = rows[0];
            double mean = rows.Average(r => r.MeanTokensPerSecond);
            double std = Math.Sqrt(rows.Sum(r => (r.MeanTokensPerSecond - mean) * (r.MeanTokensPerSecond - mean)) / Math.Max(1, rows.Length - 1));
            double scale = mean / first.MeanTokensPerSecond;
            merged.Add(first with
            {
                Repetitions = rows.Length, MeanTokensPerSecond = mean, StdDevTokensPerSecond = std,
                GBPerSecond = first.GBPerSecond * scale, GFlopsPerSecond = first.GFlopsPerSecond * scale,
                FmaPeakFraction = first.FmaPeakFraction * scale,
                RooflineFraction = rows.All(r => r.RooflineFraction is not null) ? rows.Average(r => r.RooflineFraction!.Value) : null,
            });
        }
        return merged;
    }

    /// <summary>Runs <paramref name="once"/> at least once and until a second has passed (at most 20 times).</summary>
    public static void WarmUp(Action once)
    {
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 20 && (i == 0 || sw.Elapsed.TotalSeconds < 1); i++) once();
    }

    private static (double Mean, double Std) Repeat(int reps, Func<double> once)
    {
        var v = Enumerable.Range(0, reps).Select(_ => once()).ToArray();
        double mean = v.Average();
        double std = reps > 1 ? Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / (reps - 1)) : 0;
        return (mean, std);
    }

    public static string ToMarkdown(IEnumerable<BenchResult> rows, MachineLimits limits)
    {
        var sb = new StringBuilder();
        string int8 = limits.Int8PeakGOps > 0 ? string.Create(CultureInfo.InvariantCulture, $", int8 dot peak {limits.Int8PeakGOps:F0} GOP/s (quantized formats' 'of peak')") : "";
        sb.AppendLine(CultureInfo.InvariantCulture, $"machine: read bandwidth {limits.BandwidthGBs:F1} GB/s, f32 FMA peak {limits.FmaPeakGFlops:F0} GFLOP/s{int8}");
        sb.AppendLine();
        sb.AppendLine("| model | format | backend | threads | test | t/s | GB/s | roofline | GFLOP/s | of peak |");
        sb.AppendLine("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
        foreach (var r in rows)
            sb.AppendLine(CultureInfo.InvariantCulture,
                $"| {r.Model} | {r.Format} | {r.Backend} | {r.Threads} | {r.Test} | {r.MeanTokensPerSecond:F2} ± {r.StdDevTokensPerSecond:F2} | " +
                $"{F(r.GBPerSecond, "F1")} | {P(r.RooflineFraction)} | {F(r.GFlopsPerSecond, "F1")} | {P(r.FmaPeakFraction)} |");
        return sb.ToString();
    }

    public static string ToCsv(IEnumerable<BenchResult> rows)
    {
        var sb = new StringBuilder("model,format,backend,threads,test,tokens,reps,tps_mean,tps_std,gbps,roofline,gflops,fma_fraction\n");
        foreach (var r in rows)
            sb.AppendLine(string.Join(',', r.Model, r.Format, r.Backend, r.Threads, r.Test, r.Tokens, r.Repetitions,
                Inv(r.MeanTokensPerSecond), Inv(r.StdDevTokensPerSecond), Inv(r.GBPerSecond), Inv(r.RooflineFraction),
                Inv(r.GFlopsPerSecond), Inv(r.FmaPeakFraction)));
        return sb.ToString();
    }

    public static string ToJson(IEnumerable<BenchResult> rows, MachineLimits limits) =>
        JsonSerializer.Serialize(new { machine = limits, results = rows }, new JsonSerializerOptions { WriteIndented = true });

    private static string F(double? v, string fmt) => v?.ToString(fmt, CultureInfo.InvariantCulture) ?? "";
    private static string P(double? v) => v is double d ? (d * 100).ToString("F1", CultureInfo.InvariantCulture) + " %" : "";
    private static string Inv(double? v) => v?.ToString("G6", CultureInfo.InvariantCulture) ?? "";
}
