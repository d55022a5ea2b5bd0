using System.Diagnostics;
using Lrl.Loading;
using Lrl.Tokenization;

namespace Lrl.Fuzz.Tests;

/// <summary>
/// Hostile input never crashes the loaders: seeded mutations of real model folders, tokenizers and a quantized
/// folder, each run through the config, checkpoint, tokenizer and model loaders (and a short generation) in process.
/// Any exception other than lrlrun's own <see cref="LrlException"/> (with its file and field) is a crash; so is a case
/// that does not finish. `LRL_FUZZ_CASES=N` sets the cases per seed (default 250, about 3,000 cases in all; a long run:
/// `LRL_FUZZ_CASES=20000 LRL_FUZZ_SEED=7 dotnet test tests/Lrl.Fuzz.Tests`).
/// </summary>
public sealed class LoaderFuzzTests
{
    private static int Cases => int.TryParse(Environment.GetEnvironmentVariable("LRL_FUZZ_CASES"), out var n) && n > 0 ? n : 250;
    private static int BaseSeed => int.TryParse(Environment.GetEnvironmentVariable("LRL_FUZZ_SEED"), out var s) ? s : 1;

    public static TheoryData<string> Seeds => new(
        "models/stories260k", "models/stories260k-bf16-sharded", "models/capp-gpt2-tiny", "models/rwkv-tiny-5v2-730K", "models/rwkv-tiny-7v0-834K",
        "quantized/stories260k-q4", "tokenizers/mistral-v0.3-model", "tokenizers/bpemb-en-spm", "tokenizers/naijaml-yor-json",
        "tokenizers/phi3-mini-json", "tokenizers/whisper-v3-json", "tokenizers/smollm-135m-json");

    private static readonly Lazy<string> Quantized = new(() =>
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory("lrl-fuzz-q").FullName, "stories260k-q4");
        Lrl.Quant.Quantizer.QuantizeModel(SeedDir("models/stories260k"), dir, new Lrl.Quant.QuantizeOptions { Bits = 4, Group = "32" });
        return dir;
    });

    private static string SeedDir(string seed)
    {
        if (seed.StartsWith("quantized/", StringComparison.Ordinal)) return Quantized.Value;
        if (SharedData.Root is null) Assert.Skip("shared/ not found (set LRL_SHARED)");
        var dir = Path.Combine(SharedData.Root!, seed);
        if (!Directory.Exists(dir)) Assert.Skip($"{seed} not present");
        return dir;
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public void MutatedFoldersGiveLrlErrorsNeverCrashes(string seed)
    {
        var source = SeedDir(seed);
        var crashes = new Dictionary<string, string>();
        int run = 0, clean = 0, refused = 0;
        var work = Directory.CreateTempSubdirectory("lrl-fuzz").FullName;
        for (int i = 0; i < Cases; i++)
        {
            int caseSeed = (int)(((long)BaseSeed * 1_000_003 + seed.Sum(c => c) * 7_919L + i * 104_729L) & 0x7FFFFFFF);
            var dir = Path.Combine(work, i.ToString());
            Directory.CreateDirectory(dir);
            foreach (var f in Directory.GetFiles(source)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var mutator = new Mutator(caseSeed);
            var what = mutator.MutateFolder(dir);
            if (caseSeed % 3 == 0) what += "; " + mutator.MutateFolder(dir);
            var outcome = Run(dir, out var crash);
            run++;
            if (outcome == Outcome.Clean) clean++;
            else if (outcome == Outcome.Refused) refused++;
            else crashes.TryAdd(crash!, $"case {i} (seed {caseSeed}): {what}");
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
        TestContext.Current.SendDiagnosticMessage($"{seed}: {run} cases, {clean} loaded, {refused} refused with an LrlException, {crashes.Count} crash classes");
        Assert.True(crashes.Count == 0, $"{seed}: {crashes.Count} crash classes in {run} cases:\n" +
            string.Join("\n", crashes.Select(kv => $"{kv.Key}\n    {kv.Value}")));
    }

    private enum Outcome { Clean, Refused, Crash }

    /// <summary>Every loader on the folder; a crash is named by the exception type and the lrlrun frame it came from.</summary>
    private static Outcome Run(string dir, out string? crash)
    {
        var outcome = Outcome.Clean;
        string? found = null;
        void Step(string name, Action action)
        {
            if (found is not null) return;
            var task = Task.Run(action);
            try
            {
                if (!task.Wait(TimeSpan.FromSeconds(30))) { found = $"{name}: no result after 30 s (hang)"; return; }
            }
            catch (AggregateException ae) when (ae.InnerException is LrlException) { outcome = Outcome.Refused; }
            catch (AggregateException ae)
            {
                var e = ae.InnerException!;
                var frame = new StackTrace(e).GetFrames().Select(f => f.GetMethod()).FirstOrDefault(m => m?.DeclaringType?.Namespace?.StartsWith("Lrl", StringComparison.Ordinal) == true);
                found = $"{name}: {e.GetType().Name} at {frame?.DeclaringType?.Name}.{frame?.Name}: {Short(e.Message)}";
            }
        }
        Step("config", () => ModelConfig.Load(dir));
        Step("checkpoint", () =>
        {
            if (!Directory.GetFiles(dir, "*.safetensors").Any()) return;
            using var ck = Checkpoint.Open(dir);
            foreach (var t in ck.Tensors) _ = (t.ElementCount, t.ByteLength, t.ShapeString);
        });
        Step("tokenizer", () =>
        {
            var tok = LrlTokenizer.Load(dir);
            var ids = tok.Encode("Hello wörld 123 ሰላም <s> \t\n", addSpecial: true);
            _ = tok.Decode(ids);
            var d = tok.CreateStreamingDecoder();
            foreach (var id in ids) _ = d.Push(id);
            _ = d.Flush();
        });
        Step("model", () =>
        {
            if (!File.Exists(Path.Combine(dir, "config.json"))) return;
            using var model = LrlModel.Load(dir, new ModelOptions { Threads = 1, ContextLength = 64 });
            _ = model.Generate("Once upon", new GenerationOptions { MaxTokens = 3, Sampling = Lrl.Runtime.SamplingOptions.Greedy }).ToList();
        });
        crash = found;
        return found is not null ? Outcome.Crash : outcome;
    }

    private static string Short(string s) => s.Length <= 160 ? s : s[..160] + "…";
}
