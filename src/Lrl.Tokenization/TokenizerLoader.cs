using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Lrl.Tokenization;

/// <summary>Finds and parses a model folder's tokenizer files.</summary>
internal static class TokenizerLoader
{
    public static LrlTokenizer Load(string dir)
    {
        var special = SpecialTokenConfig.Load(dir);
        var json = Path.Combine(dir, "tokenizer.json");
        if (File.Exists(json)) return FromTokenizerJson(json, special);
        var model = Path.Combine(dir, "tokenizer.model");
        if (File.Exists(model)) return FromSentencePieceModel(model, special);
        var mappings = Path.Combine(dir, "token_mappings.json");
        if (File.Exists(mappings)) return VocabularyTokenizer.Load(mappings, special);
        if (special.DeclaresByteLevel) return ByteTokenizer.Create(special);
        throw new LrlException($"no tokenizer in {dir}: expected tokenizer.json, tokenizer.model or token_mappings.json");
    }

    // ---------------------------------------------------------------- tokenizer.model (SentencePiece protobuf)

    private static LrlTokenizer FromSentencePieceModel(string path, SpecialTokenConfig cfg)
    {
        SentencePieceTokenizer sp;
        byte[] proto = File.ReadAllBytes(path);
        try { sp = SentencePieceTokenizer.Create(new MemoryStream(proto), false, false); }
        catch (Exception e) when (e is not LrlException)
        { throw new ModelFormatException(path, $"not a readable SentencePiece model: {e.Message}"); }
        var pieces = SentencePieceProto.ReadPieces(proto, path);
        return FromSentencePiece(sp, pieces, cfg, "sentencepiece (tokenizer.model)");
    }

    private static LrlTokenizer FromSentencePiece(SentencePieceTokenizer sp, IReadOnlyList<(string Piece, int Type)> pieces,
        SpecialTokenConfig cfg, string kind)
    {
        int n = pieces.Count;
        var bytes = new byte[n][]; var special = new bool[n]; var text = new string[n];
        for (int i = 0; i < n; i++)
        {
            var (piece, type) = pieces[i];
            text[i] = piece;
            special[i] = type is SentencePieceProto.Control or SentencePieceProto.Unknown;
            bytes[i] = type == SentencePieceProto.Byte && TryParseByteToken(piece, out byte b) ? [b]
                     : Encoding.UTF8.GetBytes(piece.Replace('▁', ' '));
        }
        int? bos = cfg.BosId ?? (sp.BeginningOfSentenceId >= 0 && sp.BeginningOfSentenceId < n ? sp.BeginningOfSentenceId : null);
        var eos = cfg.EosIds(sp.EndOfSentenceId >= 0 && sp.EndOfSentenceId < n ? sp.EndOfSentenceId : null);
        return new LrlTokenizer(kind, t => sp.EncodeToIds(t, false, false, true, true).ToList(), bytes, special, text,
            bos, eos, cfg.AddBos ?? true, stripLeadingSpace: sp.AddDummyPrefix);
    }

