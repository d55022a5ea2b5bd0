using System.Text;

namespace Lrl.Tokenization;

/// <summary>
/// A model folder's tokenizer: text ↔ token ids exactly as the reference implementations produce them (Hugging Face
/// `tokenizers` for tokenizer.json, Google's sentencepiece for tokenizer.model), special tokens, BOS/EOS from the
/// folder's config files, and a streaming decoder for generation. Pure managed code; immutable after loading and safe
/// to share between threads.
/// </summary>
/// <remarks>
/// Sources, in order of preference: tokenizer.json, tokenizer.model, token_mappings.json (a word-level vocabulary), or
/// config.json's "tokenizer" declaring a byte-level vocabulary (id = byte value, as RWKV's tiny test models use).
/// </remarks>
public sealed class LrlTokenizer
{
    private readonly ITokenizerCore _core;
    private readonly bool _prependBos;
    [ThreadStatic] private static List<int>? t_ids;

    /// <summary>Which kind of tokenizer this is, e.g. "BPE (tokenizer.json)".</summary>
    public string Kind { get; }
    public int VocabSize => _core.VocabSize;
    /// <summary>Beginning-of-sequence id, or null when the tokenizer has none.</summary>
    public int? BosId { get; }
    /// <summary>Every id that ends generation (from generation_config.json, config.json and tokenizer_config.json).</summary>
    public int[] EosIds { get; }
    /// <summary>Whether <see cref="Encode"/> with special tokens starts with <see cref="BosId"/>.</summary>
    public bool AddBos { get; }

    internal LrlTokenizer(string kind, ITokenizerCore core, int? bos, int[] eos, bool prependBos)
    {
        Kind = kind; _core = core; BosId = bos; EosIds = eos;
        _prependBos = prependBos && bos is not null;
        var probe = Encode("", addSpecial: true);
        AddBos = bos is int b && probe.Length > 0 && probe[0] == b;
    }

    /// <summary>Loads the tokenizer of a model folder; an unreadable or unsupported file is an <see cref="LrlException"/> naming it.</summary>
    public static LrlTokenizer Load(string modelDir) => TokenizerLoader.Load(Path.GetFullPath(modelDir));

    /// <summary>
    /// Text to ids. With <paramref name="addSpecial"/> the special tokens of the tokenizer's post-processor are added
    /// (BOS, or a template such as Whisper's), as Hugging Face's add_special_tokens=True.
    /// </summary>
    public int[] Encode(string text, bool addSpecial = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = t_ids ??= new List<int>(256);
        ids.Clear();
        if (addSpecial && _prependBos) ids.Add(BosId!.Value);
        _core.Encode(text, addSpecial, ids);
        var result = ids.ToArray();
        if (ids.Capacity > 1 << 16) t_ids = null;
        return result;
    }

    /// <summary>Ids to text with the tokenizer's decoder, as Hugging Face's decode (special tokens skipped unless asked).</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial = true)
    {
        foreach (var id in ids) CheckId(id);
        return _core.Decode(ids, skipSpecial);
    }

    internal string DecodeUnchecked(ReadOnlySpan<int> ids, bool skipSpecial) => _core.Decode(ids, skipSpecial);

    /// <summary>The vocabulary entry of an id as written in the tokenizer file (e.g. "▁the", "Ġthe", "&lt;0x0A&gt;").</summary>
    public string TokenText(int id) { CheckId(id); return _core.IdToToken(id) ?? ""; }

    /// <summary>The id of a vocabulary entry or added token written as in the tokenizer file, or null.</summary>
    public int? TokenToId(string token) => _core.TokenToId(token);

    public bool IsSpecial(int id) { CheckId(id); return _core.IsSpecial(id); }

    /// <summary>A decoder for generated tokens that emits only complete characters, as a continuation of earlier text.</summary>
    public StreamingDecoder CreateStreamingDecoder() => new(this);

    private void CheckId(int id)
    {
        if ((uint)id >= (uint)VocabSize)
            throw new LrlException($"token id {id} is outside the tokenizer's vocabulary (0..{VocabSize - 1})");
    }
}

/// <summary>
/// Turns generated ids into text incrementally with the tokenizer's own decoder: each step decodes a short window of
/// recent ids and emits what it adds, holding back text that ends in an incomplete character (U+FFFD), so a character
/// split over several byte tokens is never printed half-way. The window starts with an anchor token, so the text is
/// decoded as a continuation (the leading space of the first token is kept, as it follows the prompt).
/// </summary>
public sealed class StreamingDecoder
{
    private readonly LrlTokenizer _tok;
    private readonly List<int> _ids = new();
    private readonly int _anchor = -1;
    private readonly string _anchorText = "";
    private int _prefix, _read;

    internal StreamingDecoder(LrlTokenizer tok)
    {
        _tok = tok;
        foreach (var candidate in new[] { "a", "<0x61>", "x", "▁a", "Ġa" })
        {
            if (tok.TokenToId(candidate) is not int id || id >= tok.VocabSize || tok.IsSpecial(id)) continue;
            var one = tok.DecodeUnchecked([id], true);
            if (one.Length == 0 || one.Trim().Length != one.Length || tok.DecodeUnchecked([id, id], true) != one + one) continue;
            _anchor = id; _anchorText = one;
            break;
        }
        if (_anchor >= 0) _ids.Add(_anchor);
        _prefix = _read = 0;
        if (_anchor >= 0) { _read = 1; }
    }

    /// <summary>Adds one generated id; returns the text that is now complete (possibly empty).</summary>
    /// <remarks>Ids the model's (often padded) vocabulary has but the tokenizer lacks, and special tokens, decode to nothing.</remarks>
    public string Push(int id)
    {
        if ((uint)id >= (uint)_tok.VocabSize || _tok.IsSpecial(id)) return "";
        _ids.Add(id);
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_ids);
        string prefixText = Window(span, _read);
        string newText = Window(span, _ids.Count);
        if (newText.Length <= prefixText.Length || newText[^1] == '\uFFFD' || !newText.StartsWith(prefixText, StringComparison.Ordinal)) return "";
        var output = newText[prefixText.Length..];
        _prefix = _read;
        _read = _ids.Count;
        return output;
    }

    /// <summary>Whatever is still held back (an incomplete character becomes U+FFFD).</summary>
    public string Flush()
    {
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_ids);
        string prefixText = Window(span, _read);
        string newText = Window(span, _ids.Count);
        _prefix = _read = _ids.Count;
        if (_anchor >= 0) { _ids.Clear(); _ids.Add(_anchor); _prefix = 0; _read = 1; }
        return newText.Length > prefixText.Length && newText.StartsWith(prefixText, StringComparison.Ordinal) ? newText[prefixText.Length..] : "";
    }

    /// <summary>Decoded text of ids [prefix, end), behind the anchor when there is one.</summary>
    private string Window(ReadOnlySpan<int> ids, int end)
    {
        if (_anchor < 0) return _tok.DecodeUnchecked(ids[_prefix..end], true);
        if (_prefix == 0) return _tok.DecodeUnchecked(ids[..end], true);
        Span<int> buf = end - _prefix + 1 <= 256 ? stackalloc int[end - _prefix + 1] : new int[end - _prefix + 1];
        buf[0] = _anchor;
        ids[_prefix..end].CopyTo(buf[1..]);
        return _tok.DecodeUnchecked(buf, true);
    }
}
