namespace Lrl.Quant.Tests;

/// <summary>GPTQ's error compensation: on correlated inputs its outputs are closer to the f32 layer's than rounding's.</summary>
public class GptqTests
{
    [Theory]
    [InlineData(8, 64, 64)]
    [InlineData(4, 64, 32)]
    [InlineData(4, 96, 96)]
    public void OutputErrorIsBelowRoundToNearest(int bits, int cols, int group)
    {
        var rng = new Random(Environment.TickCount);
        int rows = 40, samples = 400;
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1);
        // Correlated inputs: x = A z with a random mixing matrix, as activations are.
        var mix = new double[cols * cols];
        for (int i = 0; i < mix.Length; i++) mix[i] = rng.NextDouble() * 2 - 1;
        var xs = new double[samples][];
        var h = new double[cols * cols];
        for (int s = 0; s < samples; s++)
        {
            var z = Enumerable.Range(0, cols).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
            var x = new double[cols];
            for (int i = 0; i < cols; i++) for (int j = 0; j < cols; j++) x[i] += mix[i * cols + j] * z[j] * (j < 4 ? 5 : 1);
            xs[s] = x;
            for (int i = 0; i < cols; i++) for (int j = 0; j < cols; j++) h[i * cols + j] += x[i] * x[j];
        }
        var gptq = Gptq.Quantize(w, rows, cols, bits, group, false, h);
        var rtn = GroupQuantizer.Quantize(w, rows, cols, bits, group);
        Assert.Equal(rtn.Scales.Length, gptq.Scales.Length);
        Assert.Equal(rtn.Codes.Length, gptq.Codes.Length);
        double eG = OutputError(gptq, w, xs), eR = OutputError(rtn, w, xs);
        Assert.True(eG < eR, $"GPTQ output error {eG:E3} is not below rounding's {eR:E3}");
    }

    /// <summary>With the codes fixed, the refit group scales minimize (w − ŵ)ᵀH(w − ŵ): from deliberately wrong scales it
    /// recovers most of the error, and it never makes a row worse.</summary>
    [Theory]
    [InlineData(4, 96, 32)]
    [InlineData(4, 64, 64)]
    [InlineData(8, 128, 32)]
    public void ScaleRefitLowersTheOutputError(int bits, int cols, int group)
    {
        var rng = new Random(Environment.TickCount);
        var w = Enumerable.Range(0, cols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var a = Enumerable.Range(0, cols * cols).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
        var h = new double[cols * cols];   // H = A Aᵀ: symmetric positive definite
        for (int i = 0; i < cols; i++) for (int j = 0; j < cols; j++) for (int k = 0; k < cols; k++) h[i * cols + j] += a[i * cols + k] * a[j * cols + k];
        var q = GroupQuantizer.Quantize(w, 1, cols, bits, group);
        byte[]? nibbles = null;
        if (bits == 4)
        {
            nibbles = new byte[cols];
            unsafe { fixed (byte* p = q.Codes) for (int j = 0; j < cols; j++) nibbles[j] = (byte)QuantLayout.Nibble(p, cols, j); }
        }
        double Error(Half[] scales) => OutputError(new QuantizedMatrix
        {
            Bits = bits, GroupSize = group, Rows = 1, Cols = cols, Codes = q.Codes, Scales = scales,
        }, w, h);
        var good = q.Scales.ToArray();
        Gptq.RefitScales(w, h, cols, group, nibbles, bits == 8 ? q.Codes : default, default, good);
        Assert.True(Error(good) <= Error(q.Scales) * (1 + 1e-6), $"refit {Error(good):E3} above rounding's {Error(q.Scales):E3}");
        var wrong = q.Scales.Select(s => (Half)((float)s * 1.3f)).ToArray();
        double before = Error(wrong);
        Gptq.RefitScales(w, h, cols, group, nibbles, bits == 8 ? q.Codes : default, default, wrong);
        Assert.True(Error(wrong) < 0.5 * before, $"refit from 1.3× scales: {Error(wrong):E3} vs {before:E3}");
    }

    /// <summary>(w − ŵ)ᵀ H (w − ŵ) for one row.</summary>
    private static double OutputError(QuantizedMatrix q, float[] w, double[] h)
    {
        var d = Dequantize(q).Select((v, j) => (double)w[j] - v).ToArray();
        int n = d.Length;
        double e = 0;
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) e += d[i] * h[i * n + j] * d[j];
        return e;
    }

    [Fact]
    public void WrongHessianSizeIsAClearError() =>
        Assert.Throws<LrlException>(() => Gptq.Quantize(new float[64], 1, 64, 8, 64, false, new double[10]));

    /// <summary>‖(W − Q(W)) x‖² summed over the samples.</summary>
    private static double OutputError(QuantizedMatrix q, float[] w, double[][] xs)
    {
        int rows = q.Rows, cols = q.Cols;
        var deq = Dequantize(q);
        double total = 0;
        foreach (var x in xs)
            for (int r = 0; r < rows; r++)
            {
                double d = 0;
                for (int c = 0; c < cols; c++) d += (w[r * cols + c] - deq[r * cols + c]) * x[c];
                total += d * d;
            }
        return total;
    }

    private static unsafe float[] Dequantize(QuantizedMatrix q)
    {
        var result = new float[q.Rows * q.Cols];
        int groups = q.Cols / q.GroupSize;
        fixed (byte* codes = q.Codes)
            for (int r = 0; r < q.Rows; r++)
                for (int c = 0; c < q.Cols; c++)
                {
                    float s = (float)q.Scales[r * groups + c / q.GroupSize];
                    int v = q.Bits == 8 ? (sbyte)q.Codes[r * q.Cols + c]
                          : QuantLayout.Nibble(codes + (long)r * q.Cols / 2, q.Cols, c) - (q.Zeros?[r * groups + c / q.GroupSize] ?? 8);
                    result[r * q.Cols + c] = v * s;
                }
        return result;
    }
}
