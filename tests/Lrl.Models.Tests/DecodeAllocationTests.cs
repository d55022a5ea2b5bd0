using Lrl.Cpu;

namespace Lrl.Models.Tests;

[CollectionDefinition("serial", DisableParallelization = true)]
public sealed class SerialCollection;

/// <summary>Runs alone: it measures the process's allocations.</summary>
[Collection("serial")]
public class DecodeAllocationTests
{
    [Fact]
    public void DecodingATokenAllocatesNothing()
    {
        // One thread, so that every op runs on this thread and its allocation counter sees all of them
        // (the worker threads run the same job code).
        var dir = SharedData.Model("stories260k");
        using var backend = new CpuBackend(1);
        using var model = ModelRegistry.Load(dir, backend);
        var (allocated, windows) = Allocations.GreedyDecode(model, [1, 403, 407, 261, 378]);
        Assert.True(allocated == 0, $"50 decode steps allocated {windows} bytes (per window)");
    }

    /// <summary>
    /// The path generation takes for greedy decoding (ForwardArgmax: the backend's argmax where the logits are) allocates
    /// nothing either: the CPU reads its logits in place (the interface's default copied a vocabulary of floats out per
    /// token: 196 KB a token on SmolLM2-135M, 35 MB of resident heap over 128 tokens).
    /// </summary>
    [Fact]
    public void GreedyDecodingOnTheDevicePathAllocatesNothing()
    {
        var dir = SharedData.Model("stories260k");
        using var backend = new CpuBackend(1);
        using var model = ModelRegistry.Load(dir, backend);
        var m = (ModelBase)model;
        using var state = model.CreateState();
        int token = m.ForwardArgmax(state, [1, 403, 407, 261], 0), pos = 4;
        var one = new int[1];
        void Step() { one[0] = token; token = m.ForwardArgmax(state, one, pos++); }
        for (int i = 0; i < 20; i++) Step();
        var (allocated, windows) = Allocations.PerWindow(Step, steps: 40);
        Assert.True(allocated == 0, $"40 greedy steps allocated {windows} bytes (per window)");
    }

    [Fact]
    public void PositionsPastTheContextWindowAreAClearError()
    {
        var dir = SharedData.Model("stories260k");
        using var backend = new CpuBackend(1);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 16 });
        var logits = new float[model.VocabSize];
        var e = Assert.Throws<LrlException>(() => model.Forward(new int[17], 0, logits));
        Assert.Contains("context window of 16", e.Message);
        model.Forward(new int[16], 0, logits);
        Assert.Throws<LrlException>(() => model.Forward([5], 16, logits));
    }

    [Fact]
    public void UnknownArchitectureListsTheSupportedOnes()
    {
        var dir = Directory.CreateTempSubdirectory("lrl-arch").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), """{"architectures": ["FalconForCausalLM"]}""");
            using var backend = new CpuBackend(1);
            var e = Assert.Throws<ModelFormatException>(() => ModelRegistry.Load(dir, backend));
            Assert.Contains("FalconForCausalLM", e.Message);
            Assert.Contains("LlamaForCausalLM", e.Message);
            Assert.Contains("Qwen2ForCausalLM", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }
}

/// <summary>--no-mmap: weights copied into the backend's own memory give exactly the logits of reading them in place.</summary>
public class CopiedWeightsTests
{
    [Theory]
    [InlineData("stories260k")]
    [InlineData("stories260k-bf16-sharded")]
    public void CopiedWeightsGiveIdenticalLogits(string name)
    {
        var dir = SharedData.Model(name);
        using var mapped = new CpuBackend(2);
        using var copied = new CpuBackend(2, copyWeights: true);
        Assert.True(copied.CopiesWeights);
        using var a = ModelRegistry.Load(dir, mapped);
        using var b = ModelRegistry.Load(dir, copied);
        int[] tokens = [1, 403, 407, 261, 378];
        var la = new float[tokens.Length * a.VocabSize];
        var lb = new float[tokens.Length * b.VocabSize];
        a.Forward(tokens, 0, la);
        b.Forward(tokens, 0, lb);
        Assert.Equal(la, lb);
    }
}
