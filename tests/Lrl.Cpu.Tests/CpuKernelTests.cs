using Lrl.Kernels.Reference;

namespace Lrl.Cpu.Tests;

/// <summary>
/// Every CPU op against the scalar float64 reference on fresh random inputs at odd and even sizes.
/// Weights are rounded to their dtype before both backends see them, so f16/bf16 differ from the reference only by
/// f32 accumulation: the tolerance is that of f32 arithmetic. Outputs start as NaN so unwritten elements fail.
/// </summary>
public sealed class CpuKernelTests : IDisposable
{
    private readonly CpuBackend _cpu = new(2);
    private readonly ReferenceBackend _ref = new();
    private readonly RandomTensors _r = new(Environment.TickCount);
    private const double Tol = 2e-5;

    /// <summary>
    /// Tolerance against the float reference for an adapter held as <paramref name="stored"/>: int8 pairs with AVX2 run
    /// integer dot products over int8 activations and an int8 t (~0.5 % of the update each; exact against their scalar
    /// model in <see cref="Int8LoraKernelsMatchTheirScalarModel"/>), as the int8 base kernels do.
    /// </summary>
    private static double LoraTol(DType stored) => stored == DType.I8 && System.Runtime.Intrinsics.X86.Avx2.IsSupported ? 1.5e-2 : Tol;

    public void Dispose() { _cpu.Dispose(); _r.Dispose(); }

    private (DeviceBuffer cpu, DeviceBuffer reference) Input(float[] values)
    {
        var a = _cpu.Allocate(values.Length); _cpu.Upload(values, a);
        var b = _ref.Allocate(values.Length); _ref.Upload(values, b);
        return (a, b);
    }

    private (DeviceBuffer cpu, DeviceBuffer reference) Output(long n)
    {
        var nan = new float[n]; Array.Fill(nan, float.NaN);
        return Input(nan);
    }

    private static float[] Get(IBackend b, DeviceBuffer buf, long n)
    {
        var a = new float[n]; b.Download(buf, 0, a); return a;
    }

    private void AssertClose((DeviceBuffer cpu, DeviceBuffer reference) o, long n, double tol = Tol, string what = "")
    {
        var a = Get(_cpu, o.cpu, n); var e = Get(_ref, o.reference, n);
        Assert.DoesNotContain(a, float.IsNaN);
        double err = RandomTensors.RelErr(a, e);
        Assert.True(err < tol, $"{what}: relative error {err:E2} ≥ {tol:E0}");
    }

    public static TheoryData<DType, int, int, int> MatMulCases()
    {
        var d = new TheoryData<DType, int, int, int>();
        foreach (var dt in new[] { DType.F32, DType.F16, DType.BF16 })
            foreach (var (rows, outF, inF) in new[] { (1, 1, 7), (1, 33, 64), (1, 97, 577), (2, 5, 8), (3, 33, 1030), (7, 64, 96), (9, 130, 2100), (45, 36, 130), (64, 36, 130), (70, 130, 300), (100, 97, 300), (130, 97, 1030) })
                d.Add(dt, rows, outF, inF);
        return d;
    }

