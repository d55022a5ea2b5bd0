using CommandLine;
using Lrl.Bench;

namespace Lrl.Cli;

[Verb("synth", HelpText = "Write a random-weight checkpoint in the shapes of a real model family (models/presets), for benchmarks.")]
public sealed class SynthVerb
{
    /// <summary>Shown under the options by `lrlrun synth --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun synth --preset SmolLM2-135M --dtype bf16 --out /tmp/smollm2-135m-random",
    ];

    [Option("preset", Required = true, HelpText = "Preset name: a file in models/presets, e.g. SmolLM2-135M.")]
    public string Preset { get; set; } = "";

    [Option("dtype", Default = "bf16", HelpText = "f32, f16 or bf16 (quantize the result with `lrlrun quantize`).")]
    public string DType { get; set; } = "bf16";

    [Option('o', "out", Required = true, HelpText = "Output model folder.")]
    public string Out { get; set; } = "";

    [Option("force", HelpText = "Replace an existing output folder.")]
    public bool Force { get; set; }

    public int Run()
    {
        Synthesizer.Write(Preset, DType, Out, Console.Error, Force);
        Console.Error.WriteLine($"wrote {Path.GetFullPath(Out)}");
        return 0;
    }
}
