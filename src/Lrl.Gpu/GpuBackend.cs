using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace Lrl.Gpu;

/// <summary>
/// The GPU backend: every op is an ILGPU kernel (kernels/Lrl.Kernels) enqueued on one accelerator stream, with no host
/// synchronization until <see cref="Download"/> (one sync per token). Weights are uploaded once in their stored dtype.
/// Runs on CUDA (<see cref="CreateCuda"/>) or on ILGPU's CPU accelerator (<see cref="CreateCpuAccelerator"/>, for tests).
/// Partial: linear-attention ops live in GpuBackend.Linear.cs, quantized weights in GpuBackend.Quant.cs.
/// </summary>
public sealed partial class GpuBackend : IBackend
{
    private readonly Context _context;
    private readonly Accelerator _accelerator;
    private readonly AcceleratorStream _stream;
    private readonly int _group;   // threads per group for grouped kernels (power of two ≤ KernelMath.MaxGroup)
    private readonly int _warp;
    private bool _disposed;

    public string Name { get; }

    /// <summary>The accelerator's name (e.g. "NVIDIA H100 80GB HBM3" or "CPUAccelerator").</summary>
    public string DeviceName => _accelerator.Name;

    /// <summary>True on a CUDA device, false on the CPU accelerator.</summary>
    public bool IsCuda => _accelerator.AcceleratorType == AcceleratorType.Cuda;

    /// <summary>Device memory in bytes.</summary>
    public long MemorySize => _accelerator.MemorySize;

    internal Accelerator Accelerator => _accelerator;
    internal AcceleratorStream Stream => _stream;

    private GpuBackend(Context context, Accelerator accelerator, string name)
    {
        _context = context;
        _accelerator = accelerator;
        _stream = accelerator.DefaultStream;
        Name = name;
        _warp = accelerator.WarpSize;
        int g = Math.Min(Lrl.Kernels.KernelMath.MaxGroup, accelerator.MaxNumThreadsPerGroup);
        while ((g & (g - 1)) != 0) g &= g - 1; // power of two
        if (g < _warp) throw new LrlException($"accelerator {accelerator.Name}: group size {g} is below its warp size {_warp}");
        _group = g;
        _scalar = AllocateRaw<int>(4, "sampling result");
    }

    /// <summary>
    /// The ILGPU optimization level CUDA kernels are compiled at: O2, whose kernel address-space inference makes every
    /// load and store of a kernel's buffers a global one (<c>ld.global</c>, LDG in SASS) where O1 leaves them generic
    /// (LD.E: the address space resolved per access), and whose code placement trims registers (the largest kernel
    /// 120 -> 102 on sm_90). ILGPU's own CUDA tests run at O0, O1 and O2. <c>LRL_GPU_OPT=O1</c> compiles at O1 instead
    /// (to time the two on a device, or to step around a compiler fault); the CPU accelerator runs the IL either way.
    /// </summary>
    public static OptimizationLevel CudaOptimization => ParseOptimization(Environment.GetEnvironmentVariable("LRL_GPU_OPT"));

    /// <summary>An <c>LRL_GPU_OPT</c> value as a level: unset or O2, or O1; anything else is an error naming it.</summary>
    public static OptimizationLevel ParseOptimization(string? value) => value?.Trim().ToUpperInvariant() switch
    {
        null or "" or "O2" => OptimizationLevel.O2,
        "O1" => OptimizationLevel.O1,
        _ => throw new LrlException($"LRL_GPU_OPT={value}: expected O1 or O2"),
    };

    /// <summary>True when ILGPU finds at least one CUDA device (and driver).</summary>
    public static bool IsCudaAvailable()
    {
        try
        {
            using var context = Context.Create(b => b.Cuda());
            return context.GetCudaDevices().Count > 0;
        }
        catch (Exception)
        {
            return false;
        }
    }

    /// <summary>The first CUDA device. Throws <see cref="LrlException"/> when there is none.</summary>
    public static GpuBackend CreateCuda(int deviceIndex = 0)
    {
        Context? context = null;
        try
        {
            var level = CudaOptimization;
            context = Context.Create(b => b.Cuda().EnableAlgorithms().Optimize(level));
            var devices = context.GetCudaDevices();
            if (devices.Count == 0)
                throw new LrlException("no CUDA device found (ILGPU saw no NVIDIA GPU or driver); use --device cpu");
            if ((uint)deviceIndex >= (uint)devices.Count)
                throw new LrlException($"CUDA device {deviceIndex} does not exist ({devices.Count} found)");
            var acc = devices[deviceIndex].CreateAccelerator(context);
            return new GpuBackend(context, acc, "cuda");
        }
        catch (LrlException) { context?.Dispose(); throw; }
        catch (Exception e)
        {
            context?.Dispose();
            throw new LrlException($"no CUDA device found or it could not be opened: {e.Message}", e);
        }
    }