    [Theory, MemberData(nameof(MatMulCases))]
    public void MatMul(DType dtype, int rows, int outF, int inF)
    {
        var wt = _r.Tensor("w", dtype, outF, inF);
        var bt = _r.Tensor("b", DType.F32, outF);
        var xs = _r.Floats((long)rows * inF);
        var x = Input(xs);
        // A sum that cancels (one output of 7 terms can) is ill-conditioned: f32 rounding is bounded by Σ|x·w|, not by
        // |Σ x·w|. The error is measured against the larger of ‖ref‖ and ‖|x|·|W|ᵀ‖/√inF, which is ‖ref‖'s own size
        // when nothing cancels (random signs), so the tolerance stays f32's.
        var wf = wt.ToFloatArray();
        double absNorm = 0;
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outF; o++)
            {
                double s = 0;
                for (int i = 0; i < inF; i++) s += Math.Abs((double)xs[(long)r * inF + i] * wf[(long)o * inF + i]);
                absNorm += s * s;
            }
        double floor = Math.Sqrt(absNorm / inF);
        foreach (bool withBias in new[] { false, true })
        {
            var y = Output((long)rows * outF);
            _cpu.MatMul(x.cpu, _cpu.LoadWeight(wt), y.cpu, rows, withBias ? _cpu.LoadWeight(bt) : null);
            _ref.MatMul(x.reference, _ref.LoadWeight(wt), y.reference, rows, withBias ? _ref.LoadWeight(bt) : null);
            long n = (long)rows * outF;
            var a = Get(_cpu, y.cpu, n); var e = Get(_ref, y.reference, n);
            Assert.DoesNotContain(a, float.IsNaN);
            double num = 0, den = 0;
            for (long i = 0; i < n; i++) { double d = (double)a[i] - e[i]; num += d * d; den += (double)e[i] * e[i]; }
            double err = Math.Sqrt(num) / Math.Max(Math.Sqrt(den), floor);
            Assert.True(err < Tol, $"{dtype} {rows}x[{outF},{inF}] bias={withBias}: relative error {err:E2} ≥ {Tol:E0}");
        }
    }

    /// <summary>
    /// Up to 16 rows of a dense product run the GEMV kernel per row over L1 blocks of the weights: each row is exactly
    /// its one-row result (a batched decode step gives each sequence what it gets alone), fused products included;
    /// bf16 through the four-row kernel (groups of 4, a last group of 2-3 padded, a last single row alone).
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void FewRowsEqualEachRowAlone(DType dtype)
    {
        const int outF = 300;
        // 577 columns: 32-column steps and a scalar tail; 593 also a 16-column step (the AVX2 bf16 kernels' three parts).
        foreach (int inF in new[] { 577, 593 })
        {
        var w = _cpu.LoadWeight(_r.Tensor("w", dtype, outF, inF));
        var u = _cpu.LoadWeight(_r.Tensor("u", dtype, outF, inF));
        foreach (int n in new[] { 2, 3, 4, 5, 7, 8, 12, 15, 16 })
        {
            var xs = _r.Floats((long)n * inF);
            // One row past what f16's prepared activations hold (|x| ≥ 32768): that row takes the unprepared kernel,
            // alone and among the others.
            if (n >= 3) xs[inF + 5] = 40000f;
            var x = _cpu.Allocate(xs.Length); _cpu.Upload(xs, x);
            var y = _cpu.Allocate((long)n * outF); var y2 = _cpu.Allocate((long)n * outF);
            _cpu.MatMul(x, w, y, n);
            var all = Get(_cpu, y, (long)n * outF);
            _cpu.GateUpSwiGlu(x, n, w, u, y, y2);
            var fused = Get(_cpu, y, (long)n * outF);
            var one = _cpu.Allocate(inF); var o1 = _cpu.Allocate(outF); var o2 = _cpu.Allocate(outF);
            for (int r = 0; r < n; r++)
            {
                _cpu.Upload(xs.AsSpan(r * inF, inF), one);
                _cpu.MatMul(one, w, o1, 1);
                Assert.True(Get(_cpu, o1, outF).AsSpan().SequenceEqual(all.AsSpan(r * outF, outF)), $"{dtype} {inF} n={n} row {r}");
                _cpu.GateUpSwiGlu(one, 1, w, u, o1, o2);
                Assert.True(Get(_cpu, o1, outF).AsSpan().SequenceEqual(fused.AsSpan(r * outF, outF)), $"{dtype} {inF} n={n} row {r} (gate/up)");
            }
        }
        }
    }

    /// <summary>
    /// Decode items: contiguous, covering every row once, whole tiles (4 rows; 16 with adapter updates staged: whole
    /// int8 adapter panels), each 1/threads of what is left (≥ 32 rows).
    /// </summary>
    [Theory]
    [InlineData(576, 2)]
    [InlineData(1, 2)]
    [InlineData(97, 3)]
    [InlineData(128256, 2)]
    [InlineData(8192, 16)]
    [InlineData(1536, 1)]
    public void GuidedDecodeItems(int rows, int threads)
    {
        foreach (int align in new[] { 4, 16 })
        {
            int n = MatMulJob.GuidedItems(rows, threads, null, align);
            var starts = new int[n + 1];
            Assert.Equal(n, MatMulJob.GuidedItems(rows, threads, starts, align));
            Assert.Equal(0, starts[0]);
            Assert.Equal(rows, starts[n]);
            for (int i = 0; i < n; i++)
            {
                int size = starts[i + 1] - starts[i], left = rows - starts[i];
                Assert.True(size > 0);
                if (i < n - 1)
                {
                    Assert.Equal(0, size % align);
                    Assert.True(size >= 32 && size >= left / threads && size < left / threads + align + 32, $"item {i}: {size} of {left} left");
                }
            }
            if (threads == 1) Assert.Equal(1, n);
            if (rows == 576 && threads == 2)
                Assert.Equal(align == 4 ? new[] { 0, 288, 432, 504, 540, 572, 576 } : new[] { 0, 288, 432, 512, 544, 576 }, starts);
        }
    }

    /// <summary>Decode products (many guided items) at several thread counts, against the reference.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(7)]
    public void DecodeProductsAtAnyThreadCount(int threads)
    {
        using var cpu = new CpuBackend(threads);
        var wt = _r.Tensor("w", DType.BF16, 1003, 96);
        var ut = _r.Tensor("u", DType.BF16, 1003, 96);
        var xs = _r.Floats(96);
        var x = cpu.Allocate(96); cpu.Upload(xs, x);
        var xr = _ref.Allocate(96); _ref.Upload(xs, xr);
        var y = cpu.Allocate(1003); var yr = _ref.Allocate(1003);
        cpu.MatMul(x, cpu.LoadWeight(wt), y, 1);
        _ref.MatMul(xr, _ref.LoadWeight(wt), yr, 1);
        AssertClose((y, yr), 1003, what: $"matmul, {threads} threads");
        var g = cpu.Allocate(1003); var u = cpu.Allocate(1003); var gr = _ref.Allocate(1003); var ur = _ref.Allocate(1003);
        cpu.GateUpSwiGlu(x, 1, cpu.LoadWeight(wt), cpu.LoadWeight(ut), g, u);
        _ref.MatMul(xr, _ref.LoadWeight(wt), gr, 1);
        _ref.MatMul(xr, _ref.LoadWeight(ut), ur, 1);
        _ref.SwiGlu(gr, ur, gr, 1003);
        AssertClose((g, gr), 1003, what: $"gate/up, {threads} threads");
    }

    [Theory]
    [InlineData(1, 33, 5, 64)]
    [InlineData(6, 96, 32, 97)]
    [InlineData(80, 96, 32, 200)]
    public void MatMul3_MatchesThreeProducts(int rows, int q, int kv, int inF)
    {
        var x = Input(_r.Floats((long)rows * inF));
        var w = new[] { _r.Tensor("q", DType.BF16, q, inF), _r.Tensor("k", DType.F16, kv, inF), _r.Tensor("v", DType.F32, kv, inF) };
        var b = new[] { _r.Tensor("bq", DType.F32, q), _r.Tensor("bk", DType.F32, kv), _r.Tensor("bv", DType.F32, kv) };
        var y = new[] { Output((long)rows * q), Output((long)rows * kv), Output((long)rows * kv) };
        _cpu.MatMul3(x.cpu, rows, _cpu.LoadWeight(w[0]), y[0].cpu, _cpu.LoadWeight(b[0]), _cpu.LoadWeight(w[1]), y[1].cpu, _cpu.LoadWeight(b[1]),
                     _cpu.LoadWeight(w[2]), y[2].cpu, null);
        for (int j = 0; j < 3; j++) _ref.MatMul(x.reference, _ref.LoadWeight(w[j]), y[j].reference, rows, j < 2 ? _ref.LoadWeight(b[j]) : null);
        AssertClose(y[0], (long)rows * q, what: "q"); AssertClose(y[1], (long)rows * kv, what: "k"); AssertClose(y[2], (long)rows * kv, what: "v");
    }

    [Theory]
    [InlineData(DType.BF16, 1, 97, 64)]
    [InlineData(DType.F32, 1, 1536, 576)]
    [InlineData(DType.F16, 5, 130, 33)]
    [InlineData(DType.BF16, 67, 130, 96)]
    public void GateUpSwiGlu_MatchesUnfused(DType dtype, int rows, int inter, int hidden)
    {
        var x = Input(_r.Floats((long)rows * hidden));
        var g = _r.Tensor("g", dtype, inter, hidden); var u = _r.Tensor("u", dtype, inter, hidden);
        var outC = Output((long)rows * inter); var upC = Output((long)rows * inter);
        _cpu.GateUpSwiGlu(x.cpu, rows, _cpu.LoadWeight(g), _cpu.LoadWeight(u), outC.cpu, upC.cpu);
        var gr = _ref.Allocate((long)rows * inter); var ur = _ref.Allocate((long)rows * inter);
        _ref.MatMul(x.reference, _ref.LoadWeight(g), gr, rows);
        _ref.MatMul(x.reference, _ref.LoadWeight(u), ur, rows);
        _ref.SwiGlu(gr, ur, outC.reference, (long)rows * inter);
        AssertClose(outC, (long)rows * inter);
    }

    [Theory]
    [InlineData(1, 7)]
    [InlineData(3, 64)]
    [InlineData(5, 577)]
    public void Norms(int rows, int n)
    {
        var w = _r.Tensor("g", DType.F32, n); var b = _r.Tensor("b", DType.BF16, n);
        var xv = _r.Floats((long)rows * n); var dv = _r.Floats((long)rows * n);
        var x = Input(xv); var y = Output((long)rows * n);
        _cpu.RmsNorm(x.cpu, _cpu.LoadWeight(w), y.cpu, rows, 1e-5f);
        _ref.RmsNorm(x.reference, _ref.LoadWeight(w), y.reference, rows, 1e-5f);
        AssertClose(y, (long)rows * n, what: "rmsnorm");

        y = Output((long)rows * n);
        _cpu.LayerNorm(x.cpu, _cpu.LoadWeight(w), _cpu.LoadWeight(b), y.cpu, rows, 1e-5f);
        _ref.LayerNorm(x.reference, _ref.LoadWeight(w), _ref.LoadWeight(b), y.reference, rows, 1e-5f);
        AssertClose(y, (long)rows * n, what: "layernorm");

        var res = Input(xv); var delta = Input(dv); y = Output((long)rows * n);
        _cpu.AddRmsNorm(res.cpu, delta.cpu, _cpu.LoadWeight(w), y.cpu, rows, 1e-6f);
        _ref.AddRmsNorm(res.reference, delta.reference, _ref.LoadWeight(w), y.reference, rows, 1e-6f);
        AssertClose(y, (long)rows * n, what: "add+rmsnorm");
        AssertClose(res, (long)rows * n, what: "residual");
    }

    [Theory]
    [InlineData(1, 3, 64, 64, 0)]
    [InlineData(4, 5, 32, 24, 17)]
    [InlineData(3, 2, 128, 128, 40000)]
    [InlineData(2, 3, 20, 20, 9)]
    public void Rope(int rows, int heads, int headDim, int rotaryDim, int pos0)
    {
        var inv = Enumerable.Range(0, rotaryDim / 2).Select(i => (float)Math.Pow(10000, -2.0 * i / rotaryDim)).ToArray();
        var table = new RopeTable(inv);
        var x = Input(_r.Floats((long)rows * heads * headDim));
        _cpu.Rope(x.cpu, rows, heads, headDim, pos0, table);
        _ref.Rope(x.reference, rows, heads, headDim, pos0, table);
        AssertClose(x, (long)rows * heads * headDim);
    }

    /// <summary>Each table keeps its positions' cos/sin, grown on demand: positions past the table, more rows or another table must rotate by their own angles.</summary>
    [Fact]
    public void RopeSequenceOfCalls()
    {
        float[] Inv(double theta) => Enumerable.Range(0, 16).Select(i => (float)Math.Pow(theta, -2.0 * i / 32)).ToArray();
        RopeTable a = new(Inv(10000)), b = new(Inv(500));
        foreach (var (rows, pos0, table) in new[] { (1, 5, a), (1, 5, a), (3, 5, a), (1, 6, a), (2, 6, a), (1, 6, b), (1, 0, b), (1, 6, a), (4, 30, a), (1, 700, b), (2, 3, b) })
        {
            var x = Input(_r.Floats((long)rows * 3 * 32));
            _cpu.Rope(x.cpu, rows, 3, 32, pos0, table);
            _ref.Rope(x.reference, rows, 3, 32, pos0, table);
            AssertClose(x, (long)rows * 3 * 32, what: $"rope rows {rows} pos {pos0}");
        }
    }

    [Theory]
    [InlineData(1, 0, 4, 4, 16)]
    [InlineData(1, 300, 9, 3, 64)]
    [InlineData(1, 70, 9, 3, 64)]
    [InlineData(1, 1000, 8, 2, 128)]
    [InlineData(1, 2047, 32, 8, 64)]
    [InlineData(1, 129, 6, 3, 24)]
    [InlineData(1, 95, 4, 4, 12)]
    [InlineData(3, 500, 9, 3, 64)]
    [InlineData(7, 0, 6, 2, 32)]
    [InlineData(5, 11, 4, 1, 8)]
    [InlineData(200, 0, 9, 3, 64)]   // query tiles, prompts past one 128-position chunk
    [InlineData(40, 120, 8, 2, 128)] // tiles straddling a chunk boundary
    [InlineData(33, 250, 14, 2, 64)] // GQA group of 7
    [InlineData(48, 5, 4, 2, 12)]    // tiles, a head size without the 8-lane score kernels
    public void Attention(int rows, int pos0, int heads, int kvHeads, int headDim)
    {
        int ctx = pos0 + rows, kvDim = kvHeads * headDim;
        var q = Input(_r.Floats((long)rows * heads * headDim));
        var k = Input(_r.Floats((long)ctx * kvDim)); var v = Input(_r.Floats((long)ctx * kvDim));
        var o = Output((long)rows * heads * headDim);
        float scale = 1f / MathF.Sqrt(headDim);
        _cpu.Attention(q.cpu, k.cpu, v.cpu, o.cpu, rows, pos0, heads, kvHeads, headDim, scale);
        _ref.Attention(q.reference, k.reference, v.reference, o.reference, rows, pos0, heads, kvHeads, headDim, scale);
        AssertClose(o, (long)rows * heads * headDim);
    }

    /// <summary>
    /// Each row of a many-row call (a speculative verify step, a batched chunk) is bit for bit the row attended alone at
    /// its position (a plain decode step), with the split-K chunks of long rows: the exactness greedy speculative
    /// decoding rests on (int8 activation rounding turns a last-bit difference into a different token: SmolLM2-135M q4
    /// lookup decoding diverged from plain greedy at token 77 while many-row calls ran every row as one chunk).
    /// </summary>
    [Theory]
    [InlineData(7, 250, 9, 3, 64)]
    [InlineData(2, 127, 4, 4, 12)]
    [InlineData(16, 300, 8, 2, 32)]
    [InlineData(33, 40, 9, 3, 64)]
    [InlineData(64, 1000, 6, 3, 16)]
    [InlineData(130, 0, 9, 3, 64)]
    [InlineData(100, 50, 4, 2, 16)]
    [InlineData(300, 0, 9, 3, 64)]
    [InlineData(70, 200, 8, 2, 128)]
    [InlineData(50, 100, 14, 2, 64)]
    [InlineData(40, 0, 4, 2, 80)]
    [InlineData(41, 10, 4, 4, 12)]
    [InlineData(45, 110, 9, 3, 64)]
    public void AttentionRowsEqualLoneDecodeRowsBitForBit(int rows, int pos0, int heads, int kvHeads, int headDim)
    {
        int ctx = pos0 + rows, kvDim = kvHeads * headDim, qDim = heads * headDim;
        var q = _r.Floats((long)rows * qDim);
        var (qb, k, v) = (Input(q).cpu, Input(_r.Floats((long)ctx * kvDim)).cpu, Input(_r.Floats((long)ctx * kvDim)).cpu);
        var o = _cpu.Allocate(q.Length);
        float scale = 1f / MathF.Sqrt(headDim);
        _cpu.Attention(qb, k, v, o, rows, pos0, heads, kvHeads, headDim, scale);
        var many = Get(_cpu, o, q.Length);
        var q1 = _cpu.Allocate(qDim); var o1 = _cpu.Allocate(qDim);
        for (int r = 0; r < rows; r++)
        {
            _cpu.Upload(q.AsSpan(r * qDim, qDim), q1);
            _cpu.Attention(q1, k, v, o1, 1, pos0 + r, heads, kvHeads, headDim, scale);
            var alone = Get(_cpu, o1, qDim);
            for (int i = 0; i < qDim; i++)
                Assert.True(BitConverter.SingleToInt32Bits(alone[i]) == BitConverter.SingleToInt32Bits(many[r * qDim + i]),
                    $"row {r} (position {pos0 + r}) element {i}: {many[r * qDim + i]:R} in the {rows}-row call, {alone[i]:R} alone");
        }
    }

    /// <summary>
    /// Several sequences' rows in one call (a batched step, <see cref="IBackend.AttentionSequences"/>): every sequence's
    /// rows equal, bit for bit, the same rows attended alone over its own cache; decode rows at short and long positions
    /// (one to three chunks), short verify steps and a prompt chunk that takes the tile schedule share the call; the
    /// reference backend (the interface's per-sequence default) agrees within tolerance.
    /// </summary>
    [Theory]
    [InlineData(9, 3, 64)]
    [InlineData(4, 4, 16)]
    [InlineData(8, 2, 80)]
    [InlineData(7, 1, 12)]
    public void AttentionSequencesEqualEachSequenceAlone(int heads, int kvHeads, int headDim)
    {
        var shapes = new (int Rows, int Pos0)[] { (1, 0), (1, 37), (3, 120), (1, 300), (40, 64), (1, 129), (2, 255), (1, 5) };
        int kvDim = kvHeads * headDim, qDim = heads * headDim, total = shapes.Sum(x => x.Rows);
        var q = _r.Floats((long)total * qDim);
        var qb = Input(q);
        var o = Output((long)total * qDim);
        float scale = 1f / MathF.Sqrt(headDim);
        var cpuSeqs = new List<SequenceRows>(); var refSeqs = new List<SequenceRows>();
        var caches = new List<(DeviceBuffer k, DeviceBuffer v)>();
        int row = 0;
        foreach (var (rows, pos0) in shapes)
        {
            int ctx = pos0 + rows;
            var k = Input(_r.Floats((long)ctx * kvDim)); var v = Input(_r.Floats((long)ctx * kvDim));
            cpuSeqs.Add(new SequenceRows(row, rows, pos0, k.cpu, v.cpu));
            refSeqs.Add(new SequenceRows(row, rows, pos0, k.reference, v.reference));
            caches.Add((k.cpu, v.cpu));
            row += rows;
        }
        _cpu.AttentionSequences(qb.cpu, o.cpu, cpuSeqs.ToArray(), heads, kvHeads, headDim, scale);
        ((IBackend)_ref).AttentionSequences(qb.reference, o.reference, refSeqs.ToArray(), heads, kvHeads, headDim, scale);
        AssertClose(o, (long)total * qDim, what: "sequences");
        var many = Get(_cpu, o.cpu, (long)total * qDim);
        var alone = _cpu.Allocate((long)total * qDim);
        foreach (var sq in cpuSeqs)
        {
            _cpu.AttentionRows(qb.cpu, sq.KCache, sq.VCache, alone, sq.Row0, sq.Rows, sq.Pos0, heads, kvHeads, headDim, scale);
            var one = Get(_cpu, alone, (long)total * qDim);
            for (long i = (long)sq.Row0 * qDim; i < (long)(sq.Row0 + sq.Rows) * qDim; i++)
                Assert.True(BitConverter.SingleToInt32Bits(one[i]) == BitConverter.SingleToInt32Bits(many[i]),
                    $"sequence at rows {sq.Row0}..{sq.Row0 + sq.Rows - 1} (position {sq.Pos0}), element {i}: {many[i]:R} batched, {one[i]:R} alone");
        }
    }

    /// <summary>
    /// Tree-masked attention: every node's output equals causal attention (the reference backend) for one query at the
    /// end of its own path laid out as a sequence (the prefix, then its ancestors and itself), on the CPU bit for bit the
    /// CPU's lone decode row there, and a chain equals the causal attention of its rows; on the CPU backend and through
    /// the interface's host default.
    /// </summary>
    [Theory]
    [InlineData(9, 0, 4, 2, 16, 1)]
    [InlineData(17, 40, 9, 3, 64, 2)]
    [InlineData(33, 300, 8, 2, 32, 3)]
    [InlineData(5, 7, 4, 4, 8, 4)]
    [InlineData(40, 120, 9, 3, 64, 5)]
    public void TreeAttentionEqualsEachPathAsASequence(int rows, int pos0, int heads, int kvHeads, int headDim, int seed)
    {
        var rng = new Random(seed);
        int kvDim = kvHeads * headDim, qDim = heads * headDim, slots = pos0 + rows;
        var parents = new int[rows];
        parents[0] = -1;
        for (int r = 1; r < rows; r++) parents[r] = rng.Next(Math.Max(0, r - 4), r); // bushy: recent nodes as parents
        var q = _r.Floats((long)rows * qDim); var k = _r.Floats((long)slots * kvDim); var v = _r.Floats((long)slots * kvDim);
        float scale = 1f / MathF.Sqrt(headDim);
        var qb = _cpu.Allocate(q.Length); _cpu.Upload(q, qb);
        var kb = _cpu.Allocate(k.Length); _cpu.Upload(k, kb);
        var vb = _cpu.Allocate(v.Length); _cpu.Upload(v, vb);
        var ob = _cpu.Allocate(q.Length);
        _cpu.AttentionTree(qb, kb, vb, ob, 0, rows, pos0, parents, heads, kvHeads, headDim, scale);
        var got = Get(_cpu, ob, q.Length);
        var viaHost = new float[q.Length];
        TreeAttention.Compute(q, k, v, viaHost, 0, rows, pos0, parents, heads, kvHeads, headDim, scale);
        for (int r = 0; r < rows; r++)
        {
            var path = new List<int>();
            for (int a = r; a >= 0; a = parents[a]) path.Insert(0, a);
            int len = pos0 + path.Count;
            var kp = new float[len * kvDim]; var vp = new float[len * kvDim];
            Array.Copy(k, kp, pos0 * kvDim); Array.Copy(v, vp, pos0 * kvDim);
            for (int j = 0; j < path.Count; j++)
            {
                Array.Copy(k, (pos0 + path[j]) * kvDim, kp, (pos0 + j) * kvDim, kvDim);
                Array.Copy(v, (pos0 + path[j]) * kvDim, vp, (pos0 + j) * kvDim, kvDim);
            }
            var qr = _ref.Allocate(qDim); _ref.Upload(q.AsSpan(r * qDim, qDim), qr);
            var kr = _ref.Allocate(kp.Length); _ref.Upload(kp, kr);
            var vr = _ref.Allocate(vp.Length); _ref.Upload(vp, vr);
            var or = _ref.Allocate(qDim);
            _ref.Attention(qr, kr, vr, or, 1, len - 1, heads, kvHeads, headDim, scale);
            var expected = Get(_ref, or, qDim);
            double err = RandomTensors.RelErr(got.AsSpan(r * qDim, qDim).ToArray(), expected);
            Assert.True(err < Tol, $"node {r} (depth {path.Count - 1}): relative error {err:E2}");
            // Bit for bit the CPU's own lone decode row at the end of the path (what plain decoding computes there).
            var qc = _cpu.Allocate(qDim); _cpu.Upload(q.AsSpan(r * qDim, qDim), qc);
            var kc = _cpu.Allocate(kp.Length); _cpu.Upload(kp, kc);
            var vc = _cpu.Allocate(vp.Length); _cpu.Upload(vp, vc);
            var oc = _cpu.Allocate(qDim);
            _cpu.Attention(qc, kc, vc, oc, 1, len - 1, heads, kvHeads, headDim, scale);
            Assert.True(Get(_cpu, oc, qDim).AsSpan().SequenceEqual(got.AsSpan(r * qDim, qDim)), $"node {r} (depth {path.Count - 1}) differs from its lone decode row");
            Assert.True(RandomTensors.RelErr(viaHost.AsSpan(r * qDim, qDim).ToArray(), expected) < Tol);
        }
        // A chain is causal attention.
        var chain = Enumerable.Range(-1, rows).ToArray();
        _cpu.AttentionTree(qb, kb, vb, ob, 0, rows, pos0, chain, heads, kvHeads, headDim, scale);
        var causal = _cpu.Allocate(q.Length);
        _cpu.Attention(qb, kb, vb, causal, rows, pos0, heads, kvHeads, headDim, scale);
        Assert.True(RandomTensors.RelErr(Get(_cpu, ob, q.Length), Get(_cpu, causal, q.Length)) < Tol);
        // Malformed trees are refused.
        Assert.Throws<ArgumentException>(() => _cpu.AttentionTree(qb, kb, vb, ob, 0, 2, pos0, [-1, 1], heads, kvHeads, headDim, scale));
        Assert.Throws<ArgumentException>(() => _cpu.AttentionTree(qb, kb, vb, ob, 0, 2, pos0, [0, 0], heads, kvHeads, headDim, scale));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(37)]
    [InlineData(1000)]
    public void Elementwise(int n)
    {
        var a = _r.Floats(n, 4); var b = _r.Floats(n, 4);
        var g = Input(a); var u = Input(b); var y = Output(n);
        _cpu.SwiGlu(g.cpu, u.cpu, y.cpu, n); _ref.SwiGlu(g.reference, u.reference, y.reference, n);
        AssertClose(y, n, what: "swiglu");
        var x = Input(a);
        _cpu.Gelu(x.cpu, n); _ref.Gelu(x.reference, n);
        AssertClose(x, n, what: "gelu");
        var s = Input(a); var t = Input(b);
        _cpu.Add(s.cpu, t.cpu, n); _ref.Add(s.reference, t.reference, n);
        AssertClose(s, n, what: "add");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void Embed(DType dtype)
    {
        var table = _r.Tensor("emb", dtype, 50, 19);
        int[] ids = [0, 49, 7, 7, 13];
        var y = Output(ids.Length * 19);
        _cpu.Embed(_cpu.LoadWeight(table), ids, y.cpu);
        _ref.Embed(_ref.LoadWeight(table), ids, y.reference);
        AssertClose(y, ids.Length * 19, tol: 1e-7);
        Assert.Throws<LrlException>(() => _cpu.Embed(_cpu.LoadWeight(table), [50], y.cpu));
    }

    /// <summary>
    /// Staged updates fused into the products (the CPU's LoRA path): each product adds the updates of the rows it writes
    /// in its own pass; equal to the reference's product followed by its unfused update, for the decode, few-row,
    /// tiled and transposed (≥ 40 rows) kernels, fused Q/K/V and gate/up+SwiGLU, two sequences' row ranges with different
    /// adapters, f32, bf16 and int8 adapters (output counts that end in a partial int8 panel).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 1, DType.BF16)]
    [InlineData(DType.BF16, 1, DType.I8)]
    [InlineData(DType.F32, 6, DType.I8)]
    [InlineData(DType.F16, 20, DType.BF16)]
    [InlineData(DType.BF16, 48, DType.I8)]
    public void StagedLoraFusedIntoProductsMatchesReference(DType dtype, int rows, DType stored2)
    {
        int hidden = 96, q = 96, kv = 32, inter = 200;
        var lc = (ILoraOps)_cpu; var lr = (ILoraOps)_ref;
        Assert.True(lc.FusesLora);
        var x = Input(_r.Floats((long)rows * hidden));
        int split = rows / 2; // rows [0, split) run adapter 1, [split, rows) adapter 2 (none when split = 0)
        (LoraWeights C, LoraWeights R) Pair(int outF, int inF, int rank, DType stored)
        {
            var a = _r.Floats((long)rank * inF, 1f / MathF.Sqrt(inF)); var b = _r.Floats((long)outF * rank);
            LoraGrid.Round(a, b, rank, inF, outF, stored);
            return (lc.LoadLora("c", a, b, rank, inF, outF, stored), lr.LoadLora("r", a, b, rank, inF, outF));
        }
        void Stage((DeviceBuffer cpu, DeviceBuffer reference) input, (DeviceBuffer cpu, DeviceBuffer reference) y, int outF, int inF, List<Action> after)
        {
            foreach (var (row0, n, rank, stored, scale) in new[] { (0, split, 4, DType.F32, 0.5f), (split, rows - split, 7, stored2, -1.25f) })
            {
                if (n == 0) continue;
                var p = Pair(outF, inF, rank, stored);
                lc.StageLora(input.cpu, row0, n, p.C, scale, y.cpu);
                after.Add(() => lr.LoraRows(input.reference, row0, n, p.R, scale, y.reference));
            }
        }
        // Q/K/V in one dispatch.
        var wq = _r.Tensor("q", dtype, q, hidden); var wk = _r.Tensor("k", dtype, kv, hidden); var wv = _r.Tensor("v", dtype, kv, hidden);
        var (yq, yk, yv) = (Output((long)rows * q), Output((long)rows * kv), Output((long)rows * kv));
        var fix = new List<Action>();
        Stage(x, yq, q, hidden, fix); Stage(x, yv, kv, hidden, fix); // k without an adapter
        _cpu.MatMul3(x.cpu, rows, _cpu.LoadWeight(wq), yq.cpu, null, _cpu.LoadWeight(wk), yk.cpu, null, _cpu.LoadWeight(wv), yv.cpu, null);
        _ref.MatMul(x.reference, _ref.LoadWeight(wq), yq.reference, rows);
        _ref.MatMul(x.reference, _ref.LoadWeight(wk), yk.reference, rows);
        _ref.MatMul(x.reference, _ref.LoadWeight(wv), yv.reference, rows);
        fix.ForEach(f => f());
        double tol = LoraTol(stored2);
        AssertClose(yq, (long)rows * q, tol, "q"); AssertClose(yk, (long)rows * kv, Tol, "k"); AssertClose(yv, (long)rows * kv, tol, "v");
        // Gate/up with SwiGLU: the updates land before the activation.
        var g = _r.Tensor("g", dtype, inter, hidden); var u = _r.Tensor("u", dtype, inter, hidden);
        var (gate, up) = (Output((long)rows * inter), Output((long)rows * inter));
        fix.Clear();
        Stage(x, gate, inter, hidden, fix); Stage(x, up, inter, hidden, fix);
        _cpu.GateUpSwiGlu(x.cpu, rows, _cpu.LoadWeight(g), _cpu.LoadWeight(u), gate.cpu, up.cpu);
        _ref.MatMul(x.reference, _ref.LoadWeight(g), gate.reference, rows);
        _ref.MatMul(x.reference, _ref.LoadWeight(u), up.reference, rows);
        fix.ForEach(f => f());
        _ref.SwiGlu(gate.reference, up.reference, gate.reference, (long)rows * inter);
        AssertClose(gate, (long)rows * inter, tol, "gate/up");
        // A plain product with a bias.
        var wd = _r.Tensor("d", dtype, hidden, inter); var bias = _r.Tensor("b", DType.F32, hidden);
        var h = Input(_r.Floats((long)rows * inter));
        var yd = Output((long)rows * hidden);
        fix.Clear();
        Stage(h, yd, hidden, inter, fix);
        _cpu.MatMul(h.cpu, _cpu.LoadWeight(wd), yd.cpu, rows, _cpu.LoadWeight(bias));
        _ref.MatMul(h.reference, _ref.LoadWeight(wd), yd.reference, rows, _ref.LoadWeight(bias));
        fix.ForEach(f => f());
        AssertClose(yd, (long)rows * hidden, tol, "down");
        // Nothing stays staged: the next product is a plain one.
        var y2 = Output((long)rows * hidden);
        _cpu.MatMul(h.cpu, _cpu.LoadWeight(wd), y2.cpu, rows);
        _ref.MatMul(h.reference, _ref.LoadWeight(wd), y2.reference, rows);
        AssertClose(y2, (long)rows * hidden, what: "after");
    }

    /// <summary>An adapted embedding's lookup update, f32/bf16/int8-held, against the reference; rows outside untouched; bad ids refused.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    [InlineData(DType.I8)]
    public void LoraEmbedRowsMatchReference(DType stored)
    {
        int vocab = 120, hidden = 70, rank = 6, total = 7, row0 = 2;
        int[] ids = [0, 119, 5, 5, 64];
        var a = _r.Floats((long)rank * vocab); var b = _r.Floats((long)hidden * rank);
        LoraGrid.Round(a, b, rank, vocab, hidden, stored);
        var y0 = _r.Floats((long)total * hidden);
        var yi = Input(y0);
        var lc = ((ILoraOps)_cpu).LoadLora("e", a, b, rank, vocab, hidden, stored);
        var lr = ((ILoraOps)_ref).LoadLora("e", a, b, rank, vocab, hidden);
        ((ILoraOps)_cpu).LoraEmbedRows(ids, row0, lc, 0.75f, yi.cpu);
        ((ILoraOps)_ref).LoraEmbedRows(ids, row0, lr, 0.75f, yi.reference);
        AssertClose(yi, (long)total * hidden, LoraTol(stored), "embedding lora");
        var got = Get(_cpu, yi.cpu, (long)total * hidden);
        Assert.Equal(y0.AsSpan(0, row0 * hidden).ToArray(), got.AsSpan(0, row0 * hidden).ToArray());
        Assert.Throws<LrlException>(() => ((ILoraOps)_cpu).LoraEmbedRows([vocab], 0, lc, 1f, yi.cpu));
        Assert.ThrowsAny<ArgumentException>(() => ((ILoraOps)_cpu).LoraEmbedRows(ids, total - 2, lc, 1f, yi.cpu));
    }

    /// <summary>The int8 grid: rounding is idempotent, each row of A / column of B has ≤ 255 levels and keeps its largest magnitude.</summary>
    [Fact]
    public void LoraInt8GridRoundsRowsOfAAndColumnsOfB()
    {
        int rank = 5, inF = 37, outF = 23;
        var a = _r.Floats((long)rank * inF); var b = _r.Floats((long)outF * rank);
        b[3 * rank + 2] = 40f; // one large value in column 2 coarsens that column only
        var a0 = (float[])a.Clone(); var b0 = (float[])b.Clone();
        LoraInt8.RoundA(a, rank, inF); LoraInt8.RoundB(b, outF, rank);
        for (int j = 0; j < rank; j++)
        {
            float max = 0; for (int i = 0; i < inF; i++) max = MathF.Max(max, MathF.Abs(a0[j * inF + i]));
            for (int i = 0; i < inF; i++) Assert.True(MathF.Abs(a[j * inF + i] - a0[j * inF + i]) <= max / 254 * 1.0001f);
            float bmax = 0; for (int o = 0; o < outF; o++) bmax = MathF.Max(bmax, MathF.Abs(b0[o * rank + j]));
            for (int o = 0; o < outF; o++) Assert.True(MathF.Abs(b[o * rank + j] - b0[o * rank + j]) <= bmax / 254 * 1.0001f);
        }
        Assert.Equal(40f, b[3 * rank + 2], 4);
        Assert.True(MathF.Abs(b[rank + 1] - b0[rank + 1]) < 0.02f); // other columns keep their fine grid
        var a1 = (float[])a.Clone(); var b1 = (float[])b.Clone();
        LoraInt8.RoundA(a1, rank, inF); LoraInt8.RoundB(b1, outF, rank);
        Assert.Equal(a, a1); Assert.Equal(b, b1);
    }

    [Theory]
    [InlineData(1, 0, 1, 64, 64, 1)]
    [InlineData(5, 2, 3, 67, 129, 4)]
    [InlineData(1, 0, 1, 2048, 8192, 16)]   // Llama-3.2-1B gate/up at rank 16: the parallel path
    [InlineData(40, 7, 33, 576, 1536, 16)]
    [InlineData(3, 1, 2, 173, 31, 7)]
    public void LoraRowsMatchReference(int total, int row0, int rows, int inF, int outF, int rank)
    {
        LoraRowsCase(total, row0, rows, inF, outF, rank, DType.F32);
        LoraRowsCase(total, row0, rows, inF, outF, rank, DType.BF16); // held as bf16, widened in registers
        LoraRowsCase(total, row0, rows, inF, outF, rank, DType.I8);   // int8 codes in panels, scales folded into t
    }

    private void LoraRowsCase(int total, int row0, int rows, int inF, int outF, int rank, DType stored)
    {
        var x = _r.Floats((long)total * inF);
        var y0 = _r.Floats((long)total * outF);
        var a = _r.Floats((long)rank * inF, 1f / MathF.Sqrt(inF));
        var b = _r.Floats((long)outF * rank);
        LoraGrid.Round(a, b, rank, inF, outF, stored);
        var xi = Input(x); var yi = Input(y0);
        var lc = ((ILoraOps)_cpu).LoadLora("t", a, b, rank, inF, outF, stored);
        long groups = (outF + 7) / 8 * 8L, quads = (rank + 3) / 4 * 4L; // int8 B: whole groups of 8 outputs by quads of ranks
        Assert.Equal(stored switch { DType.BF16 => 2L * rank * (inF + outF), DType.I8 => rank * inF + groups * quads + 4L * rank, _ => 4L * rank * (inF + outF) }, lc.ByteSize);
        var lr = ((ILoraOps)_ref).LoadLora("t", a, b, rank, inF, outF);
        ((ILoraOps)_cpu).LoraRows(xi.cpu, row0, rows, lc, 0.75f, yi.cpu);
        ((ILoraOps)_ref).LoraRows(xi.reference, row0, rows, lr, 0.75f, yi.reference);
        var got = Get(_cpu, yi.cpu, (long)total * outF);
        var want = Get(_ref, yi.reference, (long)total * outF);
        // Rows outside [row0, row0 + rows) are untouched; the adapted rows changed and match the reference.
        for (int r = 0; r < total; r++)
        {
            var g = got.AsSpan(r * outF, outF).ToArray(); var w = want.AsSpan(r * outF, outF).ToArray();
            if (r < row0 || r >= row0 + rows) Assert.Equal(y0.AsSpan(r * outF, outF).ToArray(), g);
            else
            {
                Assert.True(RandomTensors.RelErr(g, w) < LoraTol(stored), $"row {r}: {RandomTensors.RelErr(g, w):E2}");
                Assert.NotEqual(y0.AsSpan(r * outF, outF).ToArray(), g);
            }
        }
        Assert.ThrowsAny<ArgumentException>(() => ((ILoraOps)_cpu).LoraRows(xi.cpu, total - rows + 1, rows, lc, 1f, yi.cpu));
    }

    /// <summary>
    /// The int8 adapter's integer kernels (AVX2) against a plain scalar model of what they compute: x quantized per 128
    /// columns (the last inF % 32 their own scale, as the base kernels' activations), integer dot products with A's codes, t = Σ d_b·dot_b · scale · SA·SB (to float rounding); t's
    /// codes exactly as the model rounds the kernel's t; the up-projection y += st·Σ codes·B codes bit for bit, over
    /// output ranges that start and end inside a group. Shapes with ragged edges: in-features not a multiple of 32 or
    /// 128, ranks not a multiple of 4, outputs not a multiple of 8.
    /// </summary>
    [Theory]
    [InlineData(64, 64, 1)]
    [InlineData(67, 129, 4)]
    [InlineData(173, 31, 7)]
    [InlineData(576, 1536, 16)]
    [InlineData(1000, 77, 20)]
    [InlineData(2048, 200, 16)]
    public unsafe void Int8LoraKernelsMatchTheirScalarModel(int inF, int outF, int rank)
    {
        Assert.SkipUnless(System.Runtime.Intrinsics.X86.Avx2.IsSupported, "the integer LoRA kernels need AVX2 (without it int8 pairs run the float path, tested against the reference)");
        var a = _r.Floats((long)rank * inF, 1f / MathF.Sqrt(inF)); var b = _r.Floats((long)outF * rank);
        var x = _r.Floats(inF);
        x[inF / 3] = 9f; // an outlier: only its own block's scale grows
        const float scale = 0.75f;
        var w = (CpuLora)((ILoraOps)_cpu).LoadLora("m", a, b, rank, inF, outF, DType.I8);
        var t = new float[w.TStride];
        // A's and B's codes as the loader makes them.
        var qa = new sbyte[rank * inF]; var qb = new sbyte[outF * rank]; var fold = new float[rank];
        for (int j = 0; j < rank; j++)
        {
            float ma = 0, mb = 0;
            for (int i = 0; i < inF; i++) ma = MathF.Max(ma, MathF.Abs(a[j * inF + i]));
            for (int o = 0; o < outF; o++) mb = MathF.Max(mb, MathF.Abs(b[o * rank + j]));
            float sa = LoraInt8.Scale(ma), sb = LoraInt8.Scale(mb);
            for (int i = 0; i < inF; i++) qa[j * inF + i] = LoraInt8.Code(a[j * inF + i], sa);
            for (int o = 0; o < outF; o++) qb[o * rank + j] = LoraInt8.Code(b[o * rank + j], sb);
            fold[j] = sa * sb;
        }
        // Twice over the same array and row, its values changed in between: a new dispatch (epoch) quantizes them anew.
        for (int pass = 0; pass < 2; pass++)
        {
            if (pass == 1) for (int i = 0; i < inF; i++) x[i] = -0.5f * x[i] + 0.1f * MathF.Sin(i);
            fixed (float* tp = t) w.DownAll(x, 0, scale, tp, CpuLora.NewEpoch());
            // x as the int8 base kernels quantize activations: one scale per 128 columns over the whole 32-column
            // chunks, the last inF % 32 columns their own.
            int full = inF / 32 * 32;
            var qx = new int[inF]; var colScale = new float[inF];
            for (int c0 = 0; c0 < inF; )
            {
                int c1 = c0 < full ? Math.Min(full, c0 + 128) : inF;
                float m = 0;
                for (int i = c0; i < c1; i++) m = MathF.Max(m, MathF.Abs(x[i]));
                float inv = m > 0 ? 127f / m : 0f;
                for (int i = c0; i < c1; i++) { qx[i] = (int)MathF.Round(x[i] * inv); colScale[i] = m / 127f; }
                c0 = c1;
            }
            Assert.Equal(127, Math.Abs(qx[inF / 3]));
            for (int j = 0; j < rank; j++)
            {
                double want = 0;
                for (int i = 0; i < inF; i++) want += (double)colScale[i] * qa[j * inF + i] * qx[i];
                want *= scale * fold[j];
                Assert.True(Math.Abs(t[j] - want) <= 1e-5 * Math.Max(1e-3, Math.Abs(want)), $"pass {pass}: t[{j}] = {t[j]} against {want}");
            }
        }
        // t's codes: one scale for the row, four codes to an int.
        float tmax = 0;
        for (int j = 0; j < rank; j++) tmax = MathF.Max(tmax, MathF.Abs(t[j]));
        float tinv = tmax > 0 ? 127f / tmax : 0f, st = tmax / 127f;
        Assert.Equal(st, t[rank + w.Quads]);
        var tq = new int[w.Quads * 4];
        for (int j = 0; j < rank; j++) tq[j] = Math.Clamp((int)MathF.Round(t[j] * tinv), -127, 127);
        for (int k = 0; k < w.Quads; k++)
        {
            int packed = BitConverter.SingleToInt32Bits(t[rank + k]);
            for (int m = 0; m < 4; m++) Assert.Equal(tq[4 * k + m], (sbyte)(packed >> (8 * m)));
        }
        // The up-projection over ranges with partial groups at both ends, and the whole output.
        foreach (var (start, end) in new[] { (0, outF), (3, Math.Max(3, outF - 5)), (outF / 2, outF) })
        {
            if (end <= start) continue;
            var y0 = _r.Floats(outF);
            var y = (float[])y0.Clone();
            fixed (float* tp = t) fixed (float* yp = &y[start]) LoraStage.Up(w, start, tp, yp, end - start);
            for (int o = 0; o < outF; o++)
            {
                if (o < start || o >= end) { Assert.Equal(y0[o], y[o]); continue; }
                int sum = 0;
                for (int j = 0; j < rank; j++) sum += tq[j] * qb[o * rank + j];
                Assert.Equal(MathF.FusedMultiplyAdd(sum, st, y0[o]), y[o]);
            }
        }
    }
}

