using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Lrl.Tokenization.Tests;

public sealed class TokenizerTests
{
    public static TheoryData<string> StoriesModels => new() { "stories260k", "stories260k-fp16", "stories260k-bf16-sharded" };

    /// <summary>Text in many scripts, most of it outside the 512-token stories vocabulary (so it goes through byte fallback).</summary>
    public static readonly string[] ScriptTexts =
    [
        "Ça va? Crème brûlée, naïve façade, Ångström, Łódź, İstanbul",
        "Съешь же ещё этих мягких французских булок",
        "Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιά",
        "نص حكيم له سر قاطع وذو شأن عظيم",
        "ऋषियों को सताने वाले दुष्ट राक्षसों",
        "আমি বাংলায় গান গাই",
        "ሰማይ አይታረስ ንጉሥ አይከሰስ",
        "我能吞下玻璃而不伤身体。日本語のテキスト、한국어",
        "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า",
        "Emoji: 🦙🚀👩‍💻 and flags 🇰🇪",
        "Mixed\nlines\twith  double  spaces and trailing space ",
    ];

    public static TheoryData<string> Scripts => new(ScriptTexts);

    [Theory]
    [MemberData(nameof(StoriesModels))]
    public void TokenizerJson_ReproducesReferenceInputIds(string model)
    {
        var tok = LrlTokenizer.Load(SharedData.Model(model));
        Assert.Contains("tokenizer.json", tok.Kind);
        foreach (var p in SharedData.Reference(model).GetProperty("prompts").EnumerateArray())
        {
            var expected = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(expected, tok.Encode(p.GetProperty("text").GetString()!));
        }
    }

    [Fact]
    public void TokenizerModel_ReproducesReferenceInputIds()
    {
        var dir = CopyWithout(SharedData.Model("stories260k"), "tokenizer.json");
        var tok = LrlTokenizer.Load(dir);
        Assert.Contains("tokenizer.model", tok.Kind);
        foreach (var p in SharedData.Reference("stories260k").GetProperty("prompts").EnumerateArray())
        {
            var expected = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(expected, tok.Encode(p.GetProperty("text").GetString()!));
        }
    }

    [Fact]
    public void BosEosComeFromTheConfigFiles()
    {
        var tok = LrlTokenizer.Load(SharedData.Model("stories260k"));
        Assert.Equal(1, tok.BosId);
        Assert.Contains(2, tok.EosIds);
        Assert.True(tok.AddBos);
        Assert.Equal(tok.Encode("Zoo")[1..], tok.Encode("Zoo", addSpecial: false));
        Assert.True(tok.IsSpecial(1));
        Assert.False(tok.IsSpecial(403));
    }

    [Theory]
    [MemberData(nameof(Scripts))]
    public void RoundTripsThroughByteFallback(string text)
    {
        foreach (var dir in new[] { SharedData.Model("stories260k"), CopyWithout(SharedData.Model("stories260k"), "tokenizer.json") })
        {
            var tok = LrlTokenizer.Load(dir);
            var ids = tok.Encode(text);
            Assert.Equal(text, tok.Decode(ids));
            Assert.Equal(" " + text, Stream(tok, ids[1..]));
        }
    }

