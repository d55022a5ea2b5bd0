using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Lrl.Kernels.Reference;

namespace Lrl.Gpu;

/// <summary>
/// Per-op check and timing for any <see cref="IBackend"/> (GPU or CPU) at the shapes of SmolLM2-135M and a ~1B Llama:
/// each op is first verified against <see cref="ReferenceBackend"/> on random data, then timed (warm-up, median of the
/// repetitions, Synchronize around each) and reported in µs, GB/s, GFLOP/s and as a fraction of the peak bandwidth
/// measured with a large device-to-device copy.
/// </summary>
public static class KernelBenchmark
{
    /// <summary>One op's result.</summary>
    public sealed record Result(string Op, string Model, string Shape, string DType, bool Pass, double RelError,
                                double Microseconds, double GBps, double GFlops, double PeakFraction);

    private sealed record ModelShape(string Name, int Hidden, int Intermediate, int Heads, int KvHeads, int HeadDim);

    private static readonly ModelShape[] Models =
    [
        new("smollm2-135m", 576, 1536, 9, 3, 64),
        new("llama-1b", 2048, 8192, 32, 8, 64),
    ];

    /// <summary>Quick mode's shape: small enough for a simulated device, still odd-sized and grouped-query.</summary>
    private static readonly ModelShape Tiny = new("tiny", 96, 200, 6, 2, 32);

    /// <summary>Full run: 20 repetitions per op. Returns 0 when every op passes its check, 1 otherwise.</summary>
    public static int Run(IBackend backend, bool json, TextWriter output) => Run(backend, json, output, 20, quick: false);

    /// <summary>
    /// <paramref name="reps"/> timed repetitions per op (≥ 1). <paramref name="quick"/> keeps only the small model, with a
    /// short context and prefill, and a small bandwidth probe (for tests on slow simulated devices).
    /// </summary>
    public static int Run(IBackend backend, bool json, TextWriter output, int reps, bool quick)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (reps < 1) throw new LrlException($"benchmark repetitions must be ≥ 1, got {reps}");
        double peak = MeasurePeak(backend, quick ? 1 << 20 : 1 << 26, Math.Min(reps, 10));
        var results = new List<Result>();
        using var reference = new ReferenceBackend();
        foreach (var m in quick ? [Tiny] : Models)
            results.AddRange(new Runner(backend, reference, m, reps, quick, peak).All());