/// <summary>f16 weights at the edges of the format: subnormals, signed zeros, the largest finite values.</summary>
public sealed class HalfEdgeTests
{
    [Fact]
    public unsafe void F16GemvIsExactOnSubnormalsZerosAndExtremes()
    {
        using var r = new RandomTensors(3);
        // Row 0: subnormals only; row 1: signed zeros; row 2: the largest finite values and ordinary ones.
        Half[][] rowsOf =
        [
            [BitConverter.UInt16BitsToHalf(0x0001), BitConverter.UInt16BitsToHalf(0x8001), BitConverter.UInt16BitsToHalf(0x03FF),
             BitConverter.UInt16BitsToHalf(0x83FF), BitConverter.UInt16BitsToHalf(0x0200)],
            [(Half)0f, BitConverter.UInt16BitsToHalf(0x8000)],
            [Half.MaxValue, Half.MinValue, (Half)6.1e-5f, (Half)(-1.5f), (Half)0.333f],
        ];
        int rows = 3, cols = 131;
        var values = new float[rows * cols];
        for (int o = 0; o < rows; o++)
            for (int i = 0; i < cols; i++) values[o * cols + i] = (float)rowsOf[o][i % rowsOf[o].Length];
        var t = r.Tensor("w", DType.F16, [rows, cols], values);
        var x = r.Floats(cols);
        using var cpu = new CpuBackend(1);
        var xb = cpu.Allocate(cols); cpu.Upload(x, xb);
        var yb = cpu.Allocate(rows);
        cpu.MatMul(xb, cpu.LoadWeight(t), yb, 1);
        var y = new float[rows]; cpu.Download(yb, 0, y);
        for (int o = 0; o < rows; o++)
        {
            double expected = 0, magnitude = 0;
            for (int i = 0; i < cols; i++) { expected += (double)values[o * cols + i] * x[i]; magnitude += Math.Abs((double)values[o * cols + i] * x[i]); }
            Assert.True(Math.Abs(y[o] - expected) <= 1e-6 * magnitude, $"row {o}: {y[o]} vs {expected}");
        }
    }
    /// <summary>
    /// The f16 kernels over activations pre-scaled by 2^112 (no rebiasing multiply per weight) give the unscaled kernels'
    /// bits, one row and four rows at a time, on random halves mixed with subnormals, signed zeros and the extremes, at
    /// row lengths with and without a ragged tail; activations of 2^15 or more are not scaled (they could overflow),
    /// and the GEMV over them stays finite and exact to f32 rounding.
    /// </summary>
    [Fact]
    public unsafe void F16ScaledActivationsGiveTheUnscaledBits()
    {
        using var r = new RandomTensors(Environment.TickCount);
        ushort[] specials = [0x0001, 0x8001, 0x03FF, 0x83FF, 0x0000, 0x8000, 0x7BFF, 0xFBFF, 0x0400];
        var rng = new Random(Environment.TickCount);
        foreach (int n in new[] { 64, 131, 2048 })
        {
            var w = new ushort[n];
            for (int i = 0; i < n; i++) w[i] = rng.Next(5) == 0 ? specials[rng.Next(specials.Length)] : BitConverter.HalfToUInt16Bits((Half)(rng.NextSingle() * 2 - 1));
            var x = new float[4 * n];
            for (int i = 0; i < x.Length; i++) x[i] = (rng.NextSingle() * 2 - 1) * (i % 97 == 0 ? 30000f : 4f);
            fixed (ushort* wp = w) fixed (float* xp = x)
            {
                // Every path: the prepared kernel (AVX-512 scaled, AVX2 split and scaled) against the exact sum.
                for (int row = 0; row < 4; row++)
                {
                    var xr = x.AsSpan(row * n, n);
                    if (!Simd.PrepareF16(xr, out float* prep))
                    {
                        Assert.False(System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported, "preparation refused with AVX2");
                        continue;
                    }
                    double exact = 0, magnitude = 0;
                    for (int i = 0; i < n; i++)
                    {
                        double p = (double)BitConverter.UInt16BitsToHalf(w[i]) * xr[i];
                        exact += p; magnitude += Math.Abs(p);
                    }
                    float got = Simd.DotF16Prepared(wp, prep, xr);
                    // f32 accumulation of n products: |error| ≤ (n + 2)·2^-24·Σ|products| (a wrong conversion is off by far more).
                    Assert.True(Math.Abs(got - exact) <= (n + 2) * Math.ScaleB(1.0, -24) * magnitude, $"n={n} row {row}: {got} vs {exact}");
                }
                if (!Simd.ScaleForF16(x, out float* xs))
                {
                    Assert.False(System.Runtime.Intrinsics.X86.Avx512F.IsSupported, "scaling refused on an AVX-512 machine");
                    continue;
                }
                var copy = new float[x.Length];
                new ReadOnlySpan<float>(xs, x.Length).CopyTo(copy); // the scratch is reused by the next call
                fixed (float* sp = copy)
                {
                    for (int row = 0; row < 4; row++)
                        Assert.Equal(BitConverter.SingleToInt32Bits(Simd.DotF16((Half*)wp, x.AsSpan(row * n, n))),
                                     BitConverter.SingleToInt32Bits(Simd.DotF16Scaled(wp, sp + row * n, x.AsSpan(row * n, n))));
                    var a = Simd.DotF16x4(wp, xp, xp + n, xp + 2 * n, xp + 3 * n, n);
                    var b = Simd.DotF16x4Scaled(wp, sp, sp + n, sp + 2 * n, sp + 3 * n, xp, xp + n, xp + 2 * n, xp + 3 * n, n);
                    for (int row = 0; row < 4; row++) Assert.Equal(BitConverter.SingleToInt32Bits(a[row]), BitConverter.SingleToInt32Bits(b[row]));
                }
            }
        }
        // An activation at 2^15: not scaled, and the product is still right.
        var big = r.Floats(256);
        big[7] = 40000f;
        Assert.False(Simd.ScaleForF16(big, out _));
        Assert.False(Simd.PrepareF16(big, out _));
        var values = r.Floats(3 * 256);
        for (int i = 0; i < values.Length; i++) values[i] = (float)(Half)values[i];
        var t = r.Tensor("w", DType.F16, [3, 256], values);
        using var cpu = new CpuBackend(1);
        var xb = cpu.Allocate(256); cpu.Upload(big, xb);
        var yb = cpu.Allocate(3);
        cpu.MatMul(xb, cpu.LoadWeight(t), yb, 1);
        var y = new float[3]; cpu.Download(yb, 0, y);
        for (int o = 0; o < 3; o++)
        {
            double expected = 0, magnitude = 0;
            for (int i = 0; i < 256; i++) { expected += (double)values[o * 256 + i] * big[i]; magnitude += Math.Abs((double)values[o * 256 + i] * big[i]); }
            Assert.True(float.IsFinite(y[o]) && Math.Abs(y[o] - expected) <= 258 * Math.ScaleB(1.0, -24) * magnitude, $"row {o}: {y[o]} vs {expected}");
        }
    }
}

public sealed class F16ToFloatTests
{
    /// <summary>The inlined f16 → f32 conversion equals the framework's on every one of the 65,536 bit patterns.</summary>
    [Fact]
    public void EqualsTheFrameworkConversionOnEveryBitPattern()
    {
        for (int bits = 0; bits <= ushort.MaxValue; bits++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)bits), actual = DTypes.F16ToFloat((ushort)bits);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"0x{bits:X4}: {actual} is not NaN");
            else Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(actual),
                             $"0x{bits:X4}: {actual} vs {expected}");
        }
    }

}
