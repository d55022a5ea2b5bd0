using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Bench;

/// <summary>
/// Measures this machine's limits: read-stream memory bandwidth (what decode is bound by) and the f32 FMA peak
/// (what prefill is bound by). Both run on every thread at once, best of several trials.
/// </summary>
public static unsafe class MachineProbe
{
    /// <summary>
    /// Read bandwidth in GB/s (10^9 bytes/s): threads each sum their slice of a buffer far larger than the caches. The
    /// probe keeps its buffer, so it can be run again right before each benchmark repetition:
    /// this VM's bandwidth moves between two levels (about 45 and 75 GB/s) with the host's placement of its vCPUs, and
    /// a roofline fraction means something only against the bandwidth of the same moment.
    /// </summary>
    public sealed class BandwidthProbe : IDisposable
    {
        private readonly Lrl.Cpu.WeightArena _arena = new();
        private readonly float* _buffer;
        private readonly long _n;
        private readonly int _threads;

        public BandwidthProbe(int threads, long bytes = 1L << 30)
        {
            _threads = threads;
            _n = bytes / sizeof(float);
            // Huge-page memory, as the weights get with --no-mmap: the limit the decode loop can actually approach.
            _buffer = (float*)_arena.Allocate(bytes);
            // Every page holds different values: identical pages can be merged by a hypervisor (KSM), and reading merged
            // pages measures the cache, not the memory (seen on VMs as sporadic 1.5x "bandwidth").
            float* buffer = _buffer;
            long n = _n;
            OnAllThreads(threads, t =>
            {
                long s = n * t / threads, e = n * (t + 1) / threads;
                for (long i = s; i < e; i++) buffer[i] = (float)(i & 0xFFFFFF) * 1e-6f + 1f;
            });
        }

        /// <summary>Best of <paramref name="trials"/> full reads, in GB/s.</summary>
        public double Measure(int trials = 3)
        {
            float* buffer = _buffer;
            long n = _n;
            int threads = _threads;
            double best = 0;
            var sums = new float[threads];
            for (int trial = 0; trial < trials; trial++)
            {
                double seconds = OnAllThreads(threads, t =>
                {
                    long s = n * t / threads, e = n * (t + 1) / threads;
                    sums[t] = SumRange(buffer + s, e - s);
                });
                best = Math.Max(best, n * sizeof(float) / seconds / 1e9);
            }
            if (sums.Sum() <= 0) throw new InvalidOperationException("bandwidth probe read nothing");
            return best;
        }

        public void Dispose() => _arena.Dispose();
    }

    /// <summary>
    /// Runs body(t) on <paramref name="threads"/> dedicated threads released together (Parallel.For may run the
    /// partitions one after another when the thread pool is cold, which halves the measured bandwidth); returns the
    /// seconds from the release until the last one finished.
    /// </summary>
    private static double OnAllThreads(int threads, Action<int> body)
    {
        using var ready = new CountdownEvent(threads);
        using var go = new ManualResetEventSlim(false);
        var done = new long[threads];
        var list = Enumerable.Range(0, threads).Select(t => new Thread(() =>
        {
            ready.Signal();
            go.Wait();
            body(t);
            done[t] = Stopwatch.GetTimestamp();
        }) { IsBackground = true }).ToList();
        foreach (var th in list) th.Start();
        ready.Wait();
        long start = Stopwatch.GetTimestamp();
        go.Set();
        foreach (var th in list) th.Join();
        return (done.Max() - start) / (double)Stopwatch.Frequency;
    }

