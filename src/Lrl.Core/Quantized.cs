namespace Lrl;

/// <summary>
/// A weight-only quantized matrix [Rows = out, Cols = in] in lrlrun's internal layout, as host memory
/// (zero-copy views into a memory-mapped checkpoint, or arrays converted at load that <see cref="Owner"/> keeps alive).
/// <para>Each row is split into contiguous groups of <see cref="GroupSize"/> columns (GroupSize divides Cols; it is a
/// multiple of 32 or equal to Cols); every group has a scale s (f16) and a zero point z, and an element is
/// w = (q − z)·s.</para>
/// <para>8-bit: codes are signed bytes (I8) [Rows, Cols] row-major, z = 0 (symmetric).</para>
/// <para>4-bit: codes are unsigned nibbles q ∈ 0..15, packed [Rows, Cols/2] bytes. Each row is cut into blocks of 64
/// columns (the last block may be shorter, of even length L); inside a block of length L, byte j holds column j in its
/// low nibble and column j + L/2 in its high nibble. z = 8 unless <see cref="Zeros"/> gives one per group.</para>
/// <para>When <see cref="ColumnOrder"/> is set (GPTQ act-order), stored column j is original input column ColumnOrder[j].</para>
/// </summary>
public sealed unsafe class QuantizedTensor
{
    /// <summary>The dense weight's name, e.g. "model.layers.0.mlp.up_proj.weight".</summary>
    public required string Name { get; init; }
    /// <summary>File the codes came from (for error messages).</summary>
    public required string Source { get; init; }
    /// <summary>4 or 8.</summary>
    public required int Bits { get; init; }
    public required int GroupSize { get; init; }
    public required int Rows { get; init; }
    public required int Cols { get; init; }
    /// <summary>Packed codes, <see cref="CodeBytes"/> long.</summary>
    public required byte* Codes { get; init; }
    /// <summary>Per-group scales [Rows, Groups], f16.</summary>
    public required Half* Scales { get; init; }
    /// <summary>Per-group zero points [Rows, Groups] (one byte each, 4-bit only), or null for the implicit zero (8 for 4-bit, 0 for 8-bit).</summary>
    public byte* Zeros { get; init; }
    /// <summary>Stored column j is input column ColumnOrder[j]; null when stored in input order.</summary>
    public int[]? ColumnOrder { get; init; }
    /// <summary>Keeps converted memory alive for as long as a weight built from this tensor is.</summary>
    public object? Owner { get; init; }

    public int Groups => Cols / GroupSize;
    public long CodeBytes => QuantLayout.CodeBytes(Bits, Rows, Cols);
    public long ScaleCount => (long)Rows * Groups;
    /// <summary>Implicit zero point when <see cref="Zeros"/> is null.</summary>
    public int DefaultZero => Bits == 4 ? 8 : 0;

    /// <summary>Bytes the products read: codes, f16 scales and (when present) zero points.</summary>
    public long ByteSize => CodeBytes + ScaleCount * 2 + (Zeros != null ? ScaleCount : 0);

    /// <summary>"Q8_G64", "Q4_G32", or "Q4_GC" for one group per row.</summary>
    public string Format => QuantLayout.FormatName(Bits, GroupSize, Cols, Zeros != null);

    /// <summary>Code (q − z) of element [row, col] in stored column order, as an integer (scalar, for references and tails).</summary>
    public int Code(int row, int col)
    {
        int q = Bits == 8
            ? ((sbyte*)Codes)[(long)row * Cols + col]
            : QuantLayout.Nibble(Codes + (long)row * (Cols / 2), Cols, col);
        int g = col / GroupSize;
        int z = Zeros != null ? Zeros[(long)row * Groups + g] : DefaultZero;
        return q - z;
    }

    public float Scale(int row, int group) => DTypes.F16ToFloat(Scales[(long)row * Groups + group]);

    /// <summary>Dequantizes row <paramref name="row"/> in input column order, in double (the scalar reference).</summary>
    public void DequantizeRow(int row, Span<double> destination)
    {
        for (int j = 0; j < Cols; j++)
        {
            double v = (double)Code(row, j) * Scale(row, j / GroupSize);
            destination[ColumnOrder != null ? ColumnOrder[j] : j] = v;
        }
    }

