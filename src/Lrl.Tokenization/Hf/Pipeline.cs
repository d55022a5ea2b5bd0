using System.Text;
using Lrl.Tokenization.Unicode;

namespace Lrl.Tokenization.Hf;

/// <summary>
/// One split of the text on its way to the model: its (normalized) text, whether it begins at the start of the
/// original input (Metaspace's prepend_scheme "first" needs it), and the id of an added token it already is (or -1).
/// </summary>
internal readonly record struct Piece(string Text, bool AtStart, int Id = -1);

internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>Hugging Face's NormalizedString.split over a list of (start, end, is-match) covering the whole string.</summary>
internal static class Splitter
{
    public static SplitBehavior ParseBehavior(string? s, string file, string where) => s switch
    {
        "Removed" => SplitBehavior.Removed,
        "Isolated" => SplitBehavior.Isolated,
        "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
        "MergedWithNext" => SplitBehavior.MergedWithNext,
        "Contiguous" => SplitBehavior.Contiguous,
        _ => throw new ModelFormatException(file, $"{where}: behavior '{s}' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous"),
    };

    // Scratch of the splitting below, one set per thread (tokenizers are shared between threads).
    [ThreadStatic] private static List<(int Start, int End, bool Match)>? t_cov;
    [ThreadStatic] private static List<(int Start, int End, bool Remove)>? t_spans;

    /// <summary>Splits on plain matches (start, end) of a pattern, as Rust's Pattern::find_matches for regexes (or their inverse).</summary>
    public static void SplitByMatches(Piece parent, List<(int Start, int End)> matches, SplitBehavior behavior, bool invert, List<Piece> output)
    {
        var cov = t_cov ??= new();
        cov.Clear();
        int length = parent.Text.Length;
        int prev = 0;
        foreach (var (s, e) in matches)
        {
            if (prev != s) cov.Add((prev, s, invert));
            cov.Add((s, e, !invert));
            prev = e;
        }
        if (prev != length) cov.Add((prev, length, invert));
        Split(parent, cov, behavior, output);
    }

    /// <summary>Splits on the characters a predicate holds for: every such character is its own match.</summary>
    public static void SplitByPredicate(Piece parent, Func<int, bool> predicate, SplitBehavior behavior, List<Piece> output)
    {
        var cov = t_cov ??= new();
        cov.Clear();
        var s = parent.Text;
        int last = 0;
        for (int i = 0; i < s.Length;)
        {
            int cp = CharClass.At(s, i, out int len);
            if (predicate(cp))
            {
                if (last < i) cov.Add((last, i, false));
                cov.Add((i, i + len, true));
                last = i + len;
            }
            i += len;
        }
        if (s.Length > last) cov.Add((last, s.Length, false));
        Split(parent, cov, behavior, output);
    }

    /// <summary>Applies a split behavior to a coverage (start, end, isMatch) of the piece and appends the non-empty pieces.</summary>
    private static void Split(Piece parent, List<(int Start, int End, bool Match)> cov, SplitBehavior behavior, List<Piece> output)
    {
        var s = parent.Text;
        var spans = t_spans ??= new();
        spans.Clear();
        switch (behavior)
        {
            case SplitBehavior.Isolated:
                foreach (var (a, b, _) in cov) spans.Add((a, b, false));
                break;
            case SplitBehavior.Removed:
                foreach (var (a, b, m) in cov) spans.Add((a, b, m));
                break;
            case SplitBehavior.Contiguous:
            {
                bool prevMatch = false;
                foreach (var (a, b, m) in cov)
                {
                    if (m == prevMatch && spans.Count > 0) spans[^1] = (spans[^1].Start, b, false);
                    else spans.Add((a, b, false));
                    prevMatch = m;
                }
                break;
            }
            case SplitBehavior.MergedWithPrevious:
            {
                bool prevMatch = false;
                foreach (var (a, b, m) in cov)
                {
                    if (m && !prevMatch && spans.Count > 0) spans[^1] = (spans[^1].Start, b, false);
                    else spans.Add((a, b, false));
                    prevMatch = m;
                }
                break;
            }
            case SplitBehavior.MergedWithNext:
            {
                bool prevMatch = false;
                for (int k = cov.Count - 1; k >= 0; k--)
                {
                    var (a, b, m) = cov[k];
                    if (m && !prevMatch && spans.Count > 0) spans[^1] = (a, spans[^1].End, false);
                    else spans.Add((a, b, false));
                    prevMatch = m;
                }
                spans.Reverse();
                break;
            }
        }
        foreach (var (a, b, remove) in spans)
        {
            if (remove || b <= a) continue;
            output.Add(new Piece(a == 0 && b == s.Length ? s : s[a..b], parent.AtStart && a == 0));
        }
    }
}

