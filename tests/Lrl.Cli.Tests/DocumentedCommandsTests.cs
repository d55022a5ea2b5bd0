using System.Reflection;
using System.Text.RegularExpressions;
using CommandLine;

namespace Lrl.Cli.Tests;

/// <summary>
/// Every `lrlrun` command the README and the verbs' help examples show names a verb that exists and only options that
/// verb has: a renamed or removed option breaks this test, not a reader's copy of the command.
/// </summary>
public partial class DocumentedCommandsTests
{
    private static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Engine.sln")) && File.Exists(Path.Combine(d.FullName, "README.md"))) return d.FullName;
        Assert.Skip("README.md not found above the test binaries");
        return "";
    }

    /// <summary>The README's commands: lines of code blocks and inline code spans (possibly wrapped) that start with lrlrun.</summary>
    internal static List<string> ReadmeCommands(string markdown)
    {
        var commands = new List<string>();
        var prose = new System.Text.StringBuilder();
        bool inBlock = false;
        foreach (var line in markdown.Split('\n'))
        {
            if (line.TrimStart().StartsWith("```", StringComparison.Ordinal)) { inBlock = !inBlock; continue; }
            if (inBlock)
            {
                string t = line.Trim();
                int at = t.IndexOf("lrlrun ", StringComparison.Ordinal);
                if (at == 0 || (at > 0 && t[..at].TrimEnd().EndsWith('|'))) commands.Add(t[at..]);
            }
            else prose.Append(line).Append(' ');
        }
        foreach (Match m in InlineCommand().Matches(prose.ToString())) commands.Add(m.Groups[1].Value);
        return commands;
    }

    [GeneratedRegex(@"`(lrlrun [^`]+)`")]
    private static partial Regex InlineCommand();

    /// <summary>
    /// The problems of one command line: an unknown verb, or options its verb does not have. Placeholders (DIR, N, ...)
    /// and values are not checked; `[--opt]` (optional) counts as `--opt`; comments, redirections and pipes end it.
    /// </summary>
    internal static IEnumerable<string> Problems(string command)
    {
        var words = Regex.Replace(command, @"\s+#.*$", "").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (words.Length < 2) yield break;
        string verbName = words[1];
        if (verbName is "--help" or "--version" or "help" or "version" or "-V" || verbName.All(char.IsUpper)) yield break; // VERB: a placeholder
        var verb = Cli.Verbs.FirstOrDefault(v => v.GetCustomAttribute<VerbAttribute>()!.Name == verbName);
        if (verb is null) { yield return $"unknown verb '{verbName}' in: {command}"; yield break; }
        var options = verb.GetProperties().Select(p => p.GetCustomAttribute<OptionAttribute>()).Where(o => o is not null).ToList();
        var longNames = options.Select(o => o!.LongName).Append("help").ToHashSet();
        var shortNames = options.Where(o => o!.ShortName is { Length: > 0 }).Select(o => o!.ShortName).ToHashSet();
        foreach (var raw in words.Skip(2))
        {
            if (raw is "|" or "&" or "&&" or ";" || raw.StartsWith('>') || raw.StartsWith("2>", StringComparison.Ordinal)) break;
            string w = raw.Trim('[', ']', '(', ')', ',');
            if (w.StartsWith("--", StringComparison.Ordinal))
            {
                string name = w[2..].Split('=')[0];
                if (name.Length > 0 && !longNames.Contains(name)) yield return $"{verbName} has no option --{name}: {command}";
            }
            else if (w.Length == 2 && w[0] == '-' && char.IsLetter(w[1]) && !shortNames.Contains(w[1..]))
                yield return $"{verbName} has no option {w}: {command}";
        }
    }

    [Fact]
    public void ReadmeAndHelpExamplesUseOnlyOptionsTheirVerbsHave()
    {
        var readme = ReadmeCommands(File.ReadAllText(Path.Combine(RepoRoot(), "README.md")));
        Assert.True(readme.Count > 60, $"{readme.Count} commands found in the README");
        Assert.Contains(readme, c => c.StartsWith("lrlrun bench --model ../shared/models/stories260k --speculative early-exit,draft", StringComparison.Ordinal));
        var examples = Cli.Verbs.SelectMany(v => v.GetProperty("Examples", BindingFlags.Public | BindingFlags.Static)?.GetValue(null) as string[] ?? [])
            .Select(e => e[Math.Max(0, e.IndexOf("lrlrun ", StringComparison.Ordinal))..]).ToList(); // after `printf ... |`
        Assert.True(examples.Count >= Cli.Verbs.Length, $"{examples.Count} help examples");
        var problems = readme.Concat(examples).SelectMany(Problems).Distinct().ToList();
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void TheCheckCatchesUnknownVerbsAndOptions()
    {
        Assert.Empty(Problems("lrlrun generate --model m --prompt \"Hi there\" -n 8 [--ids] # a comment --nope"));
        Assert.Single(Problems("lrlrun generate --model m --temprature 0.5"));
        Assert.Single(Problems("lrlrun generate --model m -z 3"));
        Assert.Single(Problems("lrlrun fly --model m"));
        Assert.Equal(["lrlrun info --model ../x", "lrlrun bench --preset P -n 64"],
                     ReadmeCommands("text `lrlrun bench --preset P\n-n 64` more\n```\nlrlrun info --model ../x\nls\n```\n"));
    }
}