    /// <summary>ILGPU's CPU accelerator (simulated groups and warps): slow, for tests without a GPU.</summary>
    // Tiny groups (2 warps of 2 threads, one simulated multiprocessor): every simulated thread is an OS thread, and
    // each launch and barrier hands off between them, so the smallest shape that still has several warps is fastest.
    public static GpuBackend CreateCpuAccelerator() => CreateCpuAccelerator(2, 2, 1);

    /// <summary>ILGPU's CPU accelerator with a chosen simulated shape (warp size ≥ 2, warps per group, parallel groups).</summary>
    public static GpuBackend CreateCpuAccelerator(int warpSize, int warpsPerGroup, int multiprocessors, bool sequential = false)
    {
        var device = new CPUDevice(warpSize, warpsPerGroup, multiprocessors);
        var context = Context.Create(b => b.CPU(device).EnableAlgorithms());
        try
        {
            var acc = context.GetCPUDevice(0).CreateCPUAccelerator(context, sequential ? CPUAcceleratorMode.Sequential : CPUAcceleratorMode.Parallel);
            return new GpuBackend(context, acc, "gpu-cpu-sim");
        }
        catch { context.Dispose(); throw; }
    }

    // ---- memory ----

    internal MemoryBuffer1D<T, Stride1D.Dense> AllocateRaw<T>(long length, string what) where T : unmanaged
    {
        long bytes = Math.Max(1, length) * Marshal.SizeOf<T>();
        _allocations++;
        try
        {
            return _accelerator.Allocate1D<T>(Math.Max(1, length));
        }
        catch (Exception e) when (e is OutOfMemoryException or AcceleratorException or CudaException or InsufficientMemoryException)
        {
            throw new LrlException(
                $"GPU out of memory: {what} needed {bytes:N0} bytes on {_accelerator.Name} " +
                $"({_accelerator.MemorySize:N0} bytes in all): {e.Message}", e);
        }
    }

