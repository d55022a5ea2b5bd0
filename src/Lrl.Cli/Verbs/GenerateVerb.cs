using CommandLine;
using Lrl.Runtime;

namespace Lrl.Cli;

[Verb("generate", HelpText = "Generate text from a prompt; text streams to stdout, counts and speeds to stderr.")]
public sealed class GenerateVerb : SamplingVerbBase
{
    /// <summary>Shown under the options by `lrlrun generate --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun generate --model ../shared/models/stories260k --prompt \"Once upon a time\" --max-tokens 60 --temperature 0",
        "lrlrun generate --model ../shared/models/stories260k --prompt \"Lily and Ben\" --temperature 0.8 --top-k 40 --top-p 0.95 --seed 42",
        "lrlrun generate --model ../shared/models/stories260k --prompt \"Once upon a time\" --stop \"Lily\" --device auto",
        "lrlrun generate --model ../shared/models/stories260k --prompt \"Once upon a time\" --temperature 0 --speculative lookup",
    ];

    [Option('p', "prompt", Required = true, HelpText = "Prompt text.")]
    public string Prompt { get; set; } = "";

    [Option('n', "max-tokens", Default = 256, HelpText = "Most tokens to generate.")]
    public int MaxTokens { get; set; }

    [Option("ignore-eos", HelpText = "Keep generating past end-of-sequence.")]
    public bool IgnoreEos { get; set; }

    [Option("stop", Separator = '|', HelpText = "Stop strings, separated by '|'.")]
    public IEnumerable<string> Stop { get; set; } = [];

    [Option("truncate", HelpText = "Keep the last tokens of a prompt longer than the context instead of failing.")]
    public bool Truncate { get; set; }

    [Option("ids", HelpText = "Also print the generated token ids to stderr.")]
    public bool PrintIds { get; set; }

    public int Run()
    {
        var options = new GenerationOptions
        {
            MaxTokens = MaxTokens,
            IgnoreEos = IgnoreEos,
            StopStrings = Stop.ToArray(),
            TruncatePrompt = Truncate,
            Sampling = Sampling(),
        };
        options.Validate();
        using var model = LoadModel();
        options = WithSpeculation(options with { Adapters = LoadAdapters(model) }, out var draftModel);
        using var draftOwner = draftModel;
        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        var stdout = Console.Out;
        var ids = new List<int>();
        foreach (var t in model.Generate(Prompt, options, cts.Token))
        {
            stdout.Write(t.Text);
            stdout.Flush();
            if (t.Id >= 0) ids.Add(t.Id);
        }
        stdout.WriteLine();
        var s = model.LastStats;
        if (PrintIds) Console.Error.WriteLine($"ids: {string.Join(' ', ids)}");
        if (SpeculationLine(s) is { Length: > 0 } spec) Console.Error.WriteLine(spec);
        Console.Error.WriteLine(
            $"prompt: {s.PromptTokens} tokens, {s.PrefillTokensPerSecond:F1} tok/s | generated: {s.GeneratedTokens} tokens, " +
            $"{s.DecodeTokensPerSecond:F1} tok/s | finish: {s.FinishReason} | backend: {model.Model.Backend.Name}" +
            (options.Adapters!.Count > 0 ? $" | lora: {string.Join(", ", options.Adapters.Select(a => a.ToString()))}" : ""));
        return 0;
    }
}

/// <summary>Sampling options shared by generate, chat and serve.</summary>
public abstract class SamplingVerbBase : ModelVerbBase
{
    [Option("temperature", Default = 0.8f, HelpText = "Sampling temperature; 0 = greedy.")]
    public float Temperature { get; set; }

    [Option("top-k", Default = 40, HelpText = "Keep the k most likely tokens; 0 = off.")]
    public int TopK { get; set; }

    [Option("top-p", Default = 0.95f, HelpText = "Nucleus sampling threshold; 1 = off.")]
    public float TopP { get; set; }

    [Option("min-p", Default = 0.05f, HelpText = "Drop tokens below min-p × the top probability; 0 = off.")]
    public float MinP { get; set; }

    [Option("repeat-penalty", Default = 1.0f, HelpText = "Penalty for recently seen tokens; 1 = off.")]
    public float RepeatPenalty { get; set; }

    [Option("repeat-last-n", Default = 64, HelpText = "Tokens the repeat penalty looks back over.")]
    public int RepeatLastN { get; set; }

    [Option("seed", HelpText = "Random seed (default: random).")]
    public int? Seed { get; set; }

    [Option("frequency-penalty", Default = 0f, HelpText = "Subtract this from a token's logit per occurrence in the last --repeat-last-n tokens (OpenAI's); in [-2, 2].")]
    public float FrequencyPenalty { get; set; }

    [Option("presence-penalty", Default = 0f, HelpText = "Subtract this from the logit of tokens present in the last --repeat-last-n tokens (OpenAI's); in [-2, 2].")]
    public float PresencePenalty { get; set; }

