namespace Lrl.Tokenization;

/// <summary>GPT-2's reversible byte ↔ printable-character map (bytes_to_unicode) used by byte-level BPE vocabularies.</summary>
public static class ByteLevelAlphabet
{
    private static readonly char[] ByteToChar = new char[256];
    private static readonly Dictionary<char, byte> CharToByte = new();

    static ByteLevelAlphabet()
    {
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            ByteToChar[b] = printable ? (char)b : (char)(256 + n++);
            CharToByte[ByteToChar[b]] = (byte)b;
        }
    }

    public static char Encode(byte b) => ByteToChar[b];

    /// <summary>The bytes of a token written in the byte-level alphabet, or null when a character is outside it.</summary>
    public static byte[]? TryDecode(string token)
    {
        var result = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            if (!CharToByte.TryGetValue(token[i], out byte b)) return null;
            result[i] = b;
        }
        return result;
    }

    /// <summary>The bytes a vocabulary entry stands for; characters outside the alphabet are taken as UTF-8.</summary>
    public static byte[] Decode(string token)
    {
        var result = new List<byte>(token.Length);
        foreach (var ch in token)
        {
            if (CharToByte.TryGetValue(ch, out byte b)) result.Add(b);
            else result.AddRange(System.Text.Encoding.UTF8.GetBytes(ch.ToString()));
        }
        return result.ToArray();
    }
}
