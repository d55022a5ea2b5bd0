using System.Runtime.InteropServices;

namespace Lrl.Gpu.Tests;

/// <summary>Backends under test: the CPU accelerator always, CUDA when present (skipped otherwise).</summary>
public static class Backends
{
    private static readonly Lazy<GpuBackend> Cpu = new(GpuBackend.CreateCpuAccelerator);
    // Wider simulated groups (8 warps of 4) take the kernels' many-threads-per-head paths that CUDA's 256-thread groups use.
    private static readonly Lazy<GpuBackend> CpuWide = new(() => GpuBackend.CreateCpuAccelerator(4, 8, 1));
    // NVIDIA-like: warps of 32 and 8 warps per group, the shape the CUDA launches use, so warp-size and group-size
    // assumptions are exercised without a GPU.
    private static readonly Lazy<GpuBackend> CpuNvidia = new(() => GpuBackend.CreateCpuAccelerator(32, 8, 1));
    private static readonly Lazy<GpuBackend?> Cuda = new(() => GpuBackend.IsCudaAvailable() ? GpuBackend.CreateCuda() : null);
    private static readonly object Gate = new();

    public static TheoryData<string> Kinds => new() { "cpu-accelerator", "cpu-accelerator-nvidia", "cuda" };

    /// <summary>Kinds for kernel-level tests: also the CPU accelerator with wide groups.</summary>
    public static string[] KernelKinds => ["cpu-accelerator", "cpu-accelerator-wide", "cpu-accelerator-nvidia", "cuda"];

    /// <summary>The shared backend of that kind (kernels compile once per process). Skips when CUDA is absent.</summary>
    public static GpuBackend Get(string kind)
    {
        if (kind == "cuda")
            return Cuda.Value ?? throw Skip("no CUDA device");
        return kind switch { "cpu-accelerator-wide" => CpuWide.Value, "cpu-accelerator-nvidia" => CpuNvidia.Value, _ => Cpu.Value };
    }

    /// <summary>Tests share one backend; ops on it run one test at a time.</summary>
    public static object Lock => Gate;

    private static Exception Skip(string why)
    {
        Assert.Skip(why);
        return new InvalidOperationException();
    }
}

/// <summary>Uploads, poisoning and error measures.</summary>
public static class Check
{
    public static DeviceBuffer Buffer(IBackend b, float[] data)
    {
        var buf = b.Allocate(data.Length);
        b.Upload(data, buf);
        return buf;
    }

    /// <summary>A buffer filled with NaN, so any element a kernel fails to write shows up.</summary>
    public static DeviceBuffer Poisoned(IBackend b, long n)
    {
        var buf = b.Allocate(n);
        var nan = new float[n];
        Array.Fill(nan, float.NaN);
        b.Upload(nan, buf);
        return buf;
    }

    public static float[] Read(IBackend b, DeviceBuffer buf, long n)
    {
        var r = new float[n];
        b.Download(buf, 0, r);
        return r;
    }

    public static double RelativeL2(float[] actual, float[] expected)
    {
        Assert.Equal(expected.Length, actual.Length);
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.False(float.IsNaN(actual[i]), $"element {i} is NaN (not written?)");
            double d = (double)actual[i] - expected[i];
            num += d * d;
            den += (double)expected[i] * expected[i];
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }

    public static void Close(float[] actual, float[] expected, double tol, string what)
    {
        double err = RelativeL2(actual, expected);
        Assert.True(err <= tol, $"{what}: relative L2 error {err:E2} > {tol:E0}");
    }
}
