using Lrl.Gpu;
using Lrl.Runtime;

namespace Lrl.Cli.Tests;

/// <summary>
/// Sampling on the device: a session over a backend that samples where its logits are (the ILGPU backend, here on its
/// CPU accelerator in the NVIDIA-like configuration) picks each token there from the sampler's own draws, so a seeded
/// generation gives the CPU backend's tokens (host sampling), and only one id per token comes back.
/// </summary>
public class DeviceSamplingTests
{
    private static int[] Ids(IEnumerable<GeneratedToken> tokens) => tokens.Where(t => t.Id >= 0).Select(t => t.Id).ToArray();

    [Fact]
    public void SeededSamplingOnTheDeviceEqualsTheHostSampler()
    {
        string dir = CliRunner.Model("stories260k");
        using var cpu = LrlModel.Load(dir, new ModelOptions { Threads = 1 });
        var gpuBackend = GpuBackend.CreateCpuAccelerator(); // the small default groups: the NVIDIA-like ones take minutes here
        using var gpu = LrlModel.Load(dir, new ModelOptions(), gpuBackend);
        Assert.Equal(1024, gpu.Model.Backend.MaxDeviceTopK);
        Assert.Equal(0, cpu.Model.Backend.MaxDeviceTopK);
        // The defaults (T 0.8, top-k 40, top-p 0.95, min-p 0.05), and a wider draw without min-p.
        foreach (var sampling in new[] { new SamplingOptions { Seed = 3 }, new SamplingOptions { Temperature = 1.0f, TopK = 200, TopP = 0.9f, MinP = 0, Seed = 11 } })
        {
            var options = new GenerationOptions { MaxTokens = 16, IgnoreEos = true, Sampling = sampling };
            var want = Ids(cpu.Generate("Once upon a time", options));
            var before = gpuBackend.Counters;
            var got = Ids(gpu.Generate("Once upon a time", options));
            var d = gpuBackend.Counters - before;
            Assert.Equal(want, got);
            Assert.NotEqual(want, Ids(cpu.Generate("Once upon a time", options with { Sampling = SamplingOptions.Greedy })));
            // One id (4 bytes) back per generated token: never the vocabulary's logits.
            Assert.Equal(4L * got.Length, d.DownloadBytes);
        }
        // Penalties shape the logits on the host: those generations read the logits back (and still agree).
        var penalised = new GenerationOptions
        {
            MaxTokens = 8, IgnoreEos = true,
            Sampling = new SamplingOptions { Seed = 2, RepeatPenalty = 1.3f },
        };
        var b2 = gpuBackend.Counters;
        Assert.Equal(Ids(cpu.Generate("Once upon a time", penalised)), Ids(gpu.Generate("Once upon a time", penalised)));
        Assert.True((gpuBackend.Counters - b2).DownloadBytes >= 4L * 8 * gpu.Model.VocabSize);
    }
}
