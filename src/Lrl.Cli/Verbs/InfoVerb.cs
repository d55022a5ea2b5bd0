using CommandLine;
using Lrl.Loading;

namespace Lrl.Cli;

[Verb("info", HelpText = "Print a model folder's architecture, tensors, dtypes and parameter count.")]
public sealed class InfoVerb
{
    /// <summary>Shown under the options by `lrlrun info --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun info --model ../shared/models/stories260k-bf16-sharded",
    ];

    [Option('m', "model", Required = true, HelpText = "Model folder.")]
    public string Model { get; set; } = "";

    [Option("tensors", Default = true, HelpText = "List every tensor.")]
    public bool ListTensors { get; set; }

    [Option("check", HelpText = "Scan every tensor for NaN/infinite values and out-of-range int4 zero points (exit 2 when any).")]
    public bool Check { get; set; }

    public int Run()
    {
        var config = ModelConfig.Load(Model);
        using var ck = Checkpoint.Open(Model);
        var o = Console.Out;
        o.WriteLine($"model:        {ck.Directory}");
        o.WriteLine($"architecture: {config.Architecture ?? "(none)"}  model_type: {config.ModelType ?? "(none)"}");
        foreach (var f in new[] { "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rope_theta" })
            if (config.Has(f)) o.WriteLine($"  {f,-24} {config.Json[f]!.ToJsonString()}");
        var tensors = ck.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        long parameters = tensors.Sum(t => t.ElementCount);
        long bytes = tensors.Sum(t => t.ByteLength);
        o.WriteLine($"files:        {string.Join(", ", ck.Files.Select(f => Path.GetFileName(f.Path)))}");
        o.WriteLine($"dtypes:       {string.Join(", ", tensors.GroupBy(t => t.DType).Select(g => $"{g.Key} ×{g.Count()}"))}");
        o.WriteLine($"parameters:   {parameters:N0} ({Human(parameters)}), {bytes / 1048576.0:F2} MiB of weights");
        o.WriteLine($"tensors:      {tensors.Count}");
        if (ListTensors && !Check)
            foreach (var t in tensors) o.WriteLine($"  {t.Name,-56} {t.DType,-5} {t.ShapeString}");
        if (Check)
        {
            var findings = TensorCheck.Scan(ck);
            o.WriteLine(findings.Count == 0 ? $"check:        every value of the {tensors.Count} tensors is finite" : $"check:        {findings.Count} tensors with bad values");
            foreach (var f in findings) o.WriteLine($"  {f.Tensor}: {f.Problem}");
            if (findings.Count > 0) return 2;
        }
        return 0;
    }

    private static string Human(long n) => n >= 1_000_000_000 ? $"{n / 1e9:F2}B" : n >= 1_000_000 ? $"{n / 1e6:F2}M" : $"{n / 1e3:F1}K";
}
