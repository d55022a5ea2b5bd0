using Lrl.Cpu;
using Lrl.Models;

namespace Lrl.Quant.Tests;

[CollectionDefinition("serial", DisableParallelization = true)]
public sealed class SerialCollection;

/// <summary>Runs alone: it measures the process's allocations while decoding with quantized weights.</summary>
[Collection("serial")]
public class DecodeAllocationTests
{
    [Theory]
    [InlineData("q8")]
    [InlineData("q4z")]
    [InlineData("gptq-act-order")]
    public void DecodingATokenAllocatesNothing(string kind)
    {
        string src = SharedData.Model("stories260k");
        string root = CheckpointWriters.TempDir("alloc"), dir = Path.Combine(root, "m"), dense = "";
        try
        {
            switch (kind)
            {
                case "q8": Quantizer.QuantizeModel(src, dir, 8, "auto", null); break;
                case "q4z": Quantizer.QuantizeModel(src, dir, new QuantizeOptions { Bits = 4, Group = "32", Asymmetric = true }); break;
                default: (dir, dense) = CheckpointWriters.Write(src, "gptq", 32, actOrder: true); break;
            }
            // One thread: every op runs here, so this thread's allocation counter sees them all (per-thread scratch is
            // created once per thread and size, which with several threads can happen after any fixed warm-up).
            using var backend = new CpuBackend(1);
            using var model = ModelRegistry.Load(dir, backend);
            var (allocated, windows) = Allocations.GreedyDecode(model, [1, 403, 407, 261, 378]);
            Assert.True(allocated == 0, $"{kind}: 50 decode steps allocated {windows} bytes (per window)");
        }
        finally
        {
            Directory.Delete(root, true);
            if (kind.StartsWith("gptq")) { Directory.Delete(dir, true); Directory.Delete(dense, true); }
        }
    }
}

/// <summary>--no-mmap with quantized weights: codes, scales and zeros copied give exactly the in-place logits.</summary>
public class CopiedQuantizedWeightsTests
{
    [Fact]
    public void CopiedQuantizedWeightsGiveIdenticalLogits()
    {
        string src = SharedData.Model("stories260k");
        string root = CheckpointWriters.TempDir("copy"), dir = Path.Combine(root, "m");
        try
        {
            Quantizer.QuantizeModel(src, dir, new QuantizeOptions { Bits = 4, Group = "32", Asymmetric = true });
            using var mapped = new CpuBackend(2);
            using var copied = new CpuBackend(2, copyWeights: true);
            using var a = ModelRegistry.Load(dir, mapped);
            using var b = ModelRegistry.Load(dir, copied);
            int[] tokens = [1, 403, 407, 261, 378];
            var la = new float[a.VocabSize];
            var lb = new float[b.VocabSize];
            a.Forward(tokens, 0, la);
            b.Forward(tokens, 0, lb);
            Assert.Equal(la, lb);
            a.Forward([432], 5, la);
            b.Forward([432], 5, lb);
            Assert.Equal(la, lb);
        }
        finally { Directory.Delete(root, true); }
    }
}
