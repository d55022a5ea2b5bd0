using Lrl.Tokenization.Unicode;

namespace Lrl.Tokenization.Hf;

internal sealed record AddedToken(string Content, int Id, bool Special, bool SingleWord, bool LStrip, bool RStrip, bool Normalized);

/// <summary>
/// Added tokens as Hugging Face's AddedVocabulary: tokens with normalized=false are found in the raw text first,
/// then each remaining piece is normalized and searched for the normalized=true tokens (in their normalized form).
/// Matching is leftmost-longest; single_word, lstrip and rstrip as in the Rust library.
/// </summary>
internal sealed class AddedVocabulary
{
    private sealed class Node
    {
        public Dictionary<char, Node>? Children;
        public int Token = -1;   // index into _tokens
    }

    private readonly List<AddedToken> _tokens;
    private readonly Node? _raw, _normalized;
    private readonly Dictionary<int, AddedToken> _byId = new();
    private readonly Dictionary<string, int> _byContent = new(StringComparer.Ordinal);

    public IReadOnlyList<AddedToken> Tokens => _tokens;

    public AddedVocabulary(List<AddedToken> tokens, Normalizer? normalizer)
    {
        _tokens = tokens;
        for (int i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i];
            if (t.Content.Length == 0) continue;
            _byId[t.Id] = t;
            _byContent[t.Content] = t.Id;
            string pattern = t.Content;
            if (t.Normalized && normalizer is not null) pattern = normalizer.Normalize(t.Content);
            if (pattern.Length == 0) continue;
            ref var root = ref t.Normalized ? ref _normalized : ref _raw;
            root ??= new Node();
            var node = root;
            foreach (char c in pattern)
            {
                node.Children ??= new Dictionary<char, Node>();
                if (!node.Children.TryGetValue(c, out var child)) node.Children[c] = child = new Node();
                node = child;
            }
            node.Token = i;
        }
    }

    public int? IdOf(string content) => _byContent.TryGetValue(content, out int id) ? id : null;

    /// <summary>The text an added id decodes to: its content (as the Rust library of the oracle, Tokenizers.DotNet 1.4.1).</summary>
    public string? DecodeText(int id) => _byId.TryGetValue(id, out var t) ? t.Content : null;

    public bool IsSpecial(int id) => _byId.TryGetValue(id, out var t) && t.Special;

    public bool HasRaw => _raw is not null;
    public bool HasNormalized => _normalized is not null;

    /// <summary>Splits a piece on the raw (normalized=false) or the normalized tokens.</summary>
    public void Split(Piece p, bool normalizedSet, List<Piece> output)
    {
        var root = normalizedSet ? _normalized : _raw;
        var s = p.Text;
        if (root is null || s.Length == 0) { if (s.Length > 0) output.Add(p); return; }
        int startOffset = 0;
        int pos = 0;
        while (pos < s.Length)
        {
            // longest token starting at pos
            var node = root;
            int best = -1, bestEnd = -1;
            for (int k = pos; k < s.Length && node.Children is not null && node.Children.TryGetValue(s[k], out var next); k++)
            {
                node = next;
                if (node.Token >= 0) { best = node.Token; bestEnd = k + 1; }
            }
            if (best < 0) { pos++; continue; }
            var tok = _tokens[best];
            int start = pos, stop = bestEnd;
            pos = bestEnd; // matching resumes after the match, whatever the flags do
            if (tok.SingleWord)
            {
                bool startSpace = start == 0 || !IsWord(CharClass.Before(s, start, out _));
                bool stopSpace = stop == s.Length || !IsWord(CharClass.At(s, stop, out _));
                if (!startSpace || !stopSpace) continue;
            }
            if (tok.LStrip)
            {
                int ns = start;
                while (ns > 0) { int cp = CharClass.Before(s, ns, out int l); if (!CharClass.IsWhiteSpace(cp)) break; ns -= l; }
                start = Math.Max(ns, startOffset);
            }
            if (tok.RStrip)
            {
                while (stop < s.Length) { int cp = CharClass.At(s, stop, out int l); if (!CharClass.IsWhiteSpace(cp)) break; stop += l; }
            }
            if (startOffset < start) output.Add(new Piece(s[startOffset..start], p.AtStart && startOffset == 0));
            output.Add(new Piece(s[start..stop], p.AtStart && start == 0, tok.Id));
            startOffset = stop;
        }
        if (startOffset < s.Length) output.Add(new Piece(startOffset == 0 ? s : s[startOffset..], p.AtStart && startOffset == 0));
    }

    private static bool IsWord(int cp) => CharClass.IsWordChar(cp);
}
