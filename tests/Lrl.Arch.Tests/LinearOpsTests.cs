namespace Lrl.Arch.Tests;

/// <summary>Every ILinearAttentionOps kernel of the CPU backend against the scalar float64 reference backend, on fresh
/// random inputs at odd and even sizes, with NaN-poisoned outputs.</summary>
public class LinearOpsTests
{
    public static TheoryData<int, int, int> Shapes => new()
    {
        // rows, heads, headSize
        { 1, 1, 8 }, { 3, 2, 7 }, { 4, 3, 16 }, { 5, 1, 33 }, { 2, 4, 64 }, { 7, 5, 5 },
    };

    [Theory, MemberData(nameof(Shapes))]
    public void ElementwiseOps(int rows, int heads, int headSize)
    {
        int n = rows * heads * headSize, w = heads * headSize;
        var rng = new Random(n * 31 + rows);
        var x = Rand.Uniform(rng, n, -4, 4); var y = Rand.Uniform(rng, n, -2, 2); var t = Rand.Uniform(rng, n, 0, 1);
        var mix = Rand.Uniform(rng, w, -0.5f, 1.5f); var state = Rand.Uniform(rng, w);
        var (cpu, rf) = Rand.OnBoth(e =>
        {
            var outs = new List<float[]>();
            foreach (var op in new Action<DeviceBuffer>[] { b => e.L.Sigmoid(b, n), b => e.L.Silu(b, n), b => e.L.Tanh(b, n),
                         b => e.L.ReluSquare(b, n), b => e.L.Scale(b, 0.37f, n), b => e.L.Rwkv7Decay(b, n) })
            {
                var b = e.Buf(x);
                op(b);
                outs.Add(e.Get(b));
            }
            var a = e.Buf(x); e.L.Multiply(a, e.Buf(y), n); outs.Add(e.Get(a));
            var mr = e.Poison(n); e.L.MultiplyRow(e.Buf(x), e.Vec(mix), mr, rows); outs.Add(e.Get(mr));
            var lr = e.Poison(n); e.L.LerpRow(e.Buf(x), e.Buf(y), e.Vec(mix), lr, rows); outs.Add(e.Get(lr));
            var le = e.Poison(n); e.L.Lerp(e.Buf(x), e.Buf(y), e.Buf(t), le, n); outs.Add(e.Get(le));
            var st = e.Buf(state); var prev = e.Poison(n);
            e.L.TokenShift(e.Buf(x), st, prev, rows, w); outs.Add(e.Get(prev)); outs.Add(e.Get(st));
            var ks = e.Buf(x); e.L.Rwkv7KeyScale(ks, e.Buf(t), e.Vec(mix), rows); outs.Add(e.Get(ks));
            var z = e.Buf(x); e.L.Zero(z, n); outs.Add(e.Get(z));
            return outs.ToArray();
        });
        Rand.AssertClose(cpu, rf, 1e-6, $"elementwise rows={rows} width={w}");
        // Token shift semantics, checked directly: prev row 0 = old state, row r = x[r-1]; new state = last row.
        Assert.Equal(state, cpu[10].AsSpan(0, w).ToArray());
        Assert.Equal(x.AsSpan(n - w, w).ToArray(), cpu[11]);
        Assert.All(cpu[^1], v => Assert.Equal(0f, v));
    }

    [Theory, MemberData(nameof(Shapes))]
    public void GroupNormAndL2Normalize(int rows, int heads, int headSize)
    {
        int w = heads * headSize, n = rows * w;
        var rng = new Random(n + 7);
        var x = Rand.Uniform(rng, n, -3, 3); var g = Rand.Uniform(rng, w); var b = Rand.Uniform(rng, w);
        var (cpu, rf) = Rand.OnBoth(e =>
        {
            var y = e.Poison(n);
            e.L.GroupNorm(e.Buf(x), e.Vec(g), e.Vec(b), y, rows, heads, 1e-5f);
            var inPlace = e.Buf(x);
            e.L.GroupNorm(inPlace, e.Vec(g), e.Vec(b), inPlace, rows, heads, 64e-5f);
            var l2 = e.Buf(x);
            e.L.L2NormalizeGroups(l2, rows, w, headSize, 1e-12f);
            return [e.Get(y), e.Get(inPlace), e.Get(l2)];
        });
        Rand.AssertClose(cpu, rf, 1e-5, $"group norm rows={rows} heads={heads} size={headSize}");
        // Each normalised group has unit L2 norm.
        for (int o = 0; o < n; o += headSize)
            Assert.Equal(1.0, Math.Sqrt(cpu[2].AsSpan(o, headSize).ToArray().Sum(v => (double)v * v)), 1e-5);
    }

