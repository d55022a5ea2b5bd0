using ILGPU.Runtime.Cuda;

namespace Lrl.Gpu.Tests;

/// <summary>
/// The CUDA path without a GPU: every kernel entry point compiles to PTX for sm_80 and sm_90, and, where NVIDIA's
/// ptxas is available (bench/fetch-ptxas.sh caches it; .ci/run fetches it), assembles without errors or register spills.
/// </summary>
public class PtxTests
{
    [Fact]
    public void EntryPointsCoverEveryKernelFamilyAndReader()
    {
        var names = PtxCheck.EntryPoints().Select(k => k.Name).ToHashSet();
        foreach (var expected in new[] { "GemvKernels.Gemv<BF16Reader>", "GemvKernels.Gemv<Q4Reader>", "GemmKernels.Gemm<F16Reader>",
                                         "NormKernels.RmsNorm", "AttentionKernels.SplitK", "LoraKernels.Down<LoraF32>", "LoraKernels.Up<LoraQ8>", "LoraKernels.Fused<LoraBF16>",
                                         "SamplingKernels.Sample", "QuantGemvKernels.GemvQ4", "LinearAttentionKernels.Wkv7" })
            Assert.Contains(expected, names);
        Assert.True(names.Count >= 50, $"only {names.Count} entry points");
    }

    [Theory]
    [InlineData(8, "sm_80")]
    [InlineData(9, "sm_90")]
    public void EveryKernelCompilesToPtx(int major, string target)
    {
        int n = 0;
        // At the backend's default level (what a CUDA run compiles unless LRL_GPU_OPT says otherwise), whatever this
        // process's environment holds.
        foreach (var (k, ptx) in PtxCheck.Compile(new CudaArchitecture(major, 0), level: GpuBackend.ParseOptimization(null)))
        {
            // ILGPU targets the lowest architecture its capabilities need (as it does on a real device: sm_80 PTX on an
            // H100, compiled for sm_90 by the driver or ptxas), never one above the requested.
            var m = System.Text.RegularExpressions.Regex.Match(ptx, @"\.target sm_(\d+)");
            Assert.True(m.Success && int.Parse(m.Groups[1].Value) <= int.Parse(target[3..]), $"{k.Name}: {m.Value} for {target}");
            Assert.Contains(".entry", ptx);
            // int8 codes are signed: an unsigned integer-to-float conversion in an int8 kernel is a lost sign (ILGPU 1.5.3
            // compiles (sbyte)(byte)v as an unsigned byte; the CPU accelerator runs the IL and never shows it).
            if (k.Name.Contains("Q8", StringComparison.Ordinal))
                Assert.False(System.Text.RegularExpressions.Regex.IsMatch(ptx, @"cvt\.rn\.f32\.u\d+"), $"{k.Name}: an unsigned int-to-float conversion of int8 codes");
            // Buffers are global memory: a generic load or store (LD.E/ST.E, the address space resolved per access) means
            // the compile lost the kernel address-space inference (ILGPU O2, GpuBackend.CudaOptimization).
            var generic = System.Text.RegularExpressions.Regex.Match(ptx, @"(?m)^\s*(ld|st|atom|red)\.(v\d\.)?[bfsu]\d+\s.*$");
            Assert.False(generic.Success, $"{k.Name}: a generic memory access: {generic.Value.Trim()}");
            // The prefill attention's inner products read shared memory 16 bytes at a time (scalar, the score loop took 10
            // SASS instructions per FMA, two of them shared loads).
            if (k.Name is "AttentionKernels.Prefill" or "AttentionKernels.TreePrefill")
                Assert.True(System.Text.RegularExpressions.Regex.Matches(ptx, @"ld\.shared\.v4\.f32").Count >= 3, $"{k.Name}: no 16-byte shared loads");
            n++;
        }
        Assert.Equal(PtxCheck.EntryPoints().Count, n);
    }

    [Fact]
    public void OptimizationLevelIsO2UnlessAskedForO1()
    {
        Assert.Equal(ILGPU.OptimizationLevel.O2, GpuBackend.ParseOptimization(null));
        Assert.Equal(ILGPU.OptimizationLevel.O2, GpuBackend.ParseOptimization("o2"));
        Assert.Equal(ILGPU.OptimizationLevel.O1, GpuBackend.ParseOptimization(" O1 "));
        var e = Assert.Throws<Lrl.LrlException>(() => GpuBackend.ParseOptimization("O3"));
        Assert.Contains("LRL_GPU_OPT=O3", e.Message);
    }

    [Fact]
    public void GenericLoadsComeBackAtO1()
    {
        // The generic-access check in EveryKernelCompilesToPtx is not vacuous: O1 leaves the buffers generic.
        var (k, ptx) = PtxCheck.Compile(CudaArchitecture.SM_90, level: ILGPU.OptimizationLevel.O1).First(p => p.Kernel.Name == "ActivationKernels.Add");
        Assert.Matches(@"(?m)^\s*ld\.f32\s", ptx);
    }

    [Fact]
    public void EveryKernelAssemblesWithPtxasWithoutSpills()
    {
        var ptxas = PtxCheck.FindPtxas();
        if (ptxas is null) Assert.Skip("ptxas not found: run bench/fetch-ptxas.sh or set LRL_PTXAS");
        var bad = new List<string>();
        foreach (var (arch, name) in new[] { (CudaArchitecture.SM_80, "sm_80"), (CudaArchitecture.SM_90, "sm_90") })
            foreach (var (k, ptx) in PtxCheck.Compile(arch))
            {
                var r = PtxCheck.Assemble(ptxas!, k.Name, ptx, name);
                if (r.Error is not null || r.SpillStoreBytes + r.SpillLoadBytes > 0 || r.Registers == 0)
                    bad.Add($"{k.Name} {name}: {r.Error ?? $"{r.Registers} registers, spills {r.SpillStoreBytes}/{r.SpillLoadBytes} bytes"}");
            }
        Assert.True(bad.Count == 0, string.Join("\n", bad));
    }
}
