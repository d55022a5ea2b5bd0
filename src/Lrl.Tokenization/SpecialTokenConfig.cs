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
            using var doc = JsonFile.ParseObject(path);
            var r = doc.RootElement;
            if (r.TryGetProperty("eos_token_id", out var e))
            {
                if (e.ValueKind == JsonValueKind.Array) foreach (var x in e.EnumerateArray()) c.AddEos(Id(x, path, "eos_token_id"));
                else if (e.ValueKind != JsonValueKind.Null) c.AddEos(Id(e, path, "eos_token_id"));
            }
            if (c.BosId is null && r.TryGetProperty("bos_token_id", out var b) && b.ValueKind != JsonValueKind.Null) c.BosId = Id(b, path, "bos_token_id");
            if (name == "config.json" && TokenizerLoader.Str(r, "tokenizer") is { } t && t.StartsWith("byte-level", StringComparison.OrdinalIgnoreCase))
                c.DeclaresByteLevel = true;
        }
        var tc = Path.Combine(dir, "tokenizer_config.json");
        if (File.Exists(tc))
        {
            using var doc = JsonFile.ParseObject(tc);
            var r = doc.RootElement;
            c.BosToken = TokenString(r, "bos_token", tc);
            c.EosToken = TokenString(r, "eos_token", tc);
            if (r.TryGetProperty("add_bos_token", out var ab))
                c.AddBos = ab.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    JsonValueKind.Null => null,
                    _ => throw new ModelFormatException(tc, $"field 'add_bos_token' = {Excerpt(ab)} is not true or false"),
                };
        }
        return c;
    }

    private void AddEos(int id) { if (!_eos.Contains(id)) _eos.Add(id); }

    private static int Id(JsonElement e, string path, string field) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0 ? id
        : throw new ModelFormatException(path, $"field '{field}' = {Excerpt(e)} is not a token id");

    private static string? TokenString(JsonElement r, string name, string path) =>
        !r.TryGetProperty(name, out var v) ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString()
        : v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.Object ? TokenizerLoader.Str(v, "content")
        : throw new ModelFormatException(path, $"field '{name}' = {Excerpt(v)} is neither a string nor {{\"content\": ...}}");

    private static string Excerpt(JsonElement e)
    {
        var s = e.GetRawText();
        return s.Length <= 40 ? s : s[..40] + "…";
    }
}