// ------------------------------------------------------------------------------------------------ normalizers

internal abstract class Normalizer
{
    public abstract string Normalize(string s);
}

internal sealed class UnicodeNormalizer(NormalizationForm form) : Normalizer
{
    public override string Normalize(string s) => UnicodeText.Normalize(s, form);
}

internal sealed class LowercaseNormalizer : Normalizer
{
    public override string Normalize(string s) => UnicodeText.ToLower(s);
}

internal sealed class StripNormalizer(bool left, bool right) : Normalizer
{
    public override string Normalize(string s)
    {
        int a = 0, b = s.Length;
        if (left) while (a < b) { int cp = CharClass.At(s, a, out int l); if (!CharClass.IsWhiteSpace(cp)) break; a += l; }
        if (right) while (b > a) { int cp = CharClass.Before(s, b, out int l); if (!CharClass.IsWhiteSpace(cp)) break; b -= l; }
        return a == 0 && b == s.Length ? s : s[a..b];
    }
}

internal sealed class StripAccentsNormalizer : Normalizer
{
    public override string Normalize(string s) => Filter(s, cp => !UnicodeText.IsCombiningMark(cp));

    internal static string Filter(string s, Func<int, bool> keep)
    {
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length;)
        {
            int cp = CharClass.At(s, i, out int l);
            if (keep(cp)) sb.Append(s, i, l);
            i += l;
        }
        return sb.ToString();
    }
}

internal sealed class ReplaceNormalizer(OnigRegex pattern, string content) : Normalizer
{
    private readonly OnigRegex _pattern = pattern;
    private readonly string _content = content;
    private readonly string? _literal = null;

    /// <summary>A literal (String) pattern: plain ordinal replacement, the same result as the escaped regex.</summary>
    public ReplaceNormalizer(string literal, string content) : this(new OnigRegex(literal, literal: true), content) => _literal = literal;

    public override string Normalize(string s) => Replace(s);

    public string Replace(string s)
    {
        if (_literal is not null) return _literal.Length == 0 ? s : s.Replace(_literal, _content, StringComparison.Ordinal);
        var matches = new List<(int, int)>();
        _pattern.Matches(s, matches);
        if (matches.Count == 0) return s;
        var sb = new StringBuilder(s.Length);
        int prev = 0;
        foreach (var (a, b) in matches) { sb.Append(s, prev, a - prev).Append(_content); prev = b; }
        sb.Append(s, prev, s.Length - prev);
        return sb.ToString();
    }
}

internal sealed class PrependNormalizer(string prepend) : Normalizer
{
    public override string Normalize(string s) => s.Length == 0 ? s : prepend + s;
}

internal sealed class NmtNormalizer : Normalizer
{
    public override string Normalize(string s)
    {
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length;)
        {
            int cp = CharClass.At(s, i, out int l);
            i += l;
            if (cp is >= 1 and <= 8 or 0x0B or >= 0x0E and <= 0x1F or 0x7F or 0x8F or 0x9F) continue;
            if (cp is 0x09 or 0x0A or 0x0C or 0x0D or 0x1680 or >= 0x200B and <= 0x200F or 0x2028 or 0x2029 or 0x2581 or 0xFEFF or 0xFFFD)
                sb.Append(' ');
            else UnicodeText.AppendCodePoint(sb, cp);
        }
        return sb.ToString();
    }
}

