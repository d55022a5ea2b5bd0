using CommandLine;
using Lrl.Quant;

namespace Lrl.Cli;

[Verb("quantize", HelpText = "Quantize a model's Linear weights to int8 or int4 (group-wise, f16 scales) into a new model folder.")]
public sealed class QuantizeVerb
{
    [Option('m', "model", Required = true, HelpText = "Input model folder.")]
    public string Model { get; set; } = "";

    [Option("bits", Default = 8, HelpText = "8 or 4.")]
    public int Bits { get; set; }

    [Option("group", Default = "auto", HelpText = "auto (FineQuant adaptive: per-channel down to 32 where outliers need it), 32, 64, 128 or channel.")]
    public string Group { get; set; } = "auto";

    [Option("zero-points", HelpText = "int4 only: an asymmetric zero point per group.")]
    public bool ZeroPoints { get; set; }

    [Option("quantize-embeddings", HelpText = "Quantize the token embeddings (and a tied head) too.")]
    public bool QuantizeEmbeddings { get; set; }

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
        var log = new Progress<string>(m => Console.Error.WriteLine(m));
        Dictionary<string, double[]>? hessians = null;
        if (Calibration is not null)
        {
            var tokens = CalibrationText();
            Console.Error.WriteLine($"calibrating on {tokens.Length} tokens ({Calibration})");
            hessians = Lrl.Quantization.Calibration.CollectHessians(Model, tokens, Math.Min(512, tokens.Length));
        }
        var options = new QuantizeOptions
        {
            Bits = Bits, Group = Group, Asymmetric = ZeroPoints, QuantizeEmbeddings = QuantizeEmbeddings, Overwrite = Force,
            Hessians = hessians,
        };
        var report = Quantizer.QuantizeModel(Model, Out, options, log);
        Console.Error.WriteLine($"wrote {report.OutputDirectory}: {report.InputBytes / 1e6:F2} MB of weights -> {report.OutputBytes / 1e6:F2} MB " +
                                $"({(double)report.OutputBytes / Math.Max(1, report.InputBytes):P0})");
        Console.Out.WriteLine(report.OutputDirectory);
        return 0;
    }

    /// <summary>Calibration tokens: a file's text, or text the model samples from its BOS ('self', data-free).</summary>
    private int[] CalibrationText()
    {
        using var model = LrlModel.Load(Model);
        if (Calibration == "self")
        {
            var ids = new List<int>();
            var options = new GenerationOptions { MaxTokens = 256, Sampling = new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 1 } };
            for (int i = 0; ids.Count < CalibrationTokens && i < 64; i++)
            {
                ids.AddRange(model.Tokenizer.Encode("", addSpecial: true));
                var prompt = ids.Count > 0 && model.Tokenizer.BosId is int bos ? new[] { bos } : model.Tokenizer.Encode(" ", true);
                ids.AddRange(model.Generate(prompt, options with { Sampling = options.Sampling with { Seed = i + 1 } }).Where(t => t.Id >= 0).Select(t => t.Id));
            }
            return ids.Take(CalibrationTokens).ToArray();
        }
        if (!File.Exists(Calibration)) throw new LrlException($"--calibration {Calibration}: file not found (or use 'self')");
        return model.Tokenizer.Encode(File.ReadAllText(Calibration), addSpecial: true).Take(CalibrationTokens).ToArray();
    }
}
