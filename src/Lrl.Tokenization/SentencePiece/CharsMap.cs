using System.Buffers.Binary;
using System.Text;

namespace Lrl.Tokenization;

/// <summary>
/// SentencePiece's precompiled normalization map (normalizer_spec.precompiled_charsmap, and Hugging Face's
/// Precompiled normalizer): a darts-clone double-array trie over UTF-8 keys whose values index NUL-terminated
/// replacement strings. Blob layout: uint32 trie size in bytes, the trie's uint32 units, then the strings.
/// </summary>
internal sealed class CharsMap
{
    private readonly uint[] _units;
    private readonly byte[] _normalized;
    public bool IsEmpty => _units.Length == 0;

    public static readonly CharsMap Empty = new([], []);

    private CharsMap(uint[] units, byte[] normalized) { _units = units; _normalized = normalized; }

    public static CharsMap Parse(ReadOnlySpan<byte> blob, string file)
    {
        if (blob.Length == 0) return Empty;
        if (blob.Length < 4) throw new ModelFormatException(file, "precompiled charsmap is shorter than its 4-byte header");
        uint trieSize = BinaryPrimitives.ReadUInt32LittleEndian(blob);
        if (trieSize % 4 != 0 || trieSize > (uint)(blob.Length - 4))
            throw new ModelFormatException(file, $"precompiled charsmap declares a {trieSize}-byte trie in a {blob.Length}-byte blob");
        var units = new uint[trieSize / 4];
        for (int i = 0; i < units.Length; i++) units[i] = BinaryPrimitives.ReadUInt32LittleEndian(blob[(4 + 4 * i)..]);
        return new CharsMap(units, blob[(4 + (int)trieSize)..].ToArray());
    }

    /// <summary>All (value, length) of keys that are prefixes of <paramref name="key"/>, shortest first.</summary>
    public int CommonPrefixSearch(ReadOnlySpan<byte> key, Span<(int Value, int Length)> results)
    {
        int count = 0;
        if (_units.Length == 0) return 0;
        uint nodePos = 0;
        uint unit = _units[0];
        nodePos ^= Offset(unit);
        for (int i = 0; i < key.Length; i++)
        {
            nodePos ^= key[i];
            if (nodePos >= _units.Length) return count;
            unit = _units[nodePos];
            if (Label(unit) != key[i]) return count;
            nodePos ^= Offset(unit);
            if (HasLeaf(unit))
            {
                if (nodePos >= _units.Length) return count;
                if (count < results.Length) results[count] = ((int)(_units[nodePos] & 0x7FFFFFFF), i + 1);
                count++;
            }
        }
        return count;
    }

    private static bool HasLeaf(uint unit) => ((unit >> 8) & 1) == 1;
    private static uint Label(uint unit) => unit & ((1u << 31) | 0xFF);
    private static uint Offset(uint unit) => (unit >> 10) << (int)((unit & (1u << 9)) >> 6);

    /// <summary>The replacement string at a value (an offset into the strings), up to its NUL.</summary>
    public ReadOnlySpan<byte> Replacement(int value)
    {
        if ((uint)value >= (uint)_normalized.Length) return default;
        var rest = _normalized.AsSpan(value);
        int end = rest.IndexOf((byte)0);
        return end < 0 ? rest : rest[..end];
    }

    /// <summary>Hugging Face's Precompiled.transform: the replacement of the shortest matching prefix, or null.</summary>
    public string? Transform(ReadOnlySpan<byte> chunk)
    {
        Span<(int, int)> results = stackalloc (int, int)[8];
        int n = CommonPrefixSearch(chunk, results);
        if (n == 0) return null;
        return Encoding.UTF8.GetString(Replacement(results[0].Item1));
    }

    /// <summary>SentencePiece's NormalizePrefix: the longest rule at the start of <paramref name="input"/> (length 0: none).</summary>
    public int LongestPrefix(ReadOnlySpan<byte> input, out ReadOnlySpan<byte> replacement)
    {
        replacement = default;
        if (_units.Length == 0) return 0;
        Span<(int Value, int Length)> results = stackalloc (int, int)[32];
        int n = Math.Min(CommonPrefixSearch(input, results), results.Length);
        int longest = 0, value = 0;
        for (int k = 0; k < n; k++)
            if (longest == 0 || results[k].Length > longest) { longest = results[k].Length; value = results[k].Value; }
        if (longest > 0) replacement = Replacement(value);
        return longest;
    }
}
