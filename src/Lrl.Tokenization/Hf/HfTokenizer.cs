using System.Text;
using System.Text.Json;
using Lrl.Tokenization.Unicode;

namespace Lrl.Tokenization.Hf;

/// <summary>
/// A tokenizer.json with the semantics of Hugging Face's Rust `tokenizers`: added tokens, normalizer,
/// pre-tokenizer, model (BPE, Unigram, WordPiece, WordLevel), post-processor and decoder, all in managed code.
/// Immutable after loading and safe to use from many threads.
/// </summary>
internal sealed class HfTokenizer : ITokenizerCore
{
    private readonly Normalizer? _normalizer;
    private readonly PreTokenizer? _pre;
    private readonly TokenModel _model;
    private readonly Decoder? _decoder;
    private readonly AddedVocabulary _added;
    private readonly int _vocabSize;

    public PostProcessor? Post { get; }
    /// <summary>Whether the pre-tokenizer or decoder is byte-level (GPT-2 style).</summary>
    public bool ByteLevel => _pre is ByteLevelPreTokenizer || (_pre is SequencePreTokenizer s && s.Parts.Any(x => x is ByteLevelPreTokenizer)) || _decoder is ByteLevelDecoder;
    public string ModelType { get; }
    public int VocabSize => _vocabSize;

    [ThreadStatic] private static List<Piece>? t_a, t_b;

    private HfTokenizer(Normalizer? normalizer, PreTokenizer? pre, TokenModel model, Decoder? decoder, PostProcessor? post,
        AddedVocabulary added, string modelType)
    {
        _normalizer = normalizer; _pre = pre; _model = model; _decoder = decoder; Post = post; _added = added; ModelType = modelType;
        int max = model.MaxId;
        foreach (var t in added.Tokens) max = Math.Max(max, t.Id);
        _vocabSize = max + 1;
    }

    public int? TokenToId(string token) => _added.IdOf(token) ?? _model.TokenToId(token);

    public string? IdToToken(int id) => _added.DecodeText(id) ?? _model.IdToToken(id);

    public bool IsSpecial(int id) => _added.IsSpecial(id);