internal sealed class BertNormalizer(bool cleanText, bool chineseChars, bool? stripAccents, bool lowercase) : Normalizer
{
    public override string Normalize(string s)
    {
        if (cleanText)
        {
            var sb = new StringBuilder(s.Length);
            for (int i = 0; i < s.Length;)
            {
                int cp = CharClass.At(s, i, out int l);
                i += l;
                if (cp is 0 or 0xFFFD) continue;
                if (cp is not ('\t' or '\n' or '\r') && UnicodeText.IsOther(cp)) continue;
                if (cp is '\t' or '\n' or '\r' || CharClass.IsWhiteSpace(cp)) sb.Append(' ');
                else UnicodeText.AppendCodePoint(sb, cp);
            }
            s = sb.ToString();
        }
        if (chineseChars)
        {
            var sb = new StringBuilder(s.Length);
            for (int i = 0; i < s.Length;)
            {
                int cp = CharClass.At(s, i, out int l);
                bool cjk = cp is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
                    or >= 0x2B740 and <= 0x2B81F or >= 0x2B920 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;
                if (cjk) sb.Append(' ').Append(s, i, l).Append(' ');
                else sb.Append(s, i, l);
                i += l;
            }
            s = sb.ToString();
        }
        if (stripAccents ?? lowercase)
            s = StripAccentsNormalizer.Filter(UnicodeText.Normalize(s, NormalizationForm.FormD), cp => !UnicodeText.IsNonspacingMark(cp));
        if (lowercase) s = UnicodeText.ToLower(s);
        return s;
    }
}

internal sealed class ByteLevelNormalizer : Normalizer
{
    public override string Normalize(string s) => ByteLevelPreTokenizer.MapBytes(s);
}

internal sealed class SequenceNormalizer(Normalizer[] parts) : Normalizer
{
    public override string Normalize(string s)
    {
        foreach (var p in parts) s = p.Normalize(s);
        return s;
    }
}

/// <summary>SentencePiece's precompiled charsmap applied as Hugging Face does: grapheme by grapheme.</summary>
internal sealed class PrecompiledNormalizer(CharsMap map) : Normalizer
{
    public override string Normalize(string s)
    {
        if (map.IsEmpty) return s;
        var sb = new StringBuilder(s.Length);
        Span<byte> buf = stackalloc byte[64];
        var e = System.Globalization.StringInfo.GetTextElementEnumerator(s);
        while (e.MoveNext())
        {
            var g = e.GetTextElement();
            int glen = Encoding.UTF8.GetByteCount(g);
            if (glen < 6)
            {
                int n = Encoding.UTF8.GetBytes(g, buf);
                if (map.Transform(buf[..n]) is { } norm) { sb.Append(norm); continue; }
            }
            for (int i = 0; i < g.Length;)
            {
                CharClass.At(g, i, out int l);
                int n = Encoding.UTF8.GetBytes(g.AsSpan(i, l), buf);
                if (map.Transform(buf[..n]) is { } norm) sb.Append(norm);
                else sb.Append(g, i, l);
                i += l;
            }
        }
        return sb.ToString();
    }
}

// ------------------------------------------------------------------------------------------------ pre-tokenizers

internal abstract class PreTokenizer
{
    /// <summary>Splits every piece that is not yet an added token; pieces that become empty are dropped.</summary>
    public void Apply(List<Piece> pieces, List<Piece> scratch)
    {
        scratch.Clear();
        foreach (var p in pieces)
        {
            if (p.Id >= 0) scratch.Add(p);
            else SplitPiece(p, scratch);
        }
        pieces.Clear();
        pieces.AddRange(scratch);
    }

    public virtual void Run(List<Piece> pieces, List<Piece> scratch) => Apply(pieces, scratch);

    protected abstract void SplitPiece(Piece p, List<Piece> output);
}

internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : PreTokenizer
{
    private static readonly char[] ByteToChar = Enumerable.Range(0, 256).Select(b => ByteLevelAlphabet.Encode((byte)b)).ToArray();

    public override void Run(List<Piece> pieces, List<Piece> scratch)
    {
        Apply(pieces, scratch);
        for (int i = 0; i < pieces.Count; i++)
            if (pieces[i].Id < 0) pieces[i] = pieces[i] with { Text = MapBytes(pieces[i].Text) };
    }

    protected override void SplitPiece(Piece p, List<Piece> output)
    {
        var s = p.Text;
        if (addPrefixSpace && !s.StartsWith(' ')) s = " " + s;
        if (!useRegex) { if (s.Length > 0) output.Add(p with { Text = s }); return; }
        int i = 0;
        while (i < s.Length)
        {
            int end = Gpt2Match(s, i);
            output.Add(new Piece(s[i..end], p.AtStart && i == 0));
            i = end;
        }
    }

    /// <summary>
    /// The end of the match of GPT-2's pattern at <paramref name="i"/>:
    /// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ (by code point, as Oniguruma).
    /// </summary>
    internal static int Gpt2Match(string s, int i)
    {
        int n = s.Length;
        char c = s[i];
        if (c == '\'' && i + 1 < n)
        {
            char d = s[i + 1];
            if (d is 's' or 't' or 'm' or 'd') return i + 2;
            if (i + 2 < n && ((d == 'r' && s[i + 2] == 'e') || (d == 'v' && s[i + 2] == 'e') || (d == 'l' && s[i + 2] == 'l'))) return i + 3;
        }
        int j = i;
        if (c == ' ' && i + 1 < n) j = i + 1;
        int cp = CharClass.At(s, j, out int len);
        int kind = Kind(cp);
        if (j == i + 1 && kind == 0) { j = i; cp = CharClass.At(s, j, out len); kind = Kind(cp); }
        if (kind != 0)
        {
            // ' ?X+' for the class of the first character (letters, numbers, other)
            int k = j + len;
            while (k < n) { int q = CharClass.At(s, k, out int l2); if (Kind(q) != kind) break; k += l2; }
            return k;
        }
        // whitespace run at i
        int e = i;
        int last = i;
        while (e < n) { int q = CharClass.At(s, e, out int l2); if (!CharClass.IsWhiteSpace(q)) break; last = e; e += l2; }
        if (e == n) return e;                       // \s+ up to the end
        if (last > i) return last;                  // \s+(?!\S): leave the last space for the next word
        return e;                                   // \s+ (a single space before a non-space)
    }

    /// <summary>0 whitespace, 1 letter, 2 number, 3 other.</summary>
    private static int Kind(int cp) =>
        cp < 128
            ? (cp is >= 'a' and <= 'z' or >= 'A' and <= 'Z' ? 1 : cp is >= '0' and <= '9' ? 2 : cp is >= 9 and <= 13 or ' ' ? 0 : 3)
            : CharClass.IsWhiteSpace(cp) ? 0 : CharClass.IsLetter(cp) ? 1 : CharClass.IsNumber(cp) ? 2 : 3;

    /// <summary>The text's UTF-8 bytes, each as its byte-level alphabet character.</summary>
    internal static string MapBytes(string s)
    {
        bool ascii = true;
        foreach (char ch in s) if (ch >= 0x80 || ByteToChar[ch] != ch) { ascii = false; break; }
        if (ascii) return s;
        int n = Encoding.UTF8.GetByteCount(s);
        byte[]? rented = null;
        Span<byte> bytes = n <= 512 ? stackalloc byte[n] : (rented = System.Buffers.ArrayPool<byte>.Shared.Rent(n));
        Encoding.UTF8.GetBytes(s, bytes);
        string result;
        unsafe
        {
            fixed (byte* p = bytes)
                result = string.Create(n, (IntPtr)p, static (dst, ptr) =>
                {
                    var src = (byte*)ptr;
                    for (int k = 0; k < dst.Length; k++) dst[k] = ByteToChar[src[k]];
                });
        }
        if (rented is not null) System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        return result;
    }
}

