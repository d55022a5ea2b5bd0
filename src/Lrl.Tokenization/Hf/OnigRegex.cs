using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Lrl.Tokenization.Unicode;

namespace Lrl.Tokenization.Hf;

/// <summary>
/// A regular expression written for Oniguruma (what Hugging Face tokenizers compiles Split/Replace patterns with),
/// run by .NET's engine with the differences closed: Oniguruma matches by code point, .NET by UTF-16 unit, so a
/// supplementary-plane character (𝐀, emoji) would not be \p{L} or [^\s\p{L}\p{N}] as one unit; text with surrogate
/// pairs is matched through a stand-in string where each such character is one BMP character of the same category.
/// Oniguruma's \w (letters, marks, digits, connectors) and possessive quantifiers are translated.
/// </summary>
internal sealed class OnigRegex
{
    private readonly Regex _regex;
    public string Pattern { get; }

    private static readonly char[] StandIn = BuildStandIns();

    public OnigRegex(string pattern, bool literal = false)
    {
        Pattern = pattern;
        var translated = literal ? Regex.Escape(pattern) : Translate(pattern);
        _regex = new Regex(translated, RegexOptions.CultureInvariant | RegexOptions.Compiled);
    }

    /// <summary>Every match as (start, end) in UTF-16 indices of <paramref name="s"/>, non-overlapping, left to right.</summary>
    public void Matches(string s, List<(int Start, int End)> output)
    {
        output.Clear();
        if (s.Length == 0) return;
        bool hasPairs = false;
        foreach (char c in s) if (char.IsSurrogate(c)) { hasPairs = true; break; }
        if (!hasPairs)
        {
            for (var m = _regex.Match(s); m.Success; m = m.NextMatch()) output.Add((m.Index, m.Index + m.Length));
            return;
        }
        // One char per code point; map[i] = UTF-16 index in s of stand-in char i.
        var sb = new StringBuilder(s.Length);
        var map = new List<int>(s.Length + 1);
        for (int i = 0; i < s.Length;)
        {
            int cp = CharClass.At(s, i, out int len);
            map.Add(i);
            sb.Append(len == 2 ? StandIn[(int)CharClass.Category(cp)] : s[i]);
            i += len;
        }
        map.Add(s.Length);
        var t = sb.ToString();
        for (var m = _regex.Match(t); m.Success; m = m.NextMatch()) output.Add((map[m.Index], map[m.Index + m.Length]));
    }

    /// <summary>For each Unicode category, a BMP character of that category outside ASCII and Latin (so no literal in a pattern matches it).</summary>
    private static char[] BuildStandIns()
    {
        var result = new char[32];
        Array.Fill(result, '\uE000');
        var found = new bool[32];
        for (int c = 0x370; c <= 0xFFFD; c++)
        {
            if (c is >= 0xD800 and <= 0xDFFF) continue;
            int cat = (int)CharUnicodeInfo.GetUnicodeCategory((char)c);
            if (found[cat] || CharClass.IsWhiteSpace(c)) continue;
            found[cat] = true;
            result[cat] = (char)c;
        }
        return result;
    }

    private const string WordClass = @"\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\u200C\u200D";

    /// <summary>Copies a \p{...} or \P{...} property class starting at <paramref name="i"/> (the backslash); i ends on its '}'.</summary>
    private static bool TryCopyProperty(string p, ref int i, StringBuilder sb)
    {
        if (!(p[i + 1] is 'p' or 'P' && i + 2 < p.Length && p[i + 2] == '{')) return false;
        int close = p.IndexOf('}', i + 3);
        if (close < 0) throw new ArgumentException($"unterminated \\p{{ in '{p}'");
        sb.Append(p, i, close - i + 1);
        i = close;
        return true;
    }

    /// <summary>Oniguruma (Ruby syntax) to .NET: \w / \W by Unicode's definition, possessive quantifiers as atomic groups.</summary>
    internal static string Translate(string p)
    {
        var sb = new StringBuilder(p.Length + 16);
        var atomStarts = new Stack<int>();      // start (in sb) of each open group
        int lastAtom = -1;                      // start (in sb) of the last complete atom
        for (int i = 0; i < p.Length; i++)
        {
            char c = p[i];
            if (c == '\\' && i + 1 < p.Length)
            {
                lastAtom = sb.Length;
                char e = p[i + 1];
                if (e == 'w') { sb.Append('[').Append(WordClass).Append(']'); i++; continue; }
                if (e == 'W') { sb.Append("[^").Append(WordClass).Append(']'); i++; continue; }
                if (TryCopyProperty(p, ref i, sb)) continue;
                sb.Append(c).Append(e);
                i++;
                continue;
            }
            if (c == '[')
            {
                lastAtom = sb.Length;
                int j = i + 1;
                sb.Append('[');
                if (j < p.Length && p[j] == '^') { sb.Append('^'); j++; }
                if (j < p.Length && p[j] == ']') { sb.Append(@"\]"); j++; }
                for (; j < p.Length && p[j] != ']'; j++)
                {
                    if (p[j] == '\\' && j + 1 < p.Length)
                    {
                        char e = p[j + 1];
                        if (e == 'w') { sb.Append(WordClass); j++; continue; }
                        if (TryCopyProperty(p, ref j, sb)) continue;
                        sb.Append(p[j]).Append(e);
                        j++;
                        continue;
                    }
                    if (p[j] == '[') sb.Append(@"\[");
                    else sb.Append(p[j]);
                }
                if (j >= p.Length) throw new ArgumentException($"unterminated character class in '{p}'");
                sb.Append(']');
                i = j;
                continue;
            }
            if (c == '(')
            {
                atomStarts.Push(sb.Length);
                sb.Append(c);
                if (i + 1 < p.Length && p[i + 1] == '?') { sb.Append('?'); i++; }
                lastAtom = -1;
                continue;
            }
            if (c == ')') { lastAtom = atomStarts.Count > 0 ? atomStarts.Pop() : -1; sb.Append(c); continue; }
            if (c is '?' or '*' or '+' or '{')
            {
                // quantifier: copy it, then see whether it is possessive (followed by '+')
                int qStart = i;
                int qEnd = i;
                if (c == '{')
                {
                    int close = p.IndexOf('}', i);
                    if (close < 0 || !Regex.IsMatch(p.AsSpan(i, close - i + 1), @"^\{\d*(,\d*)?\}$")) { sb.Append(c); lastAtom = sb.Length - 1; continue; }
                    qEnd = close;
                }
                string q = p.Substring(qStart, qEnd - qStart + 1);
                bool possessive = qEnd + 1 < p.Length && p[qEnd + 1] == '+' && lastAtom >= 0;
                bool lazy = qEnd + 1 < p.Length && p[qEnd + 1] == '?';
                if (possessive)
                {
                    sb.Insert(lastAtom, "(?>");
                    sb.Append(q).Append(')');
                    i = qEnd + 1;
                }
                else
                {
                    sb.Append(q);
                    if (lazy) { sb.Append('?'); qEnd++; }
                    i = qEnd;
                }
                lastAtom = -1;
                continue;
            }
            if (c is '|' or '^' or '$') { sb.Append(c); lastAtom = -1; continue; }
            lastAtom = sb.Length;
            sb.Append(c);
        }
        return sb.ToString();
    }
}
