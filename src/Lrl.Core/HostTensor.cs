namespace Lrl;

/// <summary>
/// A tensor's bytes in host memory, usually a zero-copy view into a memory-mapped checkpoint file.
/// The memory stays valid while the owner (the file or model it came from) is alive.
/// </summary>
public readonly unsafe struct HostTensor
{
    public string Name { get; }
    public DType DType { get; }
    public int[] Shape { get; }
    /// <summary>File the bytes came from (for error messages).</summary>
    public string Source { get; }
    public byte* Pointer { get; }
    public long ByteLength { get; }

    public HostTensor(string name, DType dtype, int[] shape, byte* pointer, long byteLength, string source)
    {
        Name = name; DType = dtype; Shape = shape; Pointer = pointer; ByteLength = byteLength; Source = source;
    }

    public long ElementCount
    {
        get { long n = 1; foreach (var d in Shape) n *= d; return n; }
    }

    public int Rank => Shape.Length;

    public ReadOnlySpan<byte> Bytes => new(Pointer, checked((int)ByteLength));

    public ReadOnlySpan<T> As<T>() where T : unmanaged => new(Pointer, checked((int)(ByteLength / sizeof(T))));

    /// <summary>Element i converted to float (for F32/F16/BF16/I8/U8/I32/I64).</summary>
    public float GetFloat(long i) => DType switch
    {
        DType.F32 => ((float*)Pointer)[i],
        DType.F16 => DTypes.F16ToFloat(((ushort*)Pointer)[i]),
        DType.BF16 => DTypes.BF16ToFloat(((ushort*)Pointer)[i]),
        DType.I8 => ((sbyte*)Pointer)[i],
        DType.U8 => Pointer[i],
        DType.I32 => ((int*)Pointer)[i],
        DType.I64 => ((long*)Pointer)[i],
        _ => throw new InvalidOperationException(),
    };

    /// <summary>Copies all elements to a new float array.</summary>
    public float[] ToFloatArray()
    {
        var r = new float[ElementCount];
        for (long i = 0; i < r.LongLength; i++) r[i] = GetFloat(i);
        return r;
    }

    public string ShapeString => "[" + string.Join(", ", Shape) + "]";

    public override string ToString() => $"{Name} {DType} {ShapeString}";
}