    public DeviceBuffer Allocate(long length)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "buffer length must be ≥ 0");
        return new GpuBuffer(AllocateRaw<float>(length, $"a buffer of {length} floats"), length);
    }

    private static GpuBuffer B(DeviceBuffer b) =>
        b as GpuBuffer ?? throw new ArgumentException($"buffer of type {b.GetType().Name} does not belong to the GPU backend");

    private static GpuWeight Wt(Weight w) =>
        w as GpuWeight ?? throw new ArgumentException($"weight {w.Name} ({w.GetType().Name}) was not loaded by the GPU backend");

    private static void CheckRange(DeviceBuffer b, long offset, long count, string what)
    {
        if (offset < 0 || count < 0 || offset + count > b.Length)
            throw new ArgumentOutOfRangeException(what, $"{what}: range {offset}..{offset + count} is outside a buffer of {b.Length}");
    }

    public void Upload(ReadOnlySpan<float> source, DeviceBuffer destination, long destinationOffset = 0)
    {
        CheckRange(destination, destinationOffset, source.Length, "upload");
        if (source.Length == 0) return;
        ToDevice(B(destination).View.SubView(destinationOffset, source.Length), source);
    }

    /// <summary>Waits for the queued work, then copies to the host (the one synchronization per token).</summary>
    public void Download(DeviceBuffer source, long sourceOffset, Span<float> destination)
    {
        CheckRange(source, sourceOffset, destination.Length, "download");
        if (destination.Length == 0) return;
        _downloadBytes += (long)destination.Length * sizeof(float);
        ToHost(B(source).View.SubView(sourceOffset, destination.Length), destination);
    }

    /// <summary>
    /// Host → device copy of a span, pinned for the copy: ILGPU's CopyFromCPU takes the address of a pinned buffer, and a
    /// managed array the collector moved mid-copy would be read from where it used to be. A copy from pageable memory
    /// has read its source when the call returns (CUDA stages it), so the pin may end there.
    /// </summary>
    private unsafe void ToDevice<T>(ArrayView<T> destination, ReadOnlySpan<T> source) where T : unmanaged
    {
        if (source.IsEmpty) return;
        fixed (T* p = source) destination.SubView(0, source.Length).CopyFromCPU(Upload_, ref *p, source.Length);
    }

    /// <summary>Device → host copy into a span, pinned for the copy (it waits for the stream, so the data is there on return).</summary>
    private unsafe void ToHost<T>(ArrayView<T> source, Span<T> destination) where T : unmanaged
    {
        if (destination.IsEmpty) return;
        fixed (T* p = destination) source.SubView(0, destination.Length).CopyToCPU(Download_, ref *p, destination.Length);
    }

    public void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count)
    {
        CheckRange(source, sourceOffset, count, "copy source");
        CheckRange(destination, destinationOffset, count, "copy destination");
        if (count == 0) return;
        B(source).View.SubView(sourceOffset, count).CopyTo(DeviceCopy_, B(destination).View.SubView(destinationOffset, count));
    }

    public unsafe Weight LoadWeight(HostTensor t)
    {
        if (t.Rank is < 1 or > 2)
            throw new ModelFormatException(t.Source, $"tensor '{t.Name}' has shape {t.ShapeString}; expected a vector or matrix");
        int rows = t.Rank == 2 ? t.Shape[0] : 1, cols = t.Shape[^1];
        long n = t.ElementCount;
        string format = t.DType.ToString();
        if (t.Rank == 1 || !t.DType.IsFloat())
        {
            if (t.Rank == 2 && !t.DType.IsFloat())
                throw new ModelFormatException(t.Source, $"tensor '{t.Name}' is {t.DType}; the GPU backend takes F32, F16 or BF16 matrices");
            var data = t.ToFloatArray();
            var buf = AllocateRaw<float>(n, $"weight {t.Name}");
            ToDevice(buf.View, data.AsSpan());
            return new GpuWeight(t.Name, rows, cols, DType.F32, format, buf, null);
        }
        if (t.ByteLength < n * t.DType.Size())
            throw new ModelFormatException(t.Source, $"tensor '{t.Name}' holds {t.ByteLength} bytes, fewer than its shape {t.ShapeString} needs");
        if (t.DType == DType.F32)
        {
            var buf = AllocateRaw<float>(n, $"weight {t.Name}");
            buf.View.CopyFromCPU(Upload_, ref *(float*)t.Pointer, n);
            return new GpuWeight(t.Name, rows, cols, DType.F32, format, buf, null);
        }
        var hb = AllocateRaw<ushort>(n, $"weight {t.Name}");
        hb.View.CopyFromCPU(Upload_, ref *(ushort*)t.Pointer, n);
        return new GpuWeight(t.Name, rows, cols, t.DType, format, null, hb);
    }

    /// <summary>Waits for all queued work.</summary>
    public void Synchronize() => Sync();

    // Work queued per kind, counted where it is queued: each kernel launch reads Launch_ once, each copy its kind.
    private long _launches, _uploads, _downloads, _deviceCopies, _syncs, _allocations, _downloadBytes;
    private AcceleratorStream Launch_ { get { _launches++; return _stream; } }
    private AcceleratorStream Upload_ { get { _uploads++; return _stream; } }
    private AcceleratorStream Download_ { get { _downloads++; return _stream; } }   // a copy to the host waits for the stream
    private AcceleratorStream DeviceCopy_ { get { _deviceCopies++; return _stream; } }
    private void Sync() { _syncs++; _stream.Synchronize(); }

    /// <summary>
    /// What the backend has queued so far: kernel launches, host→device uploads, device→host downloads (each waits for
    /// the stream: a host synchronization), device-to-device copies, explicit synchronizations and device allocations.
    /// Per-token budgets are differences of two readings.
    /// </summary>
    public GpuCounters Counters => new(_launches, _uploads, _downloads, _deviceCopies, _syncs, _allocations, _downloadBytes);

    /// <summary>Binds the accelerator (its CUDA context) to the calling thread unless it already is.</summary>
    public void Enter()
    {
        if (!ReferenceEquals(Accelerator.Current, _accelerator)) _accelerator.Bind();
    }

    /// <summary>Whether the calling thread has this backend's accelerator bound (see <see cref="Enter"/>).</summary>
    public bool IsBoundToCurrentThread => ReferenceEquals(Accelerator.Current, _accelerator);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        DisposeScratch();
        _accelerator.Dispose();
        _context.Dispose();
    }
}