    [Theory, MemberData(nameof(Shapes))]
    public void LrpeMatchesReferenceAndPreservesRelativeAngles(int rows, int heads, int headSize)
    {
        int n = rows * heads * headSize;
        var rng = new Random(n + 17);
        var x = Rand.Uniform(rng, n); var theta = Rand.Uniform(rng, heads * headSize, 0.01f, 1f);
        const int pos0 = 5;
        var (cpu, rf) = Rand.OnBoth(e =>
        {
            var y = e.Poison(2L * n);
            e.L.Lrpe(e.Buf(x), e.Vec(theta), y, rows, heads, headSize, pos0);
            return [e.Get(y)];
        });
        Rand.AssertClose(cpu, rf, 1e-6, $"lrpe rows={rows} heads={heads} size={headSize}");
        // y_t·y_s = Σ_i x_t,i·x_s,i·cos(θ_i(t − s)) for head 0 of the first and last rows.
        int hd = headSize, last = rows - 1;
        double dot = 0, expect = 0;
        for (int i = 0; i < 2 * hd; i++) dot += (double)rf[0][i] * rf[0][(last * heads) * 2 * hd + i];
        for (int i = 0; i < hd; i++) expect += (double)x[i] * x[last * heads * hd + i] * Math.Cos(theta[i] * (0 - last));
        Assert.Equal(expect, dot, 1e-5);
    }

    [Theory, MemberData(nameof(Shapes))]
    public void Wkv5MatchesReference(int rows, int heads, int headSize)
    {
        int c = heads * headSize, n = rows * c;
        var rng = new Random(n + 11);
        var r = Rand.Uniform(rng, n); var k = Rand.Uniform(rng, n); var v = Rand.Uniform(rng, n);
        var decay = Rand.Uniform(rng, c, 0.3f, 0.99f); var bonus = Rand.Uniform(rng, c, -0.5f, 0.5f);
        var s0 = Rand.Uniform(rng, heads * headSize * headSize);
        var (cpu, rf) = Rand.OnBoth(e =>
        {
            var st = e.Buf(s0); var o = e.Poison(n);
            e.L.Wkv5(e.Buf(r), e.Buf(k), e.Buf(v), e.Vec(decay), e.Vec(bonus), st, o, rows, heads, headSize);
            return [e.Get(o), e.Get(st)];
        });
        Rand.AssertClose(cpu, rf, 1e-5, $"wkv5 rows={rows} heads={heads} size={headSize}");
        // Independent check of the formula for the first token of head 0, output 0.
        double expect = 0;
        for (int i = 0; i < headSize; i++) expect += r[i] * (bonus[i] * k[i] * v[0] + s0[i * headSize]);
        Assert.Equal(expect, rf[0][0], 1e-5);
    }

    [Theory, MemberData(nameof(Shapes))]
    public void Wkv7AndBonusMatchReference(int rows, int heads, int headSize)
    {
        int c = heads * headSize, n = rows * c;
        var rng = new Random(n + 13);
        var r = Rand.Uniform(rng, n); var w = Rand.Uniform(rng, n, 0.5f, 0.99f); var k = Rand.Uniform(rng, n);
        var v = Rand.Uniform(rng, n); var a = Rand.Uniform(rng, n, 0, 1); var rk = Rand.Uniform(rng, c);
        var kk = Rand.Uniform(rng, n);
        for (int o = 0; o < n; o += headSize)
        {
            double norm = Math.Sqrt(kk.AsSpan(o, headSize).ToArray().Sum(x => (double)x * x));
            for (int i = 0; i < headSize; i++) kk[o + i] = (float)(kk[o + i] / norm);
        }
        var s0 = Rand.Uniform(rng, heads * headSize * headSize, -0.2f, 0.2f);
        var (cpu, rf) = Rand.OnBoth(e =>
        {
            var st = e.Buf(s0); var o = e.Poison(n);
            e.L.Wkv7(e.Buf(r), e.Buf(w), e.Buf(k), e.Buf(v), e.Buf(kk), e.Buf(a), st, o, rows, heads, headSize);
            var bonus = e.Buf(v);
            e.L.Rwkv7Bonus(e.Buf(r), e.Buf(k), e.Buf(v), e.Vec(rk), bonus, rows, heads, headSize);
            return [e.Get(o), e.Get(st), e.Get(bonus)];
        });
        Rand.AssertClose(cpu, rf, 1e-5, $"wkv7 rows={rows} heads={heads} size={headSize}");
        // Independent check: first token, head 0, value row 0 of the new state and its output.
        double sa = 0;
        for (int j = 0; j < headSize; j++) sa += s0[j] * -kk[j];
        double out0 = 0;
        for (int j = 0; j < headSize; j++)
            out0 += (s0[j] * w[j] + sa * kk[j] * a[j] + v[0] * k[j]) * r[j];
        if (rows == 1) Assert.Equal(out0, rf[0][0], 1e-5);
    }
}
