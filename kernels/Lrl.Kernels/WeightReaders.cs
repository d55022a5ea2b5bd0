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

    /// <summary>Elements 4q .. 4q+3 as floats (one 8-byte load for 16-bit dtypes).</summary>
    void Get4(long q, out float a, out float b, out float c, out float d);
}

/// <summary>f32 weights.</summary>
public struct F32Reader : IWeightReader
{
    public ArrayView<float> Data;
    public F32Reader(ArrayView<float> data) => Data = data;
    public readonly float Get(long i) => Data[i];
    public readonly void Get4(long q, out float a, out float b, out float c, out float d)
    {
        long i = q * 4;
        a = Data[i]; b = Data[i + 1]; c = Data[i + 2]; d = Data[i + 3];
    }
}

/// <summary>f16 weights stored as raw ushort bits.</summary>
public struct F16Reader : IWeightReader
{
    public ArrayView<ushort> Data;
    /// <summary>The same memory as 4-element groups (the buffer start is 8-byte aligned).</summary>
    public ArrayView<ulong> Quads;
    public F16Reader(ArrayView<ushort> data)
    {
        Data = data;
        Quads = data.Cast<ulong>();
    }
    public readonly void Get4(long q, out float a, out float b, out float c, out float d)
    {
        ulong v = Quads[q];
        a = KernelMath.HalfToFloat((ushort)v);
        b = KernelMath.HalfToFloat((ushort)(v >> 16));
        c = KernelMath.HalfToFloat((ushort)(v >> 32));
        d = KernelMath.HalfToFloat((ushort)(v >> 48));
    }
    public readonly float Get(long i) => KernelMath.HalfToFloat(Data[i]);
}

/// <summary>bf16 weights stored as raw ushort bits.</summary>
public struct BF16Reader : IWeightReader
{
    public ArrayView<ushort> Data;
    /// <summary>The same memory as 4-element groups (the buffer start is 8-byte aligned).</summary>
    public ArrayView<ulong> Quads;
    public BF16Reader(ArrayView<ushort> data)
    {
        Data = data;
        Quads = data.Cast<ulong>();
    }
    public readonly void Get4(long q, out float a, out float b, out float c, out float d)
    {
        ulong v = Quads[q];
        a = KernelMath.BF16ToFloat((ushort)v);
        b = KernelMath.BF16ToFloat((ushort)(v >> 16));
        c = KernelMath.BF16ToFloat((ushort)(v >> 32));
        d = KernelMath.BF16ToFloat((ushort)(v >> 48));
    }
    public readonly float Get(long i) => KernelMath.BF16ToFloat(Data[i]);
}
