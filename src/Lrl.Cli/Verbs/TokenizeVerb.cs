using System.Globalization;
using System.Text;
using System.Text.Json;
using CommandLine;
using Lrl.Tokenization;

namespace Lrl.Cli;

[Verb("tokenize", HelpText = "Print the token ids (or pieces) of each input line, or a fertility summary per script (--stats).")]
public sealed class TokenizeVerb
{
    /// <summary>Shown under the options by `lrlrun tokenize --help`.</summary>
    public static string[] Examples =>
    [
        "printf 'Hello world\\n' | lrlrun tokenize --model ../shared/tokenizers/smollm-135m-json --tokens",
        "lrlrun tokenize --model ../shared/tokenizers/naijaml-yor-json --file ../shared/tokenizers/corpus.txt --stats",
    ];

    [Option('m', "model", Required = true, HelpText = "Model folder, or a folder with just the tokenizer files (tokenizer.json or tokenizer.model).")]
    public string Model { get; set; } = "";

    [Option('f', "file", HelpText = "Read the lines from this file instead of standard input (lines are split on \\n only).")]
    public string? File { get; set; }

    [Option("ids", HelpText = "Print space-separated token ids (the default).")]
    public bool Ids { get; set; }

    [Option("tokens", HelpText = "Print the tokens' vocabulary entries instead of ids (entries with whitespace are JSON-quoted).")]
    public bool Tokens { get; set; }

    [Option("special", HelpText = "Add what the tokenizer's post-processor adds (BOS, templates), as Hugging Face's add_special_tokens=True.")]
    public bool Special { get; set; }

    [Option("stats", HelpText = "Instead of ids, print tokens per word and per byte for each script (the line's dominant script) and in total.")]
    public bool Stats { get; set; }

    public int Run()
    {
        if (Ids && Tokens) throw new LrlException("--ids and --tokens exclude each other");
        if (File is not null && !System.IO.File.Exists(File)) throw new LrlException($"--file {File}: no such file");
        var tok = LrlTokenizer.Load(Model);
        string input = File is not null ? System.IO.File.ReadAllText(File, Encoding.UTF8) : Console.In.ReadToEnd();
        var lines = input.Split('\n');
        int count = input.EndsWith('\n') ? lines.Length - 1 : lines.Length;
        if (input.Length == 0) count = 0;
        var stdout = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false)) { AutoFlush = false, NewLine = "\n" };
        var stats = new Dictionary<string, Fertility>();
        var total = new Fertility();
        var sb = new StringBuilder();
        for (int i = 0; i < count; i++)
        {
            var line = lines[i];
            var ids = tok.Encode(line, addSpecial: Special);
            if (Stats)
            {
                var f = new Fertility
                {
                    Lines = 1,
                    Words = line.Split((char[])[' ', '\t', '\r', '\u00A0', '\u3000'], StringSplitOptions.RemoveEmptyEntries).Length,
                    Bytes = Encoding.UTF8.GetByteCount(line),
                    Tokens = ids.Length,
                };
                var script = Scripts.Dominant(line);
                stats[script] = stats.GetValueOrDefault(script) + f;
                total += f;
                continue;
            }
            sb.Clear();
            for (int k = 0; k < ids.Length; k++)
            {
                if (k > 0) sb.Append(' ');
                if (!Tokens) { sb.Append(ids[k].ToString(CultureInfo.InvariantCulture)); continue; }
                var piece = tok.TokenText(ids[k]);
                bool quote = piece.Length == 0 || piece.Any(c => char.IsWhiteSpace(c) || char.IsControl(c) || c == '"');
                sb.Append(quote ? JsonSerializer.Serialize(piece) : piece);
            }
            stdout.WriteLine(sb.ToString());
        }
        if (Stats)
        {
            stdout.WriteLine($"tokenizer: {tok.Kind}, {tok.VocabSize} ids");
            stdout.WriteLine($"{"script",-16} {"lines",7} {"words",9} {"bytes",10} {"tokens",9} {"tokens/word",12} {"tokens/byte",12} {"bytes/token",12}");
            foreach (var (script, f) in stats.OrderByDescending(kv => kv.Value.Tokens))
                stdout.WriteLine(Row(script, f));
            stdout.WriteLine(Row("total", total));
        }
        stdout.Flush();
        return 0;
    }

    private static string Row(string name, Fertility f) =>
        $"{name,-16} {f.Lines,7} {f.Words,9} {f.Bytes,10} {f.Tokens,9} {Ratio(f.Tokens, f.Words),12} {Ratio(f.Tokens, f.Bytes),12} {Ratio(f.Bytes, f.Tokens),12}";

    private static string Ratio(long a, long b) => b == 0 ? "-" : (a / (double)b).ToString("F3", CultureInfo.InvariantCulture);

    private readonly record struct Fertility(long Lines, long Words, long Bytes, long Tokens)
    {
        public static Fertility operator +(Fertility a, Fertility b) => new(a.Lines + b.Lines, a.Words + b.Words, a.Bytes + b.Bytes, a.Tokens + b.Tokens);
    }
}

