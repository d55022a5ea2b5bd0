namespace Lrl.Gpu.Tests;

/// <summary>Factories, errors and device memory handling.</summary>
[Collection("gpu")]
public class BackendTests
{
    [Fact]
    public void CreateCudaThrowsLrlExceptionWithoutDevice()
    {
        if (GpuBackend.IsCudaAvailable()) Assert.Skip("a CUDA device is present");
        var e = Assert.Throws<LrlException>(() => GpuBackend.CreateCuda());
        Assert.Contains("no CUDA device", e.Message);
    }

    [Fact]
    public void CudaBackendReportsDevice()
    {
        var g = Backends.Get("cuda");
        Assert.True(g.IsCuda);
        Assert.Equal("cuda", g.Name);
        Assert.True(g.MemorySize > 0);
    }

    [Fact]
    public void OutOfMemoryNamesTheBytesNeeded()
    {
        var g = Backends.Get("cpu-accelerator");
        long n = 1L << 55; // 128 PiB of floats
        var e = Assert.Throws<LrlException>(() => g.Allocate(n));
        Assert.Contains("out of memory", e.Message);
        Assert.Contains((n * 4).ToString("N0"), e.Message);
    }

    [Fact]
    public void WeightsKeepStoredDTypeOnDevice()
    {
        var g = Backends.Get("cpu-accelerator");
        using var arena = new RandomTensors(3);
        using var f16 = g.LoadWeight(arena.Matrix("a", DType.F16, 4, 6));
        using var bf16 = g.LoadWeight(arena.Matrix("b", DType.BF16, 4, 6));
        using var f32 = g.LoadWeight(arena.Matrix("c", DType.F32, 4, 6));
        Assert.Equal(("F16", 48L), (f16.Format, f16.ByteSize));
        Assert.Equal(("BF16", 48L), (bf16.Format, bf16.ByteSize));
        Assert.Equal(("F32", 96L), (f32.Format, f32.ByteSize));
    }
}
