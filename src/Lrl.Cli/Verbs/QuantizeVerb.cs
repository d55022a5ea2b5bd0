using CommandLine;
using Lrl.Quant;

namespace Lrl.Cli;

[Verb("quantize", HelpText = "Quantize a model's Linear weights to int8 or int4 (group-wise, f16 scales) into a new model folder.")]
public sealed class QuantizeVerb
{
    /// <summary>Shown under the options by `lrlrun quantize --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun quantize --model ../shared/models/stories260k --bits 8 --out /tmp/stories260k-q8",
        "lrlrun quantize --model ../shared/models/stories260k --bits 4 --group auto --calibration self --out /tmp/stories260k-q4",
    ];

    [Option('m', "model", Required = true, HelpText = "Input model folder.")]
    public string Model { get; set; } = "";

    [Option("bits", Default = 8, HelpText = "8 or 4.")]
    public int Bits { get; set; }

    [Option("group", Default = "auto", HelpText = "auto (FineQuant adaptive: per-channel down to 32 where outliers need it), 32, 64, 128 or channel.")]
    public string Group { get; set; } = "auto";

    [Option("zero-points", HelpText = "int4 only: an asymmetric zero point per group.")]
    public bool ZeroPoints { get; set; }

    [Option("quantize-embeddings", HelpText = "Quantize every embedding table (token and positional) at --bits.")]
    public bool QuantizeEmbeddings { get; set; }

    [Option("embedding-bits", Default = 8, HelpText = "Bits of the token embeddings and a tied LM head (read in full for every decoded token): 8, 4, or 0 to keep them as stored.")]
    public int EmbeddingBits { get; set; }

    [Option("calibration", HelpText = "GPTQ: a text file whose tokens calibrate each layer's rounding (error compensation through its inputs' Hessian), or 'self' for text the model samples itself. Slow for large models (O(rows·cols²) per matrix).")]
    public string? Calibration { get; set; }

    [Option("calibration-tokens", Default = 2048, HelpText = "Calibration tokens used (at most).")]
    public int CalibrationTokens { get; set; }

    [Option('o', "out", Required = true, HelpText = "Output model folder (written to a temporary folder, then renamed).")]
    public string Out { get; set; } = "";

    [Option("force", HelpText = "Replace an existing output folder.")]
    public bool Force { get; set; }

    public int Run()
    {
        if (ZeroPoints && Bits != 4) throw new LrlException("--zero-points applies to --bits 4 only");
        if (CalibrationTokens < 2) throw new LrlException($"--calibration-tokens must be ≥ 2, got {CalibrationTokens}");
        // One line per tensor only when stderr is not a terminal (a log); on a terminal, a progress bar over the tensors.
        bool terminal = !Console.IsErrorRedirected;
        var bar = new ProgressBar("quantizing", terminal: terminal);
        var log = new SyncProgress<string>(m => { if (!terminal) Console.Error.WriteLine(m); });
        Dictionary<string, double[]>? hessians = null;
        if (Calibration is not null)
        {
            var sequences = CalibrationText();
            Console.Error.WriteLine($"calibrating on {sequences.Sum(s => s.Length)} tokens in {sequences.Count} sequences ({Calibration})");
            hessians = Lrl.Quantization.Calibration.CollectHessians(Model, sequences);
        }
        var options = new QuantizeOptions
        {
            Bits = Bits, Group = Group, Asymmetric = ZeroPoints, QuantizeEmbeddings = QuantizeEmbeddings, EmbeddingBits = EmbeddingBits, Overwrite = Force,
            Hessians = hessians,
            OnTensor = (done, total, name) => { if (terminal) bar.Report(done, total, name); },
        };
        var report = Quantizer.QuantizeModel(Model, Out, options, log);
        bar.Done();
        Console.Error.WriteLine($"wrote {report.OutputDirectory}: {report.InputBytes / 1e6:F2} MB of weights -> {report.OutputBytes / 1e6:F2} MB " +
                                $"({(double)report.OutputBytes / Math.Max(1, report.InputBytes):P0})");
        Console.Out.WriteLine(report.OutputDirectory);
        return 0;
    }

    /// <summary>
    /// Calibration sequences: a file's text in windows of up to 512 tokens, or ('self', data-free) sequences the model
    /// samples from its BOS (temperature 0.85), each run from position 0 as generation sees them.
    /// </summary>
    private List<int[]> CalibrationText()
    {
        using var model = LrlModel.Load(Model);
        int window = Math.Min(512, model.Model.ContextLength);
        var sequences = new List<int[]>();
        if (Calibration == "self")
        {
            int count = 0;
            int length = Math.Min(256, window);
            var options = new GenerationOptions { MaxTokens = length - 1, Sampling = new() { Temperature = 0.85f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 1 } };
            var prompt = model.Tokenizer.BosId is int bos ? new[] { bos } : model.Tokenizer.Encode(" ", true);
            for (int i = 0; count < CalibrationTokens && i < 4 * Math.Max(1, CalibrationTokens / 16); i++)
            {
                var ids = new List<int>(prompt);
                ids.AddRange(model.Generate(prompt, options with { Sampling = options.Sampling with { Seed = i + 1 } }).Where(t => t.Id >= 0).Select(t => t.Id));
                var seq = ids.Take(CalibrationTokens - count).ToArray();
                if (seq.Length < 2) continue;
                sequences.Add(seq);
                count += seq.Length;
            }
            return sequences;
        }
        if (!File.Exists(Calibration)) throw new LrlException($"--calibration {Calibration}: file not found (or use 'self')");
        var tokens = model.Tokenizer.Encode(File.ReadAllText(Calibration), addSpecial: true).Take(CalibrationTokens).ToArray();
        for (int start = 0; start < tokens.Length; start += window) sequences.Add(tokens[start..Math.Min(tokens.Length, start + window)]);
        return sequences;
    }
}
