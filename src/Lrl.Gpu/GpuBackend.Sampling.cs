using System.Runtime.InteropServices;
using ILGPU.Runtime;
using Lrl.Kernels;

namespace Lrl.Gpu;

// Token selection on the device: only the chosen id is copied back (one synchronization).
public sealed partial class GpuBackend
{
    /// <summary>Largest top-k served by <see cref="Sample"/>; topK = 0 (no limit) and larger values use this many candidates.</summary>
    public const int MaxDeviceTopK = SamplingKernels.MaxTopK;

    int IBackend.MaxDeviceTopK => MaxDeviceTopK;

    /// <summary>Index of the largest of logits[0..n) (first on ties), computed on the device.</summary>
    public int Argmax(DeviceBuffer logits, int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), n, "argmax needs at least one logit");
        CheckRange(logits, 0, n, "argmax logits");
        ArgmaxKernel(Launch_, new ILGPU.KernelConfig(1, _group), B(logits).View, n, _scalar.View);
        return ReadScalar();
    }

    /// <summary>
    /// Samples a token on the device: temperature 0 is greedy; otherwise the topK most likely tokens (ties: lower id;
    /// topK 0 or above <see cref="MaxDeviceTopK"/> means MaxDeviceTopK), softmax at the temperature, the smallest
    /// prefix reaching topP, of that the tokens at least minP × as likely as the first, and the token where the running
    /// probability passes uniform01 × the kept mass. Matches Lrl.Runtime.Sampler given the same uniform draw (up to
    /// float rounding at a boundary).
    /// </summary>
    public int Sample(DeviceBuffer logits, int n, float temperature, int topK, float topP, float uniform01, float minP = 0)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), n, "sampling needs at least one logit");
        if (temperature < 0 || float.IsNaN(temperature)) throw new LrlException($"temperature must be ≥ 0, got {temperature}");
        if (topK < 0) throw new LrlException($"top-k must be ≥ 0, got {topK}");
        if (!(topP > 0 && topP <= 1)) throw new LrlException($"top-p must be in (0, 1], got {topP}");
        if (!(minP >= 0 && minP <= 1)) throw new LrlException($"min-p must be in [0, 1], got {minP}");
        if (!(uniform01 >= 0 && uniform01 < 1)) throw new ArgumentOutOfRangeException(nameof(uniform01), uniform01, "uniform draw must be in [0, 1)");
        if (temperature == 0) return Argmax(logits, n);
        CheckRange(logits, 0, n, "sample logits");
        int k = topK == 0 ? MaxDeviceTopK : Math.Min(topK, MaxDeviceTopK);
        k = Math.Min(k, n);
        SampleKernel(Launch_, new ILGPU.KernelConfig(1, _group), B(logits).View, n, k, temperature, topP, minP, uniform01, _scalar.View);
        return ReadScalar();
    }

    private int ReadScalar()
    {
        Span<int> one = stackalloc int[1];
        _downloadBytes += sizeof(int);
        ToHost(_scalar.View, one);
        return one[0];
    }
}
