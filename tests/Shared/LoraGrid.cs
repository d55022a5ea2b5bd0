namespace Lrl.Tests;

/// <summary>Test adapters on the values a backend holds exactly for a storage.</summary>
public static class LoraGrid
{
    /// <summary>Rounds A [rank, inF] and B [outF, rank] to what <paramref name="stored"/> holds exactly (bf16 values; the int8 grid of <see cref="LoraInt8"/>).</summary>
    public static void Round(float[] a, float[] b, int rank, int inF, int outF, DType stored)
    {
        if (stored == DType.BF16)
        {
            for (int i = 0; i < a.Length; i++) a[i] = DTypes.BF16ToFloat(DTypes.FloatToBF16(a[i]));
            for (int i = 0; i < b.Length; i++) b[i] = DTypes.BF16ToFloat(DTypes.FloatToBF16(b[i]));
        }
        else if (stored == DType.I8)
        {
            LoraInt8.RoundA(a, rank, inF);
            LoraInt8.RoundB(b, outF, rank);
        }
    }
}
