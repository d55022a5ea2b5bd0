namespace Lrl.Quant.Tests;

/// <summary>The group quantizer and FineQuant's adaptive group choice on synthetic matrices.</summary>
public class QuantizerTests
{
    private static float[] Gaussian(Random rng, int n)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return v;
    }

    [Theory]
    [InlineData(8, 16, 256, 32)]
    [InlineData(8, 5, 172, 172)]
    [InlineData(4, 16, 256, 64)]
    [InlineData(4, 3, 42, 42)]
    [InlineData(4, 7, 320, 32)]
    public unsafe void QuantizeRoundTripsWithinStep(int bits, int rows, int cols, int group)
    {
        var rng = new Random(bits + rows + cols);
        var w = Gaussian(rng, rows * cols);
        var m = GroupQuantizer.Quantize(w, rows, cols, bits, group);
        Assert.Equal(bits == 8 ? rows * cols : rows * cols / 2, m.Codes.Length);
        Assert.Equal(rows * (cols / group), m.Scales.Length);
        fixed (byte* c = m.Codes)
        fixed (Half* s = m.Scales)
        {
            var q = new QuantizedTensor { Name = "w", Source = "t", Bits = bits, GroupSize = group, Rows = rows, Cols = cols, Codes = c, Scales = s };
            q.Validate();
            var row = new double[cols];
            double num = 0, den = 0;
            for (int r = 0; r < rows; r++)
            {
                q.DequantizeRow(r, row);
                for (int i = 0; i < cols; i++)
                {
                    int code = q.Code(r, i);
                    Assert.InRange(code, bits == 8 ? -127 : -8, bits == 8 ? 127 : 7);
                    double step = q.Scale(r, i / group);
                    double d = row[i] - w[r * cols + i];
                    // Inside the range every element is within half a step (int4: the least-squares refit of the scale may move it a little).
                    if (Math.Abs(code) < (bits == 8 ? 127 : 7)) Assert.True(Math.Abs(d) <= step * (bits == 8 ? 0.5 : 0.75) + 1e-6, $"[{r},{i}] error {d} step {step}");
                    num += d * d; den += (double)w[r * cols + i] * w[r * cols + i];
                }
            }
            double rel = Math.Sqrt(num / den);
            Assert.True(rel < (bits == 8 ? 0.012 : 0.17), $"relative error {rel}");
            Assert.Equal(rel, m.RelativeError, 0.05);
        }
    }

    [Fact]
    public void AdaptiveGroupStaysCoarseWithoutOutliersAndRefinesWithThem()
    {
        var rng = new Random(3);
        int rows = 32, cols = 1024;
        var w = Gaussian(rng, rows * cols);
        var (g8, _) = GroupQuantizer.ChooseGroup(w, rows, cols, 8, 0.01);
        Assert.Equal(cols, g8); // int8 per-channel is within 1% on Gaussian rows
        // One outlier per row makes a per-channel scale waste the range of every other column.
        for (int r = 0; r < rows; r++) w[r * cols + rng.Next(cols)] = 40f;
        var (g8o, e8o) = GroupQuantizer.ChooseGroup(w, rows, cols, 8, 0.01);
        Assert.True(g8o < cols, $"chose {g8o}");
        Assert.True(e8o <= GroupQuantizer.RelativeError(w, rows, cols, 8, cols));
        var (g4, _) = GroupQuantizer.ChooseGroup(w, rows, cols, 4, 0.09);
        Assert.True(g4 <= 128, $"int4 with outliers chose {g4}");
        Assert.Contains(g4, GroupQuantizer.Candidates(cols, 4));
    }

    [Fact]
    public void CandidatesDivideTheRow()
    {
        Assert.Equal([576, 64, 32], GroupQuantizer.Candidates(576, 4));
        Assert.Equal([172], GroupQuantizer.Candidates(172, 8));
        Assert.Equal([2048, 1024, 512, 256, 128, 64, 32], GroupQuantizer.Candidates(2048, 8));
        Assert.Null(Quantizer.ParseGroup("auto"));
        Assert.Equal(0, Quantizer.ParseGroup("channel"));
        Assert.Equal(64, Quantizer.ParseGroup("64"));
        Assert.Throws<LrlException>(() => Quantizer.ParseGroup("16"));
        Assert.Throws<LrlException>(() => Quantizer.ParseGroup("x"));
    }

    [Fact]
    public void MetadataRoundTrips()
    {
        var m = new QuantMetadata { Bits = 4, Group = "auto" };
        m.Tensors["a.b"] = (4, 64);
        m.Tensors["c"] = (8, 172);
        var back = QuantMetadata.Parse(m.ToJson(), "f");
        Assert.Equal(4, back.Bits);
        Assert.Equal("auto", back.Group);
        Assert.Equal((4, 64), back.Tensors["a.b"]);
        Assert.Equal((8, 172), back.Tensors["c"]);
    }
}
