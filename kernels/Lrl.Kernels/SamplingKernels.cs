using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>
/// Token selection on the device, so only a token id crosses to the host. Both kernels run as a single group.
/// </summary>
public static class SamplingKernels
{
    /// <summary>Most candidates <see cref="Sample"/> keeps (top-k is clamped to this).</summary>
    public const int MaxTopK = 1024;
    private const int Capacity = 2 * MaxTopK;

    /// <summary>result[0] = index of the largest logit (the first one on ties).</summary>
    public static void Argmax(ArrayView<float> logits, int n, ArrayView<int> result)
    {
        var sv = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        var si = SharedMemory.Allocate<int>(KernelMath.MaxGroup);
        int t = Group.IdxX, g = Group.DimX;
        float best = float.NegativeInfinity;
        int bi = -1;
        for (int i = t; i < n; i += g)
        {
            float v = logits[i];
            if (bi < 0 || v > best) { best = v; bi = i; }
        }
        sv[t] = best; si[t] = bi;
        Group.Barrier();
        for (int s = g / 2; s > 0; s >>= 1)
        {
            if (t < s)
            {
                float v2 = sv[t + s]; int i2 = si[t + s];
                if (i2 >= 0 && (si[t] < 0 || v2 > sv[t] || (v2 == sv[t] && i2 < si[t]))) { sv[t] = v2; si[t] = i2; }
            }
            Group.Barrier();
        }
        if (t == 0) result[0] = si[0];
    }

    /// <summary>
    /// Top-k / top-p sampling with temperature: the k largest logits (ties: lower id first) sorted descending,
    /// softmax((logit − max)/temperature), the smallest prefix whose mass reaches topP, of that the prefix whose
    /// probabilities are at least minP × the top one's, then the token where the running mass passes uniform01 · (kept
    /// mass). k must be in 1..MaxTopK. result[0] = the token id.
    /// </summary>
    public static void Sample(ArrayView<float> logits, int n, int k, float temperature, float topP, float minP, float uniform01, ArrayView<int> result)
    {
        var keys = SharedMemory.Allocate<float>(Capacity);
        var ids = SharedMemory.Allocate<int>(Capacity);
        var scratch = SharedMemory.Allocate<int>(KernelMath.MaxGroup);
        var counter = SharedMemory.Allocate<int>(1);
        int t = Group.IdxX, g = Group.DimX;

        // The k-th largest order key: largest T with count(key ≥ T) ≥ k (bisection over the 32-bit key space).
        ulong lo = 0, hi = 0xFFFFFFFFul;
        while (lo < hi)
        {
            ulong mid = lo + (hi - lo + 1) / 2;
            int c = 0;
            for (int i = t; i < n; i += g) if (KernelMathInt.OrderKey(logits[i]) >= mid) c++;
            c = KernelMathInt.GroupSum(c, scratch);
            if (c >= k) lo = mid; else hi = mid - 1;
        }
        uint threshold = (uint)lo;

        if (t == 0) counter[0] = 0;
        Group.Barrier();
        for (int i = t; i < n; i += g)
        {
            float v = logits[i];
            if (KernelMathInt.OrderKey(v) >= threshold)
            {
                int pos = Atomic.Add(ref counter[0], 1);
                if (pos < Capacity) { keys[pos] = v; ids[pos] = i; }
            }
        }
        Group.Barrier();
        int count = XMath.Min(counter[0], Capacity);
        int p2 = 2;
        while (p2 < count) p2 <<= 1;
        for (int i = count + t; i < p2; i += g) { keys[i] = float.NegativeInfinity; ids[i] = int.MaxValue - i; }
        Group.Barrier();

        // Bitonic sort, best first: larger logit, then smaller id.
        for (int size = 2; size <= p2; size <<= 1)
        {
            for (int stride = size / 2; stride > 0; stride >>= 1)
            {
                for (int i = t; i < p2; i += g)
                {
                    int j = i ^ stride;
                    if (j > i)
                    {
                        float ki = keys[i], kj = keys[j];
                        int ii = ids[i], ij = ids[j];
                        bool iWorse = ki < kj || (ki == kj && ii > ij);
                        bool bestFirst = (i & size) == 0;
                        if (iWorse == bestFirst)
                        {
                            keys[i] = kj; keys[j] = ki;
                            ids[i] = ij; ids[j] = ii;
                        }
                    }
                }
                Group.Barrier();
            }
        }

        if (t != 0) return;
        int m = XMath.Min(k, count);
        float max = keys[0], inv = 1f / temperature;
        float sum = 0;
        for (int i = 0; i < m; i++) { float e = XMath.Exp((keys[i] - max) * inv); keys[i] = e; sum += e; }
        float total = 0;
        int keep = m;
        for (int i = 0; i < m; i++)
        {
            total += keys[i] / sum;
            if (topP < 1f && total >= topP) { keep = i + 1; break; }
        }
        if (minP > 0f)
        {
            float floor = minP * (keys[0] / sum);
            int kept = 1;
            while (kept < keep && keys[kept] / sum >= floor) kept++;
            if (kept < keep)
            {
                keep = kept;
                total = 0;
                for (int i = 0; i < keep; i++) total += keys[i] / sum;
            }
        }
        float r = uniform01 * total;
        int chosen = ids[keep - 1];
        for (int i = 0; i < keep; i++)
        {
            r -= keys[i] / sum;
            if (r < 0) { chosen = ids[i]; break; }
        }
        result[0] = chosen;
    }
}
