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

/// <summary>
/// Copies between managed arrays and the device while the GC compacts: ILGPU's CopyFromCPU/CopyToCPU take the base
/// address of a pinned buffer, so an unpinned array moved mid-copy read stale memory (a download left zeros).
/// </summary>
[Collection("gpu")]
public class CopyPinningTests
{
    [Fact]
    public void UploadsAndDownloadsSurviveACompactingCollector()
    {
        var g = Backends.Get("cpu-accelerator");
        using var stop = new CancellationTokenSource();
        var churn = new Thread(() =>
        {
            var keep = new List<byte[]>();
            while (!stop.IsCancellationRequested)
            {
                for (int i = 0; i < 64; i++) keep.Add(new byte[1024]);   // fragments gen0 so compaction moves arrays
                if (keep.Count > 4096) keep.RemoveRange(0, 2048);
                GC.Collect(0, GCCollectionMode.Forced, blocking: true, compacting: true);
            }
        }) { IsBackground = true };
        churn.Start();
        try
        {
            const int n = 16_000;   // below the large-object threshold: these arrays live in gen0 and move
            using var buf = g.Allocate(n);
            int bad = 0;
            for (int it = 0; it < 1000 && bad == 0; it++)
            {
                var src = new float[n];
                for (int i = 0; i < n; i++) src[i] = it + i;
                g.Upload(src, buf);
                var back = new float[n];
                g.Download(buf, 0, back);
                for (int i = 0; i < n; i++) if (back[i] != it + i) { bad = it + 1; break; }
            }
            Assert.True(bad == 0, $"round trip {bad - 1} came back different");
        }
        finally { stop.Cancel(); churn.Join(); }
    }
}
