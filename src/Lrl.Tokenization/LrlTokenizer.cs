using System.Text;
using Microsoft.ML.Tokenizers;

namespace Lrl.Tokenization;

/// <summary>
/// A model folder's tokenizer: text ↔ token ids, special tokens, BOS/EOS from the folder's config files, and a
/// streaming decoder for generation. Encoding goes through Microsoft.ML.Tokenizers (SentencePiece BPE with byte
/// fallback, byte-level BPE); decoding goes through a per-id byte table so that streamed text never splits a
/// multi-byte UTF-8 character.
/// </summary>
/// <remarks>
/// Sources, in order of preference: tokenizer.json (Hugging Face tokenizers: SentencePiece-style BPE with byte
/// fallback as in Llama-2/Mistral, or byte-level BPE as in GPT-2/Llama-3/Qwen2/SmolLM), tokenizer.model
/// (SentencePiece), token_mappings.json (a word-level vocabulary), or config.json's "tokenizer" declaring a
/// byte-level vocabulary (id = byte value, as RWKV's tiny test models use).
/// </remarks>
public sealed class LrlTokenizer
{
    private readonly Func<string, List<int>> _encode;
    private readonly byte[][] _bytes;
    private readonly bool[] _special;
    private readonly string[] _text;
    private readonly bool _stripLeadingSpace;
    private readonly string _separator;

    /// <summary>Which kind of tokenizer this is, e.g. "sentencepiece-bpe (tokenizer.json)".</summary>
    public string Kind { get; }
    public int VocabSize => _bytes.Length;
    /// <summary>Beginning-of-sequence id, or null when the tokenizer has none.</summary>
    public int? BosId { get; }
    /// <summary>Every id that ends generation (from generation_config.json, config.json and tokenizer_config.json).</summary>
    public int[] EosIds { get; }
    /// <summary>Whether <see cref="Encode"/> prepends BOS when asked for special tokens.</summary>
    public bool AddBos { get; }

    internal LrlTokenizer(string kind, Func<string, List<int>> encode, byte[][] bytes, bool[] special, string[] text,
        int? bos, int[] eos, bool addBos, bool stripLeadingSpace, string separator = "")
    {
        Kind = kind; _encode = encode; _bytes = bytes; _special = special; _text = text;
        BosId = bos; EosIds = eos; AddBos = addBos && bos is not null; _stripLeadingSpace = stripLeadingSpace; _separator = separator;
    }

    /// <summary>Loads the tokenizer of a model folder; an unreadable or unsupported file is an <see cref="LrlException"/> naming it.</summary>
    public static LrlTokenizer Load(string modelDir) => TokenizerLoader.Load(Path.GetFullPath(modelDir));

    /// <summary>Text to ids; with <paramref name="addSpecial"/>, BOS is prepended when the model expects it.</summary>
    public int[] Encode(string text, bool addSpecial = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = text.Length == 0 ? new List<int>() : _encode(text);
        if (addSpecial && AddBos) ids.Insert(0, BosId!.Value);
        return ids.ToArray();
    }

    /// <summary>Ids to text, as Hugging Face's decode does (special tokens skipped unless asked).</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial = true)
    {
        var buf = new List<byte>();
        bool first = true;
        foreach (var id in ids)
        {
            CheckId(id);
            if (_special[id] && skipSpecial) continue;
            if (!first && _separator.Length > 0) buf.AddRange(Encoding.UTF8.GetBytes(_separator));
            var b = _special[id] ? Encoding.UTF8.GetBytes(_text[id]) : _bytes[id];
            if (first && _stripLeadingSpace && b.Length > 0 && b[0] == (byte)' ') buf.AddRange(b.AsSpan(1).ToArray());
            else buf.AddRange(b);
            first = false;
        }
        return Encoding.UTF8.GetString(buf.ToArray());
    }

    /// <summary>The vocabulary entry of an id as written in the tokenizer file (e.g. "▁the", "Ġthe", "&lt;0x0A&gt;").</summary>
    public string TokenText(int id) { CheckId(id); return _text[id]; }

    /// <summary>The UTF-8 bytes an id decodes to (empty for special tokens).</summary>
    public ReadOnlySpan<byte> TokenBytes(int id) { CheckId(id); return _special[id] ? default : _bytes[id]; }

    public bool IsSpecial(int id) { CheckId(id); return _special[id]; }

    /// <summary>A decoder for generated tokens that emits only complete UTF-8 characters.</summary>
    public StreamingDecoder CreateStreamingDecoder() => new(this, _separator);

    private void CheckId(int id)
    {
        if ((uint)id >= (uint)_bytes.Length)
            throw new LrlException($"token id {id} is outside the tokenizer's vocabulary (0..{_bytes.Length - 1})");
    }
}

/// <summary>
/// Turns generated ids into text incrementally: bytes are buffered until they form complete UTF-8 characters, so a
/// character split over several byte-fallback tokens is never printed half-way. No allocation when nothing is ready.
/// </summary>
public sealed class StreamingDecoder
{
    private readonly LrlTokenizer _tok;
    private readonly byte[] _separator;
    private byte[] _pending = new byte[64];
    private int _count;
    private bool _started;

    internal StreamingDecoder(LrlTokenizer tok, string separator)
    {
        _tok = tok;
        _separator = Encoding.UTF8.GetBytes(separator);
    }

    /// <summary>Adds one generated id; returns the text that is now complete (possibly empty).</summary>
    /// <remarks>Ids the model's (often padded) vocabulary has but the tokenizer lacks decode to nothing.</remarks>
    public string Push(int id)
    {
        if ((uint)id >= (uint)_tok.VocabSize || _tok.IsSpecial(id)) return "";
        if (_started) Append(_separator);
        _started = true;
        Append(_tok.TokenBytes(id));
        int complete = CompleteLength(_pending.AsSpan(0, _count));
        if (complete == 0) return "";
        var s = Encoding.UTF8.GetString(_pending, 0, complete);
        Array.Copy(_pending, complete, _pending, 0, _count - complete);
        _count -= complete;
        return s;
    }

    /// <summary>Whatever is still buffered (an incomplete character becomes U+FFFD).</summary>
    public string Flush()
    {
        var s = _count == 0 ? "" : Encoding.UTF8.GetString(_pending, 0, _count);
        _count = 0;
        return s;
    }

    private void Append(ReadOnlySpan<byte> b)
    {
        if (_count + b.Length > _pending.Length) Array.Resize(ref _pending, Math.Max(_pending.Length * 2, _count + b.Length));
        b.CopyTo(_pending.AsSpan(_count));
        _count += b.Length;
    }

    /// <summary>Length of the longest prefix that does not end inside a multi-byte UTF-8 sequence.</summary>
    internal static int CompleteLength(ReadOnlySpan<byte> b)
    {
        int n = b.Length;
        // Look back at most 3 bytes for the lead byte of a sequence that is still open.
        for (int back = 1; back <= Math.Min(4, n); back++)
        {
            byte c = b[n - back];
            if ((c & 0xC0) == 0x80) continue; // continuation byte
            int need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            return need > back ? n - back : n;
        }
        return n; // only continuation bytes (invalid): let the decoder replace them
    }
}
