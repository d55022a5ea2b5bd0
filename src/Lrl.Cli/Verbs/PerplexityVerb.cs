using System.Text;
using CommandLine;
using Lrl.Runtime;

namespace Lrl.Cli;

[Verb("perplexity", HelpText = "Perplexity and bits per byte of a text file (sliding window).")]
public sealed class PerplexityVerb : ModelVerbBase
{
    /// <summary>Shown under the options by `lrlrun perplexity --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun perplexity --model ../shared/models/stories260k --file tests/Lrl.Quant.Tests/data/heldout.txt --context 256 --stride 128",
        "lrlrun perplexity --model ../shared/models/stories260k --file tests/Lrl.Quant.Tests/data/heldout.txt --lora models/adapters/stories260k-demo",
    ];

    [Option('f', "file", Required = true, HelpText = "UTF-8 text file.")]
    public string File { get; set; } = "";

    [Option("stride", Default = 0, HelpText = "Window step in tokens; 0 = the window length (non-overlapping). Smaller strides give each token more context.")]
    public int Stride { get; set; }

    [Option("json", HelpText = "Print the result as JSON.")]
    public bool Json { get; set; }

    public int Run()
    {
        if (!System.IO.File.Exists(File)) throw new LrlException($"--file {File}: not found");
        var text = System.IO.File.ReadAllText(File, Encoding.UTF8);
        using var model = LoadModel();
        var tokens = model.Tokenizer.Encode(text, addSpecial: true);
        long bytes = Encoding.UTF8.GetByteCount(text);
        int context = Context > 0 ? Context : Math.Min(model.Model.ContextLength, 1024);
        context = Math.Min(context, model.Model.ContextLength);
        Console.Error.WriteLine($"{File}: {bytes} bytes, {tokens.Length} tokens; window {context}, stride {(Stride == 0 ? context : Stride)}");
        var adapters = LoadAdapters(model);
        // With adapters, the base model first and then the adapted one on the same tokens: the comparison a
        // language-adaptation user makes (bits per byte does not depend on the tokenizer).
        var runs = new List<(string Label, PerplexityResult R, double Seconds)>();
        foreach (var with in adapters.Count > 0 ? new[] { Array.Empty<Lrl.Models.LoraAdapter>(), adapters.ToArray() } : [[]])
        {
            string label = with.Length == 0 ? "base" : "lora " + string.Join("+", with.Select(a => a.Name));
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var bar = new ProgressBar(adapters.Count > 0 ? $"windows ({label})" : "windows");
            using var state = model.Model.CreateState();
            ((Lrl.Models.ModelBase)model.Model).SetAdapters(state, with);
            var r = PerplexityEvaluator.Evaluate(model.Model, tokens, bytes, context, Stride,
                new SyncProgress<(int Done, int Total)>(p => bar.Report(p.Done, p.Total)), state);
            bar.Done();
            runs.Add((label, r, clock.Elapsed.TotalSeconds));
        }
        foreach (var (label, r, seconds) in runs)
        {
            if (Json)
                Console.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(new
                {
                    model = model.Directory, format = model.Model.WeightFormat, adapters = label, file = File, bytes, tokens = tokens.Length,
                    context, stride = Stride == 0 ? context : Stride, perplexity = r.Perplexity, bits_per_byte = r.BitsPerByte,
                    tokens_scored = r.TokensScored, seconds,
                }));
            else
                Console.Out.WriteLine($"{(adapters.Count > 0 ? label + ": " : "")}perplexity {r.Perplexity:F4} | bits per byte {r.BitsPerByte:F4} | {r.TokensScored} tokens scored in {r.Windows} windows " +
                                      $"| {model.Model.WeightFormat} | {seconds:F1} s");
        }
        if (runs.Count == 2 && !Json)
            Console.Out.WriteLine($"bits per byte: base {runs[0].R.BitsPerByte:F4} → {runs[1].Label} {runs[1].R.BitsPerByte:F4} ({runs[1].R.BitsPerByte - runs[0].R.BitsPerByte:+0.0000;-0.0000})");
        return 0;
    }
}
