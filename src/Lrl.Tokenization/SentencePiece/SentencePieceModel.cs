using System.Text;
using Lrl.Tokenization.Unicode;

namespace Lrl.Tokenization;

/// <summary>
/// A tokenizer.model with the semantics of Google's sentencepiece (C++): the normalizer (precompiled charsmap,
/// whitespace removal, dummy prefix, ▁ escaping), user-defined symbols, the BPE and Unigram models, byte fallback,
/// fused runs of unknown pieces, and its decoder. Immutable after loading.
/// </summary>
internal sealed class SentencePieceModel : ITokenizerCore
{
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;
    private const string Space = "\u2581";

    private readonly string[] _pieces;
    private readonly float[] _scores;
    private readonly int[] _types;
    private readonly Dictionary<string, int> _normal = new(StringComparer.Ordinal);     // NORMAL, USER_DEFINED, UNUSED
    private readonly Dictionary<string, int> _reserved = new(StringComparer.Ordinal);   // CONTROL, UNKNOWN, BYTE
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _normalBySpan, _reservedBySpan;
    private readonly int[] _byteIds = new int[256];
    private readonly CharsMap _charsMap;
    private readonly bool _addDummyPrefix, _removeExtraWhitespaces, _escapeWhitespaces, _byteFallback, _suffixWhitespace;
    private readonly int _modelType;
    private readonly int _maxPieceLength;
    private readonly float _minScore = float.MaxValue, _maxScore = float.Epsilon;
    private readonly string _unkSurface;
    private readonly UserSymbolMatcher? _userSymbols;

    public int UnkId { get; }
    public int BosId { get; }
    public int EosId { get; }
    public int VocabSize => _pieces.Length;
    public int ModelType => _modelType;

    private SentencePieceModel(SentencePieceProto.Model m, string file)
    {
        _pieces = m.Pieces.Select(p => p.Piece).ToArray();
        _scores = m.Pieces.Select(p => p.Score).ToArray();
        _types = m.Pieces.Select(p => p.Type).ToArray();
        _modelType = m.ModelType;
        if (_modelType is not (1 or 2)) throw new ModelFormatException(file, $"trainer_spec.model_type {_modelType} is not supported (1 = Unigram, 2 = BPE)");
        _byteFallback = m.ByteFallback;
        _suffixWhitespace = m.TreatWhitespaceAsSuffix;
        _addDummyPrefix = m.AddDummyPrefix; _removeExtraWhitespaces = m.RemoveExtraWhitespaces; _escapeWhitespaces = m.EscapeWhitespaces;
        _charsMap = CharsMap.Parse(m.CharsMap, file);
        _unkSurface = m.UnkSurface ?? " \u2047 ";
        Array.Fill(_byteIds, -1);
        int unk = -1;
        var user = new List<string>();
        for (int i = 0; i < _pieces.Length; i++)
        {
            var p = _pieces[i];
            if (p.Length == 0) throw new ModelFormatException(file, $"piece {i} is empty");
            int t = _types[i];
            if (t is < 1 or > 6) throw new ModelFormatException(file, $"piece {i} ('{p}') has unknown type {t}");
            var dict = t is Normal or UserDefined or Unused ? _normal : _reserved;
            if (!dict.TryAdd(p, i)) throw new ModelFormatException(file, $"piece {i} ('{p}') is already defined");
            if (t == Unknown) { if (unk >= 0) throw new ModelFormatException(file, "more than one unknown piece"); unk = i; }
            if (t == UserDefined) user.Add(p);
            if (t == Byte && TokenizerLoader.TryParseByteToken(p, out byte b)) _byteIds[b] = i;
            if (t == Normal) { _minScore = Math.Min(_minScore, _scores[i]); _maxScore = Math.Max(_maxScore, _scores[i]); }
            if (t is Normal or UserDefined or Unused) _maxPieceLength = Math.Max(_maxPieceLength, p.Length);
        }
        if (unk < 0) throw new ModelFormatException(file, "no piece of type UNKNOWN (<unk>)");
        if (_byteFallback && _byteIds.Any(x => x < 0)) throw new ModelFormatException(file, "byte_fallback is set but not all 256 byte pieces <0x00>..<0xFF> exist");
        UnkId = unk;
        BosId = m.BosId is int bos && bos >= 0 && bos < _pieces.Length ? bos : -1;
        EosId = m.EosId is int eos && eos >= 0 && eos < _pieces.Length ? eos : -1;
        _normalBySpan = _normal.GetAlternateLookup<ReadOnlySpan<char>>();
        _reservedBySpan = _reserved.GetAlternateLookup<ReadOnlySpan<char>>();
        if (user.Count > 0) _userSymbols = new UserSymbolMatcher(user);
    }

