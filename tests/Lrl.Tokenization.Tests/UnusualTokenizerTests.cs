using System.Text.Json.Nodes;

namespace Lrl.Tokenization.Tests;

/// <summary>
/// Tokenizers built here with settings the shared files do not cover (Unigram, WordPiece, WordLevel, every Split
/// behavior, Llama-3 and o200k split patterns, Replace/Prepend/Strip/NFKD/Lowercase normalizers, added tokens with
/// lstrip/rstrip/single_word/normalized, Roberta/Bert/Sequence post-processors, BPE with a subword prefix and
/// end-of-word suffix), each checked against the Rust library on the corpus and on seeded random text.
/// </summary>
public sealed class UnusualTokenizerTests
{
    private static readonly Lazy<JsonObject> Gpt2 = new(() => ParityTests.ReadJson(Path.Combine(ParityTests.SharedTokenizers, "gpt2-json", "tokenizer.json")));
    private static readonly Lazy<JsonObject> Mistral = new(() => ParityTests.ReadJson(Path.Combine(ParityTests.SharedTokenizers, "mistral-v0.3-json", "tokenizer.json")));

    private static JsonObject Tok(JsonNode? normalizer, JsonNode? pre, JsonNode model, JsonNode? decoder, JsonNode? post = null, JsonArray? added = null) => new()
    {
        ["version"] = "1.0",
        ["truncation"] = null,
        ["padding"] = null,
        ["added_tokens"] = added ?? new JsonArray(),
        ["normalizer"] = normalizer,
        ["pre_tokenizer"] = pre,
        ["post_processor"] = post,
        ["decoder"] = decoder,
        ["model"] = model,
    };

    private static JsonObject T(string type, params (string, JsonNode?)[] fields)
    {
        var o = new JsonObject { ["type"] = type };
        foreach (var (k, v) in fields) o[k] = v;
        return o;
    }

    private static JsonArray Arr(params JsonNode?[] items) => new(items);
    private static JsonObject Rx(string pattern) => new() { ["Regex"] = pattern };
    private static JsonObject Lit(string s) => new() { ["String"] = s };

    private static JsonObject Added(int id, string content, bool special = false, bool lstrip = false, bool rstrip = false, bool singleWord = false, bool? normalized = null) => new()
    {
        ["id"] = id, ["content"] = content, ["single_word"] = singleWord, ["lstrip"] = lstrip, ["rstrip"] = rstrip,
        ["normalized"] = normalized ?? !special, ["special"] = special,
    };

    private static JsonObject Gpt2Model(bool ignoreMerges = false)
    {
        var m = Gpt2.Value["model"]!.DeepClone().AsObject();
        m["ignore_merges"] = ignoreMerges;
        return m;
    }

    private static JsonObject ByteLevel(bool prefix, bool regex) => T("ByteLevel", ("add_prefix_space", prefix), ("trim_offsets", true), ("use_regex", regex));

    private static IEnumerable<string> Texts(int seed, IReadOnlyList<string>? extra = null) =>
        ParityTests.CorpusLines().Concat(RandomText.Make(seed, 700, extra, surrogates: true));