    [Option("speculative", Default = "none", HelpText = "Speculative decoding (lossless): none, lookup (prompt n-grams), early-exit (the model's first --draft-layers layers), draft (--draft-model DIR) or heads (Medusa draft heads, --heads DIR).")]
    public string SpeculativeName { get; set; } = "none";

    [Option("draft-tokens", Default = 6, HelpText = "Most draft tokens verified per step (1..64).")]
    public int DraftTokens { get; set; }

    [Option("draft-length", Default = "cost", HelpText = "How many of --draft-tokens a step drafts: cost (the length with the most expected tokens per second, from timed steps) or acceptance (by the acceptance rate alone: steps independent of timings). Output is the same.")]
    public string DraftLengthName { get; set; } = "cost";

    [Option("draft-layers", Default = 0, HelpText = "Early exit: layers the draft runs; 0 = half the model's.")]
    public int DraftLayers { get; set; }

    [Option("draft-model", HelpText = "Draft model folder for --speculative draft (a smaller model with the same tokenizer).")]
    public string? DraftModelDir { get; set; }

    [Option("heads", HelpText = "Draft heads folder for --speculative heads (Medusa's medusa_lm_head.safetensors, or `lrlrun heads train` output).")]
    public string? HeadsDir { get; set; }

    [Option("heads-bits", Default = 0, HelpText = "With --heads: run the heads' matrices as f32 (0, as trained) or quantized per channel to 8 or 4 bits.")]
    public int HeadsBits { get; set; }

    [Option("tree", Separator = ',', HelpText = "With --speculative heads: verify a tree of candidates, this many top tokens of each head per node (e.g. 3,2,2,1); default a chain.")]
    public IEnumerable<int> Tree { get; set; } = [];

    public static SpeculativeMethod ParseSpeculative(string name) => name.ToLowerInvariant() switch
    {
        "none" or "off" => SpeculativeMethod.None,
        "lookup" or "prompt-lookup" or "ngram" => SpeculativeMethod.Lookup,
        "early-exit" or "earlyexit" or "self" => SpeculativeMethod.EarlyExit,
        "draft" or "draft-model" => SpeculativeMethod.Draft,
        "heads" or "medusa" => SpeculativeMethod.Heads,
        _ => throw new LrlException($"--speculative '{name}' is not one of none, lookup, early-exit, draft, heads"),
    };

    public static DraftLength ParseDraftLength(string name) => name.ToLowerInvariant() switch
    {
        "cost" => DraftLength.Cost,
        "acceptance" => DraftLength.Acceptance,
        _ => throw new LrlException($"--draft-length '{name}' is not one of cost, acceptance"),
    };

    /// <summary>The speculative settings of the options, loading --draft-model (dispose it with the model) when asked.</summary>
    public GenerationOptions WithSpeculation(GenerationOptions options, out LrlModel? draftModel)
    {
        var method = ParseSpeculative(SpeculativeName);
        var length = ParseDraftLength(DraftLengthName);
        draftModel = null;
        if (method == SpeculativeMethod.Draft)
        {
            if (string.IsNullOrWhiteSpace(DraftModelDir)) throw new LrlException("--speculative draft needs --draft-model DIR");
            draftModel = LrlModel.Load(DraftModelDir, new ModelOptions { Device = ParseDevice(DeviceName), Threads = Threads, ContextLength = Context, Mmap = !NoMmap });
        }
        else if (DraftModelDir is not null) throw new LrlException("--draft-model is for --speculative draft");
        Lrl.Models.DraftHeads? heads = null;
        if (method == SpeculativeMethod.Heads)
        {
            if (string.IsNullOrWhiteSpace(HeadsDir)) throw new LrlException("--speculative heads needs --heads DIR");
            heads = Lrl.Models.DraftHeads.Load(HeadsDir);
            heads.Bits = HeadsBits;
        }
        else if (HeadsDir is not null) throw new LrlException("--heads is for --speculative heads");
        else if (HeadsBits != 0) throw new LrlException("--heads-bits is for --speculative heads --heads DIR");
        var o = options with { Speculative = method, DraftTokens = DraftTokens, DraftLength = length, DraftLayers = DraftLayers, DraftModel = draftModel, DraftHeads = heads, DraftTree = Tree.Any() ? Tree.ToArray() : null };
        o.Validate();
        return o;
    }

    /// <summary>One stderr line of speculative statistics (empty without speculation).</summary>
    public static string SpeculationLine(GenerationStats s) => s.VerifySteps == 0 ? "" :
        $"speculative: {s.TokensPerStep:F2} tokens per verify step ({s.VerifySteps} steps), {s.AcceptedTokens}/{s.DraftedTokens} drafts accepted" +
        (s.AcceptedByDepth.Length > 0 ? $", by depth {string.Join(' ', s.AcceptedByDepth)}" : "");

