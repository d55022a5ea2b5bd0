using System.Text.Json;
using System.Text.Json.Nodes;

namespace Lrl.Loading;

/// <summary>
/// config.json (and generation_config.json) of a model folder, with typed accessors that fail naming the field.
/// Architecture-specific typed configs (e.g. LlamaConfig) are built from this in one place each.
/// </summary>
public sealed class ModelConfig
{
    public string Path { get; }
    public JsonObject Json { get; }
    /// <summary>generation_config.json when present (eos/bos overrides), else empty.</summary>
    public JsonObject Generation { get; }

    private ModelConfig(string path, JsonObject json, JsonObject generation)
    {
        Path = path; Json = json; Generation = generation;
    }

    public static ModelConfig Load(string modelDir)
    {
        var path = System.IO.Path.Combine(System.IO.Path.GetFullPath(modelDir), "config.json");
        if (!File.Exists(path)) throw new LrlException($"{path}: not found (a model folder needs config.json)");
        var json = ParseObject(path);
        var genPath = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(path)!, "generation_config.json");
        var gen = File.Exists(genPath) ? ParseObject(genPath) : new JsonObject();
        return new ModelConfig(path, json, gen);
    }

    public static ModelConfig FromJson(string json, string path = "config.json")
    {
        JsonObject node;
        try { node = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject ?? throw new ModelFormatException(path, "not a JSON object"); }
        catch (JsonException e) { throw new ModelFormatException(path, $"not valid JSON: {JsonFile.Reason(e)}"); }
        return new ModelConfig(path, node, new JsonObject());
    }

    private static JsonObject ParseObject(string path) => JsonFile.ParseNode(path);

    /// <summary>The first entry of "architectures", else model_type, else null.</summary>
    public string? Architecture =>
        Json["architectures"] switch
        {
            null => ModelType,
            JsonArray { Count: 0 } => ModelType,
            JsonArray a => a[0] is JsonValue v && v.TryGetValue(out string? s) ? s : throw Bad("architectures", a, "a list of architecture names"),
            var other => throw Bad("architectures", other, "a list of architecture names"),
        };

    public string? ModelType =>
        Json["model_type"] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out string? s) => s,
            var other => throw Bad("model_type", other, "a string"),
        };

    public bool Has(string field) => Json[field] is not null;

    public int GetInt(string field) => TryGetInt(field) ?? throw Missing(field, "an integer");
    public int GetInt(string field, int fallback) => TryGetInt(field) ?? fallback;

    public int? TryGetInt(string field)
    {
        var n = Json[field];
        if (n is null) return null;
        try
        {
            double d = n.GetValue<double>();
            if (d != Math.Floor(d) || d < int.MinValue || d > int.MaxValue) throw Bad(field, n, "an integer");
            return (int)d;
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(field, n, "an integer"); }
    }

    public double GetDouble(string field) => TryGetDouble(field) ?? throw Missing(field, "a number");
    public double GetDouble(string field, double fallback) => TryGetDouble(field) ?? fallback;

    public double? TryGetDouble(string field)
    {
        var n = Json[field];
        if (n is null) return null;
        try { return n.GetValue<double>() is var d && double.IsFinite(d) ? d : throw Bad(field, n, "a finite number"); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(field, n, "a number"); }
    }

    public bool GetBool(string field, bool fallback)
    {
        var n = Json[field];
        if (n is null) return fallback;
        try { return n.GetValue<bool>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Bad(field, n, "true or false"); }
    }

    public string? GetString(string field) => Json[field] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

    /// <summary>Token ids from an int-or-list field, generation_config.json taking precedence.</summary>
    public int[] GetTokenIds(string field)
    {
        var n = Generation[field] ?? Json[field];
        int Id(JsonNode? x) => x is JsonValue v && v.TryGetValue(out double d) && d == Math.Floor(d) && d >= 0 && d <= int.MaxValue
            ? (int)d : throw Bad(field, n, "a token id or a list of token ids");
        return n switch
        {
            null => [],
            JsonArray a => a.Where(x => x is not null).Select(Id).ToArray(),
            _ => [Id(n)],
        };
    }

    public Exception Missing(string field, string what) => new ModelFormatException(Path, $"field '{field}' is missing (expected {what})");
    public Exception Bad(string field, JsonNode? value, string what) => new ModelFormatException(Path, $"field '{field}' = {value?.ToJsonString() ?? "null"} is not {what}");
}
