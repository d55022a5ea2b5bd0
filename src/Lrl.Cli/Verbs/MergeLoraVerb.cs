using CommandLine;
using Lrl.Loading;

namespace Lrl.Cli;

[Verb("merge-lora", HelpText = "Merge LoRA adapters (Hugging Face PEFT folders) into a model, writing a new checkpoint (quantize it afterwards as usual).")]
public sealed class MergeLoraVerb
{
    /// <summary>Shown under the options by `lrlrun merge-lora --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun merge-lora --model ../shared/models/stories260k --lora models/adapters/stories260k-demo --out /tmp/stories260k-merged",
        "lrlrun merge-lora --model base --lora models/adapters/stories260k-demo:0.7:0.3 --out merged && lrlrun quantize --model merged --bits 4 --out merged-q4",
    ];

    [Option('m', "model", Required = true, HelpText = "Base model folder (unquantized: f32, f16 or bf16).")]
    public string Model { get; set; } = "";

    [Option("lora", Required = true, Separator = ',', HelpText = "Adapter folder(s): DIR or DIR:SCALE, comma-separated or repeated; each adds SCALE·(alpha/r)·B·A.")]
    public IEnumerable<string> Lora { get; set; } = [];

    [Option('o', "out", Required = true, HelpText = "Output model folder (written to a temporary folder, then renamed).")]
    public string Out { get; set; } = "";

    [Option("force", HelpText = "Replace an existing output folder.")]
    public bool Force { get; set; }

    public int Run()
    {
        var adapters = Lora.Select(ModelVerbBase.ParseLora).ToList();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var r = LoraMerger.Merge(Model, adapters, Out, Force, new SyncProgress<string>(Console.Error.WriteLine));
        Console.Error.WriteLine($"wrote {r.OutDir}: {r.ModulesMerged} matrices merged, {r.TensorsReplaced} replaced, vocabulary {r.VocabSize}, " +
                                $"{r.Bytes / 1e6:F1} MB in {clock.Elapsed.TotalSeconds:F1} s");
        return 0;
    }
}
