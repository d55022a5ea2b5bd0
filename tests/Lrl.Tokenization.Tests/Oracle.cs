using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace Lrl.Tokenization.Tests;

/// <summary>
/// The Rust Hugging Face tokenizers library (NuGet Tokenizers.DotNet) as a live oracle. A tokenizer.json is handed to
/// it with truncation and padding removed (they belong to batched training; lrlrun never truncates silently), and
/// optionally without its post-processor, which gives Hugging Face's add_special_tokens=False ids.
/// </summary>
internal sealed class Oracle : IDisposable
{
    private readonly Tokenizers.DotNet.Tokenizer _tok;

    private Oracle(Tokenizers.DotNet.Tokenizer tok) => _tok = tok;

    public static Oracle For(JsonObject tokenizerJson, bool withPostProcessor)
    {
        var copy = tokenizerJson.DeepClone().AsObject();
        copy["truncation"] = null;
        copy["padding"] = null;
        if (!withPostProcessor) copy["post_processor"] = null;
        var path = Path.Combine(Directory.CreateTempSubdirectory("lrl-oracle").FullName, "tokenizer.json");
        File.WriteAllText(path, copy.ToJsonString());
        try { return new Oracle(new Tokenizers.DotNet.Tokenizer(path)); }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or BadImageFormatException)
        {
            Assert.Skip($"the Rust tokenizers oracle cannot run here: {e.Message}");
            throw;
        }
    }

    /// <summary>Ids of valid Unicode text (the oracle refuses unpaired surrogates).</summary>
    public int[] Encode(string text) => _tok.Encode(text).Select(x => (int)x).ToArray();

    /// <summary>Decoded text, special tokens skipped.</summary>
    public string Decode(int[] ids) => _tok.Decode(ids.Select(x => (uint)x).ToArray());

    public void Dispose() => _tok.Dispose();
}

/// <summary>Seeded random text from many Unicode blocks, for property tests against the oracles.</summary>
internal static class RandomText
{
    private static readonly (int Lo, int Hi)[] Blocks =
    [
        (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0x17F), (0x180, 0x24F), (0x250, 0x2AF), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
        (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF), (0xB80, 0xBFF), (0xE00, 0xE7F),
        (0x10A0, 0x10FF), (0x1200, 0x137F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
        (0xAC00, 0xAD00), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0x1D400, 0x1D4FF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF),
    ];

    private static readonly string[] Specials =
        ["\u200D", "\u200C", "\u200E", "\u200F", "\uFE0F", " ", " ", " ", "  ", "   ", "\t", "\n", "\r\n", "\u3000", "\u00A0", "0", "42", "1234567", "'s", "'LL", "▁", "...", "?!", "e\u0301", "\u0301"];

    /// <summary>
    /// Strings of 1-30 pieces: characters of the blocks above (assigned ones), whitespace runs, joiners, digits,
    /// contractions, combining marks, the given extra strings (a tokenizer's added tokens) and, when
    /// <paramref name="surrogates"/>, unpaired surrogates.
    /// </summary>
    public static List<string> Make(int seed, int count, IReadOnlyList<string>? extra = null, bool surrogates = false)
    {
        var rng = new Random(seed);
        var result = new List<string>(count);
        var sb = new StringBuilder();
        while (result.Count < count)
        {
            sb.Clear();
            int n = rng.Next(1, 31);
            for (int k = 0; k < n; k++)
            {
                double r = rng.NextDouble();
                if (r < 0.2) { sb.Append(Specials[rng.Next(Specials.Length)]); continue; }
                if (r < 0.27 && extra is { Count: > 0 }) { sb.Append(extra[rng.Next(extra.Count)]); continue; }
                if (r < 0.29 && surrogates) { sb.Append(rng.Next(2) == 0 ? '\uD83D' : '\uDE00'); continue; }
                var (lo, hi) = Blocks[rng.Next(Blocks.Length)];
                int cp = rng.Next(lo, hi + 1);
                var cat = CharUnicodeInfo.GetUnicodeCategory(cp);
                if (cat is UnicodeCategory.OtherNotAssigned or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse) continue;
                sb.Append(char.ConvertFromUtf32(cp));
            }
            result.Add(sb.ToString());
        }
        return result;
    }

    /// <summary>The text as valid Unicode (what a UTF-8 conversion makes of unpaired surrogates).</summary>
    public static string Sanitized(string s) => Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(s));
}