    public void Encode(string text, bool addSpecial, List<int> ids)
    {
        text = CharClass.Sanitize(text);
        var a = t_a ??= new List<Piece>();
        var b = t_b ??= new List<Piece>();
        a.Clear(); b.Clear();
        if (_added.HasRaw) _added.Split(new Piece(text, true), false, a);
        else if (text.Length > 0) a.Add(new Piece(text, true));
        foreach (var p in a)
        {
            if (p.Id >= 0) { b.Add(p); continue; }
            var n = _normalizer is null ? p : p with { Text = _normalizer.Normalize(p.Text) };
            if (n.Text.Length == 0) continue;
            if (_added.HasNormalized) _added.Split(n, true, b);
            else b.Add(n);
        }
        _pre?.Run(b, a);
        if (addSpecial && Post is not null) ids.AddRange(Post.Single.Before);
        foreach (var p in b)
        {
            if (p.Id >= 0) ids.Add(p.Id);
            else _model.Tokenize(p.Text, ids);
        }
        if (addSpecial && Post is not null) ids.AddRange(Post.Single.After);
    }

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial)
    {
        var tokens = new List<string>(ids.Length);
        foreach (var id in ids)
        {
            var t = IdToToken(id);
            if (t is null) continue;
            if (skipSpecial && _added.IsSpecial(id)) continue;
            tokens.Add(t);
        }
        if (_decoder is null) return string.Join(' ', tokens);
        return string.Concat(_decoder.DecodeChain(tokens));
    }

    // ------------------------------------------------------------------------------------------------ loading

    public static HfTokenizer Load(string path)
    {
        using var doc = JsonFile.ParseObject(path);
        return FromJson(doc.RootElement, path);
    }

    private static string Short(string s) => s.Length <= 200 ? s : s[..200] + "...";

    internal static HfTokenizer FromJson(JsonElement root, string file)
    {
        var j = new JsonReader(file);
        j.Object(root, "tokenizer.json");
        var model = root.TryGetProperty("model", out var m) ? m : throw new ModelFormatException(file, "missing 'model'");
        var normalizer = root.TryGetProperty("normalizer", out var n) && n.ValueKind != JsonValueKind.Null ? BuildNormalizer(j, n, "normalizer") : null;
        var pre = root.TryGetProperty("pre_tokenizer", out var pt) && pt.ValueKind != JsonValueKind.Null ? BuildPreTokenizer(j, pt, "pre_tokenizer") : null;
        var decoder = root.TryGetProperty("decoder", out var d) && d.ValueKind != JsonValueKind.Null ? BuildDecoder(j, d, "decoder") : null;
        var (tokenModel, modelType) = BuildModel(j, model);

        var addedList = new List<AddedToken>();
        int nextId = tokenModel.Count;
        if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind != JsonValueKind.Null)
        {
            int i = 0;
            foreach (var a in j.Array(at, "added_tokens"))
            {
                string where = $"added_tokens[{i++}]";
                j.Object(a, where);
                var content = j.Str(a, "content", where) ?? throw new ModelFormatException(file, $"{where}: missing 'content'");
                int jsonId = j.Int(a, "id", where) ?? throw new ModelFormatException(file, $"{where}: missing 'id'");
                if (jsonId < 0) throw new ModelFormatException(file, $"{where}.id {jsonId} is negative");
                _ = jsonId;
                bool special = j.Bool(a, "special", where) ?? false;
                // Ids as the Rust library assigns them (its AddedVocabulary.add_tokens): the id of the same string
                // among the added tokens so far or in the model, else the next free id after the model's vocabulary;
                // the file's "id" is only checked by it. Files the library wrote agree with this.
                if (content.Length == 0) continue;
                int id;
                var earlier = addedList.FindIndex(x => x.Content == content);
                if (earlier >= 0) { id = addedList[earlier].Id; addedList.RemoveAt(earlier); }
                else if (tokenModel.TokenToId(content) is int modelId) id = modelId;
                else id = nextId++;
                addedList.Add(new AddedToken(content, id, special, j.Bool(a, "single_word", where) ?? false, j.Bool(a, "lstrip", where) ?? false,
                    j.Bool(a, "rstrip", where) ?? false, j.Bool(a, "normalized", where) ?? !special));
            }
        }
        var added = new AddedVocabulary(addedList, normalizer);
        var post = root.TryGetProperty("post_processor", out var pp) && pp.ValueKind != JsonValueKind.Null
            ? BuildPost(j, pp, "post_processor", content => addedList.FirstOrDefault(x => x.Content == content)?.Id ?? tokenModel.TokenToId(content))
            : null;
        return new HfTokenizer(normalizer, pre, tokenModel, decoder, post, added, modelType);
    }

    private static (TokenModel, string) BuildModel(JsonReader j, JsonElement m)
    {
        const string w = "model";
        j.Object(m, w);
        string type = j.Str(m, "type", w) ?? (m.TryGetProperty("merges", out _) ? "BPE"
            : m.TryGetProperty("vocab", out var v0) && v0.ValueKind == JsonValueKind.Array ? "Unigram"
            : m.TryGetProperty("continuing_subword_prefix", out _) ? "WordPiece" : "WordLevel");
        switch (type)
        {
            case "BPE":
            {
                var vocab = ReadVocab(j, m);
                var merges = new List<(string, string)>();
                if (m.TryGetProperty("merges", out var me) && me.ValueKind != JsonValueKind.Null)
                {
                    int i = 0;
                    foreach (var e in j.Array(me, "model.merges"))
                    {
                        if (e.ValueKind == JsonValueKind.String)
                        {
                            var s = e.GetString()!;
                            var parts = s.Split(' ');
                            if (parts.Length != 2) throw new ModelFormatException(j.File, $"model.merges[{i}] '{Trim(s)}' is not two tokens separated by one space");
                            merges.Add((parts[0], parts[1]));
                        }
                        else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2 && e[0].ValueKind == JsonValueKind.String && e[1].ValueKind == JsonValueKind.String)
                            merges.Add((e[0].GetString()!, e[1].GetString()!));
                        else throw new ModelFormatException(j.File, $"model.merges[{i}] is neither \"a b\" nor [\"a\", \"b\"]");
                        i++;
                    }
                }
                if (m.TryGetProperty("dropout", out var dr) && dr.ValueKind == JsonValueKind.Number && dr.GetDouble() > 0)
                    throw new ModelFormatException(j.File, "model.dropout: BPE dropout is for training; set it to null for inference");
                var bpe = new BpeModel(vocab, merges, j.Str(m, "unk_token", w), j.Bool(m, "fuse_unk", w) ?? false, j.Bool(m, "byte_fallback", w) ?? false,
                    j.Bool(m, "ignore_merges", w) ?? false, j.Str(m, "continuing_subword_prefix", w), j.Str(m, "end_of_word_suffix", w), j.File);
                return (bpe, "BPE");
            }
            case "Unigram":
            {
                var list = new List<(string, double)>();
                if (!m.TryGetProperty("vocab", out var v)) throw new ModelFormatException(j.File, "model.vocab is missing");
                int i = 0;
                foreach (var e in j.Array(v, "model.vocab"))
                {
                    if (e.ValueKind != JsonValueKind.Array || e.GetArrayLength() != 2 || e[0].ValueKind != JsonValueKind.String || e[1].ValueKind != JsonValueKind.Number)
                        throw new ModelFormatException(j.File, $"model.vocab[{i}] is not [\"piece\", score]");
                    list.Add((e[0].GetString()!, e[1].GetDouble()));
                    i++;
                }
                return (new UnigramModel(list, j.Int(m, "unk_id", w), j.Bool(m, "byte_fallback", w) ?? false, j.File), "Unigram");
            }
            case "WordPiece":
                return (new WordPieceModel(ReadVocab(j, m), j.Str(m, "unk_token", w) ?? "[UNK]", j.Str(m, "continuing_subword_prefix", w) ?? "##",
                    j.Int(m, "max_input_chars_per_word", w) ?? 100, j.File), "WordPiece");
            case "WordLevel":
                return (new WordLevelModel(ReadVocab(j, m), j.Str(m, "unk_token", w) ?? "<unk>", j.File), "WordLevel");
            default:
                throw new ModelFormatException(j.File, $"model.type '{type}' is not one of BPE, Unigram, WordPiece, WordLevel");
        }
    }

    private static string Trim(string s) => s.Length <= 40 ? s : s[..40] + "...";

    private static Dictionary<string, int> ReadVocab(JsonReader j, JsonElement m)
    {
        if (!m.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(j.File, "model.vocab is missing or not an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in v.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0 || id > 16_777_216)
                throw new ModelFormatException(j.File, $"model.vocab['{Trim(p.Name)}'] is not a token id in 0..16777216");
            vocab[p.Name] = id;
        }
        return vocab;
    }

    private static Normalizer BuildNormalizer(JsonReader j, JsonElement e, string w)
    {
        j.Object(e, w);
        string type = j.Str(e, "type", w) ?? throw new ModelFormatException(j.File, $"{w}: missing 'type'");
        switch (type)
        {
            case "NFC": return new UnicodeNormalizer(NormalizationForm.FormC);
            case "NFD": return new UnicodeNormalizer(NormalizationForm.FormD);
            case "NFKC": return new UnicodeNormalizer(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeNormalizer(NormalizationForm.FormKD);
            case "Lowercase": return new LowercaseNormalizer();
            case "Strip": return new StripNormalizer(j.Bool(e, "strip_left", w) ?? true, j.Bool(e, "strip_right", w) ?? true);
            case "StripAccents": return new StripAccentsNormalizer();
            case "Nmt": return new NmtNormalizer();
            case "ByteLevel": return new ByteLevelNormalizer();
            case "Prepend": return new PrependNormalizer(j.Str(e, "prepend", w) ?? throw new ModelFormatException(j.File, $"{w}: Prepend without 'prepend'"));
            case "Replace": return BuildReplace(j, e, w);
            case "BertNormalizer":
                return new BertNormalizer(j.Bool(e, "clean_text", w) ?? true, j.Bool(e, "handle_chinese_chars", w) ?? true,
                    j.Bool(e, "strip_accents", w), j.Bool(e, "lowercase", w) ?? true);
            case "Precompiled":
            {
                var b64 = j.Str(e, "precompiled_charsmap", w);
                if (b64 is null) return new PrecompiledNormalizer(CharsMap.Empty);
                byte[] blob;
                try { blob = Convert.FromBase64String(b64); }
                catch (FormatException) { throw new ModelFormatException(j.File, $"{w}.precompiled_charsmap is not base64"); }
                return new PrecompiledNormalizer(CharsMap.Parse(blob, j.File));
            }
            case "Sequence": return new SequenceNormalizer(Each(j, e, "normalizers", w, BuildNormalizer));
            default:
                throw new ModelFormatException(j.File, $"{w}: normalizer type '{type}' is not supported");
        }
    }

    /// <summary>A Sequence's parts: <paramref name="build"/> over each element of the array <paramref name="field"/>.</summary>
    private static T[] Each<T>(JsonReader j, JsonElement e, string field, string w, Func<JsonReader, JsonElement, string, T> build)
    {
        var parts = new List<T>();
        foreach (var x in j.Array(j.Prop(e, field, w), $"{w}.{field}")) parts.Add(build(j, x, $"{w}.{field}[{parts.Count}]"));
        return parts.ToArray();
    }

    private static ReplaceNormalizer BuildReplace(JsonReader j, JsonElement e, string w)
    {
        var pattern = j.Prop(e, "pattern", w);
        j.Object(pattern, $"{w}.pattern");
        var content = j.Str(e, "content", w) ?? throw new ModelFormatException(j.File, $"{w}: Replace without 'content'");
        if (j.Str(pattern, "String", $"{w}.pattern") is { } lit) return new ReplaceNormalizer(lit, content);
        if (j.Str(pattern, "Regex", $"{w}.pattern") is { } rx) return new ReplaceNormalizer(Regex(j, rx, w), content);
        throw new ModelFormatException(j.File, $"{w}.pattern has neither 'String' nor 'Regex'");
    }

    private static OnigRegex Regex(JsonReader j, string pattern, string w)
    {
        try { return new OnigRegex(pattern); }
        catch (ArgumentException ex) { throw new ModelFormatException(j.File, $"{w}: pattern '{Trim(pattern)}' is not supported: {Short(ex.Message)}"); }
    }

    private static PreTokenizer BuildPreTokenizer(JsonReader j, JsonElement e, string w)
    {
        j.Object(e, w);
        string type = j.Str(e, "type", w) ?? throw new ModelFormatException(j.File, $"{w}: missing 'type'");
        switch (type)
        {
            case "ByteLevel": return new ByteLevelPreTokenizer(j.Bool(e, "add_prefix_space", w) ?? true, j.Bool(e, "use_regex", w) ?? true);
            case "Metaspace":
            {
                var rep = j.Str(e, "replacement", w) ?? "▁";
                if (rep.EnumerateRunes().Count() != 1 || rep.Length != 1) throw new ModelFormatException(j.File, $"{w}.replacement '{rep}' is not one character");
                var scheme = j.Str(e, "prepend_scheme", w);
                bool? aps = j.Bool(e, "add_prefix_space", w);
                scheme ??= aps == false ? "never" : "always";
                if (scheme is not ("first" or "always" or "never")) throw new ModelFormatException(j.File, $"{w}.prepend_scheme '{scheme}' is not first, always or never");
                if (aps == false && scheme != "never") throw new ModelFormatException(j.File, $"{w}: add_prefix_space does not match declared prepend_scheme");
                return new MetaspacePreTokenizer(rep[0], scheme, j.Bool(e, "split", w) ?? true);
            }
            case "Split":
            {
                var pattern = j.Prop(e, "pattern", w);
                j.Object(pattern, $"{w}.pattern");
                OnigRegex rx = j.Str(pattern, "String", $"{w}.pattern") is { } lit ? new OnigRegex(lit, literal: true)
                    : j.Str(pattern, "Regex", $"{w}.pattern") is { } r ? Regex(j, r, w)
                    : throw new ModelFormatException(j.File, $"{w}.pattern has neither 'String' nor 'Regex'");
                return new SplitPreTokenizer(rx, Splitter.ParseBehavior(j.Str(e, "behavior", w), j.File, w), j.Bool(e, "invert", w) ?? false);
            }
            case "Whitespace": return new WhitespacePreTokenizer();
            case "WhitespaceSplit": return new PredicatePreTokenizer(CharClass.IsWhiteSpace, SplitBehavior.Removed);
            case "Punctuation":
                return new PredicatePreTokenizer(CharClass.IsPunctuation, j.Str(e, "behavior", w) is { } pb ? Splitter.ParseBehavior(pb, j.File, w) : SplitBehavior.Isolated);
            case "Digits":
                return new PredicatePreTokenizer(CharClass.IsNumber, j.Bool(e, "individual_digits", w) == true ? SplitBehavior.Isolated : SplitBehavior.Contiguous);
            case "BertPreTokenizer": return new BertPreTokenizer();
            case "CharDelimiterSplit":
            {
                var dch = j.Str(e, "delimiter", w);
                if (dch is null || dch.EnumerateRunes().Count() != 1) throw new ModelFormatException(j.File, $"{w}.delimiter is not one character");
                int dcp = dch.EnumerateRunes().First().Value;
                return new PredicatePreTokenizer(cp => cp == dcp, SplitBehavior.Removed);
            }
            case "Sequence": return new SequencePreTokenizer(Each(j, e, "pretokenizers", w, BuildPreTokenizer));
            default:
                throw new ModelFormatException(j.File, $"{w}: pre-tokenizer type '{type}' is not supported");
        }
    }

    private static Decoder BuildDecoder(JsonReader j, JsonElement e, string w)
    {
        j.Object(e, w);
        string type = j.Str(e, "type", w) ?? throw new ModelFormatException(j.File, $"{w}: missing 'type'");
        switch (type)
        {
            case "ByteLevel": return new ByteLevelDecoder();
            case "Metaspace":
            {
                var rep = j.Str(e, "replacement", w) ?? "▁";
                var scheme = j.Str(e, "prepend_scheme", w) ?? (j.Bool(e, "add_prefix_space", w) == false ? "never" : "always");
                return new MetaspaceDecoder(rep.Length > 0 ? rep[0] : '▁', scheme != "never");
            }
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Strip":
            {
                var c = j.Str(e, "content", w) ?? " ";
                return new StripDecoder(c.Length > 0 ? c[0] : ' ', Math.Max(0, j.Int(e, "start", w) ?? 0), Math.Max(0, j.Int(e, "stop", w) ?? 0));
            }
            case "Replace": return new ReplaceDecoder(BuildReplace(j, e, w));
            case "WordPiece": return new WordPieceDecoder(j.Str(e, "prefix", w) ?? "##", j.Bool(e, "cleanup", w) ?? true);
            case "BPEDecoder": return new BpeSuffixDecoder(j.Str(e, "suffix", w) ?? "</w>");
            case "CTC": return new CtcDecoder(j.Str(e, "pad_token", w) ?? "<pad>", j.Str(e, "word_delimiter_token", w) ?? "|", j.Bool(e, "cleanup", w) ?? true);
            case "Sequence": return new SequenceDecoder(Each(j, e, "decoders", w, BuildDecoder));
            default:
                throw new ModelFormatException(j.File, $"{w}: decoder type '{type}' is not supported");
        }
    }

    private static PostProcessor? BuildPost(JsonReader j, JsonElement e, string w, Func<string, int?> lookup)
    {
        j.Object(e, w);
        string type = j.Str(e, "type", w) ?? throw new ModelFormatException(j.File, $"{w}: missing 'type'");
        int TokenPair(string field)
        {
            var p = j.Prop(e, field, w);
            if (p.ValueKind != JsonValueKind.Array || p.GetArrayLength() != 2 || p[1].ValueKind != JsonValueKind.Number || !p[1].TryGetInt32(out int id) || id < 0)
                throw new ModelFormatException(j.File, $"{w}.{field} is not [\"token\", id]");
            return id;
        }
        switch (type)
        {
            case "ByteLevel": return null;
            case "RobertaProcessing":
            case "BertProcessing":
                return new FixedPostProcessor([TokenPair("cls")], [TokenPair("sep")]);
            case "TemplateProcessing":
            {
                var specials = new Dictionary<string, int[]>(StringComparer.Ordinal);
                if (e.TryGetProperty("special_tokens", out var st) && st.ValueKind != JsonValueKind.Null)
                {
                    j.Object(st, $"{w}.special_tokens");
                    foreach (var p in st.EnumerateObject())
                    {
                        string sw = $"{w}.special_tokens['{Trim(p.Name)}']";
                        j.Object(p.Value, sw);
                        var idsEl = j.Prop(p.Value, "ids", sw);
                        var list = new List<int>();
                        foreach (var x in j.Array(idsEl, $"{sw}.ids"))
                            list.Add(x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int v) && v >= 0 ? v : throw new ModelFormatException(j.File, $"{sw}.ids holds a value that is not a token id"));
                        specials[p.Name] = list.ToArray();
                    }
                }
                var before = new List<int>(); var after = new List<int>();
                bool seenSeq = false;
                int i = 0;
                foreach (var piece in j.Array(j.Prop(e, "single", w), $"{w}.single"))
                {
                    string pw = $"{w}.single[{i++}]";
                    j.Object(piece, pw);
                    if (piece.TryGetProperty("Sequence", out _)) { seenSeq = true; continue; }
                    if (!piece.TryGetProperty("SpecialToken", out var sp)) throw new ModelFormatException(j.File, $"{pw} is neither SpecialToken nor Sequence");
                    var id = j.Str(sp, "id", pw) ?? throw new ModelFormatException(j.File, $"{pw}.SpecialToken without 'id'");
                    if (!specials.TryGetValue(id, out var ids))
                        throw new ModelFormatException(j.File, $"{pw}: special token '{Trim(id)}' is not in special_tokens");
                    (seenSeq ? after : before).AddRange(ids);
                }
                return new FixedPostProcessor(before.ToArray(), after.ToArray());
            }
            case "Sequence":
            {
                var before = new List<int>(); var after = new List<int>();
                int i = 0;
                foreach (var x in j.Array(j.Prop(e, "processors", w), $"{w}.processors"))
                    if (BuildPost(j, x, $"{w}.processors[{i++}]", lookup) is { } p)
                    { before.InsertRange(0, p.Single.Before); after.AddRange(p.Single.After); }
                return new FixedPostProcessor(before.ToArray(), after.ToArray());
            }
            default:
                throw new ModelFormatException(j.File, $"{w}: post-processor type '{type}' is not supported");
        }
    }
}

