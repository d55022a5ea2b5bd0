using System.Text.Json;
using System.Text.Json.Nodes;

namespace Lrl.Quant;

/// <summary>
/// The "lrlrun.quant" entry of a quantized file's safetensors <c>__metadata__</c>:
/// <c>{"version": 1, "bits": 4, "group": "auto", "tensors": {"model.layers.0.mlp.up_proj": {"bits": 4, "group": 64}, ...}}</c>.
/// Group is the number of columns sharing one scale (the row length for per-channel).
/// </summary>
public sealed class QuantMetadata
{
    public const string Key = "lrlrun.quant";
    public const int CurrentVersion = 1;

    public int Version { get; init; } = CurrentVersion;
    /// <summary>Bits requested for the model (each tensor records its own).</summary>
    public int Bits { get; init; }
    /// <summary>The group option the quantizer ran with ("auto", "32", "64", "128", "channel").</summary>
    public string Group { get; init; } = "auto";
    public Dictionary<string, (int Bits, int Group)> Tensors { get; } = new(StringComparer.Ordinal);

    public string ToJson()
    {
        var tensors = new JsonObject();
        foreach (var (name, (bits, group)) in Tensors.OrderBy(k => k.Key, StringComparer.Ordinal))
            tensors[name] = new JsonObject { ["bits"] = bits, ["group"] = group };
        return new JsonObject { ["version"] = Version, ["bits"] = Bits, ["group"] = Group, ["tensors"] = tensors }
            .ToJsonString();
    }

    /// <summary>Parses the metadata value; anything malformed is a <see cref="ModelFormatException"/> naming <paramref name="file"/>.</summary>
    public static QuantMetadata Parse(string json, string file)
    {
        ModelFormatException Bad(string what) => new(file, $"__metadata__ '{Key}': {what}");
        JsonObject root;
        try { root = JsonNode.Parse(json) as JsonObject ?? throw Bad("not a JSON object"); }
        catch (JsonException e) { throw Bad($"not valid JSON: {e.Message}"); }

        int Int(JsonObject o, string field, string where)
        {
            try { return o[field]?.GetValue<int>() ?? throw Bad($"{where}missing '{field}'"); }
            catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad($"{where}'{field}' is not an integer"); }
        }

        int version = Int(root, "version", "");
        if (version != CurrentVersion) throw Bad($"version {version} is not supported (this build reads version {CurrentVersion})");
        var meta = new QuantMetadata
        {
            Version = version,
            Bits = Int(root, "bits", ""),
            Group = root["group"] is JsonValue gv && gv.TryGetValue(out string? g) ? g : root["group"]?.ToJsonString() ?? "auto",
        };
        if (root["tensors"] is not JsonObject tensors) throw Bad("missing 'tensors' object");
        foreach (var (name, node) in tensors)
        {
            if (node is not JsonObject t) throw Bad($"tensors['{name}'] is not an object");
            int bits = Int(t, "bits", $"tensors['{name}']: "), group = Int(t, "group", $"tensors['{name}']: ");
            if (bits is not (4 or 8)) throw Bad($"tensors['{name}']: bits {bits} is not 4 or 8");
            if (group <= 0) throw Bad($"tensors['{name}']: group {group} must be positive");
            meta.Tensors[name] = (bits, group);
        }
        return meta;
    }
}