internal sealed class MetaspacePreTokenizer(char replacement, string prependScheme, bool split) : PreTokenizer
{
    protected override void SplitPiece(Piece p, List<Piece> output)
    {
        var s = p.Text.Replace(' ', replacement);
        bool prepend = prependScheme == "always" || (prependScheme == "first" && p.AtStart);
        if (prepend && (s.Length == 0 || s[0] != replacement)) s = replacement + s;
        if (!split) { if (s.Length > 0) output.Add(p with { Text = s }); return; }
        Splitter.SplitByPredicate(p with { Text = s }, cp => cp == replacement, SplitBehavior.MergedWithNext, output);
    }
}

internal sealed class SplitPreTokenizer(OnigRegex regex, SplitBehavior behavior, bool invert) : PreTokenizer
{
    [ThreadStatic] private static List<(int, int)>? t_matches;

    protected override void SplitPiece(Piece p, List<Piece> output)
    {
        var matches = t_matches ??= new();
        regex.Matches(p.Text, matches);
        Splitter.SplitByMatches(p, matches, behavior, invert, output);
    }
}

/// <summary>Splits on characters that satisfy a predicate (Punctuation, Digits, WhitespaceSplit, CharDelimiterSplit, Bert).</summary>
internal sealed class PredicatePreTokenizer(Func<int, bool> predicate, SplitBehavior behavior) : PreTokenizer
{
    protected override void SplitPiece(Piece p, List<Piece> output) => Splitter.SplitByPredicate(p, predicate, behavior, output);
}

/// <summary>Whitespace: \w+|[^\w\s]+ kept, the rest removed.</summary>
internal sealed class WhitespacePreTokenizer : PreTokenizer
{
    [ThreadStatic] private static List<(int, int)>? t_matches;

    protected override void SplitPiece(Piece p, List<Piece> output)
    {
        var s = p.Text;
        var matches = t_matches ??= new();
        matches.Clear();
        int i = 0;
        while (i < s.Length)
        {
            int cp = CharClass.At(s, i, out int l);
            int kind = CharClass.IsWordChar(cp) ? 1 : CharClass.IsWhiteSpace(cp) ? 0 : 2;
            if (kind == 0) { i += l; continue; }
            int j = i + l;
            while (j < s.Length)
            {
                int q = CharClass.At(s, j, out int l2);
                int k2 = CharClass.IsWordChar(q) ? 1 : CharClass.IsWhiteSpace(q) ? 0 : 2;
                if (k2 != kind) break;
                j += l2;
            }
            matches.Add((i, j));
            i = j;
        }
        // Invert(\w+|[^\w\s]+) with Removed: the runs are kept, what lies between them dropped.
        Splitter.SplitByMatches(p, matches, SplitBehavior.Removed, invert: true, output);
    }
}

internal sealed class BertPreTokenizer : PreTokenizer
{
    private readonly PredicatePreTokenizer _ws = new(CharClass.IsWhiteSpace, SplitBehavior.Removed);
    private readonly PredicatePreTokenizer _punct = new(CharClass.IsPunctuation, SplitBehavior.Isolated);

    public override void Run(List<Piece> pieces, List<Piece> scratch)
    {
        _ws.Run(pieces, scratch);
        _punct.Run(pieces, scratch);
    }

    protected override void SplitPiece(Piece p, List<Piece> output) => throw new NotSupportedException();
}

internal sealed class SequencePreTokenizer(PreTokenizer[] parts) : PreTokenizer
{
    public PreTokenizer[] Parts => parts;

    public override void Run(List<Piece> pieces, List<Piece> scratch)
    {
        foreach (var p in parts) p.Run(pieces, scratch);
    }

    protected override void SplitPiece(Piece p, List<Piece> output) => throw new NotSupportedException();
}

// ------------------------------------------------------------------------------------------------ decoders

internal abstract class Decoder
{
    public abstract List<string> DecodeChain(List<string> tokens);
}

