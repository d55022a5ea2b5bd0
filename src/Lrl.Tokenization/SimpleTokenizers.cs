using System.Text;
using System.Text.Json;

namespace Lrl.Tokenization;

/// <summary>A word-level vocabulary (token_mappings.json: {"token2id": {...}}): tokens are whole words or phrases separated by spaces.</summary>
internal sealed class VocabularyTokenizer : ITokenizerCore
{
    private readonly Dictionary<string, int> _map;
    private readonly string[] _text;
    private readonly int _maxWords;
    private readonly string _path;

    private VocabularyTokenizer(Dictionary<string, int> map, string path)
    {
        _map = map; _path = path;
        _text = new string[map.Values.Max() + 1];
        foreach (var (k, v) in map) _text[v] = k;
        for (int i = 0; i < _text.Length; i++) if (_text[i] is null) throw new ModelFormatException(path, $"token id {i} has no entry");
        _maxWords = map.Keys.Max(k => k.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length);
    }

    public static LrlTokenizer Load(string path, SpecialTokenConfig cfg)
    {
        Dictionary<string, int> map;
        {
            using var doc = JsonFile.ParseObject(path);
            if (!doc.RootElement.TryGetProperty("token2id", out var t2i) || t2i.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, "missing 'token2id' object");
            map = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var p in t2i.EnumerateObject())
                map[p.Name] = p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int id) && id is >= 0 and <= 16_777_216 ? id : throw new ModelFormatException(path, $"token2id['{p.Name}'] is not a token id");
        }
        if (map.Count == 0) throw new ModelFormatException(path, "token2id is empty");
        return new LrlTokenizer("word-level (token_mappings.json)", new VocabularyTokenizer(map, path), cfg.BosId, cfg.EosIds(null), prependBos: false);
    }

    public int VocabSize => _text.Length;
    public string? IdToToken(int id) => (uint)id < (uint)_text.Length ? _text[id] : null;
    public int? TokenToId(string token) => _map.TryGetValue(token, out int id) ? id : null;
    public bool IsSpecial(int id) => false;

    public void Encode(string s, bool addSpecial, List<int> ids)
    {
        var words = s.Split((char[])[' ', '\t', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries);
        for (int i = 0; i < words.Length;)
        {
            int matched = 0;
            for (int len = Math.Min(_maxWords, words.Length - i); len >= 1 && matched == 0; len--)
                if (_map.TryGetValue(string.Join(' ', words, i, len), out int id)) { ids.Add(id); matched = len; }
            if (matched == 0) throw new LrlException($"'{words[i]}' is not in the vocabulary of {_path}");
            i += matched;
        }
    }

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial)
    {
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            if ((uint)id >= (uint)_text.Length) continue;
            if (sb.Length > 0) sb.Append(' ');
            sb.Append(_text[id]);
        }
        return sb.ToString();
    }
}

/// <summary>A byte vocabulary: token id = byte value (0..255), as declared by config.json's "tokenizer".</summary>
internal sealed class ByteTokenizer : ITokenizerCore
{
    public static LrlTokenizer Create(SpecialTokenConfig cfg) =>
        new("byte-level (id = byte)", new ByteTokenizer(), cfg.BosId, cfg.EosIds(null), prependBos: false);

    public int VocabSize => 256;
    public string? IdToToken(int id) => (uint)id < 256 ? (id is >= 0x20 and < 0x7F ? ((char)id).ToString() : $"<0x{id:X2}>") : null;
    public int? TokenToId(string token) => token.Length == 1 && token[0] is >= ' ' and < (char)0x7F ? token[0] : null;
    public bool IsSpecial(int id) => false;

    public void Encode(string s, bool addSpecial, List<int> ids)
    {
        foreach (var b in Encoding.UTF8.GetBytes(Unicode.CharClass.Sanitize(s))) ids.Add(b);
    }

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial)
    {
        var bytes = new List<byte>(ids.Length);
        foreach (var id in ids) if ((uint)id < 256) bytes.Add((byte)id);
        return Encoding.UTF8.GetString(bytes.ToArray());
    }
}
