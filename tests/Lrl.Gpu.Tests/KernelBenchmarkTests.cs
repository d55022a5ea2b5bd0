using Lrl.Cpu;

namespace Lrl.Gpu.Tests;

/// <summary>The kernel benchmark verifies every op and reports; quick mode keeps it short.</summary>
[Collection("gpu")]
public class KernelBenchmarkTests
{
    [Fact]
    public void QuickRunOnCpuAcceleratorPassesAndPrintsEveryOp()
    {
        var g = Backends.Get("cpu-accelerator");
        var text = new StringWriter();
        int rc = KernelBenchmark.Run(g, json: false, text, reps: 2, quick: true);
        string s = text.ToString();
        Assert.True(rc == 0, s);
        foreach (var op in new[] { "embed", "rmsnorm", "add_rmsnorm", "rope", "gemv", "gemm", "attention_decode", "attention_prefill", "swiglu", "add" })
            Assert.Contains(op, s);
        Assert.Contains("BF16", s);
        Assert.Contains("Q4", s); Assert.Contains("Q8", s); // per-channel int4/int8 GEMV and GEMM
        Assert.DoesNotContain("FAIL", s);
    }

    [Fact]
    public void QuickRunOnCpuBackendEmitsJsonArray()
    {
        using var cpu = new CpuBackend(2);
        var text = new StringWriter();
        int rc = KernelBenchmark.Run(cpu, json: true, text, reps: 3, quick: true);
        Assert.Equal(0, rc);
        using var doc = System.Text.Json.JsonDocument.Parse(text.ToString());
        Assert.Equal(System.Text.Json.JsonValueKind.Array, doc.RootElement.ValueKind);
        var first = doc.RootElement[0];
        Assert.True(first.GetProperty("pass").GetBoolean());
        Assert.True(first.GetProperty("microseconds").GetDouble() > 0);
        Assert.Equal(18, doc.RootElement.GetArrayLength());
        // The quantized products pass their check too (int8 activations on the CPU: within 2 % of the f32 product).
        Assert.All(doc.RootElement.EnumerateArray(), e => Assert.True(e.GetProperty("pass").GetBoolean(), e.ToString()));
    }
}
