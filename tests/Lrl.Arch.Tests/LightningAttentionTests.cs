namespace Lrl.Arch.Tests;

/// <summary>
/// Lightning attention: the chunked (block) and recurrent forms on every backend against the naive quadratic
/// definition O_t = Σ_{s≤t} λ^{t−s}(q_t·k_s)v_s in float64, on random inputs.
/// </summary>
public class LightningAttentionTests
{
    private static double[] Naive(float[] q, float[] k, float[] v, float[] slopes, int rows, int heads, int dk, int dv)
    {
        var o = new double[rows * heads * dv];
        for (int h = 0; h < heads; h++)
        {
            double lambda = Math.Exp(-(double)slopes[h]);
            for (int t = 0; t < rows; t++)
                for (int s = 0; s <= t; s++)
                {
                    double dot = 0;
                    for (int i = 0; i < dk; i++) dot += (double)q[(t * heads + h) * dk + i] * k[(s * heads + h) * dk + i];
                    double wgt = Math.Pow(lambda, t - s) * dot;
                    for (int j = 0; j < dv; j++) o[(t * heads + h) * dv + j] += wgt * v[(s * heads + h) * dv + j];
                }
        }
        return o;
    }

    public static TheoryData<int, int, int, int, int> Cases => new()
    {
        // rows, heads, keyDim, valueDim, blockSize
        { 1, 1, 4, 4, 4 }, { 7, 2, 5, 3, 3 }, { 16, 3, 8, 8, 4 }, { 33, 4, 7, 9, 8 }, { 64, 2, 16, 16, 16 }, { 50, 5, 6, 6, 256 }, { 9, 1, 3, 3, 1 },
    };

    [Theory, MemberData(nameof(Cases))]
    public void ChunkedAndRecurrentEqualNaiveQuadratic(int rows, int heads, int dk, int dv, int block)
    {
        var rng = new Random(rows * 100 + heads * 10 + dk);
        var q = Rand.Uniform(rng, rows * heads * dk); var k = Rand.Uniform(rng, rows * heads * dk);
        var v = Rand.Uniform(rng, rows * heads * dv);
        var slopes = Rand.Uniform(rng, heads, 0.01f, 1.5f);
        var expected = Naive(q, k, v, slopes, rows, heads, dk, dv);
        int split = rows / 2;
        var (cpu, rf) = Rand.OnBoth(e =>
        {
            var sl = e.Vec(slopes);
            // Whole sequence, chunked.
            var st1 = e.Buf(new float[heads * dk * dv]); var o1 = e.Poison(rows * heads * dv);
            e.L.LightningChunked(e.Buf(q), e.Buf(k), e.Buf(v), sl, st1, o1, rows, heads, dk, dv, block);
            // Whole sequence, recurrent.
            var st2 = e.Buf(new float[heads * dk * dv]); var o2 = e.Poison(rows * heads * dv);
            e.L.LightningRecurrent(e.Buf(q), e.Buf(k), e.Buf(v), sl, st2, o2, rows, heads, dk, dv);
            // Prefill the first half chunked, then decode the rest one row at a time from the carried state.
            var st3 = e.Buf(new float[heads * dk * dv]);
            var o3 = new float[rows * heads * dv];
            if (split > 0)
            {
                var oa = e.Poison(split * heads * dv);
                e.L.LightningChunked(e.Buf(q[..(split * heads * dk)]), e.Buf(k[..(split * heads * dk)]), e.Buf(v[..(split * heads * dv)]),
                                     sl, st3, oa, split, heads, dk, dv, block);
                e.Get(oa).CopyTo(o3, 0);
            }
            for (int t = split; t < rows; t++)
            {
                var ob = e.Poison(heads * dv);
                e.L.LightningRecurrent(e.Buf(q.AsSpan(t * heads * dk, heads * dk).ToArray()), e.Buf(k.AsSpan(t * heads * dk, heads * dk).ToArray()),
                                       e.Buf(v.AsSpan(t * heads * dv, heads * dv).ToArray()), sl, st3, ob, 1, heads, dk, dv);
                e.Get(ob).CopyTo(o3, t * heads * dv);
            }
            return [e.Get(o1), e.Get(o2), o3, e.Get(st1), e.Get(st2), e.Get(st3)];
        });
        foreach (var (name, outs) in new[] { ("cpu", cpu), ("reference", rf) })
        {
            for (int i = 0; i < 3; i++)
            {
                double err = Rand.RelErr(outs[i], expected);
                Assert.True(err < 1e-5, $"{name} form {i} (chunked/recurrent/split) rows={rows} block={block}: relative error {err:E2}");
            }
            // The three runs leave the same state.
            Assert.True(Rand.RelErr(outs[3], outs[4]) < 1e-5, $"{name}: chunked vs recurrent final state");
            Assert.True(Rand.RelErr(outs[5], outs[4]) < 1e-5, $"{name}: split vs recurrent final state");
        }
    }
}
