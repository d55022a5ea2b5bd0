using Lrl.Kernels;
using Lrl.Kernels.Reference;

namespace Lrl.Gpu.Tests;

/// <summary>Every GPU kernel against the float64 ReferenceBackend, fresh random inputs, odd and even sizes, NaN-poisoned outputs.</summary>
[Collection("gpu")]
public class KernelTests
{
    private const double F32Tol = 1e-5;
    public static TheoryData<string> Kinds => new(Backends.KernelKinds);

    public static TheoryData<string, DType> KindsAndDTypes
    {
        get
        {
            var d = new TheoryData<string, DType>();
            foreach (var k in Backends.KernelKinds)
                foreach (var t in new[] { DType.F32, DType.F16, DType.BF16 }) d.Add(k, t);
            return d;
        }
    }

    private static int Seed() => Random.Shared.Next();

    [Theory, MemberData(nameof(KindsAndDTypes))]
    public void EmbedGathersRowsInStoredDType(string kind, DType dtype)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (var (vocab, dim) in new[] { (50, 33), (17, 64), (9, 577) })
        {
            var t = arena.Matrix("embed", dtype, vocab, dim);
            using var wg = g.LoadWeight(t); using var wr = r.LoadWeight(t);
            foreach (int n in new[] { 1, 5 })
            {
                var ids = Enumerable.Range(0, n).Select(_ => arena.Rng.Next(vocab)).ToArray();
                using var xg = Check.Poisoned(g, n * dim); using var xr = r.Allocate(n * dim);
                g.Embed(wg, ids, xg); r.Embed(wr, ids, xr);
                Check.Close(Check.Read(g, xg, n * dim), Check.Read(r, xr, n * dim), 0, $"embed {dtype} {vocab}x{dim} n={n}");
            }
        }
    }

    /// <summary>
    /// Under <see cref="GpuBackend.ExactRows"/> a product of several rows (plain, fused gate/up SwiGLU, fused Q/K/V) gives
    /// each row bit for bit its one-row product, down to one-output-block matrices (the rows × blocks launch pads to two
    /// blocks); with the default it takes the tiled kernels.
    /// </summary>
    [Theory]
    [InlineData("cpu-accelerator", DType.F32)]
    [InlineData("cpu-accelerator", DType.BF16)]
    [InlineData("cpu-accelerator-nvidia", DType.F16)]
    [InlineData("cuda", DType.BF16)]
    public void ExactRowsProductsEqualOneRowProducts(string kind, DType dtype)
    {
        var g = Backends.Get(kind);
        using var arena = new RandomTensors(Seed());
        int keep = g.ExactRows;
        try
        {
            g.ExactRows = 8;
            foreach (var (outF, inF) in new[] { (1, 64), (3, 33), (37, 96) })
                foreach (int rows in new[] { 2, 5 })
                {
                    var wt = arena.Matrix("w", dtype, outF, inF); var ut = arena.Matrix("u", dtype, outF, inF); var vt = arena.Matrix("v", dtype, outF, inF);
                    using var w = g.LoadWeight(wt); using var u = g.LoadWeight(ut); using var v = g.LoadWeight(vt);
                    var x = arena.Floats(rows * inF);
                    using var xg = Check.Buffer(g, x);
                    using var y = Check.Poisoned(g, rows * outF); using var y2 = Check.Poisoned(g, rows * outF); using var y3 = Check.Poisoned(g, rows * outF);
                    g.MatMul(xg, w, y, rows);
                    var all = Check.Read(g, y, rows * outF);
                    g.MatMulSwiGlu(xg, w, u, y2, rows);
                    var glu = Check.Read(g, y2, rows * outF);
                    g.MatMul3(xg, rows, w, y, null, u, y2, null, v, y3, null);
                    var qkv = Check.Read(g, y, rows * outF).Concat(Check.Read(g, y2, rows * outF)).Concat(Check.Read(g, y3, rows * outF)).ToArray();
                    for (int r = 0; r < rows; r++)
                    {
                        using var one = Check.Buffer(g, x.AsSpan(r * inF, inF).ToArray());
                        using var o1 = g.Allocate(outF); using var o2 = g.Allocate(outF); using var o3 = g.Allocate(outF);
                        string at = $"{dtype} {outF}x{inF}, row {r} of {rows}";
                        g.MatMul(one, w, o1, 1);
                        Assert.True(Check.Read(g, o1, outF).SequenceEqual(all.AsSpan(r * outF, outF).ToArray()), $"matmul {at}");
                        g.MatMulSwiGlu(one, w, u, o1, 1);
                        Assert.True(Check.Read(g, o1, outF).SequenceEqual(glu.AsSpan(r * outF, outF).ToArray()), $"swiglu {at}");
                        g.MatMul3(one, 1, w, o1, null, u, o2, null, v, o3, null);
                        var lone = Check.Read(g, o1, outF).Concat(Check.Read(g, o2, outF)).Concat(Check.Read(g, o3, outF)).ToArray();
                        for (int m = 0; m < 3; m++)
                            Assert.True(lone.AsSpan(m * outF, outF).SequenceEqual(qkv.AsSpan(m * rows * outF + r * outF, outF)), $"matmul3 part {m} {at}");
                    }
                }
        }
        finally { g.ExactRows = keep; }
    }

    /// <summary>
    /// A product that ends a residual block with the next norm in one launch (a decode row, and exact rows): the
    /// product, the updated residual and the normed rows bit for bit those of MatMul then AddRmsNorm, in one launch
    /// instead of two, for row lengths of one to several output blocks.
    /// </summary>
    [Theory]
    [InlineData("cpu-accelerator", DType.F32)]
    [InlineData("cpu-accelerator-nvidia", DType.BF16)]
    [InlineData("cuda", DType.BF16)]
    public void ProductWithResidualNormInOneLaunchEqualsTheTwoOps(string kind, DType dtype)
    {
        var g = Backends.Get(kind);
        using var arena = new RandomTensors(Seed());
        int keep = g.ExactRows;
        try
        {
            g.ExactRows = 4;
            foreach (var (outF, inF) in new[] { (5, 64), (37, 40), (300, 96) })
                foreach (int rows in new[] { 1, 3 })
                {
                    using var w = g.LoadWeight(arena.Matrix("w", dtype, outF, inF));
                    using var norm = g.LoadWeight(arena.Vector("norm", outF, 0.5f, 1f));
                    var x = arena.Floats(rows * inF);
                    var res = arena.Floats(rows * outF);
                    using var xg = Check.Buffer(g, x);
                    using var r1 = Check.Buffer(g, res); using var r2 = Check.Buffer(g, res);
                    using var y1 = Check.Poisoned(g, rows * outF); using var y2 = Check.Poisoned(g, rows * outF);
                    using var n1 = Check.Poisoned(g, rows * outF); using var n2 = Check.Poisoned(g, rows * outF);
                    var before = g.Counters;
                    g.MatMulAddRmsNorm(xg, w, y1, rows, r1, norm, n1, 1e-5f);
                    Assert.Equal(1, (g.Counters - before).Launches);
                    g.MatMul(xg, w, y2, rows);
                    g.AddRmsNorm(r2, y2, norm, n2, rows, 1e-5f);
                    string at = $"{kind} {dtype} {outF}x{inF}, {rows} rows";
                    Assert.True(Check.Read(g, y1, rows * outF).SequenceEqual(Check.Read(g, y2, rows * outF)), $"product {at}");
                    Assert.True(Check.Read(g, r1, rows * outF).SequenceEqual(Check.Read(g, r2, rows * outF)), $"residual {at}");
                    Assert.True(Check.Read(g, n1, rows * outF).SequenceEqual(Check.Read(g, n2, rows * outF)), $"normed {at}");
                }
        }
        finally { g.ExactRows = keep; }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void EmbedRejectsTokenOutsideVocabulary(string kind)
    {
        var g = Backends.Get(kind);
        using var arena = new RandomTensors(1);
        using var w = g.LoadWeight(arena.Matrix("embed", DType.F32, 10, 8));
        using var x = g.Allocate(16);
        var e = Assert.Throws<LrlException>(() => g.Embed(w, [3, 10], x));
        Assert.Contains("10", e.Message);
    }

    [Theory, MemberData(nameof(Kinds))]
    public void RmsNormAndAddRmsNormMatchReference(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (int n in new[] { 33, 64, 97, 577 })
            foreach (int rows in new[] { 1, 3 })
            {
                var wt = arena.Vector("norm", n, 0.5f, 1f);
                using var wg = g.LoadWeight(wt); using var wr = r.LoadWeight(wt);
                var x = arena.Floats(rows * n, 3f); var d = arena.Floats(rows * n);
                using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
                using var yg = Check.Poisoned(g, rows * n); using var yr = r.Allocate(rows * n);
                g.RmsNorm(xg, wg, yg, rows, 1e-5f); r.RmsNorm(xr, wr, yr, rows, 1e-5f);
                Check.Close(Check.Read(g, yg, rows * n), Check.Read(r, yr, rows * n), F32Tol, $"rmsnorm n={n} rows={rows}");

                using var dg = Check.Buffer(g, d); using var dr = Check.Buffer(r, d);
                using var zg = Check.Poisoned(g, rows * n); using var zr = r.Allocate(rows * n);
                g.AddRmsNorm(xg, dg, wg, zg, rows, 1e-6f); r.AddRmsNorm(xr, dr, wr, zr, rows, 1e-6f);
                Check.Close(Check.Read(g, xg, rows * n), Check.Read(r, xr, rows * n), F32Tol, $"add_rmsnorm residual n={n}");
                Check.Close(Check.Read(g, zg, rows * n), Check.Read(r, zr, rows * n), F32Tol, $"add_rmsnorm n={n} rows={rows}");
            }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void LayerNormMatchesReference(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (int n in new[] { 33, 64, 577 })
            foreach (int rows in new[] { 1, 4 })
            {
                var wt = arena.Vector("ln.w", n, 0.5f, 1f); var bt = arena.Vector("ln.b", n);
                using var wg = g.LoadWeight(wt); using var wr = r.LoadWeight(wt);
                using var bg = g.LoadWeight(bt); using var br = r.LoadWeight(bt);
                var x = arena.Floats(rows * n, 2f);
                for (int i = 0; i < x.Length; i++) x[i] += 3f; // non-zero mean
                using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
                using var yg = Check.Poisoned(g, rows * n); using var yr = r.Allocate(rows * n);
                g.LayerNorm(xg, wg, bg, yg, rows, 1e-5f); r.LayerNorm(xr, wr, br, yr, rows, 1e-5f);
                Check.Close(Check.Read(g, yg, rows * n), Check.Read(r, yr, rows * n), F32Tol, $"layernorm n={n} rows={rows}");
            }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void RopeMatchesReference(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (var (heads, headDim, rotary) in new[] { (3, 64, 64), (2, 16, 16), (5, 32, 24) })
            foreach (var (rows, pos0) in new[] { (1, 0), (1, 1000), (3, 7), (9, 4000) })
            {
                var inv = new float[rotary / 2];
                for (int i = 0; i < inv.Length; i++) inv[i] = (float)Math.Pow(10000, -2.0 * i / rotary);
                var rope = new RopeTable(inv);
                int n = rows * heads * headDim;
                var x = arena.Floats(n);
                using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
                g.Rope(xg, rows, heads, headDim, pos0, rope); r.Rope(xr, rows, heads, headDim, pos0, rope);
                Check.Close(Check.Read(g, xg, n), Check.Read(r, xr, n), F32Tol, $"rope h={heads} d={headDim} rot={rotary} rows={rows} pos={pos0}");
            }
    }

    [Theory, MemberData(nameof(KindsAndDTypes))]
    public void MatMulMatchesReferenceForEveryDTypeAndShape(string kind, DType dtype)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (var (outF, inF) in new[] { (33, 97), (64, 577), (130, 64), (7, 36), (5, 4) })
        {
            var wt = arena.Matrix("w", dtype, outF, inF, 0.2f);
            var bt = arena.Vector("b", outF);
            using var wg = g.LoadWeight(wt); using var wr = r.LoadWeight(wt);
            using var bg = g.LoadWeight(bt); using var br = r.LoadWeight(bt);
            foreach (int rows in new[] { 1, 3, 9 })
                foreach (bool bias in new[] { false, true })
                {
                    var x = arena.Floats(rows * inF);
                    using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
                    using var yg = Check.Poisoned(g, rows * outF); using var yr = r.Allocate(rows * outF);
                    g.MatMul(xg, wg, yg, rows, bias ? bg : null); r.MatMul(xr, wr, yr, rows, bias ? br : null);
                    Check.Close(Check.Read(g, yg, rows * outF), Check.Read(r, yr, rows * outF), F32Tol,
                        $"matmul {dtype} {outF}x{inF} rows={rows} bias={bias}");
                }
        }
    }

    /// <summary>
    /// The tensor-core prefill product (bf16 weights, or f16/f32 weights split into two bf16 terms; activations split
    /// into two bf16 terms) against the reference at f32 tolerance, on ragged shapes: rows, outputs and K not multiples
    /// of the 64 × 64 × 32 tiles, K not a multiple of four (the weights' scalar loads), with and without a bias, every
    /// output written (the output starts poisoned). Taken on 32-lane warps (the NVIDIA-like CPU accelerator: the
    /// instruction emulated from the same fragments; CUDA on sm_80+).
    /// </summary>
    [Theory, MemberData(nameof(KindsAndDTypes))]
    public void TensorCoreProductMatchesReference(string kind, DType dtype)
    {
        var g = Backends.Get(kind);
        Assert.SkipUnless(g.UsesTensorCores(GpuBackend.MmaMinRows), $"{kind}: no tensor-core path (warps of 32 on CUDA sm_80+ or the NVIDIA-like CPU accelerator)");
        Assert.False(g.UsesTensorCores(GpuBackend.MmaMinRows - 1));
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (var (outF, inF, rows) in new[] { (72, 40, 65), (33, 37, 16) })
        {
            var wt = arena.Matrix("w", dtype, outF, inF, 0.2f);
            var bt = arena.Vector("b", outF);
            using var wg = g.LoadWeight(wt); using var wr = r.LoadWeight(wt);
            using var bg = g.LoadWeight(bt); using var br = r.LoadWeight(bt);
            var x = arena.Floats(rows * inF);
            x[5] = 300f; x[inF + 3] = -1e-3f; // a wide range of magnitudes in one row tile
            using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
            foreach (bool bias in new[] { false, true })
            {
                using var yg = Check.Poisoned(g, rows * outF); using var yr = r.Allocate(rows * outF);
                g.MatMul(xg, wg, yg, rows, bias ? bg : null); r.MatMul(xr, wr, yr, rows, bias ? br : null);
                Check.Close(Check.Read(g, yg, rows * outF), Check.Read(r, yr, rows * outF), F32Tol,
                    $"tensor-core matmul {dtype} {outF}x{inF} rows={rows} bias={bias}");
            }
        }
    }

    [Theory, MemberData(nameof(KindsAndDTypes))]
    public void FusedGateUpSwiGluMatchesSeparateOps(string kind, DType dtype)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (var (outF, inF) in new[] { (97, 64), (33, 33) })
        foreach (int rows in new[] { 1, 3 })
        {
            var gt = arena.Matrix("gate", dtype, outF, inF, 0.3f); var ut = arena.Matrix("up", dtype, outF, inF, 0.3f);
            using var gg = g.LoadWeight(gt); using var ug = g.LoadWeight(ut);
            using var gr = r.LoadWeight(gt); using var ur = r.LoadWeight(ut);
            var x = arena.Floats(rows * inF);
            using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
            using var yg = Check.Poisoned(g, rows * outF);
            using var a = r.Allocate(rows * outF); using var b = r.Allocate(rows * outF);
            g.MatMulSwiGlu(xg, gg, ug, yg, rows);
            r.MatMul(xr, gr, a, rows); r.MatMul(xr, ur, b, rows); r.SwiGlu(a, b, a, rows * outF);
            Check.Close(Check.Read(g, yg, rows * outF), Check.Read(r, a, rows * outF), F32Tol, $"gemv+swiglu {dtype} {outF}x{inF} rows={rows}");
        }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void AttentionMatchesReferenceForDecodeAndPrefill(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        // (20, 2, 16): 10 query heads a KV head, which split-K serves in blocks of 8 and 2: the one-row steps at 1 and 41
        // positions only (split-K is the one-row path; its other cases cost the emulated NVIDIA-like device ~25 s).
        foreach (var (heads, kvHeads, headDim) in new[] { (4, 2, 16), (3, 3, 64), (2, 1, 33), (2, 2, 160), (20, 2, 16) })
            foreach (var (rows, pos0) in new[] { (1, 0), (1, 40), (1, 600), (5, 0), (11, 7), (3, 37) })
            {
                if (heads == 20 && (rows > 1 || pos0 > 40)) continue;
                int n = pos0 + rows, kvDim = kvHeads * headDim, qDim = heads * headDim;
                var q = arena.Floats(rows * qDim); var k = arena.Floats(n * kvDim); var v = arena.Floats(n * kvDim);
                using var qg = Check.Buffer(g, q); using var kg = Check.Buffer(g, k); using var vg = Check.Buffer(g, v);
                using var qr = Check.Buffer(r, q); using var kr = Check.Buffer(r, k); using var vr = Check.Buffer(r, v);
                using var og = Check.Poisoned(g, rows * qDim); using var or = r.Allocate(rows * qDim);
                float scale = 1f / MathF.Sqrt(headDim) * 2f;
                g.Attention(qg, kg, vg, og, rows, pos0, heads, kvHeads, headDim, scale);
                r.Attention(qr, kr, vr, or, rows, pos0, heads, kvHeads, headDim, scale);
                Check.Close(Check.Read(g, og, rows * qDim), Check.Read(r, or, rows * qDim), F32Tol,
                    $"attention h={heads}/{kvHeads} d={headDim} rows={rows} pos0={pos0}");
            }
    }

    /// <summary>
    /// Rows under <see cref="GpuBackend.ExactRows"/> split each at its own length, so the shorter rows have splits they do
    /// not use (empty partials the merge skips): with 8 query heads on one KV head, one group serves all 8, more heads
    /// than the small emulated groups have threads; every head's empty partials must still be marked.
    /// </summary>
    [Theory, MemberData(nameof(Kinds))]
    public void ExactRowsAttentionMarksEveryHeadsEmptySplits(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        const int heads = 8, kvHeads = 1, headDim = 16, qDim = heads * headDim, kvDim = kvHeads * headDim;
        int keep = g.ExactRows;
        try
        {
            g.ExactRows = 8;
            // 31, 32 and 33 positions: one split, one split, two on the emulated devices (target 4 groups, one unit).
            foreach (var (rows, pos0) in new[] { (3, 30), (3, 60), (3, 30) })
            {
                int n = pos0 + rows;
                var q = arena.Floats(rows * qDim); var k = arena.Floats(n * kvDim); var v = arena.Floats(n * kvDim);
                using var qg = Check.Buffer(g, q); using var kg = Check.Buffer(g, k); using var vg = Check.Buffer(g, v);
                using var qr = Check.Buffer(r, q); using var kr = Check.Buffer(r, k); using var vr = Check.Buffer(r, v);
                using var og = Check.Poisoned(g, rows * qDim); using var or = r.Allocate(rows * qDim);
                g.Attention(qg, kg, vg, og, rows, pos0, heads, kvHeads, headDim, 0.5f);
                r.Attention(qr, kr, vr, or, rows, pos0, heads, kvHeads, headDim, 0.5f);
                Check.Close(Check.Read(g, og, rows * qDim), Check.Read(r, or, rows * qDim), F32Tol, $"exact-rows attention rows={rows} pos0={pos0}");
            }
        }
        finally { g.ExactRows = keep; }
    }

    /// <summary>
    /// A batched step's RoPE + cache writes and attention for many sequences (RopeAndCacheSequences,
    /// AttentionSequences): up to eight sequences a launch, each sequence's q rows, output and caches bit for bit what
    /// its own RopeAndCache and AttentionRows give, and equal to the reference. Ten sequences at their own positions and
    /// rows (a gap row between two, rows of 1-3 under ExactRows, one 6-row prompt chunk that attends alone): two RoPE
    /// launches (8 + 2), attention 8 + 1 + the chunk's = 3, where one sequence at a time took 20.
    /// </summary>
    [Theory, MemberData(nameof(Kinds))]
    public void ManySequencesRopeAndAttendInFewLaunchesWithTheirOwnBits(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        var rope = new RopeTable(Enumerable.Range(0, 8).Select(i => (float)Math.Pow(10000, -2.0 * i / 16)).ToArray());
        (int Rows, int Pos0)[] shapes = [(1, 0), (1, 31), (2, 40), (1, 70), (6, 12), (1, 3), (3, 34), (1, 90), (1, 33), (1, 7)];
        // The NVIDIA-like emulation (256 threads a group) takes the first shape only (~20 s for both).
        foreach (var (heads, kvHeads, headDim) in kind.EndsWith("nvidia", StringComparison.Ordinal) ? [(4, 2, 16)] : new[] { (4, 2, 16), (8, 1, 16) })
        {
            int qDim = heads * headDim, kvDim = kvHeads * headDim;
            int total = shapes.Sum(x => x.Rows) + 1; // one unused row (4) between the third and fourth sequences
            var q = arena.Floats(total * qDim); var k = arena.Floats(total * kvDim); var v = arena.Floats(total * kvDim);
            var caches = shapes.Select(x => (K: arena.Floats((x.Pos0 + x.Rows + 5) * kvDim), V: arena.Floats((x.Pos0 + x.Rows + 5) * kvDim))).ToArray();
            var rows0 = new int[shapes.Length];
            for (int i = 0, at = 0; i < shapes.Length; i++) { if (i == 3) at++; rows0[i] = at; at += shapes[i].Rows; }
            var bufs = new List<DeviceBuffer>();
            DeviceBuffer Buf(IBackend b, float[] x) { var d = Check.Buffer(b, x); bufs.Add(d); return d; }
            // (1) many sequences at once; (2) one at a time on the same backend; (3) the reference, one at a time.
            var runs = new (IBackend B, DeviceBuffer Q, DeviceBuffer K, DeviceBuffer V, DeviceBuffer O, SequenceRows[] S)[3];
            for (int run = 0; run < 3; run++)
            {
                IBackend b = run < 2 ? g : r;
                var o = Buf(b, Enumerable.Repeat(float.NaN, total * qDim).ToArray());
                runs[run] = (b, Buf(b, q), Buf(b, k), Buf(b, v), o,
                             shapes.Select((x, i) => new SequenceRows(rows0[i], x.Rows, x.Pos0, Buf(b, caches[i].K), Buf(b, caches[i].V))).ToArray());
            }
            int keep = g.ExactRows;
            try
            {
                g.ExactRows = 4;
                var m = runs[0];
                var before = g.Counters;
                g.RopeAndCacheSequences(m.Q, m.K, m.V, m.S, heads, kvHeads, headDim, rope);
                long ropeLaunches = (g.Counters - before).Launches;
                before = g.Counters;
                g.AttentionSequences(m.Q, m.O, m.S, heads, kvHeads, headDim, 0.3f);
                long attnLaunches = (g.Counters - before).Launches;
                Assert.Equal(2, ropeLaunches);
                Assert.Equal(3, attnLaunches);
                for (int run = 1; run < 3; run++)
                {
                    var (b, qb, kb, vb, ob, seqs) = runs[run];
                    foreach (var sq in seqs)
                    {
                        b.RopeAndCache(qb, kb, vb, sq.Row0, sq.Rows, heads, kvHeads, headDim, sq.Pos0, rope, sq.KCache, sq.VCache);
                        b.AttentionRows(qb, sq.KCache, sq.VCache, ob, sq.Row0, sq.Rows, sq.Pos0, heads, kvHeads, headDim, 0.3f);
                    }
                }
                string what = $"h={heads}/{kvHeads}";
                var outMany = Check.Read(g, m.O, total * qDim);
                Assert.Equal(Check.Read(g, runs[1].Q, total * qDim), Check.Read(g, m.Q, total * qDim));
                Assert.Equal(Check.Read(g, runs[1].O, total * qDim), outMany);
                for (int i = 0; i < shapes.Length; i++)
                {
                    long len = (long)(shapes[i].Pos0 + shapes[i].Rows + 5) * kvDim;
                    Assert.Equal(Check.Read(g, runs[1].S[i].KCache, len), Check.Read(g, m.S[i].KCache, len));
                    Assert.Equal(Check.Read(g, runs[1].S[i].VCache, len), Check.Read(g, m.S[i].VCache, len));
                    Check.Close(Check.Read(g, m.S[i].KCache, len), Check.Read(r, runs[2].S[i].KCache, len), F32Tol, $"{what} k cache {i}");
                    Check.Close(Check.Read(g, m.S[i].VCache, len), Check.Read(r, runs[2].S[i].VCache, len), F32Tol, $"{what} v cache {i}");
                }
                Check.Close(Check.Read(g, m.Q, total * qDim), Check.Read(r, runs[2].Q, total * qDim), F32Tol, $"{what} rotated q");
                // The gap row stays untouched (NaN); every sequence's rows match the reference.
                Assert.All(outMany.AsSpan(4 * qDim, qDim).ToArray(), x => Assert.True(float.IsNaN(x)));
                var outRef = Check.Read(r, runs[2].O, total * qDim);
                for (int i = 0; i < shapes.Length; i++)
                {
                    int a = rows0[i] * qDim, len = shapes[i].Rows * qDim;
                    Check.Close(outMany.AsSpan(a, len).ToArray(), outRef.AsSpan(a, len).ToArray(), F32Tol, $"{what} attention of sequence {i}");
                }
            }
            finally
            {
                g.ExactRows = keep;
                foreach (var d in bufs) d.Dispose();
            }
        }
    }

    /// <summary>
    /// A batched step's unrotated cache writes (GPT-2) for ten sequences: two launches (8 + 2) and no device copies, where
    /// each sequence took two copies; every cache equal to the per-sequence copies, the rows past them untouched.
    /// </summary>
    [Theory, MemberData(nameof(Kinds))]
    public void ManySequencesCacheWritesInTwoLaunches(string kind)
    {
        var g = Backends.Get(kind);
        using var arena = new RandomTensors(Seed());
        const int kvDim = 48;
        (int Rows, int Pos0)[] shapes = [(1, 0), (1, 31), (2, 40), (1, 70), (6, 12), (1, 3), (3, 34), (1, 90), (1, 33), (1, 7)];
        int total = shapes.Sum(x => x.Rows) + 1;
        var k = arena.Floats(total * kvDim); var v = arena.Floats(total * kvDim);
        var bufs = new List<DeviceBuffer>();
        DeviceBuffer Buf(float[] x) { var d = Check.Buffer(g, x); bufs.Add(d); return d; }
        try
        {
            var caches = shapes.Select(x => arena.Floats((x.Pos0 + x.Rows + 5) * kvDim)).ToArray();
            var rows0 = new int[shapes.Length];
            for (int i = 0, at = 0; i < shapes.Length; i++) { if (i == 3) at++; rows0[i] = at; at += shapes[i].Rows; }
            var (kb, vb) = (Buf(k), Buf(v));
            var many = shapes.Select((x, i) => new SequenceRows(rows0[i], x.Rows, x.Pos0, Buf(caches[i]), Buf(caches[i]))).ToArray();
            var alone = shapes.Select((x, i) => new SequenceRows(rows0[i], x.Rows, x.Pos0, Buf(caches[i]), Buf(caches[i]))).ToArray();
            var before = g.Counters;
            g.CacheSequences(kb, vb, many, kvDim);
            var d = g.Counters - before;
            Assert.Equal(2, d.Launches);
            Assert.Equal(0, d.DeviceCopies);
            ((IBackend)g).CacheSequences(kb, vb, [alone[0]], kvDim); // one sequence: its two copies
            foreach (var sq in alone.Skip(1))
            {
                g.Copy(kb, (long)sq.Row0 * kvDim, sq.KCache, (long)sq.Pos0 * kvDim, (long)sq.Rows * kvDim);
                g.Copy(vb, (long)sq.Row0 * kvDim, sq.VCache, (long)sq.Pos0 * kvDim, (long)sq.Rows * kvDim);
            }
            for (int i = 0; i < shapes.Length; i++)
            {
                long len = (long)(shapes[i].Pos0 + shapes[i].Rows + 5) * kvDim;
                Assert.Equal(Check.Read(g, alone[i].KCache, len), Check.Read(g, many[i].KCache, len));
                Assert.Equal(Check.Read(g, alone[i].VCache, len), Check.Read(g, many[i].VCache, len));
                Assert.Equal(caches[i].AsSpan((shapes[i].Pos0 + shapes[i].Rows) * kvDim).ToArray(),
                             Check.Read(g, many[i].KCache, len).AsSpan((shapes[i].Pos0 + shapes[i].Rows) * kvDim).ToArray());
            }
        }
        finally { foreach (var d in bufs) d.Dispose(); }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void ElementwiseOpsMatchReference(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (int n in new[] { 1, 33, 577, 1536 })
        {
            var a = arena.Floats(n, 4f); var b = arena.Floats(n, 4f);
            using var ag = Check.Buffer(g, a); using var bg = Check.Buffer(g, b);
            using var ar = Check.Buffer(r, a); using var br = Check.Buffer(r, b);
            using var yg = Check.Poisoned(g, n); using var yr = r.Allocate(n);
            g.SwiGlu(ag, bg, yg, n); r.SwiGlu(ar, br, yr, n);
            Check.Close(Check.Read(g, yg, n), Check.Read(r, yr, n), F32Tol, $"swiglu n={n}");
            g.SwiGlu(ag, bg, ag, n); r.SwiGlu(ar, br, ar, n); // aliased output
            Check.Close(Check.Read(g, ag, n), Check.Read(r, ar, n), F32Tol, $"swiglu in place n={n}");
            g.Gelu(bg, n); r.Gelu(br, n);
            Check.Close(Check.Read(g, bg, n), Check.Read(r, br, n), F32Tol, $"gelu n={n}");
            g.Add(ag, bg, n); r.Add(ar, br, n);
            Check.Close(Check.Read(g, ag, n), Check.Read(r, ar, n), F32Tol, $"add n={n}");
        }
    }

    [Theory, MemberData(nameof(Kinds))]
    public void CopyUploadDownloadRespectOffsets(string kind)
    {
        var g = Backends.Get(kind);
        using var arena = new RandomTensors(Seed());
        var a = arena.Floats(97);
        using var src = Check.Buffer(g, a);
        using var dst = Check.Poisoned(g, 50);
        g.Copy(src, 10, dst, 5, 40);
        var got = Check.Read(g, dst, 50);
        for (int i = 0; i < 40; i++) Assert.Equal(a[10 + i], got[5 + i]);
        Assert.True(float.IsNaN(got[4]) && float.IsNaN(got[45]));
        Assert.ThrowsAny<ArgumentException>(() => g.Copy(src, 90, dst, 0, 10));
    }

    /// <summary>LoRA storages the GPU holds as they are (<see cref="ILoraOps.LoadLora"/>'s stored dtype) and the bytes each costs per value.</summary>
    private static readonly (DType Stored, int Bytes)[] LoraStorages = [(DType.F32, 4), (DType.BF16, 2), (DType.I8, 1)];

    /// <summary>
    /// The unmerged update against the reference for f32, bf16 and int8 storage (one launch up to
    /// <see cref="GpuBackend.FusedLoraMaxRows"/> rows and rank 128, two past that), rows outside untouched, and the bytes
    /// each storage holds (bf16 half of f32, int8 a quarter plus a scale per rank row of A and Bᵀ).
    /// </summary>
    [Theory, MemberData(nameof(Kinds))]
    public void LoraRowsMatchReference(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (var (stored, bytes) in LoraStorages)
            foreach (var (total, row0, rows, inF, outF, rank) in new[] { (1, 0, 1, 64, 64, 1), (5, 2, 3, 67, 129, 4), (9, 0, 9, 576, 300, 16), (3, 1, 2, 173, 31, 7),
                                                                         (2, 1, 1, 96, 2500, 16), (4, 0, 4, 64, 1030, 5), (2, 0, 2, 40, 70, 130) })
            {
                var x = arena.Floats((long)total * inF);
                var y0 = arena.Floats((long)total * outF);
                var a = arena.Floats((long)rank * inF, 1f / MathF.Sqrt(inF));
                var b = arena.Floats((long)outF * rank);
                LoraGrid.Round(a, b, rank, inF, outF, stored);
                using var xg = Check.Buffer(g, x); using var yg = Check.Buffer(g, y0);
                using var xr = Check.Buffer(r, x); using var yr = Check.Buffer(r, y0);
                using var lg = ((ILoraOps)g).LoadLora("t", a, b, rank, inF, outF, stored);
                var lr = ((ILoraOps)r).LoadLora("t", a, b, rank, inF, outF);
                Assert.Equal((long)bytes * rank * (inF + outF) + (stored == DType.I8 ? 8L * rank : 0), lg.ByteSize);
                var before = g.Counters;
                ((ILoraOps)g).LoraRows(xg, row0, rows, lg, 1.5f, yg);
                Assert.Equal(rows <= GpuBackend.FusedLoraMaxRows && rank <= LoraKernels.FusedMaxRank ? 1 : 2, (g.Counters - before).Launches);
                ((ILoraOps)r).LoraRows(xr, row0, rows, lr, 1.5f, yr);
                var got = Check.Read(g, yg, (long)total * outF);
                var want = Check.Read(r, yr, (long)total * outF);
                Check.Close(got, want, F32Tol, $"{stored} lora rows {row0}+{rows} of {total}, [{outF}, {inF}] r={rank}");
                for (int i = 0; i < row0 * outF; i++) Assert.Equal(y0[i], got[i]);
                for (int i = (row0 + rows) * outF; i < total * outF; i++) Assert.Equal(y0[i], got[i]);
            }
    }

    /// <summary>An adapted embedding's lookup update, f32/bf16/int8-held (one row: the id as a kernel argument; several: uploaded ids) against the reference.</summary>
    [Theory, MemberData(nameof(Kinds))]
    public void LoraEmbedRowsMatchReference(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        foreach (var (stored, _) in LoraStorages)
            foreach (var (total, row0, ids, hidden, rank) in new[] { (3, 1, new[] { 7 }, 64, 4), (6, 2, new[] { 0, 99, 7, 7 }, 48, 16) })
            {
                int vocab = 100;
                var y0 = arena.Floats((long)total * hidden);
                var a = arena.Floats((long)rank * vocab); var b = arena.Floats((long)hidden * rank);
                LoraGrid.Round(a, b, rank, vocab, hidden, stored);
                using var yg = Check.Buffer(g, y0); using var yr = Check.Buffer(r, y0);
                using var lg = ((ILoraOps)g).LoadLora("e", a, b, rank, vocab, hidden, stored);
                var lr = ((ILoraOps)r).LoadLora("e", a, b, rank, vocab, hidden);
                var before = g.Counters;
                ((ILoraOps)g).LoraEmbedRows(ids, row0, lg, 0.5f, yg);
                Assert.Equal(ids.Length > 1 ? 1 : 0, (g.Counters - before).Uploads);
                ((ILoraOps)r).LoraEmbedRows(ids, row0, lr, 0.5f, yr);
                var got = Check.Read(g, yg, (long)total * hidden);
                Check.Close(got, Check.Read(r, yr, (long)total * hidden), F32Tol, $"{stored} embedding lora {ids.Length} rows");
                for (int i = 0; i < row0 * hidden; i++) Assert.Equal(y0[i], got[i]);
                Assert.Throws<LrlException>(() => ((ILoraOps)g).LoraEmbedRows([vocab], 0, lg, 1f, yg));
            }
    }

    /// <summary>
    /// Staged updates (the GPU fuses them: <see cref="ILoraOps.StageLora"/>) applied by the products that write their
    /// outputs, against the reference's products followed by their unfused updates: Q/K/V's decode-row updates of one
    /// storage share one launch (a bf16 one beside them takes its own), gate/up's land before SwiGLU in one launch, a
    /// residual block's one update runs with its add+norm in one launch (the bits of the separate ops), two sequences'
    /// rows of one output with different adapters share one, and prompt-sized rows run two launches each.
    /// </summary>
    [Theory, MemberData(nameof(Kinds))]
    public void StagedLoraUpdatesShareLaunchesAndMatchReference(string kind)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        var lg = (ILoraOps)g; var lr = (ILoraOps)r;
        Assert.True(lg.FusesLora);
        int hidden = 96, q = 96, kv = 32, inter = 200;
        (LoraWeights G, LoraWeights R) Pair(int outF, int inF, int rank, DType stored)
        {
            var a = arena.Floats((long)rank * inF, 1f / MathF.Sqrt(inF)); var b = arena.Floats((long)outF * rank);
            LoraGrid.Round(a, b, rank, inF, outF, stored);
            return (lg.LoadLora("g", a, b, rank, inF, outF, stored), lr.LoadLora("r", a, b, rank, inF, outF));
        }
        var (wq, wk, wv) = (arena.Tensor("q", DType.F32, q, hidden), arena.Tensor("k", DType.F32, kv, hidden), arena.Tensor("v", DType.F32, kv, hidden));
        var (wg, wu) = (arena.Matrix("gate", DType.F32, inter, hidden, 0.3f), arena.Matrix("up", DType.F32, inter, hidden, 0.3f));
        using var gq = g.LoadWeight(wq); using var gk = g.LoadWeight(wk); using var gv = g.LoadWeight(wv);
        using var rq = r.LoadWeight(wq); using var rk = r.LoadWeight(wk); using var rv = r.LoadWeight(wv);
        using var gg = g.LoadWeight(wg); using var gu = g.LoadWeight(wu); using var rg = r.LoadWeight(wg); using var ru = r.LoadWeight(wu);
        var (aq, ak, av) = (Pair(q, hidden, 16, DType.I8), Pair(kv, hidden, 4, DType.I8), Pair(kv, hidden, 8, DType.BF16));
        var (ag, au) = (Pair(inter, hidden, 16, DType.F32), Pair(inter, hidden, 5, DType.F32));
        var a2 = Pair(q, hidden, 3, DType.I8);
        var av8 = Pair(kv, hidden, 8, DType.I8);
        try
        {
            foreach (int rows in new[] { 1, 2, 6 })
            {
                bool fused = rows <= GpuBackend.FusedLoraMaxRows;
                var x = arena.Floats((long)rows * hidden);
                using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
                using var qg = Check.Poisoned(g, rows * q); using var kg = Check.Poisoned(g, rows * kv); using var vg = Check.Poisoned(g, rows * kv);
                using var qr = r.Allocate(rows * q); using var kr = r.Allocate(rows * kv); using var vr = r.Allocate(rows * kv);
                var before = g.Counters;
                lg.StageLora(xg, 0, rows, aq.G, 0.5f, qg); lg.StageLora(xg, 0, rows, ak.G, 2f, kg); lg.StageLora(xg, 0, rows, av.G, 1f, vg);
                g.MatMul3(xg, rows, gq, qg, null, gk, kg, null, gv, vg, null);
                // Q/K/V as one launch at one row, three past it; q's and k's int8 updates in one launch, v's bf16 one apart
                // (decode-sized), or two launches each.
                Assert.Equal((rows == 1 ? 1 : 3) + (fused ? 2 : 6), (g.Counters - before).Launches);
                ((IBackend)r).MatMul3(xr, rows, rq, qr, null, rk, kr, null, rv, vr, null);
                lr.LoraRows(xr, 0, rows, aq.R, 0.5f, qr); lr.LoraRows(xr, 0, rows, ak.R, 2f, kr); lr.LoraRows(xr, 0, rows, av.R, 1f, vr);
                Check.Close(Check.Read(g, qg, rows * q), Check.Read(r, qr, rows * q), F32Tol, $"staged q, {rows} rows");
                Check.Close(Check.Read(g, kg, rows * kv), Check.Read(r, kr, rows * kv), F32Tol, $"staged k, {rows} rows");
                Check.Close(Check.Read(g, vg, rows * kv), Check.Read(r, vr, rows * kv), F32Tol, $"staged v, {rows} rows");

                using var gog = Check.Poisoned(g, rows * inter); using var uog = Check.Poisoned(g, rows * inter);
                using var gor = r.Allocate(rows * inter); using var uor = r.Allocate(rows * inter);
                before = g.Counters;
                lg.StageLora(xg, 0, rows, ag.G, 1f, gog); lg.StageLora(xg, 0, rows, au.G, 1.5f, uog);
                g.GateUpSwiGlu(xg, rows, gg, gu, gog, uog);
                // The two products, then the updates with SwiGLU by their launch's last group (decode-sized), or the
                // updates (two launches each) and SwiGLU.
                Assert.Equal(fused ? 3 : 7, (g.Counters - before).Launches);
                r.MatMul(xr, rg, gor, rows); r.MatMul(xr, ru, uor, rows);
                lr.LoraRows(xr, 0, rows, ag.R, 1f, gor); lr.LoraRows(xr, 0, rows, au.R, 1.5f, uor);
                r.SwiGlu(gor, uor, gor, rows * inter);
                Check.Close(Check.Read(g, gog, rows * inter), Check.Read(r, gor, rows * inter), F32Tol, $"staged gate/up + SwiGLU, {rows} rows");
                // The same bits as the ops apart on this device.
                using var gog2 = Check.Poisoned(g, rows * inter); using var uog2 = Check.Poisoned(g, rows * inter);
                g.MatMul(xg, gg, gog2, rows); g.MatMul(xg, gu, uog2, rows);
                lg.LoraRows(xg, 0, rows, ag.G, 1f, gog2); lg.LoraRows(xg, 0, rows, au.G, 1.5f, uog2);
                g.SwiGlu(gog2, uog2, gog2, rows * inter);
                Assert.Equal(Check.Read(g, gog2, rows * inter), Check.Read(g, gog, rows * inter));

                // Q/K/V with RoPE and the cache writes, adapters of one storage on all three: at one row the products (one
                // launch), then the updates with RoPE + cache writes by their launch's last group; at 2 rows three
                // products and that launch; past FusedRopeRowsMax the products, the updates apart, then RoPE + cache.
                var rope = new RopeTable(Enumerable.Range(0, 4).Select(i => (float)Math.Pow(10000, -2.0 * i / 8)).ToArray());
                const int heads = 6, kvHeads = 2, headDim = 16, pos0 = 3, ctx = 12;
                var cache0 = arena.Floats(ctx * kv);
                var qkv = new List<DeviceBuffer>();
                DeviceBuffer Make(float[]? data, long n) { var d = data is null ? Check.Poisoned(g, n) : Check.Buffer(g, data); qkv.Add(d); return d; }
                try
                {
                    var (q1, k1, v1, kc1, vc1) = (Make(null, rows * q), Make(null, rows * kv), Make(null, rows * kv), Make(cache0, ctx * kv), Make(cache0, ctx * kv));
                    var (q2, k2, v2, kc2, vc2) = (Make(null, rows * q), Make(null, rows * kv), Make(null, rows * kv), Make(cache0, ctx * kv), Make(cache0, ctx * kv));
                    before = g.Counters;
                    lg.StageLora(xg, 0, rows, aq.G, 0.5f, q1); lg.StageLora(xg, 0, rows, ak.G, 2f, k1); lg.StageLora(xg, 0, rows, av8.G, 1f, v1);
                    g.MatMul3RopeAndCache(xg, rows, gq, q1, null, gk, k1, null, gv, v1, null, heads, kvHeads, headDim, pos0, rope, kc1, vc1);
                    Assert.Equal(rows == 1 ? 2 : rows <= GpuBackend.FusedRopeRowsMax ? 4 : 3 + 6 + 1, (g.Counters - before).Launches);
                    Assert.Equal(0, lg.PendingLora);
                    g.MatMul3(xg, rows, gq, q2, null, gk, k2, null, gv, v2, null);
                    lg.LoraRows(xg, 0, rows, aq.G, 0.5f, q2); lg.LoraRows(xg, 0, rows, ak.G, 2f, k2); lg.LoraRows(xg, 0, rows, av8.G, 1f, v2);
                    g.RopeAndCache(q2, k2, v2, 0, rows, heads, kvHeads, headDim, pos0, rope, kc2, vc2);
                    Assert.Equal(Check.Read(g, q2, rows * q), Check.Read(g, q1, rows * q));
                    Assert.Equal(Check.Read(g, kc2, ctx * kv), Check.Read(g, kc1, ctx * kv));
                    Assert.Equal(Check.Read(g, vc2, ctx * kv), Check.Read(g, vc1, ctx * kv));
                }
                finally { foreach (var d in qkv) d.Dispose(); }

                // A residual block's end: the product, then one update and the add+norm in one launch when the update is
                // decode-sized and covers every row (the bits of the three ops on this device), else the three ops.
                using var og = Check.Poisoned(g, rows * q); using var og2 = Check.Poisoned(g, rows * q);
                var res = arena.Floats(rows * q);
                using var resg = Check.Buffer(g, res); using var resg2 = Check.Buffer(g, res); using var resr = Check.Buffer(r, res);
                using var ng = Check.Poisoned(g, rows * q); using var ng2 = Check.Poisoned(g, rows * q);
                using var or = r.Allocate(rows * q); using var nr = r.Allocate(rows * q);
                var normW = arena.Tensor("norm", DType.F32, q);
                using var normG = g.LoadWeight(normW); using var normR = r.LoadWeight(normW);
                before = g.Counters;
                lg.StageLora(xg, 0, rows, a2.G, 0.75f, og);
                g.MatMulAddRmsNorm(xg, gq, og, rows, resg, normG, ng, 1e-5f);
                Assert.Equal(fused ? 2 : 4, (g.Counters - before).Launches); // past that: product, two for the update, add+norm
                Assert.Equal(0, lg.PendingLora);
                g.MatMul(xg, gq, og2, rows); lg.LoraRows(xg, 0, rows, a2.G, 0.75f, og2); g.AddRmsNorm(resg2, og2, normG, ng2, rows, 1e-5f);
                Assert.Equal(Check.Read(g, ng2, rows * q), Check.Read(g, ng, rows * q));
                Assert.Equal(Check.Read(g, resg2, rows * q), Check.Read(g, resg, rows * q));
                r.MatMul(xr, rq, or, rows); lr.LoraRows(xr, 0, rows, a2.R, 0.75f, or); ((IBackend)r).AddRmsNorm(resr, or, normR, nr, rows, 1e-5f);
                Check.Close(Check.Read(g, ng, rows * q), Check.Read(r, nr, rows * q), F32Tol, $"staged update + add+norm, {rows} rows");

                if (rows < 2) continue;
                // Two sequences' rows of one output, each with its own adapter: one launch between them when both are decode-sized.
                using var yg = Check.Poisoned(g, rows * q); using var yr = r.Allocate(rows * q);
                before = g.Counters;
                lg.StageLora(xg, 0, 1, aq.G, 1f, yg); lg.StageLora(xg, 1, rows - 1, a2.G, 1f, yg);
                g.MatMul(xg, gq, yg, rows);
                Assert.Equal(1 + (fused ? 1 : 3), (g.Counters - before).Launches); // past that: the one-row update alone, the other two
                r.MatMul(xr, rq, yr, rows);
                lr.LoraRows(xr, 0, 1, aq.R, 1f, yr); lr.LoraRows(xr, 1, rows - 1, a2.R, 1f, yr);
                Check.Close(Check.Read(g, yg, rows * q), Check.Read(r, yr, rows * q), F32Tol, $"two sequences' updates, {rows} rows");
            }
        }
        finally { foreach (var p in new[] { aq, ak, av, ag, au, a2, av8 }) p.G.Dispose(); }
    }

    /// <summary>The fused position step (RoPE of Q and K, K/V cache writes) and fused Q/K/V GEMV equal the unfused reference.</summary>
    [Theory, MemberData(nameof(KindsAndDTypes))]
    public void FusedQkvAndRopeCacheMatchReference(string kind, DType dtype)
    {
        var g = Backends.Get(kind);
        using var r = new ReferenceBackend();
        using var arena = new RandomTensors(Seed());
        int hidden = 64, heads = 4, kvHeads = 2, headDim = 16, q = heads * headDim, kv = kvHeads * headDim;
        var x = arena.Floats(hidden);
        var (wq, wk, wv) = (arena.Tensor("q", dtype, q, hidden), arena.Tensor("k", dtype, kv, hidden), arena.Tensor("v", dtype, kv, hidden));
        var bk = arena.Tensor("bk", DType.F32, kv);
        using var xg = Check.Buffer(g, x); using var xr = Check.Buffer(r, x);
        using var qg = Check.Poisoned(g, q); using var kg = Check.Poisoned(g, kv); using var vg = Check.Poisoned(g, kv);
        using var qr = r.Allocate(q); using var kr = r.Allocate(kv); using var vr = r.Allocate(kv);
        g.MatMul3(xg, 1, g.LoadWeight(wq), qg, null, g.LoadWeight(wk), kg, g.LoadWeight(bk), g.LoadWeight(wv), vg, null);
        ((IBackend)r).MatMul3(xr, 1, r.LoadWeight(wq), qr, null, r.LoadWeight(wk), kr, r.LoadWeight(bk), r.LoadWeight(wv), vr, null);
        Check.Close(Check.Read(g, qg, q), Check.Read(r, qr, q), F32Tol, "fused q");
        Check.Close(Check.Read(g, kg, kv), Check.Read(r, kr, kv), F32Tol, "fused k (bias)");
        Check.Close(Check.Read(g, vg, kv), Check.Read(r, vr, kv), F32Tol, "fused v");

        // Rows 1..3 of a 4-row buffer at positions 5..7, with a partial rotary dimension.
        var rope = new RopeTable(Enumerable.Range(0, 6).Select(i => (float)Math.Pow(10000, -2.0 * i / 12)).ToArray());
        int rows = 4, row0 = 1, n = 3, pos0 = 5, ctx = 16;
        var (qs, ks, vs) = (arena.Floats(rows * q), arena.Floats(rows * kv), arena.Floats(rows * kv));
        var cache0 = arena.Floats(ctx * kv);
        using var q2g = Check.Buffer(g, qs); using var k2g = Check.Buffer(g, ks); using var v2g = Check.Buffer(g, vs);
        using var kcg = Check.Buffer(g, cache0); using var vcg = Check.Buffer(g, cache0);
        using var q2r = Check.Buffer(r, qs); using var k2r = Check.Buffer(r, ks); using var v2r = Check.Buffer(r, vs);
        using var kcr = Check.Buffer(r, cache0); using var vcr = Check.Buffer(r, cache0);
        g.RopeAndCache(q2g, k2g, v2g, row0, n, heads, kvHeads, headDim, pos0, rope, kcg, vcg);
        ((IBackend)r).RopeAndCache(q2r, k2r, v2r, row0, n, heads, kvHeads, headDim, pos0, rope, kcr, vcr); // the unfused default
        Check.Close(Check.Read(g, q2g, rows * q), Check.Read(r, q2r, rows * q), F32Tol, "rope q");
        Check.Close(Check.Read(g, kcg, ctx * kv), Check.Read(r, kcr, ctx * kv), F32Tol, "k cache");
        Check.Close(Check.Read(g, vcg, ctx * kv), Check.Read(r, vcr, ctx * kv), F32Tol, "v cache");

        // Q/K/V, RoPE and the cache writes in one launch (a decode row, and exact rows): bit for bit the two ops.
        int keep = g.ExactRows;
        try
        {
            g.ExactRows = 4;
            var (lq, lk, lv, lb) = (g.LoadWeight(wq), g.LoadWeight(wk), g.LoadWeight(wv), g.LoadWeight(bk));
            foreach (int m in new[] { 1, 3 })
            {
                var xs = arena.Floats(m * hidden);
                using var xm = Check.Buffer(g, xs);
                using var q1 = Check.Poisoned(g, m * q); using var k1 = Check.Poisoned(g, m * kv); using var v1 = Check.Poisoned(g, m * kv);
                using var q3 = Check.Poisoned(g, m * q); using var k3 = Check.Poisoned(g, m * kv); using var v3 = Check.Poisoned(g, m * kv);
                using var kc1 = Check.Buffer(g, cache0); using var vc1 = Check.Buffer(g, cache0);
                using var kc3 = Check.Buffer(g, cache0); using var vc3 = Check.Buffer(g, cache0);
                var before = g.Counters;
                g.MatMul3RopeAndCache(xm, m, lq, q1, null, lk, k1, lb, lv, v1, null, heads, kvHeads, headDim, pos0, rope, kc1, vc1);
                Assert.Equal(1, (g.Counters - before).Launches);
                g.MatMul3(xm, m, lq, q3, null, lk, k3, lb, lv, v3, null);
                g.RopeAndCache(q3, k3, v3, 0, m, heads, kvHeads, headDim, pos0, rope, kc3, vc3);
                Assert.True(Check.Read(g, q1, m * q).SequenceEqual(Check.Read(g, q3, m * q)), $"{kind} {dtype} {m} rows: rotated q");
                Assert.True(Check.Read(g, kc1, ctx * kv).SequenceEqual(Check.Read(g, kc3, ctx * kv)), $"{kind} {dtype} {m} rows: k cache");
                Assert.True(Check.Read(g, vc1, ctx * kv).SequenceEqual(Check.Read(g, vc3, ctx * kv)), $"{kind} {dtype} {m} rows: v cache");
            }
        }
        finally { g.ExactRows = keep; }
    }
}
