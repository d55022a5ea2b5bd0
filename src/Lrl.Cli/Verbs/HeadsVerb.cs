using CommandLine;

namespace Lrl.Cli;

[Verb("heads", HelpText = "Draft heads for speculative decoding: `heads train` trains Medusa-1 heads for a model (the model frozen).")]
public sealed class HeadsVerb
{
    /// <summary>Shown under the options by `lrlrun heads --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun heads train --model ../shared/models/stories260k --out /tmp/stories260k-heads",
        "lrlrun generate --model ../shared/models/stories260k --prompt \"Once upon a time\" --speculative heads --heads /tmp/stories260k-heads",
        "lrlrun heads train --model M --out DIR --file text.txt --heads 3 --epochs 8 --resume",
    ];

    [Value(0, MetaName = "what", Required = true, HelpText = "train")]
    public string What { get; set; } = "";

    [Option('m', "model", Required = true, HelpText = "Model folder (the heads learn its final hidden states; it stays frozen).")]
    public string Model { get; set; } = "";

    [Option('o', "out", Required = true, HelpText = "Output folder: config.json and medusa_lm_head.safetensors (sharing the model's output projection), and the training state; written atomically after every epoch.")]
    public string Out { get; set; } = "";

    [Option("heads", Default = 4, HelpText = "Heads: head k predicts the token k + 1 positions ahead (1..64).")]
    public int Heads { get; set; }

    [Option("layers", Default = 1, HelpText = "Residual blocks per head (h + SiLU(W h + b)).")]
    public int Layers { get; set; }

    [Option("file", HelpText = "Train on this text (teacher forcing) instead of the model's own greedy continuations (self-distillation).")]
    public string? File { get; set; }

    [Option("samples", Default = 64, HelpText = "Self-distillation: sequences the model generates.")]
    public int Samples { get; set; }

    [Option("sample-prefix", Default = 12, HelpText = "Self-distillation: 1 to this many tokens (a uniform count per sequence) sampled at its start before the greedy continuation (not trained on).")]
    public int SamplePrefix { get; set; }

    [Option("length", Default = 128, HelpText = "Tokens per sequence (generated, or per window of --file).")]
    public int Length { get; set; }

    [Option("epochs", Default = 4, HelpText = "Passes over the training positions.")]
    public int Epochs { get; set; }

    [Option("lr", Default = 3e-3f, HelpText = "AdamW learning rate.")]
    public float LearningRate { get; set; }

    [Option("weight-decay", Default = 0.01f, HelpText = "AdamW weight decay.")]
    public float WeightDecay { get; set; }

    [Option("batch", Default = 32, HelpText = "Positions per optimizer step.")]
    public int Batch { get; set; }

    [Option("seed", Default = 1, HelpText = "Seed of the first tokens and the shuffling.")]
    public int Seed { get; set; }

    [Option("resume", HelpText = "Continue from the heads and optimizer state in --out.")]
    public bool Resume { get; set; }

    [Option('t', "threads", Default = 0, HelpText = "CPU threads for the model's passes (0 = one per physical core).")]
    public int Threads { get; set; }

    public int Run()
    {
        if (What != "train") throw new LrlException($"heads: unknown action '{What}' (train)");
        var options = new HeadsTrainOptions
        {
            Out = Out, Heads = Heads, Layers = Layers, TextFile = File, Samples = Samples, SamplePrefix = SamplePrefix, Length = Length, Epochs = Epochs,
            LearningRate = LearningRate, WeightDecay = WeightDecay, BatchSize = Batch, Seed = Seed, Resume = Resume,
        };
        options.Validate();
        using var model = LrlModel.Load(Model, new ModelOptions { Device = Device.Cpu, Threads = Threads });
        using var heads = HeadsTrainer.Train(model, options, Console.Error);
        Console.Error.WriteLine($"wrote {Out}: {heads.Count} heads × {heads.Layers} block(s), sharing the model's output projection");
        return 0;
    }
}
