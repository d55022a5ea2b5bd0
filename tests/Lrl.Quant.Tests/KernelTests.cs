using Lrl.Cpu;
using Lrl.Kernels.Reference;

namespace Lrl.Quant.Tests;

/// <summary>Every quantized CPU kernel against the scalar double reference, at odd and even sizes, per bits and group.</summary>
public class KernelTests
{
    public static TheoryData<int, int, int, int, bool, bool> Cases()
    {
        var d = new TheoryData<int, int, int, int, bool, bool>();
        foreach (var (rows, cols) in new[] { (1, 64), (7, 96), (33, 128), (17, 172), (40, 320), (129, 576), (3, 2048), (5, 42), (6, 1280), (5, 384) })
            foreach (int bits in new[] { 8, 4 })
                foreach (int g in new[] { 32, 64, 128, 256, cols }.Distinct())
                {
                    if (cols % g != 0 || (g != cols && g % 32 != 0)) continue;
                    d.Add(bits, rows, cols, g, false, false);
                    if (bits == 4) d.Add(bits, rows, cols, g, true, (rows + cols) % 2 == 1);
                }
        d.Add(4, 9, 256, 64, true, true);
        d.Add(8, 9, 256, 64, false, true);
        return d;
    }

    private static IEnumerable<QuantKernel> Kernels() =>
        new[] { QuantKernel.Scalar, QuantKernel.WidenF32, QuantKernel.Avx2Int, QuantKernel.Vnni }.Where(k => k == QuantKernel.Scalar || IsSupported(k));

    private static bool IsSupported(QuantKernel k) => k switch
    {
        QuantKernel.Vnni => System.Runtime.Intrinsics.X86.AvxVnni.IsSupported,
        _ => System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported,
    };

    [Theory, MemberData(nameof(Cases))]
    public void GemvMatchesReference(int bits, int rows, int cols, int group, bool zeros, bool permute)
    {
        var rng = new Random(bits * 1000 + rows * 7 + cols + group);
        var q = TestUtil.Random(rng, bits, rows, cols, group, zeros, permute);
        var x = TestUtil.RandomVector(rng, cols);
        var expected = TestUtil.Reference(q, x, 1);
        var m = new QuantMatrix(q);
        Assert.Equal(q.Format, m.Format);
        foreach (var k in Kernels())
        {
            m.Kernel = k;
            // Whole range and a split range (as the parallel job calls it).
            var y = new float[rows];
            Array.Fill(y, float.NaN);
            int mid = rows / 2;
            m.Gemv(x, y.AsSpan(0, mid), 0, mid);
            m.Gemv(x, y.AsSpan(mid), mid, rows);
            TestUtil.CheckBound(q, x, y, expected, 1, quantizedActivations: k is QuantKernel.Avx2Int or QuantKernel.Vnni);
            if (k is QuantKernel.Scalar or QuantKernel.WidenF32 && rows > 8)
                Assert.True(TestUtil.RelErr(y, expected) < 2e-5, $"{k}: relative error {TestUtil.RelErr(y, expected):E2}");
            if (k is QuantKernel.Avx2Int or QuantKernel.Vnni)
            {
                // Exactly the integer kernels' arithmetic: against the reference on the int8-rounded activations they
                // differ only by f32 accumulation (the bound above allows the activation rounding itself).
                var exact = TestUtil.Reference(q, TestUtil.KernelActivations(q, x), 1);
                Assert.True(TestUtil.RelErr(y, exact) < 2e-5, $"{k}: relative error {TestUtil.RelErr(y, exact):E2} against the int8-rounded activations");
            }
        }
    }

    /// <summary>
    /// A fused decode product over one input (Q/K/V) whose weights differ in bits, group, zero points or column order:
    /// each must prepare its own activation unless it is prepared identically (then it is shared). Compared with the
    /// reference on the int8-rounded activations, so a wrongly shared preparation fails.
    /// </summary>
    [Theory]
    [InlineData(4, 576, 4, 576, 4, 576)]
    [InlineData(4, 64, 4, 576, 8, 576)]
    [InlineData(4, 32, 4, 32, 4, 32)]
    [InlineData(8, 576, 4, 576, 4, 64)]
    public void FusedDecodeProductPreparesOrSharesTheActivation(int b0, int g0, int b1, int g1, int b2, int g2)
    {
        var rng = new Random(b0 * 31 + g0 + b1 * 7 + g1 + b2 * 3 + g2);
        const int cols = 576;
        var qs = new[]
        {
            TestUtil.Random(rng, b0, 48, cols, g0),
            TestUtil.Random(rng, b1, 40, cols, g1, zeros: b1 == 4 && g1 != cols),
            TestUtil.Random(rng, b2, 24, cols, g2, permute: g2 == 64),
        };
        using var cpu = new CpuBackend(2);
        var w = qs.Select(q => cpu.LoadQuantized(q)).ToArray();
        var x = TestUtil.RandomVector(rng, cols);
        var xb = cpu.Allocate(cols); cpu.Upload(x, xb);
        var ys = qs.Select(q => { var b = cpu.Allocate(q.Rows); var nan = new float[q.Rows]; Array.Fill(nan, float.NaN); cpu.Upload(nan, b); return b; }).ToArray();
        cpu.MatMul3(xb, 1, w[0], ys[0], null, w[1], ys[1], null, w[2], ys[2], null);
        // The integer kernels (the best the CPU has, as Auto picks) round the activations to int8; the scalar one does not.
        bool integer = Kernels().Any(k => k is QuantKernel.Avx2Int or QuantKernel.Vnni);
        for (int i = 0; i < 3; i++)
        {
            var y = new float[qs[i].Rows];
            cpu.Download(ys[i], 0, y);
            var exact = TestUtil.Reference(qs[i], integer ? TestUtil.KernelActivations(qs[i], x) : x, 1);
            Assert.True(TestUtil.RelErr(y, exact) < 2e-5, $"weight {i} ({qs[i].Format}): relative error {TestUtil.RelErr(y, exact):E2}");
        }
    }

