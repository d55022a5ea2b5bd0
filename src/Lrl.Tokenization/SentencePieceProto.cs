using System.Text;

namespace Lrl.Tokenization;

/// <summary>
/// The few parts of SentencePiece's ModelProto (sentencepiece_model.proto) lrlrun reads and writes: the pieces with
/// their scores and types, the trainer spec's model type, byte fallback and special ids, and the normalizer flags.
/// Writing lets a tokenizer.json SentencePiece-style BPE run through Microsoft.ML.Tokenizers' SentencePiece encoder.
/// </summary>
internal static class SentencePieceProto
{
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Byte = 6;

    /// <summary>(piece, type) for every id, from a serialized ModelProto.</summary>
    public static List<(string Piece, int Type)> ReadPieces(byte[] proto, string path)
    {
        var list = new List<(string, int)>();
        int pos = 0;
        try
        {
            while (pos < proto.Length)
            {
                ulong key = ReadVarint(proto, ref pos);
                int field = (int)(key >> 3), wire = (int)(key & 7);
                if (field == 1 && wire == 2)
                {
                    int len = checked((int)ReadVarint(proto, ref pos));
                    int end = checked(pos + len);
                    if (end > proto.Length) throw new FormatException("piece runs past the end");
                    string piece = ""; int type = Normal;
                    while (pos < end)
                    {
                        ulong k = ReadVarint(proto, ref pos);
                        int f = (int)(k >> 3), w = (int)(k & 7);
                        if (f == 1 && w == 2) { int l = checked((int)ReadVarint(proto, ref pos)); if (pos + l > end) throw new FormatException("piece text runs past its message"); piece = Encoding.UTF8.GetString(proto, pos, l); pos += l; }
                        else if (f == 3 && w == 0) type = (int)ReadVarint(proto, ref pos);
                        else Skip(proto, ref pos, w);
                    }
                    list.Add((piece, type));
                }
                else Skip(proto, ref pos, wire);
            }
        }
        catch (Exception e) when (e is FormatException or OverflowException or IndexOutOfRangeException)
        {
            throw new ModelFormatException(path, $"malformed SentencePiece model: {e.Message}");
        }
        if (list.Count == 0) throw new ModelFormatException(path, "SentencePiece model has no pieces");
        return list;
    }

    public static byte[] Write(string[] pieces, float[] scores, int[] types, bool byteFallback, bool addDummyPrefix, int unkId, int bosId, int eosId)
    {
        var model = new MemoryStream();
        for (int i = 0; i < pieces.Length; i++)
        {
            var p = new MemoryStream();
            WriteString(p, 1, pieces[i]);
            WriteTag(p, 2, 5); p.Write(BitConverter.GetBytes(scores[i]));
            WriteTag(p, 3, 0); WriteVarint(p, (ulong)types[i]);
            WriteBytes(model, 1, p.ToArray());
        }
        var trainer = new MemoryStream();
        WriteTag(trainer, 3, 0); WriteVarint(trainer, 2);                    // model_type = BPE
        WriteTag(trainer, 35, 0); WriteVarint(trainer, byteFallback ? 1UL : 0);
        WriteTag(trainer, 40, 0); WriteVarint(trainer, (ulong)(long)unkId);
        WriteTag(trainer, 41, 0); WriteVarint(trainer, (ulong)(long)bosId);
        WriteTag(trainer, 42, 0); WriteVarint(trainer, (ulong)(long)eosId);
        WriteTag(trainer, 43, 0); WriteVarint(trainer, unchecked((ulong)(long)-1));
        WriteBytes(model, 2, trainer.ToArray());
        var norm = new MemoryStream();
        WriteString(norm, 1, "identity");
        WriteTag(norm, 3, 0); WriteVarint(norm, addDummyPrefix ? 1UL : 0);
        WriteTag(norm, 4, 0); WriteVarint(norm, 0);                           // remove_extra_whitespaces
        WriteTag(norm, 5, 0); WriteVarint(norm, 1);                           // escape_whitespaces
        WriteBytes(model, 3, norm.ToArray());
        return model.ToArray();
    }

    private static void WriteTag(Stream s, int field, int wire) => WriteVarint(s, (ulong)((field << 3) | wire));
    private static void WriteString(Stream s, int field, string v) => WriteBytes(s, field, Encoding.UTF8.GetBytes(v));
    private static void WriteBytes(Stream s, int field, byte[] v) { WriteTag(s, field, 2); WriteVarint(s, (ulong)v.Length); s.Write(v); }

    private static void WriteVarint(Stream s, ulong v)
    {
        while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; }
        s.WriteByte((byte)v);
    }

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
            case 2: { int len = checked((int)ReadVarint(b, ref pos)); pos = checked(pos + len); break; }
            case 5: pos += 4; break;
            default: throw new FormatException($"unsupported wire type {wire}");
        }
        if (pos > b.Length) throw new FormatException("field runs past the end");
    }
}