    public static SentencePieceModel Load(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (IOException e) { throw new ModelFormatException(path, $"cannot read: {e.Message}"); }
        return new SentencePieceModel(SentencePieceProto.Read(bytes, path), path);
    }

    public int? TokenToId(string token) => _reserved.TryGetValue(token, out int r) ? r : _normal.TryGetValue(token, out int n) ? n : null;
    public string? IdToToken(int id) => (uint)id < (uint)_pieces.Length ? _pieces[id] : null;
    public bool IsSpecial(int id) => (uint)id < (uint)_pieces.Length && _types[id] == Control;
    private int PieceToId(ReadOnlySpan<char> piece) =>
        _reservedBySpan.TryGetValue(piece, out int r) ? r : _normalBySpan.TryGetValue(piece, out int n) ? n : UnkId;

    // ------------------------------------------------------------------------------------------------ encode

    public void Encode(string text, bool addSpecial, List<int> ids)
    {
        _ = addSpecial; // BOS is the caller's (LrlTokenizer's) decision for tokenizer.model
        var normalized = Normalize(CharClass.Sanitize(text));
        if (normalized.Length == 0) return;
        var pieces = _modelType == 2 ? EncodeBpe(normalized) : EncodeUnigram(normalized);
        bool prevUnk = false;
        foreach (var (start, length, id) in pieces)
        {
            bool isUnk = id == UnkId;
            if (isUnk && _byteFallback)
            {
                foreach (var b in Encoding.UTF8.GetBytes(normalized.Substring(start, length))) ids.Add(_byteIds[b]);
            }
            else if (!(isUnk && prevUnk)) ids.Add(id);
            prevUnk = isUnk;
        }
    }

    /// <summary>sentencepiece's Normalizer::Normalize, without the alignment.</summary>
    internal string Normalize(string input)
    {
        var src = Encoding.UTF8.GetBytes(input);
        var outBytes = new List<byte>(src.Length + 8);
        ReadOnlySpan<byte> rest = src;
        var spaceSym = Encoding.UTF8.GetBytes(Space);
        if (_removeExtraWhitespaces)
        {
            while (rest.Length > 0)
            {
                int consumed = NormalizePrefix(rest, out var rep);
                if (!(rep.Length == 1 && rep[0] == (byte)' ')) break;
                rest = rest[consumed..];
            }
        }
        if (rest.Length == 0) return "";
        void AddSpace() { if (_escapeWhitespaces) outBytes.AddRange(spaceSym); else outBytes.Add((byte)' '); }
        if (!_suffixWhitespace && _addDummyPrefix) AddSpace();
        bool prevSpace = _removeExtraWhitespaces;
        while (rest.Length > 0)
        {
            int consumed = NormalizePrefix(rest, out var sp);
            if (prevSpace) while (sp.Length > 0 && sp[0] == (byte)' ') sp = sp[1..];
            if (sp.Length > 0)
            {
                foreach (var b in sp)
                {
                    if (_escapeWhitespaces && b == (byte)' ') outBytes.AddRange(spaceSym);
                    else outBytes.Add(b);
                }
                prevSpace = sp[^1] == (byte)' ';
            }
            rest = rest[consumed..];
            if (!_removeExtraWhitespaces) prevSpace = false;
        }
        if (_removeExtraWhitespaces)
        {
            var tail = _escapeWhitespaces ? spaceSym : [(byte)' '];
            while (System.Runtime.InteropServices.CollectionsMarshal.AsSpan(outBytes).EndsWith(tail))
                outBytes.RemoveRange(outBytes.Count - tail.Length, tail.Length);
        }
        if (_suffixWhitespace && _addDummyPrefix) AddSpace();
        return Encoding.UTF8.GetString(outBytes.ToArray());
    }

    private static readonly byte[] Replacement = Encoding.UTF8.GetBytes("\uFFFD");

    /// <summary>The normalized form of the input's first unit and the bytes it consumed.</summary>
    private int NormalizePrefix(ReadOnlySpan<byte> input, out ReadOnlySpan<byte> replacement)
    {
        if (_userSymbols is not null && _userSymbols.LongestUtf8(input) is int u and > 0) { replacement = input[..u]; return u; }
        int longest = _charsMap.LongestPrefix(input, out replacement);
        if (longest > 0) return longest;
        int len = Utf8Length(input);
        if (len == 0) { replacement = Replacement; return 1; }
        replacement = input[..len];
        return len;
    }

