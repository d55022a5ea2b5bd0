using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Lrl.Tokenization.Tests;

/// <summary>
/// Exact ids against the reference implementations: the Rust Hugging Face library (live, through Tokenizers.DotNet)
/// for every tokenizer.json in ../shared/tokenizers and for tokenizers built here with unusual settings, and
/// sentencepiece's recorded ids for tokenizer.model files (data/sentencepiece, made by make_oracle.py).
/// </summary>
public sealed class ParityTests
{
    internal static string SharedTokenizers
    {
        get
        {
            if (SharedData.Root is null) Assert.Skip("shared/ not found (set LRL_SHARED)");
            var dir = Path.Combine(SharedData.Root!, "tokenizers");
            if (!Directory.Exists(dir)) Assert.Skip("shared/tokenizers not present");
            return dir;
        }
    }

    internal static string[] CorpusLines() => File.ReadAllText(Path.Combine(SharedTokenizers, "corpus.txt")).Split('\n');

    public static TheoryData<string> SharedJson => new(
        "falcon-json", "gpt2-json", "mistral-v0.3-json", "naijaml-yor-json", "phi2-json", "phi3-mini-json", "smollm-135m-json", "whisper-v3-json");

    internal static JsonObject ReadJson(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();

    /// <summary>lrlrun's tokenizer for a tokenizer.json alone (no config files beside it).</summary>
    internal static LrlTokenizer Mine(JsonObject json)
    {
        var dir = Directory.CreateTempSubdirectory("lrl-tok").FullName;
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        return LrlTokenizer.Load(dir);
    }

    /// <summary>Compares encode (with and without special tokens), decode and streaming decode on every text.</summary>
    internal static void AssertParity(JsonObject json, IEnumerable<string> texts, string label)
    {
        var mine = Mine(json);
        using var with = Oracle.For(json, withPostProcessor: true);
        using var without = Oracle.For(json, withPostProcessor: false);
        var failures = new List<string>();
        int n = 0;
        foreach (var text in texts)
        {
            n++;
            var valid = RandomText.Sanitized(text);
            var expected = with.Encode(valid);
            var got = mine.Encode(text, addSpecial: true);
            if (!expected.SequenceEqual(got)) failures.Add(Describe("encode", text, expected, got));
            var expectedPlain = without.Encode(valid);
            var gotPlain = mine.Encode(text, addSpecial: false);
            if (!expectedPlain.SequenceEqual(gotPlain)) failures.Add(Describe("encode without special tokens", text, expectedPlain, gotPlain));
            var decoded = with.Decode(expected);
            var myDecoded = mine.Decode(expected);
            if (decoded != myDecoded) failures.Add($"decode of {Show(text)}: expected {Show(decoded)}, got {Show(myDecoded)}");
            var plainDecoded = mine.Decode(expectedPlain);
            var streamed = Stream(mine, expectedPlain, checkReplacement: !plainDecoded.Contains('\uFFFD'));
            if (!plainDecoded.Contains('\uFFFD') && streamed.TrimStart(' ') != plainDecoded.TrimStart(' '))
                failures.Add($"stream of {Show(text)}: decode {Show(plainDecoded)}, streamed {Show(streamed)}");
            if (failures.Count >= 5) break;
        }
        Assert.True(failures.Count == 0, $"{label}: {failures.Count} mismatches in {n} texts:\n" + string.Join("\n", failures));
    }

    internal static string Stream(LrlTokenizer tok, int[] ids, bool checkReplacement = true)
    {
        var d = tok.CreateStreamingDecoder();
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            var piece = d.Push(id);
            if (checkReplacement) Assert.DoesNotContain('\uFFFD', piece);
            if (piece.Length > 0) Assert.False(char.IsHighSurrogate(piece[^1]), "the streaming decoder split a surrogate pair");
            sb.Append(piece);
        }
        return sb.Append(d.Flush()).ToString();
    }

    private static string Describe(string what, string text, int[] expected, int[] got)
    {
        int k = 0;
        while (k < Math.Min(expected.Length, got.Length) && expected[k] == got[k]) k++;
        return $"{what} of {Show(text)} differs at {k}: expected [{string.Join(",", expected.Skip(k).Take(12))}] (of {expected.Length}), got [{string.Join(",", got.Skip(k).Take(12))}] (of {got.Length})";
    }

