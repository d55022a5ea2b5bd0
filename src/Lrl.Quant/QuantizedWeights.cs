using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Lrl.Loading;

namespace Lrl.Quant;

/// <summary>
/// Finds and reads quantized Linear weights in a checkpoint: lrlrun's own format (X.qweight + X.scales, described by
/// the file's "lrlrun.quant" metadata), GPTQ and AWQ (X.qweight/X.qzeros/X.scales[/X.g_idx] with config.json's
/// quantization_config), converted into <see cref="QuantizedTensor"/>'s layout.
/// </summary>
public static unsafe class QuantizedWeights
{
    private sealed class MetaBox(QuantMetadata? meta) { public QuantMetadata? Meta { get; } = meta; }
    private static readonly ConditionalWeakTable<SafeTensorsFile, MetaBox> FileMeta = new();
    private static readonly ConditionalWeakTable<Checkpoint, QuantConfig> Configs = new();

    /// <summary>"model.layers.0.mlp.up_proj.weight" → "model.layers.0.mlp.up_proj".</summary>
    public static string BaseName(string weightName) =>
        weightName.EndsWith(".weight", StringComparison.Ordinal) ? weightName[..^".weight".Length] : weightName;

    /// <summary>Whether <paramref name="weightName"/> ("X.weight") is stored quantized (X.qweight exists).</summary>
    public static bool IsQuantized(Checkpoint checkpoint, string weightName) => checkpoint.Contains(BaseName(weightName) + ".qweight");

    /// <summary>Whether the weight exists dense or quantized.</summary>
    public static bool Exists(Checkpoint checkpoint, string weightName) =>
        checkpoint.Contains(weightName) || IsQuantized(checkpoint, weightName);

    /// <summary>The lrlrun metadata of a file, or null when it has none.</summary>
    public static QuantMetadata? Metadata(SafeTensorsFile file) =>
        FileMeta.GetValue(file, f => new MetaBox(f.Metadata.TryGetValue(QuantMetadata.Key, out var json) ? QuantMetadata.Parse(json, f.Path) : null)).Meta;

    /// <summary>config.json's quantization_config of the checkpoint's folder.</summary>
    public static QuantConfig Config(Checkpoint checkpoint) => Configs.GetValue(checkpoint, c => QuantConfig.Load(c.Directory));

    /// <summary>
    /// Reads quantized weight <paramref name="weightName"/> of logical shape [rows, cols] (out, in).
    /// Any inconsistency is a <see cref="ModelFormatException"/> naming the file and tensor.
    /// </summary>
    public static QuantizedTensor Read(Checkpoint checkpoint, string weightName, int rows, int cols)
    {
        string b = BaseName(weightName);
        var qweight = checkpoint.Get(b + ".qweight");
        var file = checkpoint.Files.First(f => f.Path == qweight.Source);
        var meta = Metadata(file);
        if (meta != null) return ReadLrl(checkpoint, meta, b, qweight, rows, cols);
        var qc = Config(checkpoint);
        return qc.Method switch
        {
            "gptq" => GptqAwq.ReadGptq(checkpoint, qc, b, qweight, rows, cols),
            "awq" => GptqAwq.ReadAwq(checkpoint, qc, b, qweight, rows, cols),
            null or "lrlrun" => throw new ModelFormatException(qweight.Source,
                $"tensor '{b}.qweight': the file has no '{QuantMetadata.Key}' metadata and config.json has no quantization_config"),
            _ => throw new ModelFormatException(qweight.Source,
                $"tensor '{b}.qweight': quantization method '{qc.Method}' is not supported (lrlrun, gptq, awq)"),
        };
    }

