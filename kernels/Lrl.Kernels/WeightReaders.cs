using ILGPU;

namespace Lrl.Kernels;

/// <summary>
/// Reads one element of a weight held on the device in its stored dtype, converting to f32 in the kernel.
/// Kernels are generic over the reader (a struct), so ILGPU compiles one specialized kernel per dtype.
/// </summary>
public interface IWeightReader
{
    /// <summary>Element <paramref name="i"/> as float.</summary>
    float Get(long i);
}

/// <summary>f32 weights.</summary>
public struct F32Reader : IWeightReader
{
    public ArrayView<float> Data;
    public F32Reader(ArrayView<float> data) => Data = data;
    public readonly float Get(long i) => Data[i];
}

/// <summary>f16 weights stored as raw ushort bits.</summary>
public struct F16Reader : IWeightReader
{
    public ArrayView<ushort> Data;
    public F16Reader(ArrayView<ushort> data) => Data = data;
    public readonly float Get(long i) => KernelMath.HalfToFloat(Data[i]);
}

/// <summary>bf16 weights stored as raw ushort bits.</summary>
public struct BF16Reader : IWeightReader
{
    public ArrayView<ushort> Data;
    public BF16Reader(ArrayView<ushort> data) => Data = data;
    public readonly float Get(long i) => KernelMath.BF16ToFloat(Data[i]);
}