    [Theory, MemberData(nameof(Cases))]
    public void BackendMatMulMatchesReference(int bits, int rows, int cols, int group, bool zeros, bool permute)
    {
        var rng = new Random(bits * 999 + rows * 5 + cols + group);
        var q = TestUtil.Random(rng, bits, rows, cols, group, zeros, permute);
        using var cpu = new CpuBackend(2);
        var reference = new ReferenceBackend();
        var wc = cpu.LoadQuantized(q);
        var wr = reference.LoadQuantized(q);
        Assert.Equal(q.ByteSize, wc.ByteSize);
        Assert.Equal((long)rows * (bits == 8 ? cols : cols / 2) + (long)rows * (cols / group) * (zeros ? 3 : 2), wc.ByteSize);
        foreach (int n in new[] { 1, 3, 6, 45 })
        {
            var x = TestUtil.RandomVector(rng, n * cols);
            var expected = TestUtil.Reference(q, x, n);
            foreach (var (b, w) in new (IBackend, Weight)[] { (cpu, wc), (reference, wr) })
            {
                var xb = b.Allocate(n * cols); var yb = b.Allocate(n * rows);
                b.Upload(x, xb);
                var poison = new float[n * rows]; Array.Fill(poison, float.NaN); b.Upload(poison, yb);
                b.MatMul(xb, w, yb, n);
                var y = new float[n * rows];
                b.Download(yb, 0, y);
                // The CPU backend runs up to 32 rows through the integer decode kernels (int8 activations).
                TestUtil.CheckBound(q, x, y, expected, n, quantizedActivations: b == cpu && n <= ((CpuMatrix)wc).RowsMax);
            }
        }
    }

    /// <summary>
    /// A product of a few rows (a batched decode step, speculative verification) gives each row exactly its one-row
    /// result: same kernel, same activation quantization, weights merely read once for all rows. Fused Q/K/V and
    /// gate/up included, odd row counts and both sides of the many-row threshold.
    /// </summary>
    [Theory]
    [InlineData(4, 200, 576, 576, false)]
    [InlineData(4, 96, 320, 64, true)]
    [InlineData(8, 130, 576, 576, false)]
    [InlineData(8, 64, 256, 128, false)]
    [InlineData(4, 40, 1536, 32, true)]
    [InlineData(4, 97, 1536, 1536, true)]   // per-channel zero points, an odd last weight row
    [InlineData(4, 66, 640, 640, false)]    // a 64-column tail after the 128-column steps
    [InlineData(8, 34, 600, 600, false)]    // per-channel int8 with a 24-column f32 tail and a 64-column partial step
    [InlineData(4, 51, 2048, 2048, true)]   // rows too long to pair in the GEMV, per-channel zero points
    [InlineData(4, 30, 1600, 1600, false)]  // a 64-column partial step and 1600 % 128 = 64
    [InlineData(4, 19, 600, 600, false)]    // per-channel int4 with a 24-column f32 tail after the packed tiles
    [InlineData(8, 20, 544, 32, false)]     // int8 groups of 32: 17 units, the last even
    [InlineData(4, 38, 1280, 256, true)]    // groups of 256 (units of 128 columns, two per group), zero points
    [InlineData(8, 26, 1088, 64, false)]    // int8 groups of 64, a partial last unit of one chunk
    public void FewRowsEqualEachRowAlone(int bits, int outF, int cols, int group, bool zeros)
    {
        var rng = new Random(bits * 77 + outF + cols + group);
        var q = TestUtil.Random(rng, bits, outF, cols, group, zeros);
        var q2 = TestUtil.Random(rng, bits, outF, cols, group, zeros);
        using var cpu = new CpuBackend(2);
        var w = cpu.LoadQuantized(q);
        var w2 = cpu.LoadQuantized(q2);
        // Every kernel the machine has, forced: the integer tiles exist for VNNI and AVX2 (4-bit), and each must agree
        // with its own GEMV; the scalar and f32 kernels run rows through their GEMV.
        foreach (var k in Kernels())
        foreach (int n in new[] { 2, 3, 4, 5, 6, 7, 16, 31, 32, 33, 70 })
        {
            ((QuantMatrix)w).Kernel = k; ((QuantMatrix)w2).Kernel = k;
            var x = TestUtil.RandomVector(rng, n * cols);
            var xb = cpu.Allocate(n * cols); cpu.Upload(x, xb);
            var y = cpu.Allocate(n * outF); var y2 = cpu.Allocate(n * outF);
            var one = cpu.Allocate(cols); var y1 = cpu.Allocate(outF); var y1b = cpu.Allocate(outF);
            var all = new float[n * outF]; var all2 = new float[n * outF];
            cpu.MatMul(xb, w, y, n);
            cpu.Download(y, 0, all);
            cpu.GateUpSwiGlu(xb, n, w, w2, y, y2);
            cpu.Download(y, 0, all2);
            var row = new float[outF];
            for (int r = 0; r < n; r++)
            {
                cpu.Upload(x.AsSpan(r * cols, cols), one);
                cpu.MatMul(one, w, y1, 1);
                cpu.Download(y1, 0, row);
                if (n <= ((CpuMatrix)w).RowsMax) Assert.True(row.AsSpan().SequenceEqual(all.AsSpan(r * outF, outF)), $"{q.Format} {k} n={n} row {r}: the many-row product differs from the row's GEMV");
                else Assert.True(TestUtil.RelErr(all.AsSpan(r * outF, outF), row) < 2e-2, $"n={n} row {r}");
                cpu.GateUpSwiGlu(one, 1, w, w2, y1, y1b);
                cpu.Download(y1, 0, row);
                if (n <= ((CpuMatrix)w).RowsMax) Assert.True(row.AsSpan().SequenceEqual(all2.AsSpan(r * outF, outF)), $"{q.Format} {k} n={n} row {r}: fused gate/up differs from the row's");
            }
        }
    }

