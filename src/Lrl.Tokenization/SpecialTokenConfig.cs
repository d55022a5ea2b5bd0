using System.Text.Json;

namespace Lrl.Tokenization;

/// <summary>BOS/EOS settings gathered from config.json, generation_config.json and tokenizer_config.json.</summary>
internal sealed class SpecialTokenConfig
{
    public int? BosId { get; private set; }
    public string? BosToken { get; private set; }
    public string? EosToken { get; private set; }
    public bool? AddBos { get; private set; }
    public bool DeclaresByteLevel { get; private set; }
    private readonly List<int> _eos = new();

    /// <summary>EOS ids from the config files plus the tokenizer's own.</summary>
    public int[] EosIds(int? tokenizerEos)
    {
        var all = new List<int>(_eos);
        if (tokenizerEos is { } t && !all.Contains(t)) all.Add(t);
        return all.ToArray();
    }

    public static SpecialTokenConfig Load(string dir)
    {
        var c = new SpecialTokenConfig();
        foreach (var name in new[] { "generation_config.json", "config.json" })
        {
            var path = Path.Combine(dir, name);
            if (!File.Exists(path)) continue;
            using var doc = Parse(path);
            var r = doc.RootElement;
            if (r.TryGetProperty("eos_token_id", out var e))
            {
                if (e.ValueKind == JsonValueKind.Number) c.AddEos(e.GetInt32());
                else if (e.ValueKind == JsonValueKind.Array) foreach (var x in e.EnumerateArray()) if (x.ValueKind == JsonValueKind.Number) c.AddEos(x.GetInt32());
            }
            if (c.BosId is null && r.TryGetProperty("bos_token_id", out var b) && b.ValueKind == JsonValueKind.Number) c.BosId = b.GetInt32();
            if (name == "config.json" && TokenizerLoader.Str(r, "tokenizer") is { } t && t.StartsWith("byte-level", StringComparison.OrdinalIgnoreCase))
                c.DeclaresByteLevel = true;
        }
        var tc = Path.Combine(dir, "tokenizer_config.json");
        if (File.Exists(tc))
        {
            using var doc = Parse(tc);
            var r = doc.RootElement;
            c.BosToken = TokenString(r, "bos_token");
            c.EosToken = TokenString(r, "eos_token");
            if (r.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False) c.AddBos = ab.GetBoolean();
        }
        return c;
    }

    private void AddEos(int id) { if (!_eos.Contains(id)) _eos.Add(id); }

    private static string? TokenString(JsonElement r, string name) =>
        !r.TryGetProperty(name, out var v) ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString()
        : TokenizerLoader.Str(v, "content");

    private static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }); }
        catch (JsonException e) { throw new ModelFormatException(path, $"not valid JSON: {e.Message}"); }
    }
}
