using System.Collections.Concurrent;
using System.Text;
using Lrl.Tokenization.Unicode;

namespace Lrl.Tokenization.Hf;

/// <summary>A tokenizer.json model: one pre-tokenized piece to ids.</summary>
internal abstract class TokenModel
{
    protected readonly Dictionary<string, int> Vocab;
    protected readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> VocabBySpan;
    private readonly Dictionary<int, string> _idToToken = new();

    protected TokenModel(Dictionary<string, int> vocab)
    {
        Vocab = vocab;
        VocabBySpan = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        foreach (var (k, v) in vocab) _idToToken.TryAdd(v, k);
    }

    public abstract void Tokenize(string piece, List<int> output);

    public int? TokenToId(string token) => Vocab.TryGetValue(token, out int id) ? id : null;
    public string? IdToToken(int id) => _idToToken.TryGetValue(id, out var t) ? t : null;
    public int MaxId => _idToToken.Count == 0 ? -1 : _idToToken.Keys.Max();
    /// <summary>The number of vocabulary entries (the Rust library's get_vocab_size).</summary>
    public int Count => Vocab.Count;

    /// <summary>Ids of the byte tokens &lt;0x00&gt;..&lt;0xFF&gt; (-1 where the vocabulary lacks one).</summary>
    protected int[] ByteTokenIds()
    {
        var ids = new int[256];
        for (int b = 0; b < 256; b++) ids[b] = Vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        return ids;
    }
}

/// <summary>
/// Byte-pair encoding as Hugging Face's BPE model: merges applied lowest rank first (ties: leftmost), unknown
/// characters to byte tokens (byte_fallback) or the unk token (fused when fuse_unk), continuing-subword prefix and
/// end-of-word suffix, ignore_merges. Results are cached per piece.
/// </summary>
internal sealed class BpeModel : TokenModel
{
    private readonly Dictionary<long, (int Rank, int NewId)> _merges;
    private readonly int _unkId = -1;
    private readonly bool _fuseUnk, _byteFallback, _ignoreMerges;
    private readonly string? _prefix, _suffix;
    private readonly int[] _byteIds;
    private readonly ConcurrentDictionary<string, int[]> _cache = new();
    private readonly Dictionary<int, int> _charIds = new();   // single-code-point vocabulary entries
    private const int CacheCapacity = 10_000;

    public BpeModel(Dictionary<string, int> vocab, List<(string A, string B)> merges, string? unk, bool fuseUnk, bool byteFallback,
        bool ignoreMerges, string? prefix, string? suffix, string file) : base(vocab)
    {
        _fuseUnk = fuseUnk; _byteFallback = byteFallback; _ignoreMerges = ignoreMerges;
        _prefix = string.IsNullOrEmpty(prefix) ? null : prefix;
        _suffix = string.IsNullOrEmpty(suffix) ? null : suffix;
        if (unk is not null && vocab.TryGetValue(unk, out int u)) _unkId = u;
        else if (unk is not null) _unkId = -2; // declared but missing: an error only when needed, as in Hugging Face
        _byteIds = ByteTokenIds();
        foreach (var (k, v) in vocab)
            if (k.Length is 1 or 2 && CharClass.At(k, 0, out int l) is int cp && l == k.Length) _charIds[cp] = v;
        _merges = new Dictionary<long, (int, int)>(merges.Count, PairComparer.Instance);
        int prefixLen = prefix?.Length ?? 0;
        for (int r = 0; r < merges.Count; r++)
        {
            var (a, b) = merges[r];
            if (!vocab.TryGetValue(a, out int ia)) throw new ModelFormatException(file, $"model.merges[{r}]: '{a}' is not in the vocabulary");
            if (!vocab.TryGetValue(b, out int ib)) throw new ModelFormatException(file, $"model.merges[{r}]: '{b}' is not in the vocabulary");
            var merged = a + (prefixLen <= b.Length ? b[prefixLen..] : "");
            if (!vocab.TryGetValue(merged, out int inew)) throw new ModelFormatException(file, $"model.merges[{r}]: '{merged}' is not in the vocabulary");
            _merges[((long)ia << 32) | (uint)ib] = (r, inew);
        }
    }

    public override void Tokenize(string piece, List<int> output)
    {
        if (piece.Length == 0) return;
        if (_ignoreMerges && Vocab.TryGetValue(piece, out int whole)) { output.Add(whole); return; }
        if (_cache.TryGetValue(piece, out var hit)) { output.AddRange(hit); return; }
        var ids = MergeWord(piece);
        if (piece.Length < 256 && _cache.Count < CacheCapacity) _cache.TryAdd(piece, ids);
        output.AddRange(ids);
    }