    private static float SumRange(float* p, long n)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        long i = 0;
        for (; i <= n - 32; i += 32)
        {
            // Prefetch as the decode kernels do (Simd.PrefetchStream, once per 64-byte line): the hardware
            // prefetchers stop at 4 KiB pages, and a probe without it would understate what a loop can stream.
            Lrl.Cpu.Simd.PrefetchStream(p + i);
            Lrl.Cpu.Simd.PrefetchStream(p + i + 16);
            a0 += Vector256.Load(p + i); a1 += Vector256.Load(p + i + 8);
            a2 += Vector256.Load(p + i + 16); a3 += Vector256.Load(p + i + 24);
        }
        float s = Vector256.Sum(a0 + a1 + a2 + a3);
        for (; i < n; i++) s += p[i];
        return s;
    }

    /// <summary>
    /// Peak f32 GFLOP/s from independent FMA chains on every thread (2 flops per lane per FMA), at the widest vector
    /// the JIT accelerates: 512-bit where it runs natively (two 512-bit FMA ports double the 256-bit figure on Intel
    /// server cores; on Zen 4 both widths give the same), else 256-bit. The higher of the two is the machine's peak.
    /// </summary>
    public static double FmaPeakGFlops(int threads, int trials = 3)
    {
        double best = FmaPeak(threads, trials, wide: false);
        if (Vector512.IsHardwareAccelerated) best = Math.Max(best, FmaPeak(threads, trials, wide: true));
        return best;
    }

    private static double FmaPeak(int threads, int trials, bool wide)
    {
        const long Iterations = 20_000_000;
        double best = 0;
        for (int trial = 0; trial < trials; trial++)
        {
            var results = new float[threads];
            double seconds = OnAllThreads(threads, t => results[t] = wide ? FmaChains512(Iterations) : FmaChains(Iterations));
            double flops = 2.0 * (wide ? 16 : 8) * 10 * Iterations * threads;
            best = Math.Max(best, flops / seconds / 1e9);
        }
        return best;
    }

    /// <summary>
    /// Peak int8 dot-product GOP/s (2 ops per multiply-add) from independent u8×s8 chains on every thread: AVX-VNNI
    /// <c>vpdpbusd</c> (32 multiply-adds per 256-bit instruction) where the CPU has it, else AVX2 <c>vpmaddubsw</c> +
    /// <c>vpmaddwd</c> + add; 0 without AVX2. The ceiling of the quantized kernels (activations as int8).
    /// </summary>
    public static double Int8PeakGOps(int threads, int trials = 3)
    {
        if (!Avx2.IsSupported) return 0;
        const long Iterations = 20_000_000;
        double best = 0;
        for (int trial = 0; trial < trials; trial++)
        {
            var results = new int[threads];
            double seconds = OnAllThreads(threads, t => results[t] = DotChains(Iterations));
            best = Math.Max(best, 2.0 * 32 * 10 * Iterations * threads / seconds / 1e9);
        }
        return best;
    }

    private static int DotChains(long iterations)
    {
        var u = Vector256.Create((byte)1);
        var s = Vector256.Create((sbyte)1);
        Vector256<int> a0 = default, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
        if (AvxVnni.IsSupported)
            for (long i = 0; i < iterations; i++)
            {
                a0 = AvxVnni.MultiplyWideningAndAdd(a0, u, s); a1 = AvxVnni.MultiplyWideningAndAdd(a1, u, s);
                a2 = AvxVnni.MultiplyWideningAndAdd(a2, u, s); a3 = AvxVnni.MultiplyWideningAndAdd(a3, u, s);
                a4 = AvxVnni.MultiplyWideningAndAdd(a4, u, s); a5 = AvxVnni.MultiplyWideningAndAdd(a5, u, s);
                a6 = AvxVnni.MultiplyWideningAndAdd(a6, u, s); a7 = AvxVnni.MultiplyWideningAndAdd(a7, u, s);
                a8 = AvxVnni.MultiplyWideningAndAdd(a8, u, s); a9 = AvxVnni.MultiplyWideningAndAdd(a9, u, s);
            }
        else
        {
            var one = Vector256<short>.One;
            for (long i = 0; i < iterations; i++)
            {
                a0 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a1 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a2 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a3 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a4 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a5 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a6 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a7 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a8 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
                a9 += Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), one);
            }
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9);
    }

    private static float FmaChains512(long iterations)
    {
        var m = Vector512.Create(0.999999f);
        var c = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, c); a1 = Vector512.FusedMultiplyAdd(a1, m, c);
            a2 = Vector512.FusedMultiplyAdd(a2, m, c); a3 = Vector512.FusedMultiplyAdd(a3, m, c);
            a4 = Vector512.FusedMultiplyAdd(a4, m, c); a5 = Vector512.FusedMultiplyAdd(a5, m, c);
            a6 = Vector512.FusedMultiplyAdd(a6, m, c); a7 = Vector512.FusedMultiplyAdd(a7, m, c);
            a8 = Vector512.FusedMultiplyAdd(a8, m, c); a9 = Vector512.FusedMultiplyAdd(a9, m, c);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9);
    }

    private static float FmaChains(long iterations)
    {
        var m = Vector256.Create(0.999999f);
        var c = Vector256.Create(1e-7f);
        Vector256<float> a0 = Vector256.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, c); a1 = Vector256.FusedMultiplyAdd(a1, m, c);
            a2 = Vector256.FusedMultiplyAdd(a2, m, c); a3 = Vector256.FusedMultiplyAdd(a3, m, c);
            a4 = Vector256.FusedMultiplyAdd(a4, m, c); a5 = Vector256.FusedMultiplyAdd(a5, m, c);
            a6 = Vector256.FusedMultiplyAdd(a6, m, c); a7 = Vector256.FusedMultiplyAdd(a7, m, c);
            a8 = Vector256.FusedMultiplyAdd(a8, m, c); a9 = Vector256.FusedMultiplyAdd(a9, m, c);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9);
    }
}
