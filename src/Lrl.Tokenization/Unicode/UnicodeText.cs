using System.Buffers.Binary;
using System.Text;

namespace Lrl.Tokenization.Unicode;

/// <summary>
/// Unicode normalization (NFC, NFD, NFKC, NFKD) and full lowercase mapping in managed code, from tables embedded in
/// the assembly (unicode-data.bin, made by generate_unicode_data.py). .NET's own string.Normalize depends on ICU and
/// does nothing in globalization-invariant mode; tokenizers must give the same ids on every host, so they use this.
/// </summary>
public static class UnicodeText
{
    private static readonly Dictionary<int, byte> Ccc = new();
    private static readonly Dictionary<int, int[]> Canonical = new();
    private static readonly Dictionary<int, int[]> Compat = new();
    private static readonly Dictionary<int, int[]> Lower = new();
    private static readonly Dictionary<long, int> Compose = new(Hf.PairComparer.Instance);
    private static readonly HashSet<int> ComposeSecond = new();
    private static readonly byte[] BmpCcc = new byte[0x10000];
    private static readonly bool[] BmpComposeSecond = new bool[0x10000];
    private static readonly bool[] BmpHasDecomposition = new bool[0x10000];
    private static readonly bool[] BmpHasCompat = new bool[0x10000];
    private static readonly (int Lo, int Hi)[] Marks, Punctuation, NonspacingMarks, Other;

    /// <summary>The Unicode version of the embedded tables.</summary>
    public static string Version { get; }

    private const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
    private const int LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