/// <summary>Typed access to JSON fields with errors that name the file and the field.</summary>
internal sealed class JsonReader(string file)
{
    public string File => file;

    public void Object(JsonElement e, string where)
    {
        if (e.ValueKind != JsonValueKind.Object) throw new ModelFormatException(file, $"{where} is {Kind(e)}, expected an object");
    }

    public JsonElement Prop(JsonElement e, string name, string where) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) ? v : throw new ModelFormatException(file, $"{where}: missing '{name}'");

    public JsonElement.ArrayEnumerator Array(JsonElement e, string where) =>
        e.ValueKind == JsonValueKind.Array ? e.EnumerateArray() : throw new ModelFormatException(file, $"{where} is {Kind(e)}, expected an array");

    public string? Str(JsonElement e, string name, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw new ModelFormatException(file, $"{where}.{name} is {Kind(v)}, expected a string");
    }

    public bool? Bool(JsonElement e, string name, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ModelFormatException(file, $"{where}.{name} is {Kind(v)}, expected true or false"),
        };
    }

    public int? Int(JsonElement e, string name, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw new ModelFormatException(file, $"{where}.{name} is {Kind(v)}, expected an integer");
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => $"the number {Truncate(e.GetRawText())}",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => "missing",
    };

    private static string Truncate(string s) => s.Length <= 24 ? s : s[..24] + "...";
}
