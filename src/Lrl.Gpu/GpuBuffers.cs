using ILGPU;
using ILGPU.Runtime;

namespace Lrl.Gpu;

/// <summary>An f32 activation buffer in device memory.</summary>
public sealed class GpuBuffer : DeviceBuffer
{
    internal MemoryBuffer1D<float, Stride1D.Dense> Memory { get; }
    internal ArrayView<float> View { get; }

    internal GpuBuffer(MemoryBuffer1D<float, Stride1D.Dense> memory, long length) : base(length)
    {
        Memory = memory;
        View = memory.View.SubView(0, length);
    }

    public override void Dispose() => Memory.Dispose();
}

/// <summary>
/// A weight in device memory in its stored dtype: f32 as float, f16/bf16 as raw ushort bits (converted in the kernels).
/// Vectors (norm weights, biases) are held as f32.
/// </summary>
public sealed class GpuWeight : Weight
{
    internal DType StoredType { get; }
    internal MemoryBuffer1D<float, Stride1D.Dense>? F32 { get; }
    internal MemoryBuffer1D<ushort, Stride1D.Dense>? U16 { get; }
    private readonly string _format;

    internal GpuWeight(string name, int rows, int cols, DType stored, string format,
                       MemoryBuffer1D<float, Stride1D.Dense>? f32, MemoryBuffer1D<ushort, Stride1D.Dense>? u16)
        : base(name, rows, cols)
    {
        StoredType = stored; _format = format; F32 = f32; U16 = u16;
    }

    /// <summary>Packed codes and scales of a quantized weight (GpuBackend.Quant.cs), else null.</summary>
    internal GpuQuantData? Quant { get; init; }

    public override string Format => _format;
    public override long ByteSize => Quant?.ByteSize ?? (F32 is not null ? F32.Length * 4L : U16!.Length * 2L);

    /// <summary>The f32 view (vectors, f32 matrices).</summary>
    internal ArrayView<float> FloatView => F32?.View ?? throw new InvalidOperationException($"{Name} is not held as f32");

    public override void Dispose()
    {
        F32?.Dispose();
        U16?.Dispose();
        Quant?.Dispose();
    }
}

/// <summary>Counts of work a <see cref="GpuBackend"/> queued (see <see cref="GpuBackend.Counters"/>).</summary>
public readonly record struct GpuCounters(long Launches, long Uploads, long Downloads, long DeviceCopies, long Syncs, long Allocations, long DownloadBytes = 0)
{
    public static GpuCounters operator -(GpuCounters a, GpuCounters b) =>
        new(a.Launches - b.Launches, a.Uploads - b.Uploads, a.Downloads - b.Downloads, a.DeviceCopies - b.DeviceCopies, a.Syncs - b.Syncs,
            a.Allocations - b.Allocations, a.DownloadBytes - b.DownloadBytes);

    /// <summary>Host synchronizations: explicit ones and downloads (a copy to the host waits for the stream).</summary>
    public long HostWaits => Syncs + Downloads;

    public override string ToString() =>
        $"{Launches} launches, {Uploads} uploads, {Downloads} downloads ({DownloadBytes} bytes), {DeviceCopies} device copies, {Syncs} syncs, {Allocations} allocations";
}
