using System.Globalization;
using System.Text;

namespace Lrl.Tokenization.Unicode;

/// <summary>
/// The character predicates Hugging Face tokenizers (Rust) and Oniguruma use, by code point: Unicode categories from
/// .NET's built-in tables (no ICU needed), White_Space as Rust's char::is_whitespace.
/// </summary>
internal static class CharClass
{
    private static readonly UnicodeCategory[] Ascii = Enumerable.Range(0, 128).Select(c => CharUnicodeInfo.GetUnicodeCategory((char)c)).ToArray();

    public static UnicodeCategory Category(int cp) => cp < 128 ? Ascii[cp] : CharUnicodeInfo.GetUnicodeCategory(cp);

    /// <summary>The White_Space property (Rust char::is_whitespace, Oniguruma \s).</summary>
    public static bool IsWhiteSpace(int cp) =>
        cp is >= 9 and <= 13 or 0x20 or 0x85 or 0xA0 or 0x1680 or >= 0x2000 and <= 0x200A or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000;

    public static bool IsLetter(int cp) => Category(cp) <= UnicodeCategory.OtherLetter;

    /// <summary>\p{N}: Nd, Nl, No (Rust char::is_numeric).</summary>
    public static bool IsNumber(int cp) => Category(cp) is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;

    public static bool IsMark(int cp) => Category(cp) is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark;

    /// <summary>
    /// Hugging Face's is_punc: char::is_ascii_punctuation, or P* in the unicode_categories crate's (Unicode 9.0) tables.
    /// </summary>
    public static bool IsPunctuation(int cp)
    {
        if (cp < 128) return cp is >= 0x21 and <= 0x2F or >= 0x3A and <= 0x40 or >= 0x5B and <= 0x60 or >= 0x7B and <= 0x7E;
        return UnicodeText.IsPunctuation(cp);
    }

    /// <summary>Unicode \w of Rust's regex crate: letters, marks, decimal digits, connector punctuation, join controls.</summary>
    public static bool IsWordChar(int cp) =>
        IsLetter(cp) || IsMark(cp) || Category(cp) is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.ConnectorPunctuation
        || cp is 0x200C or 0x200D;

    /// <summary>The code point at <paramref name="i"/> (a lone surrogate reads as itself) and its length in UTF-16 units.</summary>
    public static int At(string s, int i, out int len)
    {
        char c = s[i];
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { len = 2; return char.ConvertToUtf32(c, s[i + 1]); }
        len = 1;
        return c;
    }

    /// <summary>The code point that ends at <paramref name="end"/> (exclusive).</summary>
    public static int Before(string s, int end, out int len)
    {
        char c = s[end - 1];
        if (char.IsLowSurrogate(c) && end >= 2 && char.IsHighSurrogate(s[end - 2])) { len = 2; return char.ConvertToUtf32(s[end - 2], c); }
        len = 1;
        return c;
    }

    /// <summary>Replaces unpaired surrogates (text that is not valid Unicode) with U+FFFD, as a UTF-8 conversion does.</summary>
    public static string Sanitize(string s)
    {
        int i = 0;
        for (; i < s.Length; i++)
        {
            char c = s[i];
            if (!char.IsSurrogate(c)) continue;
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            break;
        }
        if (i == s.Length) return s;
        var sb = new StringBuilder(s.Length);
        sb.Append(s, 0, i);
        for (; i < s.Length; i++)
        {
            char c = s[i];
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { sb.Append(c).Append(s[i + 1]); i++; }
            else if (char.IsSurrogate(c)) sb.Append('\uFFFD');
            else sb.Append(c);
        }
        return sb.ToString();
    }
}