    internal static bool TryParseByteToken(string piece, out byte b)
    {
        b = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
               && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out b);
    }

    // ---------------------------------------------------------------- tokenizer.json

    private static LrlTokenizer FromTokenizerJson(string path, SpecialTokenConfig cfg)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new ModelFormatException(path, $"not valid JSON: {e.Message}"); }
        using (doc)
        {
            var root = doc.RootElement;
            if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, "missing 'model'");
            string type = Str(model, "type") ?? (model.TryGetProperty("merges", out _) ? "BPE" : "?");
            if (type != "BPE")
                throw new ModelFormatException(path, $"model.type '{type}' is not supported (supported: BPE)");
            if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, "model.vocab is missing or not an object");

            var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var p in vocabEl.EnumerateObject())
            {
                if (!p.Value.TryGetInt32(out int id) || id < 0) throw new ModelFormatException(path, $"model.vocab['{p.Name}'] is not a token id");
                vocab[p.Name] = id;
            }
            var merges = ReadMerges(model, path);
            var added = new List<(string Content, int Id, bool Special)>();
            if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
                foreach (var a in at.EnumerateArray())
                    added.Add((Str(a, "content") ?? throw new ModelFormatException(path, "added_tokens entry without 'content'"),
                               a.TryGetProperty("id", out var idEl) && idEl.TryGetInt32(out int aid) ? aid : throw new ModelFormatException(path, "added_tokens entry without 'id'"),
                               a.TryGetProperty("special", out var sEl) && sEl.ValueKind == JsonValueKind.True));

            bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
            bool byteLevel = UsesByteLevel(root);
            if (byteLevel) return ByteLevelBpe(path, root, vocab, merges, added, cfg);
            if (byteFallback || IsMetaspace(root)) return SentencePieceBpe(path, root, model, vocab, merges, added, cfg);
            throw new ModelFormatException(path, "unsupported BPE flavour: neither byte-level (GPT-2 style) nor SentencePiece-style (▁ with byte fallback)");
        }
    }

    private static List<(string A, string B)> ReadMerges(JsonElement model, string path)
    {
        var list = new List<(string, string)>();
        if (!model.TryGetProperty("merges", out var m) || m.ValueKind != JsonValueKind.Array) return list;
        foreach (var e in m.EnumerateArray())
        {
            if (e.ValueKind == JsonValueKind.String)
            {
                var s = e.GetString()!;
                int sp = s.IndexOf(' ', 1);
                if (sp <= 0) throw new ModelFormatException(path, $"merge '{s}' is not 'a b'");
                list.Add((s[..sp], s[(sp + 1)..]));
            }
            else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2)
                list.Add((e[0].GetString()!, e[1].GetString()!));
            else throw new ModelFormatException(path, $"merge {e.GetRawText()} is neither 'a b' nor [a, b]");
        }
        return list;
    }

    private static bool UsesByteLevel(JsonElement root) =>
        Has(root, "pre_tokenizer", "ByteLevel") || Has(root, "decoder", "ByteLevel");

    private static bool IsMetaspace(JsonElement root) =>
        Has(root, "pre_tokenizer", "Metaspace") || Has(root, "decoder", "Metaspace") || Has(root, "normalizer", "Prepend");

    /// <summary>Whether the component (or one inside a Sequence) has the given type.</summary>
    private static bool Has(JsonElement root, string component, string type) =>
        root.TryGetProperty(component, out var c) && Find(c, type) is not null;

    private static JsonElement? Find(JsonElement c, string type)
    {
        if (c.ValueKind != JsonValueKind.Object) return null;
        if (Str(c, "type") == type) return c;
        foreach (var key in new[] { "pretokenizers", "normalizers", "decoders" })
            if (c.TryGetProperty(key, out var arr) && arr.ValueKind == JsonValueKind.Array)
                foreach (var x in arr.EnumerateArray())
                    if (Find(x, type) is { } f) return f;
        return null;
    }

    internal static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    /// <summary>SentencePiece-style BPE: rebuilt as a SentencePiece model proto (scores from merge ranks) for Microsoft.ML.Tokenizers.</summary>
    private static LrlTokenizer SentencePieceBpe(string path, JsonElement root, JsonElement model, Dictionary<string, int> vocab,
        List<(string A, string B)> merges, List<(string Content, int Id, bool Special)> added, SpecialTokenConfig cfg)
    {
        int n = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        var pieces = new string?[n];
        foreach (var (k, v) in vocab) pieces[v] = k;
        foreach (var a in added) pieces[a.Id] ??= a.Content;
        for (int i = 0; i < n; i++) if (pieces[i] is null) throw new ModelFormatException(path, $"token id {i} has no vocabulary entry");
        var scores = new float[n];
        Array.Fill(scores, -1e9f);
        for (int r = 0; r < merges.Count; r++)
            if (vocab.TryGetValue(merges[r].A + merges[r].B, out int id) && scores[id] == -1e9f) scores[id] = -r;
        string? unk = Str(model, "unk_token");
        var addedIds = added.ToDictionary(a => a.Id);
        var types = new int[n];
        for (int i = 0; i < n; i++)
        {
            var p = pieces[i]!;
            types[i] = addedIds.TryGetValue(i, out var a) ? (a.Special ? SentencePieceProto.Control : SentencePieceProto.UserDefined)
                     : p == unk ? SentencePieceProto.Unknown
                     : TryParseByteToken(p, out _) ? SentencePieceProto.Byte
                     : SentencePieceProto.Normal;
            if (p.Length == 1 && types[i] == SentencePieceProto.Normal) scores[i] = 0;
        }
        if (unk is not null && vocab.TryGetValue(unk, out int unkId)) types[unkId] = SentencePieceProto.Unknown;
        bool dummyPrefix = Has(root, "normalizer", "Prepend")
                           || (Find(root.GetProperty("pre_tokenizer"), "Metaspace") is { } ms && Str(ms, "prepend_scheme") is null or "always" or "first");
        int Id(string? tok) => tok is not null && vocab.TryGetValue(tok, out int i) ? i : -1;
        var proto = SentencePieceProto.Write(pieces!, scores, types, byteFallback: true, addDummyPrefix: dummyPrefix,
            unkId: Id(unk) >= 0 ? Id(unk) : 0, bosId: cfg.BosId ?? Id(cfg.BosToken ?? "<s>"), eosId: Id(cfg.EosToken ?? "</s>"));
        SentencePieceTokenizer sp;
        var specials = added.Where(a => a.Special).ToDictionary(a => a.Content, a => a.Id);
        try { sp = SentencePieceTokenizer.Create(new MemoryStream(proto), false, false, specials.Count > 0 ? specials : null); }
        catch (Exception e) when (e is not LrlException) { throw new ModelFormatException(path, $"cannot build a SentencePiece model: {e.Message}"); }
        var list = pieces.Select((p, i) => (p!, types[i])).ToList();
        return FromSentencePiece(sp, list, cfg, "sentencepiece-bpe (tokenizer.json)");
    }

    /// <summary>Byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM) through BpeOptions.</summary>
    private static LrlTokenizer ByteLevelBpe(string path, JsonElement root, Dictionary<string, int> vocab,
        List<(string A, string B)> merges, List<(string Content, int Id, bool Special)> added, SpecialTokenConfig cfg)
    {
        var addedMap = added.ToDictionary(a => a.Content, a => a.Id);
        var options = new BpeOptions(vocab.Where(kv => !addedMap.ContainsKey(kv.Key)))
        {
            Merges = merges.Select(m => m.A + " " + m.B),
            ByteLevel = true,
            SpecialTokens = addedMap.Count > 0 ? addedMap : null,
            PreTokenizer = BuildPreTokenizer(path, root, addedMap),
            Normalizer = BuildNormalizer(path, root),
        };
        BpeTokenizer bpe;
        try { bpe = BpeTokenizer.Create(options); }
        catch (Exception e) when (e is not LrlException) { throw new ModelFormatException(path, $"cannot build the BPE tokenizer: {e.Message}"); }

        int n = Math.Max(vocab.Values.DefaultIfEmpty(-1).Max() + 1, added.Select(a => a.Id).DefaultIfEmpty(-1).Max() + 1);
        var text = new string[n]; var bytes = new byte[n][]; var special = new bool[n];
        foreach (var (k, v) in vocab) { text[v] = k; bytes[v] = ByteLevelAlphabet.Decode(k); }
        foreach (var a in added) { text[a.Id] = a.Content; bytes[a.Id] = Encoding.UTF8.GetBytes(a.Content); special[a.Id] = a.Special; }
        for (int i = 0; i < n; i++) if (text[i] is null) { text[i] = ""; bytes[i] = []; }

        int? Lookup(string? t) => t is not null && addedMap.TryGetValue(t, out int i) ? i : t is not null && vocab.TryGetValue(t, out int j) ? j : null;
        int? bos = cfg.BosId ?? Lookup(cfg.BosToken) ?? TemplateBos(root, addedMap);
        var eos = cfg.EosIds(Lookup(cfg.EosToken));
        bool addBos = cfg.AddBos ?? TemplateBos(root, addedMap) is not null;
        return new LrlTokenizer("byte-level-bpe (tokenizer.json)", t => bpe.EncodeToIds(t).ToList(), bytes, special, text,
            bos, eos, addBos, stripLeadingSpace: false);
    }

    /// <summary>The special token a TemplateProcessing post-processor puts before the text (Llama-3's &lt;|begin_of_text|&gt;).</summary>
    private static int? TemplateBos(JsonElement root, Dictionary<string, int> added)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || Find(pp, "TemplateProcessing") is not { } tp) return null;
        if (!tp.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array || single.GetArrayLength() == 0) return null;
        var first = single[0];
        return first.TryGetProperty("SpecialToken", out var st) && Str(st, "id") is { } id && added.TryGetValue(id, out int v) ? v : null;
    }

    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static PreTokenizer? BuildPreTokenizer(string path, JsonElement root, Dictionary<string, int> specials)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pt) || pt.ValueKind != JsonValueKind.Object) return null;
        var parts = new List<PreTokenizer>();
        void Add(JsonElement e)
        {
            switch (Str(e, "type"))
            {
                case "Sequence":
                    foreach (var x in e.GetProperty("pretokenizers").EnumerateArray()) Add(x);
                    break;
                case "ByteLevel":
                    bool useRegex = !e.TryGetProperty("use_regex", out var ur) || ur.ValueKind != JsonValueKind.False;
                    if (e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True)
                        throw new ModelFormatException(path, "pre_tokenizer ByteLevel add_prefix_space=true is not supported");
                    if (useRegex) parts.Add(new RegexPreTokenizer(new Regex(Gpt2Pattern, RegexOptions.Compiled), specials));
                    break;
                case "Split":
                    var pattern = e.GetProperty("pattern");
                    string? rx = Str(pattern, "Regex") ?? (Str(pattern, "String") is { } s ? Regex.Escape(s) : null);
                    if (rx is null) throw new ModelFormatException(path, "pre_tokenizer Split without a pattern");
                    if (Str(e, "behavior") is { } b && b != "Isolated")
                        throw new ModelFormatException(path, $"pre_tokenizer Split behavior '{b}' is not supported (supported: Isolated)");
                    try { parts.Add(new RegexPreTokenizer(new Regex(rx, RegexOptions.Compiled), specials)); }
                    catch (ArgumentException ex) { throw new ModelFormatException(path, $"pre_tokenizer Split pattern does not compile: {ex.Message}"); }
                    break;
                case "Digits":
                    bool single = e.TryGetProperty("individual_digits", out var d) && d.ValueKind == JsonValueKind.True;
                    parts.Add(new RegexPreTokenizer(new Regex(single ? @"\p{N}|[^\p{N}]+" : @"\p{N}+|[^\p{N}]+", RegexOptions.Compiled), specials));
                    break;
                case var t:
                    throw new ModelFormatException(path, $"pre_tokenizer type '{t}' is not supported (supported: ByteLevel, Split, Digits, Sequence)");
            }
        }
        Add(pt);
        return parts.Count switch { 0 => null, 1 => parts[0], _ => new CompositePreTokenizer(parts, specials) };
    }

    private static Normalizer? BuildNormalizer(string path, JsonElement root)
    {
        if (!root.TryGetProperty("normalizer", out var n) || n.ValueKind != JsonValueKind.Object) return null;
        return Str(n, "type") switch
        {
            "NFC" => new UnicodeNormalizer(NormalizationForm.FormC),
            "NFKC" => new UnicodeNormalizer(NormalizationForm.FormKC),
            var t => throw new ModelFormatException(path, $"normalizer '{t}' is not supported for byte-level BPE (supported: NFC, NFKC, none)"),
        };
    }

    private sealed class UnicodeNormalizer(NormalizationForm form) : Normalizer
    {
        public override string Normalize(string original) => original.Normalize(form);
        public override string Normalize(ReadOnlySpan<char> original) => original.ToString().Normalize(form);
    }
}
