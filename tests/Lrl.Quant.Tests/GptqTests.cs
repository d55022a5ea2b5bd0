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