    public SamplingOptions Sampling() => new()
    {
        Temperature = Temperature, TopK = TopK, TopP = TopP, MinP = MinP,
        RepeatPenalty = RepeatPenalty, RepeatLastN = RepeatLastN, Seed = Seed,
        FrequencyPenalty = FrequencyPenalty, PresencePenalty = PresencePenalty,
    };
}

/// <summary>Options every verb that loads a model shares.</summary>
public abstract class ModelVerbBase
{
    [Option('m', "model", Required = true, HelpText = "Model folder (config.json, *.safetensors, tokenizer).")]
    public string Model { get; set; } = "";

    [Option("device", Default = "cpu", HelpText = "cpu, cuda or auto.")]
    public string DeviceName { get; set; } = "cpu";

    [Option('t', "threads", Default = 0, HelpText = "CPU threads; 0 = one per physical core.")]
    public int Threads { get; set; }

    [Option('c', "context", Default = 0, HelpText = "Context window in tokens; 0 = the model's, capped at 4096.")]
    public int Context { get; set; }

    [Option("lora", Separator = ',', HelpText = "LoRA adapter folder(s) (Hugging Face PEFT), applied unmerged: DIR or DIR:SCALE, comma-separated or repeated.")]
    public IEnumerable<string> Lora { get; set; } = [];

    [Option("lora-precision", Default = Lrl.Models.AdapterPrecision.Auto,
            HelpText = "How --lora adapters are held: auto (int8 over int8/int4 models, else as stored), asstored, int8.")]
    public Lrl.Models.AdapterPrecision LoraPrecision { get; set; }

    [Option("no-mmap", HelpText = "Copy the weights into memory (huge pages) instead of reading the mapped file in place: slower load, faster decode.")]
    public bool NoMmap { get; set; }

    public static Device ParseDevice(string name) => name.ToLowerInvariant() switch
    {
        "cpu" => Device.Cpu,
        "cuda" or "gpu" => Device.Cuda,
        "auto" => Device.Auto,
        _ => throw new LrlException($"--device '{name}' is not one of cpu, cuda, auto"),
    };

    /// <summary>"DIR" or "DIR:SCALE" (the scale after the last ':' when it parses as a number).</summary>
    public static (string Dir, float Scale) ParseLora(string spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) throw new LrlException("--lora needs an adapter folder (DIR or DIR:SCALE)");
        int colon = spec.LastIndexOf(':');
        if (colon > 0 && float.TryParse(spec[(colon + 1)..], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out float scale))
        {
            if (!float.IsFinite(scale)) throw new LrlException($"--lora {spec}: the scale must be a finite number");
            return (spec[..colon], scale);
        }
        return (spec, 1f);
    }

    /// <summary>Loads the --lora adapters onto <paramref name="model"/> (in order; empty when none).</summary>
    public IReadOnlyList<Lrl.Models.LoraAdapter> LoadAdapters(LrlModel model) =>
        Lora.Select(ParseLora).Select(x => model.LoadAdapter(x.Dir, x.Scale, precision: LoraPrecision)).ToArray();

    public LrlModel LoadModel(int parallel = 1, int stepRows = 0, bool batchInvariant = false, long kvMemory = 0) =>
        LrlModel.Load(Model, new ModelOptions
        {
            Device = ParseDevice(DeviceName), Threads = Threads, ContextLength = Context, Mmap = !NoMmap,
            Parallel = parallel, StepRows = stepRows, BatchInvariant = batchInvariant, KvMemory = kvMemory,
        });

    /// <summary>
    /// A size in bytes from <paramref name="value"/>: a whole number of bytes or a number with a unit (K, M, G, T, with
    /// or without "iB"/"B": powers of 1024), e.g. 512M, 1.5G, 4GiB; 0 = none. Anything else names the option.
    /// </summary>
    public static long ParseBytes(string? value, string option)
    {
        if (string.IsNullOrWhiteSpace(value)) return 0;
        var v = value.Trim();
        string upper = v.ToUpperInvariant();
        int unitAt = upper.Length;
        while (unitAt > 0 && char.IsLetter(upper[unitAt - 1])) unitAt--;
        string unit = upper[unitAt..], number = v[..unitAt];
        int shift = unit switch
        {
            "" or "B" => 0,
            "K" or "KB" or "KIB" => 10,
            "M" or "MB" or "MIB" => 20,
            "G" or "GB" or "GIB" => 30,
            "T" or "TB" or "TIB" => 40,
            _ => -1,
        };
        if (shift < 0 || !double.TryParse(number, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double n)
            || !double.IsFinite(n) || n < 0 || n * Math.Pow(2, shift) >= long.MaxValue)
            throw new LrlException($"--{option} '{value}' is not a size: give bytes or a number with K, M, G or T (e.g. 512M, 4G)");
        return (long)(n * Math.Pow(2, shift));
    }
}
