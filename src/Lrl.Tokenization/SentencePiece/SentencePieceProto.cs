using System.Text;

namespace Lrl.Tokenization;

/// <summary>
/// Reads sentencepiece's ModelProto (sentencepiece_model.proto): the pieces with score and type, the trainer spec's
/// model type, byte fallback, whitespace-as-suffix, BOS/EOS ids and unk surface, and the normalizer spec. Every length
/// is checked against the bytes that remain, so a truncated or hostile file is a clear error.
/// </summary>
internal static class SentencePieceProto
{
    internal sealed record PieceEntry(string Piece, float Score, int Type);

    internal sealed class Model
    {
        public List<PieceEntry> Pieces { get; } = new();
        public int ModelType { get; set; } = 1;
        public bool ByteFallback { get; set; }
        public bool TreatWhitespaceAsSuffix { get; set; }
        public int? BosId { get; set; } = 1;
        public int? EosId { get; set; } = 2;
        public string? UnkSurface { get; set; }
        public string NormalizerName { get; set; } = "";
        public byte[] CharsMap { get; set; } = [];
        public bool AddDummyPrefix { get; set; } = true;
        public bool RemoveExtraWhitespaces { get; set; } = true;
        public bool EscapeWhitespaces { get; set; } = true;
    }

    public static Model Read(byte[] proto, string path)
    {
        var m = new Model();
        try
        {
            int pos = 0;
            while (pos < proto.Length)
            {
                var (field, wire) = Key(proto, ref pos);
                if (field == 1 && wire == 2) m.Pieces.Add(ReadPiece(proto, Sub(proto, ref pos)));
                else if (field == 2 && wire == 2) ReadTrainer(proto, Sub(proto, ref pos), m);
                else if (field == 3 && wire == 2) ReadNormalizer(proto, Sub(proto, ref pos), m);
                else Skip(proto, ref pos, wire);
            }
        }
        catch (Exception e) when (e is FormatException or OverflowException or IndexOutOfRangeException or ArgumentException)
        {
            throw new ModelFormatException(path, $"malformed SentencePiece model: {e.Message}");
        }
        if (m.Pieces.Count == 0) throw new ModelFormatException(path, "SentencePiece model has no pieces");
        return m;
    }

    private static (int Field, int Wire) Key(byte[] b, ref int pos)
    {
        ulong key = ReadVarint(b, ref pos);
        return ((int)(key >> 3), (int)(key & 7));
    }

    /// <summary>The [start, end) of a length-delimited field, checked against the buffer; advances past it.</summary>
    private static (int Start, int End) Sub(byte[] b, ref int pos)
    {
        ulong len = ReadVarint(b, ref pos);
        if (len > (ulong)(b.Length - pos)) throw new FormatException($"a field of {len} bytes runs past the end ({b.Length - pos} left)");
        var r = (pos, pos + (int)len);
        pos += (int)len;
        return r;
    }

    private static PieceEntry ReadPiece(byte[] b, (int Start, int End) r)
    {
        string piece = ""; float score = 0; int type = 1;
        int pos = r.Start;
        while (pos < r.End)
        {
            var (f, w) = Key(b, ref pos);
            if (f == 1 && w == 2) { var s = Sub(b, ref pos); piece = Utf8(b, s); }
            else if (f == 2 && w == 5) { if (pos + 4 > r.End) throw new FormatException("score runs past its piece"); score = BitConverter.ToSingle(b, pos); pos += 4; }
            else if (f == 3 && w == 0) type = (int)ReadVarint(b, ref pos);
            else Skip(b, ref pos, w);
            if (pos > r.End) throw new FormatException("piece field runs past its message");
        }
        return new PieceEntry(piece, score, type);
    }

    private static void ReadTrainer(byte[] b, (int Start, int End) r, Model m)
    {
        int pos = r.Start;
        while (pos < r.End)
        {
            var (f, w) = Key(b, ref pos);
            if (w == 0 && f is 3 or 24 or 35 or 41 or 42)
            {
                long v = (long)ReadVarint(b, ref pos);
                switch (f)
                {
                    case 3: m.ModelType = (int)v; break;
                    case 24: m.TreatWhitespaceAsSuffix = v != 0; break;
                    case 35: m.ByteFallback = v != 0; break;
                    case 41: m.BosId = (int)v; break;
                    case 42: m.EosId = (int)v; break;
                }
            }
            else if (f == 44 && w == 2) m.UnkSurface = Utf8(b, Sub(b, ref pos));
            else Skip(b, ref pos, w);
            if (pos > r.End) throw new FormatException("trainer_spec field runs past its message");
        }
    }

    private static void ReadNormalizer(byte[] b, (int Start, int End) r, Model m)
    {
        int pos = r.Start;
        while (pos < r.End)
        {
            var (f, w) = Key(b, ref pos);
            if (f == 1 && w == 2) m.NormalizerName = Utf8(b, Sub(b, ref pos));
            else if (f == 2 && w == 2) { var s = Sub(b, ref pos); m.CharsMap = b[s.Start..s.End]; }
            else if (f == 3 && w == 0) m.AddDummyPrefix = ReadVarint(b, ref pos) != 0;
            else if (f == 4 && w == 0) m.RemoveExtraWhitespaces = ReadVarint(b, ref pos) != 0;
            else if (f == 5 && w == 0) m.EscapeWhitespaces = ReadVarint(b, ref pos) != 0;
            else Skip(b, ref pos, w);
            if (pos > r.End) throw new FormatException("normalizer_spec field runs past its message");
        }
    }

    private static string Utf8(byte[] b, (int Start, int End) r) =>
        new UTF8Encoding(false, true).GetString(b, r.Start, r.End - r.Start);

    private static ulong ReadVarint(byte[] b, ref int pos)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (pos >= b.Length) throw new FormatException("truncated varint");
            byte x = b[pos++];
            v |= (ulong)(x & 0x7F) << shift;
            if (x < 0x80) return v;
        }
        throw new FormatException("varint too long");
    }

    private static void Skip(byte[] b, ref int pos, int wire)
    {
        switch (wire)
        {
            case 0: ReadVarint(b, ref pos); break;
            case 1: pos += 8; break;
            case 2: Sub(b, ref pos); break;
            case 5: pos += 4; break;
            default: throw new FormatException($"unsupported wire type {wire}");
        }
        if (pos > b.Length) throw new FormatException("field runs past the end");
    }
}
