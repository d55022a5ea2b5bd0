using Lrl.Gpu;
using Lrl.Kernels.Reference;
using Lrl.Models;

namespace Lrl.Quant.Tests;

/// <summary>
/// Quantized weights on the GPU backend, run on ILGPU's CPU accelerator (the same kernels a CUDA device compiles):
/// products, the fused SwiGLU GEMV and embedding against the scalar double reference, and a quantized model end to end.
/// </summary>
public class GpuQuantTests
{
    /// <summary>ILGPU's CPU accelerator in its default shape and NVIDIA-like (warps of 32, 8 per group, as the CUDA launches).</summary>
    public static TheoryData<string> Devices => new("default", "nvidia-like");

    private static GpuBackend Create(string device) => device == "nvidia-like" ? GpuBackend.CreateCpuAccelerator(32, 8, 1) : GpuBackend.CreateCpuAccelerator();

    public static TheoryData<int, int, int, int, bool, bool, string> CasesOnDevices()
    {
        var data = new TheoryData<int, int, int, int, bool, bool, string>();
        foreach (var device in new[] { "default", "nvidia-like" })
            foreach (var (bits, rows, cols, group, zeros, permute) in new[]
                     {
                         (8, 7, 96, 32, false, false), (8, 33, 172, 172, false, true), (4, 9, 128, 64, false, false), (4, 17, 100, 100, true, false), (4, 5, 256, 32, true, true),
                         // Rows read 8 bytes per lane: one group of a non-power-of-two size, power-of-two groups, int4 halves
                         // of a block in two groups (32) and one (per channel), zero points; groups of 96 take the per-byte code.
                         (8, 11, 200, 200, false, false), (8, 6, 192, 64, false, false), (8, 5, 192, 96, false, false),
                         (4, 13, 192, 32, true, false), (4, 7, 128, 128, true, false), (4, 6, 192, 96, false, false), (4, 5, 192, 192, false, false),
                     })
                data.Add(bits, rows, cols, group, zeros, permute, device);
        return data;
    }

    [Theory, MemberData(nameof(CasesOnDevices))]
    public void MatMulMatchesReference(int bits, int rows, int cols, int group, bool zeros, bool permute, string device)
    {
        var rng = new Random(bits + rows + cols);
        var q = TestUtil.Random(rng, bits, rows, cols, group, zeros, permute);
        using var gpu = Create(device);
        var w = gpu.LoadQuantized(q);
        Assert.Equal(q.Format, w.Format);
        Assert.Equal(q.ByteSize, w.ByteSize);
        // Which GEMV row code the shape takes: 8 bytes per lane for input order, one group or power-of-two groups, and
        // whole chunks (8-bit: 8 columns, 4-bit: 64-column blocks), the per-byte code otherwise; both must match the reference.
        bool wide = !permute && (group == cols || (group & (group - 1)) == 0) && (bits == 8 ? cols % 8 == 0 : cols % 64 == 0);
        Assert.Equal(wide, GpuBackend.ReadsWide(w));
        foreach (int n in new[] { 1, 3 })
        {
            var x = TestUtil.RandomVector(rng, n * cols);
            var expected = TestUtil.Reference(q, x, n);
            using var xb = gpu.Allocate(n * cols);
            using var yb = gpu.Allocate(n * rows);
            gpu.Upload(x, xb);
            var poison = new float[n * rows]; Array.Fill(poison, float.NaN); gpu.Upload(poison, yb);
            gpu.MatMul(xb, w, yb, n);
            var y = new float[n * rows];
            gpu.Download(yb, 0, y);
            TestUtil.CheckBound(q, x, y, expected, n, quantizedActivations: false);
        }
    }

