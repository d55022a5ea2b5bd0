using ILGPU;

namespace Lrl.Kernels;

/// <summary>
/// Weight readers for lrlrun's quantized layout (see Lrl.QuantizedTensor): each element is dequantized on the fly,
/// w = (q − z)·s, so the generic GEMV, GEMM, fused SwiGLU GEMV and embedding kernels run on int8/int4 weights unchanged
/// (one specialization per reader). Codes stay packed in device memory: the products read codes + f16 scales only.
/// </summary>
public struct QuantShape
{
    /// <summary>Input features (row length) and group size; Groups = Cols / Group.</summary>
    public int Cols, Group, Groups;
    /// <summary>1 when per-group zero points are given (4-bit), else the implicit zero (8 for 4-bit).</summary>
    public int HasZeros;
    /// <summary>1 when columns are stored permuted (GPTQ act-order): stored index of input column c is StoredColumn[c].</summary>
    public int HasOrder;
}

/// <summary>8-bit signed codes [rows, cols] with f16 group scales.</summary>
public struct Q8Reader : IWeightReader
{
    public ArrayView<byte> Codes;
    public ArrayView<ushort> Scales;
    public ArrayView<int> StoredColumn;
    public QuantShape Shape;

    public Q8Reader(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<int> storedColumn, QuantShape shape)
    {
        Codes = codes; Scales = scales; StoredColumn = storedColumn; Shape = shape;
    }

    public readonly float Get(long i)
    {
        long row = i / Shape.Cols;
        int col = (int)(i - row * Shape.Cols);
        int j = Shape.HasOrder != 0 ? StoredColumn[col] : col;
        int q = (sbyte)Codes[row * Shape.Cols + j];
        return q * KernelMath.HalfToFloat(Scales[row * Shape.Groups + j / Shape.Group]);
    }
}

/// <summary>
/// 4-bit unsigned nibbles packed [rows, cols/2]: in each 64-column block (the last may be shorter, of even length L),
/// byte j holds column j (low nibble) and column j + L/2 (high nibble); f16 group scales; optional u8 zero points.
/// </summary>
public struct Q4Reader : IWeightReader
{
    public ArrayView<byte> Codes;
    public ArrayView<ushort> Scales;
    public ArrayView<byte> Zeros;
    public ArrayView<int> StoredColumn;
    public QuantShape Shape;

    public Q4Reader(ArrayView<byte> codes, ArrayView<ushort> scales, ArrayView<byte> zeros, ArrayView<int> storedColumn, QuantShape shape)
    {
        Codes = codes; Scales = scales; Zeros = zeros; StoredColumn = storedColumn; Shape = shape;
    }

    public readonly float Get(long i)
    {
        int cols = Shape.Cols;
        long row = i / cols;
        int col = (int)(i - row * cols);
        int j = Shape.HasOrder != 0 ? StoredColumn[col] : col;
        int b0 = j & ~63;
        int len = cols - b0 < 64 ? cols - b0 : 64;
        int jj = j - b0, half = len >> 1;
        int v = Codes[row * (cols >> 1) + (b0 >> 1) + (jj < half ? jj : jj - half)];
        int q = jj < half ? v & 15 : v >> 4;
        long g = row * Shape.Groups + j / Shape.Group;
        int z = Shape.HasZeros != 0 ? Zeros[g] : 8;
        return (q - z) * KernelMath.HalfToFloat(Scales[g]);
    }
}
