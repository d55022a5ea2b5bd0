using System.Text;
using System.Text.Json;

namespace Lrl.Tokenization;

/// <summary>A word-level vocabulary (token_mappings.json: {"token2id": {...}}): tokens are whole words or phrases separated by spaces.</summary>
internal static class VocabularyTokenizer
{
    public static LrlTokenizer Load(string path, SpecialTokenConfig cfg)
    {
        Dictionary<string, int> map;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            if (!doc.RootElement.TryGetProperty("token2id", out var t2i) || t2i.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, "missing 'token2id' object");
            map = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var p in t2i.EnumerateObject())
                map[p.Name] = p.Value.TryGetInt32(out int id) && id >= 0 ? id : throw new ModelFormatException(path, $"token2id['{p.Name}'] is not a token id");
        }
        catch (JsonException e) { throw new ModelFormatException(path, $"not valid JSON: {e.Message}"); }
        int n = map.Values.Max() + 1;
        var text = new string[n]; var bytes = new byte[n][]; var special = new bool[n];
        foreach (var (k, v) in map) { text[v] = k; bytes[v] = Encoding.UTF8.GetBytes(k); }
        for (int i = 0; i < n; i++) if (text[i] is null) throw new ModelFormatException(path, $"token id {i} has no entry");
        var byWords = map.Keys.Select(k => (Words: k.Split(' ', StringSplitOptions.RemoveEmptyEntries), Id: map[k]))
                              .OrderByDescending(x => x.Words.Length).ToList();
        int maxWords = byWords.Max(x => x.Words.Length);

        List<int> Encode(string s)
        {
            var words = s.Split((char[])[' ', '\t', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries);
            var ids = new List<int>();
            for (int i = 0; i < words.Length;)
            {
                int matched = 0;
                for (int len = Math.Min(maxWords, words.Length - i); len >= 1 && matched == 0; len--)
                    if (map.TryGetValue(string.Join(' ', words, i, len), out int id)) { ids.Add(id); matched = len; }
                if (matched == 0) throw new LrlException($"'{words[i]}' is not in the vocabulary of {path}");
                i += matched;
            }
            return ids;
        }
        return new LrlTokenizer("word-level (token_mappings.json)", Encode, bytes, special, text,
            cfg.BosId, cfg.EosIds(null), addBos: false, stripLeadingSpace: false, separator: " ");
    }
}

/// <summary>A byte vocabulary: token id = byte value (0..255), as declared by config.json's "tokenizer".</summary>
internal static class ByteTokenizer
{
    public static LrlTokenizer Create(SpecialTokenConfig cfg)
    {
        var bytes = new byte[256][]; var text = new string[256]; var special = new bool[256];
        for (int i = 0; i < 256; i++) { bytes[i] = [(byte)i]; text[i] = i is >= 0x20 and < 0x7F ? ((char)i).ToString() : $"<0x{i:X2}>"; }
        return new LrlTokenizer("byte-level (id = byte)", s => Encoding.UTF8.GetBytes(s).Select(b => (int)b).ToList(),
            bytes, special, text, cfg.BosId, cfg.EosIds(null), addBos: false, stripLeadingSpace: false);
    }
}