    /// <summary>Words and their pieces from the corpus, for vocabularies of the synthetic models.</summary>
    private static List<string> CorpusWords() =>
        ParityTests.CorpusLines().SelectMany(l => l.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)).Distinct().ToList();

    [Fact]
    public void Unigram_Metaspace_NfkcLowercaseReplace_ByteFallback()
    {
        var rng = new Random(7);
        var vocab = new JsonArray(Arr("<unk>", 0.0));
        for (int b = 0; b < 256; b++) vocab.Add(Arr($"<0x{b:X2}>", -20.0));
        var seen = new HashSet<string>();
        foreach (var w in CorpusWords().Take(400))
        {
            var word = "▁" + w.ToLowerInvariant();
            var runes = word.EnumerateRunes().Select(r => r.ToString()).ToArray();
            for (int i = 0; i < runes.Length; i++)
                for (int len = 1; len <= 4 && i + len <= runes.Length; len++)
                {
                    var piece = string.Concat(runes[i..(i + len)]);
                    if (seen.Add(piece)) vocab.Add(Arr(piece, -1 - rng.NextDouble() * 12 - len));
                }
        }
        var json = Tok(T("Sequence", ("normalizers", Arr(T("NFKC"), T("Lowercase"), T("Replace", ("pattern", Rx(" {2,}")), ("content", " "))))),
            T("Metaspace", ("replacement", "▁"), ("prepend_scheme", "always"), ("split", true)),
            T("Unigram", ("unk_id", 0), ("vocab", vocab), ("byte_fallback", true)),
            T("Sequence", ("decoders", Arr(T("ByteFallback"), T("Metaspace", ("replacement", "▁"), ("prepend_scheme", "always"), ("split", true))))));
        ParityTests.AssertParity(json, Texts(11), "unigram-metaspace");
    }

    [Fact]
    public void Unigram_FusedUnknowns_NfdStripAccents_WhitespaceSplit_NoDecoder()
    {
        var rng = new Random(8);
        var vocab = new JsonArray(Arr("<unk>", 0.0));
        var seen = new HashSet<string>();
        foreach (var w in CorpusWords().Where(w => w.All(c => c < 0x250)).Take(300))
            for (int i = 0; i < w.Length; i++)
                for (int len = 1; len <= 3 && i + len <= w.Length; len++)
                    if (seen.Add(w.Substring(i, len))) vocab.Add(Arr(w.Substring(i, len), -2 - rng.NextDouble() * 8));
        var json = Tok(T("Sequence", ("normalizers", Arr(T("NFD"), T("StripAccents")))), T("WhitespaceSplit"),
            T("Unigram", ("unk_id", 0), ("vocab", vocab), ("byte_fallback", false)), null);
        ParityTests.AssertParity(json, Texts(12), "unigram-unk");
    }

    [Fact]
    public void WordPiece_BertNormalizer_BertPreTokenizer_BertProcessing()
    {
        var vocab = new JsonObject();
        int id = 0;
        foreach (var s in new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }) vocab[s] = id++;
        var seen = new HashSet<string>(vocab.Select(kv => kv.Key));
        void Add(string s) { if (seen.Add(s)) vocab[s] = id++; }
        foreach (var w in CorpusWords().Take(500))
        {
            var lw = w.ToLowerInvariant();
            var runes = lw.EnumerateRunes().Select(r => r.ToString()).ToArray();
            for (int i = 0; i < runes.Length; i++)
            {
                Add(i == 0 ? runes[i] : "##" + runes[i]);
                if (i + 2 <= runes.Length) Add((i == 0 ? "" : "##") + runes[i] + runes[i + 1]);
            }
            if (runes.Length <= 6) Add(lw);
        }
        var json = Tok(T("BertNormalizer", ("clean_text", true), ("handle_chinese_chars", true), ("strip_accents", null), ("lowercase", true)),
            T("BertPreTokenizer"),
            T("WordPiece", ("unk_token", "[UNK]"), ("continuing_subword_prefix", "##"), ("max_input_chars_per_word", 12), ("vocab", vocab)),
            T("WordPiece", ("prefix", "##"), ("cleanup", true)),
            T("BertProcessing", ("sep", Arr("[SEP]", 3)), ("cls", Arr("[CLS]", 2))),
            Arr(Added(0, "[PAD]", true), Added(1, "[UNK]", true), Added(2, "[CLS]", true), Added(3, "[SEP]", true), Added(4, "[MASK]", true)));
        ParityTests.AssertParity(json, Texts(13, ["[MASK]", "[SEP]", " [CLS] "]), "wordpiece");
    }

    public static TheoryData<string, bool, bool> SplitCases => new()
    {
        { "Isolated", false, false }, { "Removed", false, false }, { "MergedWithPrevious", false, false }, { "MergedWithNext", false, false },
        { "Contiguous", false, false }, { "Isolated", true, false }, { "MergedWithPrevious", true, false }, { "Removed", false, true },
    };

    [Theory]
    [MemberData(nameof(SplitCases))]
    public void Split_EveryBehavior(string behavior, bool invert, bool literal)
    {
        var pattern = literal ? Lit(" ") : Rx(@"\s+|\p{P}|\d");
        var json = Tok(null, T("Sequence", ("pretokenizers", Arr(T("Split", ("pattern", pattern), ("behavior", behavior), ("invert", invert)), ByteLevel(true, false)))),
            Gpt2Model(), ByteLevel(true, true));
        ParityTests.AssertParity(json, Texts(20 + behavior.Length + (invert ? 100 : 0)), $"split {behavior} invert={invert}");
    }

    public const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    public const string O200kPattern = @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    [Theory]
    [InlineData("llama3")]
    [InlineData("o200k")]
    public void SplitRegexOfLlama3AndO200k_IgnoreMerges_TemplateBos(string which)
    {
        var json = Tok(null,
            T("Sequence", ("pretokenizers", Arr(T("Split", ("pattern", Rx(which == "llama3" ? Llama3Pattern : O200kPattern)), ("behavior", "Isolated"), ("invert", false)), ByteLevel(false, false)))),
            Gpt2Model(ignoreMerges: true), ByteLevel(true, true),
            T("Sequence", ("processors", Arr(ByteLevel(false, true), T("TemplateProcessing",
                ("single", Arr(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["type_id"] = 0 } },
                               new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } })),
                ("pair", Arr(new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
                             new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 1 } })),
                ("special_tokens", new JsonObject { ["<|begin_of_text|>"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["ids"] = Arr(50257), ["tokens"] = Arr("<|begin_of_text|>") } }))))),
            Arr(Added(50257, "<|begin_of_text|>", special: true)));
        ParityTests.AssertParity(json, Texts(which.Length * 31, ["<|begin_of_text|>", "It'S", "DON'T", "x/y\r\n", "12345"]), which);
    }

    [Fact]
    public void Normalizers_ReplacePrependStripNfkd_RobertaProcessing_OnSentencePieceStyleBpe()
    {
        var m = Mistral.Value;
        var json = Tok(T("Sequence", ("normalizers", Arr(T("Strip", ("strip_left", true), ("strip_right", false)), T("NFKD"),
                T("Replace", ("pattern", Rx("[0-9]{3,}")), ("content", "#")), T("Prepend", ("prepend", "▁")), T("Replace", ("pattern", Lit(" ")), ("content", "▁"))))),
            null, m["model"]!.DeepClone(), m["decoder"]!.DeepClone(),
            T("RobertaProcessing", ("sep", Arr("</s>", 2)), ("cls", Arr("<s>", 1)), ("trim_offsets", true), ("add_prefix_space", false)),
            (JsonArray)m["added_tokens"]!.DeepClone());
        ParityTests.AssertParity(json, Texts(41, ["[INST]", "</s>", " [/INST] "]), "normalizers");
    }

    [Fact]
    public void AddedTokens_LstripRstripSingleWordNormalized()
    {
        var json = Tok(T("Sequence", ("normalizers", Arr(T("NFKC"), T("Lowercase")))), ByteLevel(false, true), Gpt2Model(), ByteLevel(true, true),
            T("Sequence", ("processors", Arr(ByteLevel(false, true), T("TemplateProcessing",
                ("single", Arr(new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
                               new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<sep>", ["type_id"] = 0 } })),
                ("pair", Arr(new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
                             new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 1 } })),
                ("special_tokens", new JsonObject { ["<sep>"] = new JsonObject { ["id"] = "<sep>", ["ids"] = Arr(50261), ["tokens"] = Arr("<sep>") } }))))),
            Arr(Added(50256, "<|endoftext|>", special: true),
                Added(50257, "<|L|>", special: true, lstrip: true),
                Added(50258, "<|R|>", special: true, rstrip: true),
                Added(50259, "<|LR|>", special: false, lstrip: true, rstrip: true, normalized: false),
                Added(26449, "Word", singleWord: true, normalized: false),
                Added(50260, "HELLO", normalized: true),
                Added(50261, "<sep>", special: true),
                Added(397, "ab", singleWord: true, normalized: true)));
        ParityTests.AssertParity(json, Texts(51, ["<|L|>", "  <|L|>", "<|R|>  ", " <|LR|> ", "Word", "xWord", "Words", " Word ", "HELLO", "hello", "Hello", "ab", "abc", " ab ", "<sep>", "<|endoftext|>"]), "added");
    }

    [Fact]
    public void WordLevel_WhitespaceDigitsDelimiterPunctuation()
    {
        var vocab = new JsonObject { ["<unk>"] = 0 };
        int id = 1;
        var seen = new HashSet<string> { "<unk>" };
        foreach (var w in CorpusWords().Take(600))
            foreach (var part in w.Split('-'))
                if (part.Length > 0 && seen.Add(part)) vocab[part] = id++;
        foreach (var d in Enumerable.Range(0, 100).Select(i => i.ToString())) if (seen.Add(d)) vocab[d] = id++;
        var json = Tok(null,
            T("Sequence", ("pretokenizers", Arr(T("Whitespace"), T("Digits", ("individual_digits", false)), T("CharDelimiterSplit", ("delimiter", "-")),
                T("Punctuation", ("behavior", "MergedWithPrevious"))))),
            T("WordLevel", ("vocab", vocab), ("unk_token", "<unk>")), null);
        ParityTests.AssertParity(json, Texts(61, ["a-b", "x--y", "99-1"]), "wordlevel");
    }

    [Fact]
    public void Bpe_ContinuingSubwordPrefixAndEndOfWordSuffix_BpeDecoder()
    {
        // A small BPE trained here: words as [c0, ##c1, ..., ##cn</w>], the most frequent pair merged 300 times.
        var words = CorpusWords().Where(w => w.All(c => c < 0x2000)).Take(400)
            .Select(w => w.EnumerateRunes().Select((r, i) => (i == 0 ? "" : "##") + r + "").ToList()).ToList();
        foreach (var w in words) w[^1] += "</w>";
        var vocab = new Dictionary<string, int> { ["[UNK]"] = 0 };
        foreach (var w in words) foreach (var s in w) vocab.TryAdd(s, vocab.Count);
        var merges = new JsonArray();
        for (int step = 0; step < 300; step++)
        {
            var counts = new Dictionary<(string, string), int>();
            foreach (var w in words)
                for (int i = 0; i + 1 < w.Count; i++) counts[(w[i], w[i + 1])] = counts.GetValueOrDefault((w[i], w[i + 1])) + 1;
            if (counts.Count == 0) break;
            var best = counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key.Item1, StringComparer.Ordinal).ThenBy(kv => kv.Key.Item2, StringComparer.Ordinal).First().Key;
            var merged = best.Item1 + best.Item2[2..];
            vocab.TryAdd(merged, vocab.Count);
            merges.Add(best.Item1 + " " + best.Item2);
            foreach (var w in words)
                for (int i = 0; i + 1 < w.Count; i++)
                    if (w[i] == best.Item1 && w[i + 1] == best.Item2) { w[i] = merged; w.RemoveAt(i + 1); }
        }
        var vocabJson = new JsonObject();
        foreach (var (k, v) in vocab) vocabJson[k] = v;
        var json = Tok(null, T("WhitespaceSplit"),
            T("BPE", ("dropout", null), ("unk_token", "[UNK]"), ("continuing_subword_prefix", "##"), ("end_of_word_suffix", "</w>"),
                ("fuse_unk", true), ("byte_fallback", false), ("vocab", vocabJson), ("merges", merges)),
            T("BPEDecoder", ("suffix", "</w>")));
        ParityTests.AssertParity(json, Texts(71), "bpe-prefix-suffix");
    }
}