    /// <summary>Checks shapes and invariants; a violation is a <see cref="ModelFormatException"/> naming the file and tensor.</summary>
    public void Validate()
    {
        string where = $"tensor '{Name}'";
        if (Bits is not (4 or 8)) throw new ModelFormatException(Source, $"{where}: {Bits}-bit codes are not supported (4 or 8)");
        if (Rows <= 0 || Cols <= 0) throw new ModelFormatException(Source, $"{where}: bad shape [{Rows}, {Cols}]");
        if (GroupSize <= 0 || Cols % GroupSize != 0)
            throw new ModelFormatException(Source, $"{where}: group size {GroupSize} does not divide the row length {Cols}");
        if (GroupSize != Cols && GroupSize % 32 != 0)
            throw new ModelFormatException(Source, $"{where}: group size {GroupSize} must be a multiple of 32 or the whole row ({Cols})");
        if (Bits == 4 && Cols % 2 != 0)
            throw new ModelFormatException(Source, $"{where}: 4-bit rows need an even length, got {Cols}");
        if (Bits == 8 && Zeros != null)
            throw new ModelFormatException(Source, $"{where}: 8-bit codes are symmetric and take no zero points");
        if (Codes == null || Scales == null) throw new ModelFormatException(Source, $"{where}: missing codes or scales");
        if (ColumnOrder != null)
        {
            if (ColumnOrder.Length != Cols) throw new ModelFormatException(Source, $"{where}: column order has {ColumnOrder.Length} entries, expected {Cols}");
            var seen = new bool[Cols];
            foreach (var c in ColumnOrder)
            {
                if ((uint)c >= (uint)Cols || seen[c]) throw new ModelFormatException(Source, $"{where}: column order is not a permutation of 0..{Cols - 1}");
                seen[c] = true;
            }
        }
    }
}

/// <summary>A backend that can hold quantized weights natively (fused dequantization in its products).</summary>
public interface IQuantizedBackend
{
    Weight LoadQuantized(QuantizedTensor q);
}

/// <summary>Layout arithmetic shared by writers, loaders and kernels.</summary>
public static unsafe class QuantLayout
{
    /// <summary>Columns per 4-bit packing block.</summary>
    public const int Int4Block = 64;

    public static long CodeBytes(int bits, int rows, int cols) => bits == 8 ? (long)rows * cols : (long)rows * (cols / 2);

    public static string FormatName(int bits, int group, int cols, bool zeros = false) =>
        $"Q{bits}_G{(group == cols ? "C" : group.ToString())}{(zeros ? "Z" : "")}";

    /// <summary>Byte index and nibble (0 = low, 1 = high) holding column <paramref name="col"/> of a 4-bit row of <paramref name="cols"/> columns.</summary>
    public static (int Byte, int High) Int4Position(int cols, int col)
    {
        int b0 = col / Int4Block * Int4Block;
        int len = Math.Min(Int4Block, cols - b0);
        int j = col - b0, half = len / 2;
        return j < half ? (b0 / 2 + j, 0) : (b0 / 2 + j - half, 1);
    }

    /// <summary>Unsigned nibble for column <paramref name="col"/> of a packed 4-bit row.</summary>
    public static int Nibble(byte* row, int cols, int col)
    {
        var (b, hi) = Int4Position(cols, col);
        return hi == 0 ? row[b] & 15 : row[b] >> 4;
    }

    /// <summary>Packs unsigned nibbles (one per column, 0..15) of one row into <paramref name="destination"/> (cols/2 bytes).</summary>
    public static void PackInt4Row(ReadOnlySpan<byte> nibbles, Span<byte> destination)
    {
        int cols = nibbles.Length;
        destination[..(cols / 2)].Clear();
        for (int c = 0; c < cols; c++)
        {
            var (b, hi) = Int4Position(cols, c);
            destination[b] |= (byte)((nibbles[c] & 15) << (hi * 4));
        }
    }
}