    private int[] MergeWord(string w)
    {
        var ids = new List<int>(w.Length);
        int pendingUnk = -1;
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < w.Length;)
        {
            int cp = CharClass.At(w, i, out int len);
            bool first = i == 0, last = i + len == w.Length;
            bool plain = (_prefix is null || first) && (_suffix is null || !last);
            int id;
            bool found;
            string? decorated = null;
            if (plain) found = _charIds.TryGetValue(cp, out id);
            else
            {
                decorated = (_prefix is not null && !first ? _prefix : "") + w.Substring(i, len) + (_suffix is not null && last ? _suffix : "");
                found = Vocab.TryGetValue(decorated, out id);
            }
            if (found)
            {
                if (pendingUnk >= 0) { ids.Add(pendingUnk); pendingUnk = -1; }
                ids.Add(id);
            }
            else
            {
                bool done = false;
                if (_byteFallback)
                {
                    // the character as written (with any prefix/suffix), byte by byte
                    ReadOnlySpan<byte> bytes = decorated is null
                        ? utf8[..new Rune(cp).EncodeToUtf8(utf8)]
                        : Encoding.UTF8.GetBytes(decorated);
                    bool all = true;
                    foreach (var b in bytes) if (_byteIds[b] < 0) { all = false; break; }
                    if (all) { foreach (var b in bytes) ids.Add(_byteIds[b]); done = true; }
                }
                if (!done && _unkId != -1)
                {
                    if (_unkId == -2) throw new LrlException("the BPE model's unk_token is not in its vocabulary");
                    if (pendingUnk >= 0 && !_fuseUnk) ids.Add(pendingUnk);
                    pendingUnk = _unkId;
                }
            }
            i += len;
        }
        if (pendingUnk >= 0) ids.Add(pendingUnk);
        if (ids.Count < 2) return ids.ToArray();
        return MergeAll(ids);
    }

    private int[] MergeAll(List<int> start)
    {
        int n = start.Count;
        var sym = new int[n];
        var prev = new int[n];
        var next = new int[n];
        var alive = new bool[n];
        for (int i = 0; i < n; i++) { sym[i] = start[i]; prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; alive[i] = true; }
        var queue = new PriorityQueue<(int Pos, int NewId), long>(n);
        for (int i = 0; i + 1 < n; i++)
            if (_merges.TryGetValue(((long)sym[i] << 32) | (uint)sym[i + 1], out var m))
                queue.Enqueue((i, m.NewId), ((long)m.Rank << 32) | (uint)i);
        while (queue.TryDequeue(out var top, out _))
        {
            int pos = top.Pos;
            if (!alive[pos] || next[pos] < 0) continue;
            int right = next[pos];
            if (!_merges.TryGetValue(((long)sym[pos] << 32) | (uint)sym[right], out var m) || m.NewId != top.NewId) continue;
            sym[pos] = m.NewId;
            alive[right] = false;
            next[pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = pos;
            if (prev[pos] >= 0 && _merges.TryGetValue(((long)sym[prev[pos]] << 32) | (uint)sym[pos], out var mp))
                queue.Enqueue((prev[pos], mp.NewId), ((long)mp.Rank << 32) | (uint)prev[pos]);
            if (next[pos] >= 0 && _merges.TryGetValue(((long)sym[pos] << 32) | (uint)sym[next[pos]], out var mn))
                queue.Enqueue((pos, mn.NewId), ((long)mn.Rank << 32) | (uint)pos);
        }
        var result = new List<int>(n);
        for (int i = 0; i < n; i++) if (alive[i]) result.Add(sym[i]);
        return result.ToArray();
    }
}

/// <summary>
/// Hashes a pair of ids packed in a long. The default long hash (low ^ high) sends all pairs with the same XOR of
/// their ids to one bucket: BPE's merge table then degrades to long chains.
/// </summary>
internal sealed class PairComparer : IEqualityComparer<long>
{
    public static readonly PairComparer Instance = new();
    public bool Equals(long a, long b) => a == b;
    public int GetHashCode(long key) => (int)(((ulong)key * 0x9E3779B97F4A7C15UL) >> 32);
}

/// <summary>Unigram language model (Viterbi over the pieces' log-probabilities) as Hugging Face's Unigram.</summary>
internal sealed class UnigramModel : TokenModel
{
    private readonly double[] _scores;
    private readonly int _unkId;
    private readonly bool _byteFallback;
    private readonly double _minScore;
    private readonly int _maxLen;
    private readonly int[] _byteIds;

    public UnigramModel(List<(string Piece, double Score)> vocab, int? unkId, bool byteFallback, string file)
        : base(BuildVocab(vocab))
    {
        if (unkId is { } u && (u < 0 || u >= vocab.Count)) throw new ModelFormatException(file, $"model.unk_id {u} is outside the vocabulary (0..{vocab.Count - 1})");
        if (vocab.Count == 0) throw new ModelFormatException(file, "model.vocab of the Unigram model is empty");
        _scores = vocab.Select(v => v.Score).ToArray();
        _unkId = unkId ?? -1;
        _byteFallback = byteFallback;
        _minScore = vocab.Min(v => v.Score);
        _maxLen = vocab.Max(v => v.Piece.Length);
        _byteIds = ByteTokenIds();
    }