    /// <summary>The length of the valid UTF-8 character at the start, or 0 when it is malformed.</summary>
    internal static int Utf8Length(ReadOnlySpan<byte> s)
    {
        byte b = s[0];
        int need = b < 0x80 ? 1 : b is >= 0xC2 and <= 0xDF ? 2 : b is >= 0xE0 and <= 0xEF ? 3 : b is >= 0xF0 and <= 0xF4 ? 4 : 0;
        if (need == 0 || need > s.Length) return 0;
        for (int k = 1; k < need; k++) if ((s[k] & 0xC0) != 0x80) return 0;
        if (need == 3 && ((b == 0xE0 && s[1] < 0xA0) || (b == 0xED && s[1] > 0x9F))) return 0;
        if (need == 4 && ((b == 0xF0 && s[1] < 0x90) || (b == 0xF4 && s[1] > 0x8F))) return 0;
        return need;
    }

    /// <summary>sentencepiece's BPE: highest-scoring adjacent pair first (ties: leftmost), user symbols frozen, unused pieces resegmented.</summary>
    private List<(int Start, int Length, int Id)> EncodeBpe(string s)
    {
        var start = new List<int>(); var len = new List<int>(); var freeze = new List<bool>();
        for (int i = 0; i < s.Length;)
        {
            int u = _userSymbols?.Longest(s, i) ?? 0;
            int l = u > 0 ? u : CharLen(s, i);
            start.Add(i); len.Add(l); freeze.Add(u > 0);
            i += l;
        }
        int n = start.Count;
        var prev = new int[n]; var next = new int[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        // Highest score first, then leftmost: one ulong key, the score's order-preserving bits inverted above the position.
        var agenda = new PriorityQueue<(int Left, int Right, int Size), ulong>(n);
        Dictionary<string, (int, int, int, int)>? revMerge = null;
        void MaybeAdd(int left, int right)
        {
            if (left < 0 || right < 0 || freeze[left] || freeze[right]) return;
            var span = s.AsSpan(start[left], len[left] + len[right]);
            if (!_normalBySpan.TryGetValue(span, out int id)) return;
            int bits = BitConverter.SingleToInt32Bits(_scores[id]);
            uint ordered = (uint)bits ^ (bits < 0 ? 0xFFFFFFFFu : 0x80000000u);
            agenda.Enqueue((left, right, span.Length), ((ulong)(uint.MaxValue - ordered) << 32) | (uint)left);
            if (_types[id] == Unused) (revMerge ??= new())[span.ToString()] = (start[left], len[left], start[right], len[right]);
        }
        for (int i = 1; i < n; i++) MaybeAdd(i - 1, i);
        while (agenda.TryDequeue(out var top, out _))
        {
            if (len[top.Left] == 0 || len[top.Right] == 0 || len[top.Left] + len[top.Right] != top.Size) continue;
            len[top.Left] += len[top.Right];
            next[top.Left] = next[top.Right];
            if (next[top.Right] >= 0) prev[next[top.Right]] = top.Left;
            len[top.Right] = 0;
            MaybeAdd(prev[top.Left], top.Left);
            MaybeAdd(top.Left, next[top.Left]);
        }
        var output = new List<(int, int, int)>();
        void Resegment(int a, int l)
        {
            int id = PieceToId(s.AsSpan(a, l));
            if (id < 0 || _types[id] != Unused || revMerge is null || !revMerge.TryGetValue(s.Substring(a, l), out var p)) { output.Add((a, l, id)); return; }
            Resegment(p.Item1, p.Item2);
            Resegment(p.Item3, p.Item4);
        }
        for (int i = 0; i >= 0 && i < n; i = next[i]) Resegment(start[i], len[i]);
        return output;
    }

    /// <summary>sentencepiece's Unigram (EncodeOptimized): Viterbi over pieces, unknown characters at min score − 10.</summary>
    private List<(int Start, int Length, int Id)> EncodeUnigram(string s)
    {
        int size = s.Length;
        float unkScore = _minScore - 10.0f;
        var best = new float[size + 1];
        var startsAt = new int[size + 1];
        var ids = new int[size + 1];
        Array.Fill(startsAt, -1);
        Array.Fill(ids, -1);
        for (int st = 0; st < size;)
        {
            float here = best[st];
            int mblen = CharLen(s, st);
            bool single = false;
            int maxEnd = Math.Min(size, st + _maxPieceLength);
            for (int end = st; end < maxEnd;)
            {
                end += CharLen(s, end);
                if (end > maxEnd) break;
                if (!_normalBySpan.TryGetValue(s.AsSpan(st, end - st), out int id) || _types[id] == Unused) continue;
                int length = end - st;
                // As in sentencepiece: the score is a double (the user-symbol branch has a double literal), the
                // candidate is compared in double against the stored float, then stored as float.
                double score = _types[id] == UserDefined ? Encoding.UTF8.GetByteCount(s.AsSpan(st, length)) * _maxScore - 0.1 : _scores[id];
                double cand = score + here;
                if (startsAt[end] == -1 || cand > best[end]) { best[end] = (float)cand; startsAt[end] = st; ids[end] = id; }
                if (length == mblen) single = true;
            }
            if (!single)
            {
                int end = st + mblen;
                float cand = unkScore + here;
                if (startsAt[end] == -1 || cand > best[end]) { best[end] = cand; startsAt[end] = st; ids[end] = UnkId; }
            }
            st += mblen;
        }
        var result = new List<(int, int, int)>();
        for (int e = size; e > 0;)
        {
            int st = startsAt[e];
            result.Add((st, e - st, ids[e]));
            e = st;
        }
        result.Reverse();
        return result;
    }

    private static int CharLen(string s, int i) => char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;

    // ------------------------------------------------------------------------------------------------ decode

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial)
    {
        var text = new StringBuilder();
        var bytes = new List<byte>();
        bool isBosWs = true, bosWsSeen = false;
        void FlushBytes()
        {
            if (bytes.Count == 0) return;
            var arr = bytes.ToArray();
            for (int off = 0; off < arr.Length;)
            {
                int l = Utf8Length(arr.AsSpan(off));
                if (l == 0) { text.Append('\uFFFD'); off++; }
                else { text.Append(Encoding.UTF8.GetString(arr, off, l)); off += l; }
            }
            bytes.Clear();
        }
        foreach (var id in ids)
        {
            if ((uint)id >= (uint)_pieces.Length) continue;
            if (_types[id] == Byte && TokenizerLoader.TryParseByteToken(_pieces[id], out byte b)) { bytes.Add(b); continue; }
            FlushBytes();
            if (bosWsSeen || text.Length > 0) isBosWs = false;
            string decoded;
            bosWsSeen = false;
            if (_types[id] == Control) decoded = skipSpecial ? "" : _pieces[id];
            else if (_types[id] == Unknown) decoded = _unkSurface;
            else
            {
                var piece = _pieces[id];
                if (isBosWs && (_addDummyPrefix || _removeExtraWhitespaces))
                {
                    bosWsSeen = piece.StartsWith(Space, StringComparison.Ordinal);
                    if (bosWsSeen) piece = piece[1..];
                    if (_removeExtraWhitespaces) bosWsSeen = false;
                }
                decoded = piece.Replace(Space, " ");
            }
            text.Append(decoded);
        }
        FlushBytes();
        return text.ToString();
    }