        if (json)
        {
            output.WriteLine(JsonSerializer.Serialize(results, new JsonSerializerOptions
            {
                WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
                NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
            }));
        }
        else
        {
            output.WriteLine($"backend {backend.Name}: peak copy bandwidth {peak:F1} GB/s");
            output.WriteLine($"{"op",-18} {"model",-13} {"shape",-24} {"dtype",-5} {"check",-15} {"µs",10} {"GB/s",8} {"GFLOP/s",9} {"%peak",6}");
            foreach (var r in results)
                output.WriteLine($"{r.Op,-18} {r.Model,-13} {r.Shape,-24} {r.DType,-5} {(r.Pass ? "pass" : "FAIL") + $" {r.RelError:E1}",-15} " +
                                 $"{r.Microseconds,10:F1} {r.GBps,8:F1} {r.GFlops,9:F1} {r.PeakFraction * 100,5:F0}%");
            int failed = results.Count(r => !r.Pass);
            output.WriteLine(failed == 0 ? $"all {results.Count} ops pass" : $"{failed} of {results.Count} ops FAILED their check");
        }
        return results.All(r => r.Pass) ? 0 : 1;
    }

    /// <summary>GB/s of a device-to-device copy of <paramref name="floats"/> floats (bytes read + written).</summary>
    private static double MeasurePeak(IBackend b, int floats, int reps)
    {
        using var src = b.Allocate(floats);
        using var dst = b.Allocate(floats);
        b.Copy(src, 0, dst, 0, floats);
        double us = Median(b, () => b.Copy(src, 0, dst, 0, floats), Math.Max(reps, 3));
        return 2.0 * floats * 4 / (us * 1e3);
    }

    private static double Median(IBackend b, Action op, int reps)
    {
        // Warm up for 0.2 s (at least 3 calls): .NET promotes a method to optimized code only after ~30 calls and a
        // background compile, so a fixed couple of calls timed the first ops' unoptimized code.
        var warm = Stopwatch.StartNew();
        for (int i = 0; i < 3 || (warm.ElapsedMilliseconds < 200 && i < 2000); i++) op();
        b.Synchronize();
        // Ops shorter than the clock's useful resolution (tiny shapes on the CPU run in tens of nanoseconds) are
        // timed in batches of calls long enough to measure: at least 20 µs per sample.
        int batch = 1;
        while (batch < 1 << 20)
        {
            long t = Stopwatch.GetTimestamp();
            for (int k = 0; k < batch; k++) op();
            b.Synchronize();
            if (Stopwatch.GetElapsedTime(t).TotalMicroseconds >= 20) break;
            batch *= 2;
        }
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            b.Synchronize();
            long t0 = Stopwatch.GetTimestamp();
            for (int k = 0; k < batch; k++) op();
            b.Synchronize();
            times[i] = Stopwatch.GetElapsedTime(t0).TotalMicroseconds / batch;
        }
        Array.Sort(times);
        return times[reps / 2];
    }

    /// <summary>Builds the inputs of one model's ops on both backends and runs them.</summary>
    private sealed unsafe class Runner(IBackend b, ReferenceBackend r, ModelShape m, int reps, bool quick, double peak)
    {
        private readonly Random _rng = new(1234);

        public IEnumerable<Result> All()
        {
            int h = m.Hidden, inter = m.Intermediate, qDim = m.Heads * m.HeadDim, kvDim = m.KvHeads * m.HeadDim;
            int ctx = quick ? 100 : 4096, prefill = quick ? 12 : 128, gemmRows = quick ? 9 : 64;

            yield return Embed(DType.BF16, quick ? 64 : 4096, h);
            yield return Norm(false, h);
            yield return Norm(true, h);
            yield return Rope(m.Heads, m.HeadDim, ctx - 1);
            foreach (var dt in new[] { DType.F32, DType.F16, DType.BF16 }) yield return MatMul(dt, 1, inter, h);
            foreach (var dt in new[] { DType.F32, DType.F16, DType.BF16 }) yield return MatMul(dt, gemmRows, inter, h);
            if (b is IQuantizedBackend)
                foreach (int bits in new[] { 8, 4 })
                {
                    yield return QuantMatMul(bits, 1, inter, h);
                    yield return QuantMatMul(bits, gemmRows, inter, h);
                }
            yield return Attention(1, ctx - 1, "attention_decode");
            yield return Attention(prefill, 0, "attention_prefill");
            yield return Elementwise("swiglu", inter);
            yield return Elementwise("add", h);
        }

        private float[] Rand(long n, float scale = 1f)
        {
            var a = new float[n];
            for (long i = 0; i < n; i++) a[i] = (float)(_rng.NextDouble() * 2 - 1) * scale;
            return a;
        }

        private (DeviceBuffer, DeviceBuffer) Pair(float[] data)
        {
            var x = b.Allocate(data.Length); b.Upload(data, x);
            var y = r.Allocate(data.Length); r.Upload(data, y);
            return (x, y);
        }

        private static double RelErr(IBackend b1, DeviceBuffer x1, ReferenceBackend b2, DeviceBuffer x2, long n)
        {
            var a = new float[n]; var e = new float[n];
            b1.Download(x1, 0, a); b2.Download(x2, 0, e);
            double num = 0, den = 0;
            for (long i = 0; i < n; i++)
            {
                double d = (double)a[i] - e[i];
                num += d * d; den += (double)e[i] * e[i];
            }
            double err = Math.Sqrt(num / Math.Max(den, 1e-300));
            return double.IsNaN(err) ? double.PositiveInfinity : err;
        }

        private Result Make(string op, string shape, string dtype, double err, double tol, Action run, double bytes, double flops)
        {
            double us = Median(b, run, reps);
            double gbs = bytes / (us * 1e3);
            return new Result(op, m.Name, shape, dtype, err <= tol, err, us, gbs, flops / (us * 1e3), peak > 0 ? gbs / peak : 0);
        }

        /// <summary>A weight tensor in native memory, rounded to its dtype; lives until the weights built from it are disposed.</summary>
        private sealed class NativeTensor : IDisposable
        {
            public HostTensor Tensor { get; }
            private readonly nint _p;
            public NativeTensor(string name, DType dt, int[] shape, float[] v)
            {
                long bytes = v.LongLength * dt.Size();
                var p = (byte*)NativeMemory.Alloc((nuint)bytes);
                _p = (nint)p;
                for (long i = 0; i < v.LongLength; i++)
                {
                    if (dt == DType.F32) ((float*)p)[i] = v[i];
                    else if (dt == DType.F16) ((Half*)p)[i] = (Half)v[i];
                    else ((ushort*)p)[i] = DTypes.FloatToBF16(v[i]);
                }
                Tensor = new HostTensor(name, dt, shape, p, bytes, "benchmark");
            }
            public void Dispose() => NativeMemory.Free((void*)_p);
        }

        private Result Embed(DType dt, int vocab, int dim)
        {
            using var t = new NativeTensor("embed", dt, [vocab, dim], Rand((long)vocab * dim));
            using var wb = b.LoadWeight(t.Tensor); using var wr = r.LoadWeight(t.Tensor);
            using var xb = b.Allocate(dim); using var xr = r.Allocate(dim);
            int[] tok = [vocab / 3];
            b.Embed(wb, tok, xb); r.Embed(wr, tok, xr);
            double err = RelErr(b, xb, r, xr, dim);
            return Make("embed", $"{vocab}x{dim}", dt.ToString(), err, 0, () => b.Embed(wb, tok, xb), dim * (dt.Size() + 4.0), 0);
        }

        private Result Norm(bool fused, int n)
        {
            var g = Rand(n, 0.5f);
            for (int i = 0; i < n; i++) g[i] += 1;
            using var t = new NativeTensor("norm", DType.F32, [n], g);
            using var wb = b.LoadWeight(t.Tensor); using var wr = r.LoadWeight(t.Tensor);
            var (xb, xr) = Pair(Rand(n, 3)); var (db, dr) = Pair(Rand(n));
            using var _1 = xb; using var _2 = xr; using var _3 = db; using var _4 = dr;
            using var yb = b.Allocate(n); using var yr = r.Allocate(n);
            if (fused) { b.AddRmsNorm(xb, db, wb, yb, 1, 1e-5f); r.AddRmsNorm(xr, dr, wr, yr, 1, 1e-5f); }
            else { b.RmsNorm(xb, wb, yb, 1, 1e-5f); r.RmsNorm(xr, wr, yr, 1, 1e-5f); }
            double err = Math.Max(RelErr(b, yb, r, yr, n), fused ? RelErr(b, xb, r, xr, n) : 0);
            // The timed fused op keeps adding delta to the residual: harmless for timing.
            return fused
                ? Make("add_rmsnorm", $"1x{n}", "F32", err, 1e-5, () => b.AddRmsNorm(xb, db, wb, yb, 1, 1e-5f), 5.0 * n * 4, 5.0 * n)
                : Make("rmsnorm", $"1x{n}", "F32", err, 1e-5, () => b.RmsNorm(xb, wb, yb, 1, 1e-5f), 3.0 * n * 4, 4.0 * n);
        }

        private Result Rope(int heads, int headDim, int pos)
        {
            var inv = new float[headDim / 2];
            for (int i = 0; i < inv.Length; i++) inv[i] = (float)Math.Pow(500000, -2.0 * i / headDim);
            var table = new RopeTable(inv);
            int n = heads * headDim;
            var (xb, xr) = Pair(Rand(n));
            using var _1 = xb; using var _2 = xr;
            b.Rope(xb, 1, heads, headDim, pos, table); r.Rope(xr, 1, heads, headDim, pos, table);
            double err = RelErr(b, xb, r, xr, n);
            return Make("rope", $"{heads}x{headDim}@{pos}", "F32", err, 1e-5, () => b.Rope(xb, 1, heads, headDim, pos, table), 2.0 * n * 4, 3.0 * n);
        }

        private Result MatMul(DType dt, int rows, int outF, int inF)
        {
            using var t = new NativeTensor("w", dt, [outF, inF], Rand((long)outF * inF, 0.1f));
            using var wb = b.LoadWeight(t.Tensor); using var wr = r.LoadWeight(t.Tensor);
            var (xb, xr) = Pair(Rand((long)rows * inF));
            using var _1 = xb; using var _2 = xr;
            using var yb = b.Allocate((long)rows * outF); using var yr = r.Allocate((long)rows * outF);
            b.MatMul(xb, wb, yb, rows); r.MatMul(xr, wr, yr, rows);
            double err = RelErr(b, yb, r, yr, (long)rows * outF);
            double bytes = (double)outF * inF * dt.Size() + 4.0 * rows * (inF + outF);
            return Make(rows == 1 ? "gemv" : "gemm", $"{rows}x{inF}->{outF}", dt.ToString(), err, 1e-5,
                        () => b.MatMul(xb, wb, yb, rows), bytes, 2.0 * rows * outF * inF);
        }

        /// <summary>
        /// A per-channel int8/int4 product (lrlrun's Q8_GC/Q4_GC, the presets' layout) of random codes and f16 scales.
        /// The CPU backend quantizes its activations to int8 (~1 % off the f32 product); the GPU's are f32.
        /// </summary>
        private Result QuantMatMul(int bits, int rows, int outF, int inF)
        {
            var codes = GC.AllocateArray<byte>(bits == 8 ? outF * inF : outF * inF / 2, pinned: true);
            _rng.NextBytes(codes);
            if (bits == 8) for (int i = 0; i < codes.Length; i++) if (codes[i] == 0x80) codes[i] = 0x81; // no −128
            var scales = GC.AllocateArray<Half>(outF, pinned: true);
            for (int i = 0; i < outF; i++) scales[i] = (Half)((bits == 8 ? 0.1 / 127 : 0.1 / 8) * (0.5 + _rng.NextDouble()));
            var q = new QuantizedTensor
            {
                Name = $"w.q{bits}", Source = "benchmark", Bits = bits, GroupSize = inF, Rows = outF, Cols = inF,
                Codes = (byte*)Marshal.UnsafeAddrOfPinnedArrayElement(codes, 0), Scales = (Half*)Marshal.UnsafeAddrOfPinnedArrayElement(scales, 0),
                Owner = new object[] { codes, scales },
            };
            using var wb = ((IQuantizedBackend)b).LoadQuantized(q); using var wr = ((IQuantizedBackend)r).LoadQuantized(q);
            var (xb, xr) = Pair(Rand((long)rows * inF));
            using var _1 = xb; using var _2 = xr;
            using var yb = b.Allocate((long)rows * outF); using var yr = r.Allocate((long)rows * outF);
            b.MatMul(xb, wb, yb, rows); r.MatMul(xr, wr, yr, rows);
            double err = RelErr(b, yb, r, yr, (long)rows * outF);
            double bytes = (double)q.ByteSize + 4.0 * rows * (inF + outF);
            return Make(rows == 1 ? "gemv" : "gemm", $"{rows}x{inF}->{outF}", $"Q{bits}", err, b is GpuBackend ? 1e-5 : 2e-2,
                        () => b.MatMul(xb, wb, yb, rows), bytes, 2.0 * rows * outF * inF);
        }

        private Result Attention(int rows, int pos0, string name)
        {
            int n = pos0 + rows, qDim = m.Heads * m.HeadDim, kvDim = m.KvHeads * m.HeadDim;
            float scale = 1f / MathF.Sqrt(m.HeadDim);
            var (qb, qr) = Pair(Rand((long)rows * qDim)); var (kb, kr) = Pair(Rand((long)n * kvDim)); var (vb, vr) = Pair(Rand((long)n * kvDim));
            using var _1 = qb; using var _2 = qr; using var _3 = kb; using var _4 = kr; using var _5 = vb; using var _6 = vr;
            using var ob = b.Allocate((long)rows * qDim); using var or = r.Allocate((long)rows * qDim);
            b.Attention(qb, kb, vb, ob, rows, pos0, m.Heads, m.KvHeads, m.HeadDim, scale);
            r.Attention(qr, kr, vr, or, rows, pos0, m.Heads, m.KvHeads, m.HeadDim, scale);
            double err = RelErr(b, ob, r, or, (long)rows * qDim);
            double pairs = rows == 1 ? n : rows * (rows + 1) / 2.0 + (double)rows * pos0;
            double bytes = 2.0 * n * kvDim * 4 + 2.0 * rows * qDim * 4;
            return Make(name, $"{rows}q ctx{n} {m.Heads}/{m.KvHeads}x{m.HeadDim}", "F32", err, 1e-5,
                        () => b.Attention(qb, kb, vb, ob, rows, pos0, m.Heads, m.KvHeads, m.HeadDim, scale), bytes, 4.0 * pairs * qDim);
        }

        private Result Elementwise(string op, int n)
        {
            var (ab, ar) = Pair(Rand(n, 3)); var (bb, br) = Pair(Rand(n, 3));
            using var _1 = ab; using var _2 = ar; using var _3 = bb; using var _4 = br;
            using var yb = b.Allocate(n); using var yr = r.Allocate(n);
            if (op == "swiglu")
            {
                b.SwiGlu(ab, bb, yb, n); r.SwiGlu(ar, br, yr, n);
                double err = RelErr(b, yb, r, yr, n);
                return Make(op, $"{n}", "F32", err, 1e-5, () => b.SwiGlu(ab, bb, yb, n), 3.0 * n * 4, 5.0 * n);
            }
            b.Add(ab, bb, n); r.Add(ar, br, n);
            double e2 = RelErr(b, ab, r, ar, n);
            return Make(op, $"{n}", "F32", e2, 1e-5, () => b.Add(ab, bb, n), 3.0 * n * 4, n);
        }
    }
}