    private static Dictionary<string, int> BuildVocab(List<(string Piece, double Score)> vocab)
    {
        var d = new Dictionary<string, int>(vocab.Count, StringComparer.Ordinal);
        for (int i = 0; i < vocab.Count; i++) d[vocab[i].Piece] = i;
        return d;
    }

    public override void Tokenize(string s, List<int> output)
    {
        if (s.Length == 0) return;
        int n = s.Length;
        double unkScore = _minScore - 10.0;
        var best = new double[n + 1];
        var startsAt = new int[n + 1];
        var ids = new int[n + 1];
        Array.Fill(startsAt, -1);
        for (int start = 0; start < n;)
        {
            double here = best[start];
            CharClass.At(s, start, out int mblen);
            bool single = false;
            int maxEnd = Math.Min(n, start + _maxLen);
            for (int end = start; end < maxEnd;)
            {
                CharClass.At(s, end, out int l);
                end += l;
                if (end > maxEnd) break;
                if (!VocabBySpan.TryGetValue(s.AsSpan(start, end - start), out int id)) continue;
                double cand = _scores[id] + here;
                if (startsAt[end] < 0 || cand > best[end]) { best[end] = cand; startsAt[end] = start; ids[end] = id; }
                if (end - start == mblen) single = true;
            }
            if (!single)
            {
                int end = start + mblen;
                double cand = unkScore + here;
                if (startsAt[end] < 0 || cand > best[end])
                {
                    if (_unkId < 0) throw new LrlException("the Unigram model met an unknown character and has no unk_id");
                    best[end] = cand; startsAt[end] = start; ids[end] = _unkId;
                }
            }
            start += mblen;
        }
        // backtrack; consecutive unknowns are fused into one piece
        var pieces = new List<(int Start, int End, int Id)>();
        for (int end = n; end > 0;)
        {
            int st = startsAt[end];
            if (_unkId >= 0 && ids[end] == _unkId && pieces.Count > 0 && pieces[^1].Id == _unkId && pieces[^1].Start == end)
                pieces[^1] = (st, pieces[^1].End, _unkId);
            else pieces.Add((st, end, ids[end]));
            end = st;
        }
        for (int k = pieces.Count - 1; k >= 0; k--)
        {
            var (a, b, id) = pieces[k];
            if (VocabBySpan.TryGetValue(s.AsSpan(a, b - a), out int known)) { output.Add(known); continue; }
            if (_byteFallback)
            {
                var bytes = Encoding.UTF8.GetBytes(s.Substring(a, b - a));
                if (bytes.All(x => _byteIds[x] >= 0)) { foreach (var x in bytes) output.Add(_byteIds[x]); continue; }
            }
            output.Add(_unkId);
        }
    }
}

/// <summary>WordPiece: greedy longest match with a continuing-subword prefix; a word with no match is the unk token.</summary>
internal sealed class WordPieceModel(Dictionary<string, int> vocab, string unk, string prefix, int maxChars, string file) : TokenModel(vocab)
{
    public override void Tokenize(string s, List<int> output)
    {
        int UnkId() => Vocab.TryGetValue(unk, out int u) ? u : throw new ModelFormatException(file, $"WordPiece unk_token '{unk}' is not in the vocabulary");
        if (s.EnumerateRunes().Count() > maxChars) { output.Add(UnkId()); return; }
        var sub = new List<int>();
        int start = 0;
        while (start < s.Length)
        {
            int end = s.Length;
            int found = -1;
            while (start < end)
            {
                var piece = start > 0 ? prefix + s[start..end] : s[start..end];
                if (Vocab.TryGetValue(piece, out int id)) { found = id; break; }
                CharClass.Before(s, end, out int l);
                end -= l;
            }
            if (found < 0) { output.Add(UnkId()); return; }
            sub.Add(found);
            start = end;
        }
        output.AddRange(sub);
    }
}

/// <summary>WordLevel: the piece's id, or the unk token's.</summary>
internal sealed class WordLevelModel(Dictionary<string, int> vocab, string unk, string file) : TokenModel(vocab)
{
    public override void Tokenize(string s, List<int> output)
    {
        if (Vocab.TryGetValue(s, out int id)) output.Add(id);
        else if (Vocab.TryGetValue(unk, out int u)) output.Add(u);
        else throw new LrlException($"{file}: '{s}' is not in the WordLevel vocabulary and unk_token '{unk}' is missing");
    }
}