    /// <summary>Negative, subnormal (below 6.1e-5) and zero f16 scales go through the kernels' vectorized f16 → f32 conversion.</summary>
    [Theory]
    [InlineData(8, 64)]
    [InlineData(4, 32)]
    [InlineData(4, 128)]
    public unsafe void OddScalesConvertExactly(int bits, int group)
    {
        var rng = new Random(bits + group);
        int rows = 23, cols = 256;
        var q = TestUtil.Random(rng, bits, rows, cols, group, zeros: bits == 4 && group == 32);
        for (int i = 0; i < q.ScaleCount; i++)
            q.Scales[i] = (Half)((i / q.Groups % 5) switch { 0 => -0.01 * rng.NextDouble(), 1 => 3e-6 * rng.NextDouble(), 2 => i % 3 == 0 ? 0.0 : 1e-7, 3 => -4e-5, _ => 0.5 });
        var x = TestUtil.RandomVector(rng, cols);
        var expected = TestUtil.Reference(q, x, 1);
        var m = new QuantMatrix(q);
        foreach (var k in Kernels())
        {
            m.Kernel = k;
            var y = new float[rows];
            Array.Fill(y, float.NaN);
            m.Gemv(x, y, 0, rows);
            TestUtil.CheckBound(q, x, y, expected, 1, quantizedActivations: k is QuantKernel.Avx2Int or QuantKernel.Vnni);
        }
    }

    [Fact]
    public void EmbedFromQuantizedTable()
    {
        var rng = new Random(5);
        var q = TestUtil.Random(rng, 4, 50, 64, 32, zeros: false);
        using var cpu = new CpuBackend(1);
        var w = cpu.LoadQuantized(q);
        var x = cpu.Allocate(2 * 64);
        cpu.Embed(w, [3, 49], x);
        var got = new float[128];
        cpu.Download(x, 0, got);
        var row = new double[64];
        foreach (var (r, id) in new[] { (0, 3), (1, 49) })
        {
            q.DequantizeRow(id, row);
            for (int i = 0; i < 64; i++) Assert.Equal(row[i], got[r * 64 + i], 1e-6);
        }
    }

    [Fact]
    public void Int4PackingRoundTrips()
    {
        var rng = new Random(1);
        foreach (int cols in new[] { 2, 30, 64, 100, 172, 256 })
        {
            var nib = new byte[cols];
            for (int i = 0; i < cols; i++) nib[i] = (byte)rng.Next(16);
            var packed = new byte[cols / 2];
            QuantLayout.PackInt4Row(nib, packed);
            unsafe
            {
                fixed (byte* p = packed)
                    for (int i = 0; i < cols; i++) Assert.Equal(nib[i], QuantLayout.Nibble(p, cols, i));
            }
        }
        // Documented order: in a 64-column block, byte j = column j (low) | column j + 32 (high).
        Assert.Equal((5, 0), QuantLayout.Int4Position(128, 5));
        Assert.Equal((5, 1), QuantLayout.Int4Position(128, 37));
        Assert.Equal((37, 1), QuantLayout.Int4Position(128, 101));
        Assert.Equal((64 / 2 + 3, 1), QuantLayout.Int4Position(100, 64 + 18 + 3));
    }
}
