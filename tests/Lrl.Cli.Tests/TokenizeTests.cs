using System.Text.Json;

namespace Lrl.Cli.Tests;

/// <summary>`lrlrun tokenize`: ids per line as the reference implementations give them, pieces, fertility per script.</summary>
public class TokenizeTests
{
    private static string Tokenizers()
    {
        if (CliRunner.SharedRoot is null) Assert.Skip("shared/ not found (set LRL_SHARED)");
        return Path.Combine(CliRunner.SharedRoot!, "tokenizers");
    }

    [Fact]
    public void IdsOfEveryCorpusLineEqualSentencepieces_WithAndWithoutSpecialTokens()
    {
        var dir = Path.Combine(Tokenizers(), "mistral-v0.3-model");
        var corpus = Path.Combine(Tokenizers(), "corpus.txt");
        var expected = File.ReadLines(Path.Combine(dir, "expected-sentencepiece.jsonl")).Skip(1).Select(l =>
        {
            using var d = JsonDocument.Parse(l);
            return (Plain: string.Join(' ', d.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32())),
                    Bos: string.Join(' ', d.RootElement.GetProperty("ids_sp").EnumerateArray().Select(e => e.GetInt32())));
        }).ToArray();
        var plain = CliRunner.Run("tokenize", "--model", dir, "--file", corpus);
        Assert.True(plain.ExitCode == 0, plain.Stderr);
        Assert.Equal(expected.Select(e => e.Plain), plain.Stdout.Split('\n')[..^1]);
        var special = CliRunner.Run("tokenize", "--model", dir, "--file", corpus, "--special");
        Assert.Equal(expected.Select(e => e.Bos), special.Stdout.Split('\n')[..^1]);
    }

    [Fact]
    public void StdinLinesAndPieces()
    {
        var dir = Path.Combine(Tokenizers(), "gpt2-json");
        var r = CliRunner.RunWithInput("Hello world\n\nÀ bientôt\r\n", "tokenize", "--model", dir, "--tokens");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var lines = r.Stdout.Split('\n');
        Assert.Equal(4, lines.Length); // three input lines (split on \n only), then the final newline
        Assert.Equal("Hello Ġworld", lines[0]);
        Assert.Equal("", lines[1]);
        Assert.EndsWith(" č", lines[2]); // the \r stays part of the line (byte-level: 'č')
        var ids = CliRunner.RunWithInput("Hello world\n", "tokenize", "--model", dir);
        Assert.Equal("15496 995\n", ids.Stdout);
    }

    [Fact]
    public void StatsGiveFertilityPerScript()
    {
        var r = CliRunner.Run("tokenize", "--model", Path.Combine(Tokenizers(), "gpt2-json"), "--file", Path.Combine(Tokenizers(), "corpus.txt"), "--stats");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("tokens/word", r.Stdout);
        var rows = r.Stdout.Split('\n').Where(l => l.Length > 0).ToDictionary(l => l.Split(' ')[0], l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries));
        Assert.True(rows.ContainsKey("Latin") && rows.ContainsKey("Ethiopic") && rows.ContainsKey("total"), r.Stdout);
        // Byte-level GPT-2 spends far more tokens per word on Ethiopic than on Latin text.
        double PerWord(string s) => double.Parse(rows[s][5], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(PerWord("Ethiopic") > 1.5 * PerWord("Latin"), r.Stdout);
        Assert.Equal(ParityTestsCorpusLines(), long.Parse(rows["total"][1]));
    }

    private static long ParityTestsCorpusLines()
    {
        var text = File.ReadAllText(Path.Combine(Tokenizers(), "corpus.txt"));
        return text.Split('\n').Length - (text.EndsWith('\n') ? 1 : 0);
    }

    [Fact]
    public void BadArgumentsAreOneLineErrors()
    {
        var dir = Path.Combine(Tokenizers(), "gpt2-json");
        var both = CliRunner.RunWithInput("x\n", "tokenize", "--model", dir, "--ids", "--tokens");
        Assert.Equal(2, both.ExitCode);
        Assert.Contains("exclude", both.Stderr);
        var missing = CliRunner.Run("tokenize", "--model", dir, "--file", "/nonexistent/file.txt");
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("/nonexistent/file.txt", missing.Stderr);
        var noTok = CliRunner.Run("tokenize", "--model", Path.GetTempPath(), "--file", Path.Combine(Tokenizers(), "corpus.txt"));
        Assert.Equal(2, noTok.ExitCode);
        Assert.Contains("no tokenizer", noTok.Stderr);
    }
}