    internal static string Show(string s) => JsonSerializer.Serialize(s.Length > 80 ? s[..80] + "…" : s);

    internal static List<string> AddedContents(JsonObject json) =>
        json["added_tokens"] is JsonArray a ? a.Select(x => (string)x!["content"]!).Where(c => c.Length > 0).Take(60).ToList() : [];

    [Theory]
    [MemberData(nameof(SharedJson))]
    public void SharedTokenizerJson_MatchesRustOnEveryCorpusLine(string name)
    {
        var json = ReadJson(Path.Combine(SharedTokenizers, name, "tokenizer.json"));
        AssertParity(json, CorpusLines(), name);
    }

    [Theory]
    [MemberData(nameof(SharedJson))]
    public void SharedTokenizerJson_MatchesRustOnRandomText(string name)
    {
        var json = ReadJson(Path.Combine(SharedTokenizers, name, "tokenizer.json"));
        var added = AddedContents(json).SelectMany(c => new[] { c, " " + c + " ", c + "  " }).ToList();
        AssertParity(json, RandomText.Make(name.Sum(c => c) * 7919 + 12345, 2500, added, surrogates: true), name);
    }

    public static TheoryData<string> SentencePieceFiles => new(
        "bpemb-en-spm", "mistral-v0.3-model", "unigram-nmt-nfkc", "unigram-bytes-identity", "bpe-nfkc-cf-nodummy");

    [Theory]
    [MemberData(nameof(SentencePieceFiles))]
    public void TokenizerModel_MatchesSentencepiece(string name)
    {
        var data = Path.Combine(AppContext.BaseDirectory, "data", "sentencepiece");
        string model = File.Exists(Path.Combine(data, name + ".model")) ? Path.Combine(data, name + ".model")
            : Path.Combine(SharedTokenizers, name, "tokenizer.model");
        var dir = Directory.CreateTempSubdirectory("lrl-spm").FullName;
        File.Copy(model, Path.Combine(dir, "tokenizer.model"));
        var tok = LrlTokenizer.Load(dir);
        var failures = new List<string>();
        int n = 0;
        foreach (var line in File.ReadLines(Path.Combine(data, name + ".expected.jsonl")).Skip(1))
        {
            using var doc = JsonDocument.Parse(line);
            var text = doc.RootElement.GetProperty("text").GetString()!;
            var expected = doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var got = tok.Encode(text, addSpecial: false);
            n++;
            if (!expected.SequenceEqual(got)) failures.Add(Describe("encode", text, expected, got));
            var decoded = doc.RootElement.GetProperty("decoded").GetString()!;
            if (tok.Decode(expected) != decoded) failures.Add($"decode of {Show(text)}: expected {Show(decoded)}, got {Show(tok.Decode(expected))}");
            if (failures.Count >= 5) break;
        }
        Assert.True(n > 1000, $"only {n} lines in the oracle file");
        Assert.True(failures.Count == 0, $"{name}: {failures.Count} mismatches in {n} texts:\n" + string.Join("\n", failures));
    }

    [Fact]
    public void SharedSentencepieceExpectations_WithAndWithoutBos()
    {
        var lines = CorpusLines();
        foreach (var name in new[] { "bpemb-en-spm", "mistral-v0.3-model" })
        {
            var src = Path.Combine(SharedTokenizers, name);
            var dir = Directory.CreateTempSubdirectory("lrl-spm").FullName;
            File.Copy(Path.Combine(src, "tokenizer.model"), Path.Combine(dir, "tokenizer.model"));
            var tok = LrlTokenizer.Load(dir);
            foreach (var line in File.ReadLines(Path.Combine(src, "expected-sentencepiece.jsonl")).Skip(1))
            {
                using var doc = JsonDocument.Parse(line);
                var text = lines[doc.RootElement.GetProperty("i").GetInt32()];
                Assert.Equal(doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()), tok.Encode(text, addSpecial: false));
                Assert.Equal(doc.RootElement.GetProperty("ids_sp").EnumerateArray().Select(e => e.GetInt32()), tok.Encode(text, addSpecial: true));
            }
        }
    }
}
