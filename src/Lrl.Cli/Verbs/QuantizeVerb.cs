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

    [Option('o', "out", Required = true, HelpText = "Output model folder (written to a temporary folder, then renamed).")]
    public string Out { get; set; } = "";

    [Option("force", HelpText = "Replace an existing output folder.")]
    public bool Force { get; set; }

    public int Run()
    {
        var options = new QuantizeOptions
        {
            Bits = Bits, Group = Group, Asymmetric = ZeroPoints, QuantizeEmbeddings = QuantizeEmbeddings, Overwrite = Force,
        };
        if (ZeroPoints && Bits != 4) throw new LrlException("--zero-points applies to --bits 4 only");
        var report = Quantizer.QuantizeModel(Model, Out, options, new Progress<string>(m => Console.Error.WriteLine(m)));
        Console.Error.WriteLine($"wrote {report.OutputDirectory}: {report.InputBytes / 1e6:F2} MB of weights -> {report.OutputBytes / 1e6:F2} MB " +
                                $"({(double)report.OutputBytes / Math.Max(1, report.InputBytes):P0})");
        Console.Out.WriteLine(report.OutputDirectory);
        return 0;
    }
}