    /// <summary>
    /// Q/K/V of int8/int4 weights in one launch (a decode row, and the rows of an exact-rows verification): each output
    /// bit for bit what its own product gives, biases included, and within the scalar reference's bound; three launches before.
    /// </summary>
    [Theory]
    [InlineData(8, false, "default")]
    [InlineData(4, true, "default")]
    [InlineData(4, false, "nvidia-like")]
    public void QkvProductsInOneLaunchEqualTheirOwnProducts(int bits, bool zeros, string device)
    {
        var rng = new Random(bits * 7 + (zeros ? 1 : 0));
        int cols = 128, group = 32;
        int[] outs = [48, 16, 20];
        var qs = outs.Select(o => TestUtil.Random(rng, bits, o, cols, group, zeros)).ToArray();
        using var gpu = Create(device);
        var ws = qs.Select(gpu.LoadQuantized).ToArray();
        using var arena = new RandomTensors(bits);
        var kBias = gpu.LoadWeight(arena.Vector("k.bias", outs[1]));
        int keep = gpu.ExactRows;
        try
        {
            gpu.ExactRows = 4;
            foreach (int n in new[] { 1, 3 })
            {
                var x = TestUtil.RandomVector(rng, n * cols);
                using var xb = gpu.Allocate(n * cols);
                gpu.Upload(x, xb);
                var ys = outs.Select(o => gpu.Allocate(n * o)).ToArray();
                var alone = outs.Select(o => gpu.Allocate(n * o)).ToArray();
                try
                {
                    var before = gpu.Counters;
                    gpu.MatMul3(xb, n, ws[0], ys[0], null, ws[1], ys[1], kBias, ws[2], ys[2], null);
                    Assert.Equal(1, (gpu.Counters - before).Launches);
                    for (int m = 0; m < 3; m++) gpu.MatMul(xb, ws[m], alone[m], n, m == 1 ? kBias : null);
                    for (int m = 0; m < 3; m++)
                    {
                        var got = new float[n * outs[m]]; var want = new float[n * outs[m]];
                        gpu.Download(ys[m], 0, got); gpu.Download(alone[m], 0, want);
                        Assert.True(got.SequenceEqual(want), $"q{bits} {device}, {n} rows: matrix {m} differs from its own product");
                        if (m != 1) TestUtil.CheckBound(qs[m], x, got, TestUtil.Reference(qs[m], x, n), n, quantizedActivations: false); // the scalar reference
                    }
                }
                finally { foreach (var b in ys.Concat(alone)) b.Dispose(); }
            }
        }
        finally { gpu.ExactRows = keep; }
    }

    /// <summary>
    /// GEMV launches shrink their groups when a product has too few rows to fill the device (down to one warp per group):
    /// a row's arithmetic is its warp's alone, so one-warp groups give every product (int8, int4, bf16; one row, the
    /// fused gate/up+SwiGLU, Q/K/V in one launch) bit for bit what the full groups give.
    /// </summary>
    [Fact]
    public void GemvGroupSizeChangesNoBits()
    {
        var rng = new Random(77);
        using var full = Create("nvidia-like");
        using var narrow = Create("nvidia-like");
        narrow.GemvGroupsTarget = 1 << 20;
        using var arena = new RandomTensors(78);
        int cols = 128;
        var weights = new List<(string What, Func<GpuBackend, Weight> Load, int Rows)>();
        foreach (int bits in new[] { 8, 4 })
            foreach (int rows in new[] { 40, 24, 24 })
            {
                var q = TestUtil.Random(rng, bits, rows, cols, 32, zeros: bits == 4);
                weights.Add(($"q{bits} {rows}", b => b.LoadQuantized(q), rows));
            }
        foreach (int rows in new[] { 40, 24, 24 })
        {
            var t = arena.Matrix($"bf16.{rows}", DType.BF16, rows, cols, 0.2f);
            weights.Add(($"bf16 {rows}", b => b.LoadWeight(t), rows));
        }
        var x = TestUtil.RandomVector(rng, cols);
        float[] Run(GpuBackend b)
        {
            var outs = new List<float>();
            var ws = weights.Select(w => w.Load(b)).ToArray();
            using var xb = b.Allocate(cols);
            b.Upload(x, xb);
            for (int i = 0; i < ws.Length; i += 3)
            {
                var ys = Enumerable.Range(0, 3).Select(j => b.Allocate(weights[i + j].Rows)).ToArray();
                using var sw = b.Allocate(weights[i + 1].Rows);
                try
                {
                    b.MatMul(xb, ws[i], ys[0], 1);
                    b.MatMulSwiGlu(xb, ws[i + 1], ws[i + 2], sw, 1);
                    foreach (var (buf, n) in new[] { (ys[0], weights[i].Rows), (sw, weights[i + 1].Rows) })
                    {
                        var y = new float[n]; b.Download(buf, 0, y); outs.AddRange(y);
                    }
                    var before = b.Counters;
                    b.MatMul3(xb, 1, ws[i], ys[0], null, ws[i + 1], ys[1], null, ws[i + 2], ys[2], null);
                    Assert.Equal(1, (b.Counters - before).Launches);
                    for (int j = 0; j < 3; j++)
                    {
                        var y = new float[weights[i + j].Rows]; b.Download(ys[j], 0, y); outs.AddRange(y);
                    }
                }
                finally { foreach (var y in ys) y.Dispose(); }
            }
            return [.. outs];
        }
        var want = Run(full);
        var got = Run(narrow);
        Assert.True(want.All(float.IsFinite));
        Assert.Equal(want, got);
    }

