namespace Lrl.Cpu;

/// <summary>An f32 activation buffer in managed memory.</summary>
public sealed class CpuBuffer(long length) : DeviceBuffer(length)
{
    public float[] Data { get; } = new float[length];
}

/// <summary>A vector weight (norm scale, bias), converted to f32 once at load.</summary>
public sealed class CpuVector(string name, float[] data, DType stored) : Weight(name, 1, data.Length)
{
    public float[] Data { get; } = data;
    public override string Format => stored.ToString();
    public override long ByteSize => (long)Data.Length * stored.Size();
}