internal sealed class ByteLevelDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens)
        {
            var mapped = ByteLevelAlphabet.TryDecode(t);
            if (mapped is not null) bytes.AddRange(mapped);
            else bytes.AddRange(Encoding.UTF8.GetBytes(t));
        }
        return [Encoding.UTF8.GetString(bytes.ToArray())];
    }
}

internal sealed class MetaspaceDecoder(char replacement, bool prepend) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            var sb = new StringBuilder(tokens[i].Length);
            foreach (char c in tokens[i])
            {
                if (c == replacement) { if (!(i == 0 && prepend)) sb.Append(' '); }
                else sb.Append(c);
            }
            result.Add(sb.ToString());
        }
        return result;
    }
}

internal sealed class ByteFallbackDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        void Flush()
        {
            if (pending.Count == 0) return;
            var arr = pending.ToArray();
            if (Utf8Valid(arr)) result.Add(Encoding.UTF8.GetString(arr));
            else for (int k = 0; k < arr.Length; k++) result.Add("\uFFFD");
            pending.Clear();
        }
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>'
                && byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out byte b))
                pending.Add(b);
            else { Flush(); result.Add(t); }
        }
        Flush();
        return result;
    }

    internal static bool Utf8Valid(byte[] b) => System.Text.Unicode.Utf8.IsValid(b);
}

internal sealed class FuseDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

internal sealed class StripDecoder(char content, int start, int stop) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        foreach (var t in tokens)
        {
            var cps = t.EnumerateRunes().ToArray();
            int a = 0;
            for (int i = 0; i < Math.Min(start, cps.Length); i++) { if (cps[i].Value == content) a = i + 1; else break; }
            int b = cps.Length;
            for (int i = 0; i < stop && cps.Length - i - 1 >= 0; i++) { int idx = cps.Length - i - 1; if (cps[idx].Value == content) b = idx; else break; }
            var sb = new StringBuilder();
            for (int i = a; i < Math.Max(a, b); i++) sb.Append(cps[i].ToString());
            result.Add(sb.ToString());
        }
        return result;
    }
}

internal sealed class ReplaceDecoder(ReplaceNormalizer replace) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) => tokens.Select(replace.Replace).ToList();
}

internal sealed class WordPieceDecoder(string prefix, bool cleanup) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i];
            if (i != 0) t = t.StartsWith(prefix, StringComparison.Ordinal) ? t[prefix.Length..] : " " + t;
            if (cleanup) t = Cleanup(t);
            result.Add(t);
        }
        return result;
    }

    internal static string Cleanup(string s) => s.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
        .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" do not", " don't").Replace(" 's", "'s")
        .Replace(" 've", "'ve").Replace(" 're", "'re");
}

internal sealed class BpeSuffixDecoder(string suffix) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) =>
        tokens.Select((t, i) => suffix.Length == 0 ? t : t.Replace(suffix, i == tokens.Count - 1 ? "" : " ")).ToList();
}

internal sealed class CtcDecoder(string pad, string wordDelimiter, bool cleanup) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>();
        string? prev = null;
        foreach (var t in tokens)
        {
            if (t == prev) continue;
            prev = t;
            var r = pad.Length == 0 ? t : t.Replace(pad, "");
            if (cleanup) r = WordPieceDecoder.Cleanup(r).Replace(wordDelimiter, " ");
            if (r.Length > 0) result.Add(r);
        }
        return result;
    }
}

internal sealed class SequenceDecoder(Decoder[] parts) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        foreach (var p in parts) tokens = p.DecodeChain(tokens);
        return tokens;
    }
}

// ------------------------------------------------------------------------------------------------ post-processors

internal abstract class PostProcessor
{
    /// <summary>The ids to put before and after a single sequence when special tokens are added.</summary>
    public abstract (int[] Before, int[] After) Single { get; }
}

internal sealed class FixedPostProcessor(int[] before, int[] after) : PostProcessor
{
    public override (int[] Before, int[] After) Single => (before, after);
}