/// <summary>The writing system of text by Unicode block, enough to group fertility by script.</summary>
internal static class Scripts
{
    private static readonly (int Lo, int Hi, string Name)[] Ranges =
    [
        (0x0041, 0x024F, "Latin"), (0x1E00, 0x1EFF, "Latin"), (0x2C60, 0x2C7F, "Latin"), (0xA720, 0xA7FF, "Latin"), (0xFF21, 0xFF5A, "Latin"),
        (0x0370, 0x03FF, "Greek"), (0x1F00, 0x1FFF, "Greek"), (0x0400, 0x052F, "Cyrillic"), (0x1C80, 0x1C8F, "Cyrillic"), (0x2DE0, 0x2DFF, "Cyrillic"), (0xA640, 0xA69F, "Cyrillic"),
        (0x0530, 0x058F, "Armenian"), (0x0590, 0x05FF, "Hebrew"), (0x0600, 0x06FF, "Arabic"), (0x0750, 0x077F, "Arabic"), (0x08A0, 0x08FF, "Arabic"),
        (0xFB50, 0xFDFF, "Arabic"), (0xFE70, 0xFEFF, "Arabic"), (0x0700, 0x074F, "Syriac"), (0x0780, 0x07BF, "Thaana"), (0x07C0, 0x07FF, "NKo"),
        (0x0900, 0x097F, "Devanagari"), (0xA8E0, 0xA8FF, "Devanagari"), (0x0980, 0x09FF, "Bengali"), (0x0A00, 0x0A7F, "Gurmukhi"), (0x0A80, 0x0AFF, "Gujarati"),
        (0x0B00, 0x0B7F, "Oriya"), (0x0B80, 0x0BFF, "Tamil"), (0x0C00, 0x0C7F, "Telugu"), (0x0C80, 0x0CFF, "Kannada"), (0x0D00, 0x0D7F, "Malayalam"),
        (0x0D80, 0x0DFF, "Sinhala"), (0x0E00, 0x0E7F, "Thai"), (0x0E80, 0x0EFF, "Lao"), (0x0F00, 0x0FFF, "Tibetan"), (0x1000, 0x109F, "Myanmar"),
        (0x10A0, 0x10FF, "Georgian"), (0x1100, 0x11FF, "Hangul"), (0x1200, 0x139F, "Ethiopic"), (0x2D80, 0x2DDF, "Ethiopic"), (0xAB00, 0xAB2F, "Ethiopic"),
        (0x13A0, 0x13FF, "Cherokee"), (0xAB70, 0xABBF, "Cherokee"), (0x1400, 0x167F, "Canadian"), (0x1780, 0x17FF, "Khmer"), (0x1800, 0x18AF, "Mongolian"),
        (0x2D30, 0x2D7F, "Tifinagh"), (0x3040, 0x309F, "Hiragana"), (0x30A0, 0x30FF, "Katakana"), (0x3100, 0x312F, "Bopomofo"), (0x3130, 0x318F, "Hangul"),
        (0x3400, 0x4DBF, "Han"), (0x4E00, 0x9FFF, "Han"), (0xF900, 0xFAFF, "Han"), (0x20000, 0x3134F, "Han"), (0xA500, 0xA63F, "Vai"),
        (0xA980, 0xA9DF, "Javanese"), (0x1B00, 0x1B7F, "Balinese"), (0xAC00, 0xD7AF, "Hangul"), (0x1F300, 0x1FAFF, "Emoji"),
    ];

    /// <summary>The script most of the line's letters belong to ("Common" when it has none: digits, punctuation, symbols).</summary>
    public static string Dominant(string line)
    {
        var counts = new Dictionary<string, int>();
        foreach (var r in line.EnumerateRunes())
        {
            var name = Of(r.Value);
            if (name is null) continue;
            counts[name] = counts.GetValueOrDefault(name) + 1;
        }
        return counts.Count == 0 ? "Common" : counts.MaxBy(kv => kv.Value).Key;
    }

    private static string? Of(int cp)
    {
        if (cp < 0x41) return null;
        if (cp < 0x80 && !char.IsAsciiLetter((char)cp)) return null;
        foreach (var (a, b, n) in Ranges) if (cp >= a && cp <= b) return n;
        return Rune.IsLetter(new Rune(cp)) ? "Other" : null;
    }
}
