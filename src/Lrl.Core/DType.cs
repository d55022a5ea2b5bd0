namespace Lrl;

/// <summary>Element types a checkpoint tensor can be stored in.</summary>
public enum DType { F32, F16, BF16, I8, U8, I32, I64 }

public static class DTypes
{
    /// <summary>Bytes per element.</summary>
    public static int Size(this DType t) => t switch
    {
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 => 2,
        DType.I8 or DType.U8 => 1,
        DType.I64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    /// <summary>The safetensors spelling ("F32", "BF16", ...).</summary>
    public static string SafeTensorsName(this DType t) => t.ToString();

    /// <summary>Parses a safetensors dtype name; null when unsupported.</summary>
    public static DType? TryParseSafeTensors(string name) => name switch
    {
        "F32" => DType.F32, "F16" => DType.F16, "BF16" => DType.BF16,
        "I8" => DType.I8, "U8" => DType.U8, "I32" => DType.I32, "I64" => DType.I64,
        _ => null,
    };

    public static bool IsFloat(this DType t) => t is DType.F32 or DType.F16 or DType.BF16;

    /// <summary>bf16 bits to float (exact).</summary>
    public static float BF16ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>float to bf16 bits, round to nearest even (NaN kept NaN).</summary>
    public static ushort FloatToBF16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7FFFFFFF) > 0x7F800000) return (ushort)((u >> 16) | 0x40);
        u += 0x7FFF + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }
}