    [Theory]
    [MemberData(nameof(Scripts))]
    public void StreamingDecoderNeverSplitsACharacter(string text)
    {
        var tok = LrlTokenizer.Load(SharedData.Model("stories260k"));
        var ids = tok.Encode(text, addSpecial: false);
        var decoder = tok.CreateStreamingDecoder();
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            var piece = decoder.Push(id);
            Assert.DoesNotContain('\uFFFD', piece);
            if (piece.Length > 0) Assert.False(char.IsHighSurrogate(piece[^1]), "a surrogate pair was split");
            sb.Append(piece);
        }
        sb.Append(decoder.Flush());
        Assert.Equal(" " + text, sb.ToString()); // the dummy prefix space is kept when streaming a continuation
    }

    [Fact]
    public void ByteFallbackIsUsedForUnknownCharacters()
    {
        var tok = LrlTokenizer.Load(SharedData.Model("stories260k"));
        var ids = tok.Encode("ሰ", addSpecial: false); // U+1230: E1 88 B0
        var texts = ids.Select(tok.TokenText).ToArray();
        Assert.Contains("<0xE1>", texts);
        Assert.Contains("<0x88>", texts);
        Assert.Contains("<0xB0>", texts);
    }

    [Fact]
    public void ByteLevelBpe_FromTokenizerJson_RoundTripsAndAppliesMerges()
    {
        var dir = WriteByteLevelTokenizer();
        var tok = LrlTokenizer.Load(dir);
        Assert.Contains("byte-level", tok.Kind);
        var ids = tok.Encode("hello world", addSpecial: false);
        // "hello" and " world" are single merged tokens in the synthetic vocabulary.
        Assert.Equal(["hello", "Ġworld"], ids.Select(tok.TokenText).ToArray());
        Assert.Equal(tok.BosId, tok.Encode("hi")[0]);
        foreach (var t in ScriptTexts)
        {
            var enc = tok.Encode(t, addSpecial: false);
            Assert.Equal(t, tok.Decode(enc));
            Assert.Equal(t, Stream(tok, enc));
        }
        // Special tokens in the text are matched whole.
        var withSpecial = tok.Encode("hello<|endoftext|>", addSpecial: false);
        Assert.Equal(tok.EosIds[0], withSpecial[^1]);
        Assert.Equal("hello", tok.Decode(withSpecial));
    }

    [Fact]
    public void WordLevelTokenMappings()
    {
        var tok = LrlTokenizer.Load(SharedData.Model("capp-gpt2-tiny"));
        var prompt = SharedData.Reference("capp-gpt2-tiny").GetProperty("prompts")[0];
        var tokens = prompt.GetProperty("input_tokens").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var expected = prompt.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(expected, tok.Encode(string.Join(" ", tokens)));
        Assert.Equal("Sand Casting", tok.Decode([33]));
        Assert.Contains(51, tok.EosIds);
        Assert.Throws<LrlException>(() => tok.Encode("not_a_token"));
    }

    [Fact]
    public void ByteVocabularyDeclaredInConfig()
    {
        var tok = LrlTokenizer.Load(SharedData.Model("rwkv-tiny-7v0-834K"));
        Assert.Equal(256, tok.VocabSize);
        Assert.Equal([34, 105, 110], tok.Encode("\"in"));
        Assert.Equal("Ωx", tok.Decode(tok.Encode("Ωx")));
    }

    [Fact]
    public void MissingOrMalformedTokenizerIsAClearError()
    {
        var empty = Directory.CreateTempSubdirectory("lrl-tok").FullName;
        var e = Assert.Throws<LrlException>(() => LrlTokenizer.Load(empty));
        Assert.Contains("no tokenizer", e.Message);
        File.WriteAllText(Path.Combine(empty, "tokenizer.json"), "{ not json");
        var m = Assert.Throws<ModelFormatException>(() => LrlTokenizer.Load(empty));
        Assert.Contains("tokenizer.json", m.Message);
        File.WriteAllText(Path.Combine(empty, "tokenizer.json"), """{"model": {"type": "CharPiece", "vocab": {}}}""");
        m = Assert.Throws<ModelFormatException>(() => LrlTokenizer.Load(empty));
        Assert.Contains("CharPiece", m.Message);
        File.Delete(Path.Combine(empty, "tokenizer.json"));
        File.WriteAllBytes(Path.Combine(empty, "tokenizer.model"), [0x0A, 0xFF, 0xFF, 0x01]);
        m = Assert.Throws<ModelFormatException>(() => LrlTokenizer.Load(empty));
        Assert.Contains("tokenizer.model", m.Message);
    }

    [Fact]
    public void OutOfRangeIdIsAClearError()
    {
        var tok = LrlTokenizer.Load(SharedData.Model("stories260k"));
        var e = Assert.Throws<LrlException>(() => tok.Decode([tok.VocabSize]));
        Assert.Contains("outside", e.Message);
    }

    private static string Stream(LrlTokenizer tok, IEnumerable<int> ids)
    {
        var d = tok.CreateStreamingDecoder();
        var sb = new StringBuilder();
        foreach (var id in ids) sb.Append(d.Push(id));
        return sb.Append(d.Flush()).ToString();
    }

    private static string CopyWithout(string dir, string skip)
    {
        var tmp = Directory.CreateTempSubdirectory("lrl-tok").FullName;
        foreach (var f in Directory.GetFiles(dir))
            if (Path.GetFileName(f) != skip && !f.EndsWith(".safetensors")) File.Copy(f, Path.Combine(tmp, Path.GetFileName(f)));
        return tmp;
    }

    /// <summary>A GPT-2-style byte-level BPE tokenizer.json: the 256 byte symbols plus merges spelling "hello" and " world".</summary>
    private static string WriteByteLevelTokenizer()
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteLevelAlphabet.Encode((byte)b).ToString()] = b;
        string[] merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"];
        int next = 256;
        foreach (var m in merges) vocab[m.Replace(" ", "")] = next++;
        var json = new JsonObject
        {
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = next, ["content"] = "<|endoftext|>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|endoftext|>", ["type_id"] = 0 } },
                                           new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["special_tokens"] = new JsonObject
                {
                    ["<|endoftext|>"] = new JsonObject { ["id"] = "<|endoftext|>", ["ids"] = new JsonArray(next), ["tokens"] = new JsonArray("<|endoftext|>") },
                },
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new JsonArray(merges.Select(m => (JsonNode)m).ToArray()) },
        };
        var dir = Directory.CreateTempSubdirectory("lrl-bbpe").FullName;
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}""");
        return dir;
    }
}