    /// <summary>Longest user-defined symbol at a position (sentencepiece's PrefixMatcher).</summary>
    private sealed class UserSymbolMatcher
    {
        private readonly HashSet<string> _set;
        private readonly HashSet<string>.AlternateLookup<ReadOnlySpan<char>> _bySpan;
        private readonly int _max;
        private readonly byte[][]?[] _byFirstByte = new byte[][]?[256];
        private readonly bool[] _asciiFirst = new bool[128];
        private readonly HashSet<char> _firstChars = new();

        public UserSymbolMatcher(List<string> symbols)
        {
            _set = new HashSet<string>(symbols, StringComparer.Ordinal);
            _bySpan = _set.GetAlternateLookup<ReadOnlySpan<char>>();
            _max = symbols.Max(x => x.Length);
            foreach (var x in symbols) { if (x[0] < 128) _asciiFirst[x[0]] = true; else _firstChars.Add(x[0]); }
            foreach (var g in symbols.Select(Encoding.UTF8.GetBytes).GroupBy(b => b[0]))
                _byFirstByte[g.Key] = g.OrderByDescending(x => x.Length).ToArray();
        }

        public int Longest(string s, int i)
        {
            if (s[i] < 128 ? !_asciiFirst[s[i]] : !_firstChars.Contains(s[i])) return 0;
            for (int l = Math.Min(_max, s.Length - i); l > 0; l--)
                if (_bySpan.Contains(s.AsSpan(i, l))) return l;
            return 0;
        }

        public int LongestUtf8(ReadOnlySpan<byte> s)
        {
            if (s.Length == 0 || _byFirstByte[s[0]] is not { } candidates) return 0;
            foreach (var u in candidates) if (s.StartsWith(u)) return u.Length;
            return 0;
        }
    }
}