    /// <summary>An int8/int4 product with the residual add and norm in one launch: bit for bit MatMul then AddRmsNorm.</summary>
    [Theory]
    [InlineData(8, "default")]
    [InlineData(4, "nvidia-like")]
    public void QuantProductWithResidualNormInOneLaunchEqualsTheTwoOps(int bits, string device)
    {
        var rng = new Random(bits + 40);
        int outF = 72, cols = 128;
        var q = TestUtil.Random(rng, bits, outF, cols, 32, zeros: bits == 4);
        using var gpu = Create(device);
        var w = gpu.LoadQuantized(q);
        using var arena = new RandomTensors(bits + 1);
        var norm = gpu.LoadWeight(arena.Vector("norm", outF, 0.5f, 1f));
        int keep = gpu.ExactRows;
        try
        {
            gpu.ExactRows = 4;
            foreach (int n in new[] { 1, 3 })
            {
                var x = TestUtil.RandomVector(rng, n * cols);
                var res = TestUtil.RandomVector(rng, n * outF);
                var bufs = Enumerable.Range(0, 8).Select(_ => gpu.Allocate(n * Math.Max(cols, outF))).ToArray();
                try
                {
                    var (xb, r1, r2, y1, y2, n1, n2) = (bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], bufs[5], bufs[6]);
                    gpu.Upload(x, xb); gpu.Upload(res, r1); gpu.Upload(res, r2);
                    var before = gpu.Counters;
                    gpu.MatMulAddRmsNorm(xb, w, y1, n, r1, norm, n1, 1e-5f);
                    Assert.Equal(1, (gpu.Counters - before).Launches);
                    gpu.MatMul(xb, w, y2, n);
                    gpu.AddRmsNorm(r2, y2, norm, n2, n, 1e-5f);
                    foreach (var (a, b, what) in new[] { (y1, y2, "product"), (r1, r2, "residual"), (n1, n2, "normed") })
                    {
                        var got = new float[n * outF]; var want = new float[n * outF];
                        gpu.Download(a, 0, got); gpu.Download(b, 0, want);
                        Assert.True(got.SequenceEqual(want), $"q{bits} {device}, {n} rows: {what} differs from the two ops");
                    }
                }
                finally { foreach (var b in bufs) b.Dispose(); }
            }
        }
        finally { gpu.ExactRows = keep; }
    }

    public static TheoryData<int, int, int, bool, string> SwiGluCases()
    {
        var data = new TheoryData<int, int, int, bool, string>();
        foreach (var device in new[] { "default", "nvidia-like" })
            foreach (var (bits, cols, group, zeros) in new[] { (4, 64, 32, true), (8, 96, 32, false), (4, 192, 192, false), (4, 100, 100, true), (8, 172, 172, false) })
                data.Add(bits, cols, group, zeros, device);
        return data;
    }

    /// <summary>
    /// The fused gate/up GEMV with SwiGLU (decode's largest product) against the scalar reference, for shapes that read
    /// 8 bytes per lane and shapes that do not; and the quantized embedding lookup.
    /// </summary>
    [Theory, MemberData(nameof(SwiGluCases))]
    public void SwiGluGemvAndEmbed(int bits, int cols, int group, bool zeros, string device)
    {
        var rng = new Random(11 + bits + cols);
        int rows = 24;
        var gq = TestUtil.Random(rng, bits, rows, cols, group, zeros);
        var uq = TestUtil.Random(rng, bits, rows, cols, group, zeros);
        using var gpu = Create(device);
        var gw = gpu.LoadQuantized(gq); var uw = gpu.LoadQuantized(uq);
        Assert.Equal(bits == 8 ? cols % 8 == 0 : cols % 64 == 0, GpuBackend.ReadsWide(gw));
        var x = TestUtil.RandomVector(rng, cols, 4);
        using var xb = gpu.Allocate(cols); using var yb = gpu.Allocate(rows);
        gpu.Upload(x, xb);
        gpu.MatMulSwiGlu(xb, gw, uw, yb, 1);
        var y = new float[rows];
        gpu.Download(yb, 0, y);
        var g = TestUtil.Reference(gq, x, 1); var u = TestUtil.Reference(uq, x, 1);
        for (int o = 0; o < rows; o++)
        {
            double e = g[o] / (1 + Math.Exp(-g[o])) * u[o];
            Assert.True(Math.Abs(y[o] - e) <= 1e-4 * (1 + Math.Abs(e)), $"q{bits} {cols}/{group}, row {o}: {y[o]} vs {e}");
        }

        using var eb = gpu.Allocate(2 * cols);
        gpu.Embed(gw, [5, 17], eb);
        var emb = new float[2 * cols];
        gpu.Download(eb, 0, emb);
        var row = new double[cols];
        foreach (var (r, id) in new[] { (0, 5), (1, 17) })
        {
            gq.DequantizeRow(id, row);
            for (int i = 0; i < cols; i++) Assert.Equal(row[i], emb[r * cols + i], 1e-6);
        }
    }

    /// <summary>
    /// Quantized prompt products on tensor cores (NVIDIA-like device: the CUDA path's tile staging and mma fragments, the
    /// instruction emulated): against the scalar reference within the f32 bound, per channel and per group (a group per
    /// K step, 32, and longer ones), zero points, a K tail (200 columns), ragged rows and outputs, bias, and one activation
    /// far larger than the rest (the hi/lo bf16 split).
    /// </summary>
    [Theory]
    [InlineData(8, 72, 200, 200, false)]
    [InlineData(8, 40, 256, 64, false)]
    [InlineData(4, 33, 192, 32, true)]
    [InlineData(4, 70, 256, 128, false)]
    [InlineData(4, 17, 128, 128, true)]
    public void TensorCoreProductMatchesReference(int bits, int outF, int cols, int group, bool zeros)
    {
        var rng = new Random(bits * 1000 + outF + cols + group);
        var q = TestUtil.Random(rng, bits, outF, cols, group, zeros);
        using var gpu = Create("nvidia-like");
        var w = gpu.LoadQuantized(q);
        Assert.True(gpu.UsesTensorCores(w, GpuBackend.MmaMinRowsQuantized));
        Assert.False(gpu.UsesTensorCores(w, 1));
        using var arena = new RandomTensors(bits + outF);
        var bv = TestUtil.RandomVector(rng, outF);
        var bias = gpu.LoadWeight(arena.Tensor("bias", DType.F32, [outF], bv));
        foreach (int n in new[] { 2, 65 })
        {
            var x = TestUtil.RandomVector(rng, n * cols);
            x[3] = 250f; x[cols + 5] = -1e-3f;
            var expected = TestUtil.Reference(q, x, n);
            using var xb = gpu.Allocate(n * cols);
            using var yb = gpu.Allocate(n * outF);
            gpu.Upload(x, xb);
            foreach (bool withBias in new[] { false, true })
            {
                var poison = new float[n * outF]; Array.Fill(poison, float.NaN); gpu.Upload(poison, yb);
                gpu.MatMul(xb, w, yb, n, withBias ? bias : null);
                var y = new float[n * outF];
                gpu.Download(yb, 0, y);
                if (withBias) for (int i = 0; i < y.Length; i++) y[i] -= bv[i % outF];
                TestUtil.CheckBound(q, x, y, expected, n, quantizedActivations: false);
            }
        }
    }

    /// <summary>
    /// An int4 model end to end against the float64 reference: a prompt and a decode step, then the decode step's launch
    /// count. On the NVIDIA-like device a 16-row prompt alone (its products on tensor cores where the shape allows
    /// them; each emulated launch pays for every simulated warp exchange, so one row tile and no decode step).
    /// </summary>
    [Theory]
    [InlineData("default")]
    [InlineData("nvidia-like")]
    public void QuantizedModelMatchesReference(string device)
    {
        string src = SharedData.Model("stories260k");
        string root = CheckpointWriters.TempDir("gpu"), dir = Path.Combine(root, "m");
        bool mma = device == "nvidia-like";
        try
        {
            Quantizer.QuantizeModel(src, dir, new QuantizeOptions { Bits = 4, Group = "32", Asymmetric = true });
            int[] prompt = mma ? [1, 403, 407, 261, 378, 500, 285, 17, 93, 402, 311, 260, 77, 499, 388, 12] : [1, 403, 407, 261, 378, 500, 285];
            float[] Logits(IBackend b)
            {
                using var m = ModelRegistry.Load(dir, b);
                var l = new float[prompt.Length * m.VocabSize];
                m.Forward(prompt, 0, l);
                if (mma) return l;
                var last = new float[m.VocabSize];
                m.Forward([prompt[^1]], prompt.Length, last); // one decode step (GEMV path)
                return [.. l, .. last];
            }
            var expected = Logits(new ReferenceBackend());
            using var gpu = Create(device);
            var got = Logits(gpu);
            double err = TestUtil.RelErr(got, expected.Select(v => (double)v).ToArray());
            Assert.True(err < 1e-4, $"relative error {err:E2}");
            if (mma) return; // the 64-column products (Q/K/V/O, gate/up, head) ran on tensor cores, the 172-column down product did not
            // An int4 decode step launches as a float one does: per layer Q/K/V with RoPE and the cache writes,
            // attention, O with the residual add and norm, gate/up+SwiGLU, down with the residual add and norm; per
            // token embed, first norm, head.
            using var model = ModelRegistry.Load(dir, gpu);
            using var state = model.CreateState();
            var logits = new float[model.VocabSize];
            model.Forward(state, prompt, 0, logits);
            model.Forward(state, [prompt[^1]], prompt.Length, logits);
            var before = gpu.Counters;
            model.Forward(state, [prompt[^2]], prompt.Length + 1, logits);
            int layers = ((Llama)model).Config.NumLayers;
            Assert.Equal(3 + 5 * layers, (gpu.Counters - before).Launches);
        }
        finally { Directory.Delete(root, true); }
    }

    /// <summary>A LoRA adapter over an int8 and an int4 base on the GPU backend gives the float64 reference's logits.</summary>
    [Fact]
    public void LoraOverQuantizedBasesMatchesReference()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string adapter = LoraFiles.Write(tmp.Sub("a"), dir, ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 8, 16, seed: 9);
        foreach (int bits in new[] { 8, 4 })
        {
            var q = Quantizer.QuantizeModel(dir, tmp.Sub($"q{bits}"), bits, "auto", null).OutputDirectory;
            using var gpu = Create("nvidia-like");
            using var reference = new ReferenceBackend();
            float[] Run(IBackend b)
            {
                using var m = ModelRegistry.Load(q, b);
                var mb = (ModelBase)m;
                using var st = m.CreateState();
                mb.SetAdapters(st, [mb.LoadAdapter(adapter)]);
                var logits = new float[12 * m.VocabSize];
                m.Forward(st, Enumerable.Range(0, 12).Select(i => 3 + 37 * i % 500).ToArray(), 0, logits);
                return logits;
            }
            var got = Run(gpu);
            var want = Run(reference);
            double num = 0, den = 0;
            for (int i = 0; i < got.Length; i++) { num += (got[i] - want[i]) * (double)(got[i] - want[i]); den += want[i] * (double)want[i]; }
            Assert.True(Math.Sqrt(num / den) < 1e-4, $"q{bits}: relative L2 {Math.Sqrt(num / den):E2}");
        }
    }
}