    private static QuantizedTensor ReadLrl(Checkpoint ck, QuantMetadata meta, string b, HostTensor qweight, int rows, int cols)
    {
        string file = qweight.Source;
        if (!meta.Tensors.TryGetValue(b, out var info))
            throw new ModelFormatException(file, $"tensor '{b}.qweight' has no entry in the '{QuantMetadata.Key}' metadata");
        var (bits, group) = info;
        if (!ck.TryGet(b + ".scales", out var scales))
            throw new ModelFormatException(file, $"tensor '{b}.qweight' has no scales tensor '{b}.scales'");
        if (cols % group != 0 || (group != cols && group % 32 != 0))
            throw new ModelFormatException(file, $"tensor '{b}.qweight': group size {group} does not divide the row length {cols} (or is not a multiple of 32)");
        if (bits == 4 && cols % 2 != 0)
            throw new ModelFormatException(file, $"tensor '{b}.qweight': 4-bit rows need an even length, got {cols}");
        var (dtype, shape) = bits == 8 ? (DType.I8, new[] { rows, cols }) : (DType.U8, new[] { rows, cols / 2 });
        if (qweight.DType != dtype || !qweight.Shape.AsSpan().SequenceEqual(shape))
            throw new ModelFormatException(file,
                $"tensor '{b}.qweight' is {qweight.DType} {qweight.ShapeString}; {bits}-bit codes of a [{rows}, {cols}] weight are {dtype} [{string.Join(", ", shape)}]");
        int groups = cols / group;
        if (scales.DType != DType.F16 || scales.Rank != 2 || scales.Shape[0] != rows || scales.Shape[1] != groups)
            throw new ModelFormatException(scales.Source,
                $"tensor '{b}.scales' is {scales.DType} {scales.ShapeString}; group size {group} needs F16 [{rows}, {groups}]");
        byte* zp = null;
        if (ck.TryGet(b + ".zeros", out var zeros))
        {
            if (bits != 4 || zeros.DType != DType.U8 || zeros.Rank != 2 || zeros.Shape[0] != rows || zeros.Shape[1] != groups)
                throw new ModelFormatException(zeros.Source,
                    $"tensor '{b}.zeros' is {zeros.DType} {zeros.ShapeString}; zero points of {bits}-bit codes with group size {group} are U8 [{rows}, {groups}] (4-bit only)");
            zp = zeros.Pointer;
        }
        var q = new QuantizedTensor
        {
            Name = b + ".weight", Source = file, Bits = bits, GroupSize = group, Rows = rows, Cols = cols,
            Codes = qweight.Pointer, Scales = (Half*)scales.Pointer, Zeros = zp,
        };
        q.Validate();
        return q;
    }

    /// <summary>A pinned array (stable address for its lifetime) and its address.</summary>
    internal static T[] Pinned<T>(long length, out T* pointer) where T : unmanaged
    {
        var a = GC.AllocateUninitializedArray<T>(checked((int)length), pinned: true);
        pointer = (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(a));
        return a;
    }
}

/// <summary>config.json's quantization_config (GPTQ/AWQ/lrlrun), with defaults where a field is absent.</summary>
public sealed class QuantConfig
{
    public string Path { get; init; } = "config.json";
    /// <summary>"gptq", "awq", "lrlrun", or null when config.json has no quantization_config.</summary>
    public string? Method { get; init; }
    public int Bits { get; init; } = 4;
    /// <summary>Columns per group; -1 in the file means the whole row.</summary>
    public int GroupSize { get; init; } = 128;
    public bool DescAct { get; init; }
    /// <summary>GPTQ "checkpoint_format": "gptq" (zeros stored minus one) or "gptq_v2".</summary>
    public string CheckpointFormat { get; init; } = "gptq";

    public static QuantConfig Load(string directory)
    {
        var path = System.IO.Path.Combine(directory, "config.json");
        if (!File.Exists(path)) return new QuantConfig { Path = path };
        var cfg = ModelConfig.Load(directory);
        if (cfg.Json["quantization_config"] is not JsonObject q) return new QuantConfig { Path = path };
        try
        {
            return new QuantConfig
            {
                Path = path,
                Method = q["quant_method"]?.GetValue<string>()?.ToLowerInvariant(),
                Bits = q["bits"]?.GetValue<int>() ?? q["w_bit"]?.GetValue<int>() ?? 4,
                GroupSize = q["group_size"]?.GetValue<int>() ?? q["q_group_size"]?.GetValue<int>() ?? 128,
                DescAct = q["desc_act"]?.GetValue<bool>() ?? false,
                CheckpointFormat = q["checkpoint_format"]?.GetValue<string>() ?? "gptq",
            };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new ModelFormatException(path, $"quantization_config has a field of the wrong type: {e.Message}");
        }
    }
}
