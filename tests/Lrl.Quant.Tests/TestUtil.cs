using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Lrl.Quant.Tests;

/// <summary>Random quantized matrices in the internal layout, and the double-precision reference product.</summary>
public static unsafe class TestUtil
{
    public static T[] Pinned<T>(long n, out T* p) where T : unmanaged
    {
        var a = GC.AllocateArray<T>(checked((int)n), pinned: true);
        p = (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(a));
        return a;
    }

    /// <summary>Random codes/scales (and optionally zero points and a column permutation).</summary>
    public static QuantizedTensor Random(Random rng, int bits, int rows, int cols, int group, bool zeros = false, bool permute = false)
    {
        int groups = cols / group;
        var codes = Pinned<byte>(bits == 8 ? (long)rows * cols : (long)rows * cols / 2, out var cp);
        rng.NextBytes(codes);
        if (bits == 8)
            for (int i = 0; i < codes.Length; i++) if (codes[i] == 0x80) codes[i] = 0x81; // −128 is never produced
        var scales = Pinned<Half>((long)rows * groups, out var sp);
        for (int i = 0; i < scales.Length; i++) scales[i] = (Half)(0.001 + rng.NextDouble() * 0.02);
        byte[]? z = null; byte* zp = null;
        if (zeros)
        {
            z = Pinned<byte>((long)rows * groups, out zp);
            for (int i = 0; i < z.Length; i++) z[i] = (byte)rng.Next(0, 17);
        }
        int[]? order = null;
        if (permute) { order = Enumerable.Range(0, cols).ToArray(); rng.Shuffle(order); }
        return new QuantizedTensor
        {
            Name = $"random.q{bits}.g{group}.weight", Source = "test", Bits = bits, GroupSize = group, Rows = rows, Cols = cols,
            Codes = cp, Scales = sp, Zeros = zp, ColumnOrder = order, Owner = new object?[] { codes, scales, z },
        };
    }

    public static float[] RandomVector(Random rng, int n, double scale = 1)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return v;
    }

    /// <summary>y = x · Wᵀ in double, from the scalar dequantization.</summary>
    /// <summary>
    /// x as the integer decode kernels see it: in stored column order, int8 with one f32 scale per 128 columns (the
    /// last block up to the 32-aligned end its own; the columns past that their own scale), d = max|x|/127,
    /// xq = round-to-even(x·127/max), x̂ = xq·d — except the columns the kernels take in f32 (past the last full
    /// 64-column block for 4-bit, past the last full 32-column block for 8-bit), which stay exact. Returned in x's order.
    /// </summary>
    public static float[] KernelActivations(QuantizedTensor q, float[] x)
    {
        int n = q.Cols;
        var xp = new float[n];
        for (int j = 0; j < n; j++) xp[j] = q.ColumnOrder is { } order ? x[order[j]] : x[j];
        var qx = (float[])xp.Clone();
        int full = n / 32 * 32;
        void Block(int start, int end)
        {
            float amax = 0;
            for (int j = start; j < end; j++) amax = MathF.Max(amax, MathF.Abs(xp[j]));
            float d = amax / 127f, id = amax > 0 ? 127f / amax : 0f;
            for (int j = start; j < end; j++) qx[j] = MathF.Round(xp[j] * id, MidpointRounding.ToEven) * d;
        }
        for (int c = 0; c < full; c += 128) Block(c, Math.Min(full, c + 128));
        if (full < n) Block(full, n);
        int exactFrom = q.Bits == 4 ? n / 64 * 64 : full;
        for (int j = exactFrom; j < n; j++) qx[j] = xp[j];
        var result = new float[n];
        for (int j = 0; j < n; j++) result[q.ColumnOrder is { } order ? order[j] : j] = qx[j];
        return result;
    }

    public static double[] Reference(QuantizedTensor q, float[] x, int rows)
    {
        var y = new double[(long)rows * q.Rows];
        var w = new double[q.Cols];
        for (int o = 0; o < q.Rows; o++)
        {
            q.DequantizeRow(o, w);
            for (int r = 0; r < rows; r++)
            {
                double s = 0;
                for (int i = 0; i < q.Cols; i++) s += w[i] * x[(long)r * q.Cols + i];
                y[(long)r * q.Rows + o] = s;
            }
        }
        return y;
    }

    /// <summary>
    /// Checks every output against the double reference with an error bound per element: f32 rounding
    /// (1e-5·Σ|w·x|) plus, for kernels that quantize activations to int8 per 32 columns, the activation rounding
    /// (Σ|w|·max|x|/254, which bounds Σ w·Δx since |Δx| ≤ block max/254). Returns the worst error/bound ratio.
    /// </summary>
    public static double CheckBound(QuantizedTensor q, float[] x, ReadOnlySpan<float> y, double[] expected, int rows, bool quantizedActivations)
    {
        var w = new double[q.Cols];
        double worst = 0;
        for (int o = 0; o < q.Rows; o++)
        {
            q.DequantizeRow(o, w);
            for (int r = 0; r < rows; r++)
            {
                double absDot = 0, absW = 0, maxX = 0;
                for (int i = 0; i < q.Cols; i++)
                {
                    double xi = x[(long)r * q.Cols + i];
                    absDot += Math.Abs(w[i] * xi); absW += Math.Abs(w[i]); maxX = Math.Max(maxX, Math.Abs(xi));
                }
                double bound = 1e-5 * absDot + (quantizedActivations ? absW * maxX / 254 : 0) + 1e-30;
                float v = y[r * q.Rows + o];
                double err = float.IsFinite(v) ? Math.Abs(v - expected[(long)r * q.Rows + o]) : double.PositiveInfinity;
                if (err > bound) throw new Xunit.Sdk.XunitException($"{q.Name} row {r} output {o}: {v} vs {expected[(long)r * q.Rows + o]}, error {err:E2} > bound {bound:E2}");
                worst = Math.Max(worst, err / bound);
            }
        }
        return worst;
    }

    public static double RelErr(ReadOnlySpan<float> actual, IReadOnlyList<double> expected)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Count; i++)
        {
            if (!float.IsFinite(actual[i])) return double.PositiveInfinity;
            double d = actual[i] - expected[i];
            num += d * d; den += expected[i] * expected[i];
        }
        return Math.Sqrt(num / Math.Max(den, 1e-300));
    }

    public static double RelErr(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected) =>
        RelErr(actual, expected.ToArray().Select(v => (double)v).ToArray());
}