    static UnicodeText()
    {
        using var s = typeof(UnicodeText).Assembly.GetManifestResourceStream("Lrl.Tokenization.unicode-data.bin")
                      ?? throw new InvalidOperationException("unicode-data.bin is not embedded in Lrl.Tokenization");
        var data = new byte[s.Length];
        s.ReadExactly(data);
        int pos = 0;
        uint U32() { uint v = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(pos)); pos += 4; return v; }
        int vlen = (int)U32();
        Version = Encoding.ASCII.GetString(data, pos, vlen); pos += vlen;
        for (uint n = U32(); n > 0; n--) { int cp = (int)U32(); Ccc[cp] = data[pos++]; if (cp < 0x10000) BmpCcc[cp] = Ccc[cp]; }
        foreach (var table in new[] { Canonical, Compat, Lower })
            for (uint n = U32(); n > 0; n--)
            {
                int cp = (int)U32(); int len = data[pos++];
                var seq = new int[len];
                for (int i = 0; i < len; i++) seq[i] = (int)U32();
                table[cp] = seq;
            }
        for (uint n = U32(); n > 0; n--)
        {
            int a = (int)U32(), b = (int)U32(), c = (int)U32();
            Compose[((long)a << 21) | (uint)b] = c;
            ComposeSecond.Add(b);
            if (b < 0x10000) BmpComposeSecond[b] = true;
        }
        foreach (var cp in Canonical.Keys) if (cp < 0x10000) BmpHasDecomposition[cp] = true;
        foreach (var cp in Compat.Keys) if (cp < 0x10000) BmpHasCompat[cp] = true;
        (int, int)[] Ranges()
        {
            var r = new (int, int)[U32()];
            for (int i = 0; i < r.Length; i++) r[i] = ((int)U32(), (int)U32());
            return r;
        }
        Marks = Ranges(); Punctuation = Ranges(); NonspacingMarks = Ranges(); Other = Ranges();
    }

    private static bool In((int Lo, int Hi)[] ranges, int cp)
    {
        int lo = 0, hi = ranges.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            if (cp < ranges[mid].Lo) hi = mid - 1;
            else if (cp > ranges[mid].Hi) lo = mid + 1;
            else return true;
        }
        return false;
    }

    /// <summary>General_Category=Mark as unicode-normalization-alignments (Unicode 9.0): Hugging Face's StripAccents.</summary>
    public static bool IsCombiningMark(int cp) => In(Marks, cp);

    /// <summary>P* as the unicode_categories crate 0.1.1 (Unicode 9.0): Hugging Face's Punctuation and Bert pre-tokenizers.</summary>
    public static bool IsPunctuation(int cp) => In(Punctuation, cp);

    /// <summary>Mn as the unicode_categories crate 0.1.1: the Bert normalizer's accent stripping.</summary>
    public static bool IsNonspacingMark(int cp) => In(NonspacingMarks, cp);

    /// <summary>Cc, Cf or Co as the unicode_categories crate 0.1.1: the Bert normalizer's control characters.</summary>
    public static bool IsOther(int cp) => In(Other, cp);

    public static int CombiningClass(int cp) => cp < 0x10000 ? BmpCcc[cp] : Ccc.TryGetValue(cp, out var c) ? c : 0;

    public static string Normalize(string s, NormalizationForm form)
    {
        bool compat = form is NormalizationForm.FormKC or NormalizationForm.FormKD;
        bool compose = form is NormalizationForm.FormC or NormalizationForm.FormKC;
        // Fast path: text below these bounds is its own normal form.
        int bound = compat ? 0xA0 : compose ? 0x300 : 0xC0;
        int k = 0;
        while (k < s.Length && s[k] < bound) k++;
        if (k == s.Length) return s;
        if (IsNormalizedQuick(s, k, compat, compose)) return s;

        var cps = new List<int>(s.Length + 8);
        foreach (var r in s.EnumerateRunes()) Decompose(r.Value, compat, cps);
        // Canonical ordering: stable sort of each run of non-starters by combining class.
        for (int i = 0; i < cps.Count; i++)
        {
            if (CombiningClass(cps[i]) == 0) continue;
            int j = i;
            while (j < cps.Count && CombiningClass(cps[j]) != 0) j++;
            if (j - i > 1)
            {
                for (int a = i + 1; a < j; a++)
                {
                    int x = cps[a], cx = CombiningClass(x), b = a - 1;
                    while (b >= i && CombiningClass(cps[b]) > cx) { cps[b + 1] = cps[b]; b--; }
                    cps[b + 1] = x;
                }
            }
            i = j - 1;
        }
        if (compose) ComposeInPlace(cps);
        var sb = new StringBuilder(cps.Count);
        foreach (var cp in cps) AppendCodePoint(sb, cp);
        return sb.ToString();
    }

    /// <summary>
    /// True when no character from <paramref name="from"/> on can change: no combining class, no decomposition and,
    /// for the composed forms, nothing that composes with what precedes it (a conservative quick check).
    /// </summary>
    private static bool IsNormalizedQuick(string s, int from, bool compat, bool compose)
    {
        for (int i = from; i < s.Length;)
        {
            int cp = CharClass.At(s, i, out int len);
            i += len;
            if (cp < 0xA0) continue;
            if (cp >= SBase && cp < SBase + SCount) { if (compose) continue; return false; }
            if (cp is >= 0x1100 and <= 0x11FF) return false;
            if (cp < 0x10000)
            {
                if (BmpCcc[cp] != 0 || BmpHasDecomposition[cp] || (compose && BmpComposeSecond[cp])) return false;
                if (compat && BmpHasCompat[cp]) return false;
                continue;
            }
            if (Ccc.ContainsKey(cp) || Canonical.ContainsKey(cp) || (compat && Compat.ContainsKey(cp))) return false;
            if (compose && ComposeSecond.Contains(cp)) return false;
        }
        return true;
    }

    private static void Decompose(int cp, bool compat, List<int> output)
    {
        if (cp >= SBase && cp < SBase + SCount)
        {
            int si = cp - SBase;
            output.Add(LBase + si / NCount);
            output.Add(VBase + si % NCount / TCount);
            if (si % TCount != 0) output.Add(TBase + si % TCount);
            return;
        }
        if (cp < 0x10000 && !BmpHasDecomposition[cp] && !(compat && BmpHasCompat[cp])) { output.Add(cp); return; }
        if ((compat && Compat.TryGetValue(cp, out var d)) || Canonical.TryGetValue(cp, out d)) output.AddRange(d);
        else output.Add(cp);
    }

    private static void ComposeInPlace(List<int> cps)
    {
        if (cps.Count == 0) return;
        int starterPos = 0, write = 1;
        int starter = cps[0];
        int lastClass = CombiningClass(starter);
        if (lastClass != 0) lastClass = 256; // a leading non-starter blocks nothing but cannot be composed onto
        for (int read = 1; read < cps.Count; read++)
        {
            int ch = cps[read];
            int cc = CombiningClass(ch);
            // Composable when nothing between the starter and ch blocks it (UAX #15): ch directly follows the starter,
            // or every mark in between has a lower combining class.
            if ((lastClass == 0 || lastClass < cc) && TryCompose(starter, ch, out int composite))
            {
                cps[starterPos] = composite;
                starter = composite;
                continue;
            }
            if (cc == 0) { starterPos = write; starter = ch; }
            lastClass = cc;
            cps[write++] = ch;
        }
        cps.RemoveRange(write, cps.Count - write);
    }

    /// <summary>The primary composite of (starter, ch): Hangul LV and LVT algorithmically, the rest from the table.</summary>
    private static bool TryCompose(int starter, int ch, out int composite)
    {
        if (starter >= LBase && starter < LBase + LCount && ch >= VBase && ch < VBase + VCount)
        {
            composite = SBase + ((starter - LBase) * VCount + (ch - VBase)) * TCount;
            return true;
        }
        if (starter >= SBase && starter < SBase + SCount && (starter - SBase) % TCount == 0 && ch > TBase && ch < TBase + TCount)
        {
            composite = starter + (ch - TBase);
            return true;
        }
        return Compose.TryGetValue(((long)starter << 21) | (uint)ch, out composite);
    }

    /// <summary>Full lowercase mapping of each code point on its own (Rust's char::to_lowercase: İ → i̇, no final-sigma context).</summary>
    public static string ToLower(string s)
    {
        int k = 0;
        while (k < s.Length && s[k] < 0x80 && !(s[k] >= 'A' && s[k] <= 'Z')) k++;
        if (k == s.Length) return s;
        var sb = new StringBuilder(s.Length);
        sb.Append(s, 0, k);
        for (int i = k; i < s.Length;)
        {
            Rune.DecodeFromUtf16(s.AsSpan(i), out var r, out int used);
            if (Lower.TryGetValue(r.Value, out var m)) foreach (var cp in m) AppendCodePoint(sb, cp);
            else sb.Append(s, i, used);
            i += used;
        }
        return sb.ToString();
    }

    internal static void AppendCodePoint(StringBuilder sb, int cp)
    {
        if (cp < 0x10000) sb.Append((char)cp);
        else { cp -= 0x10000; sb.Append((char)(0xD800 + (cp >> 10))).Append((char)(0xDC00 + (cp & 0x3FF))); }
    }
}
