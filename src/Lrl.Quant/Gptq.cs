namespace Lrl.Quant;

/// <summary>
/// GPTQ (Frantar et al., 2022): quantizes a matrix column by column, spreading each column's rounding error over the
/// columns not yet quantized through the inverse Hessian H⁻¹ of the layer's inputs (H = Σ x xᵀ over calibration
/// tokens), so that the layer's outputs, not its weights, stay close. Same output layout as
/// <see cref="GroupQuantizer.Quantize"/> (group scales chosen on the error-updated weights as each group starts).
/// Cost O(rows·cols² + cols³): meant for small models or offline use.
/// </summary>
public static class Gptq
{
    /// <param name="hessian">Σ x xᵀ [cols, cols] of the inputs this matrix saw (row-major, symmetric).</param>
    /// <param name="dampening">Fraction of the mean diagonal added to it (GPTQ's percdamp).</param>
    public static QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols, int bits, int group, bool asymmetric,
                                           ReadOnlySpan<double> hessian, double dampening = 0.01)
    {
        if (hessian.Length != (long)cols * cols) throw new LrlException($"GPTQ: Hessian has {hessian.Length} values, expected {cols}×{cols}");
        if (!GroupQuantizer.IsValidGroup(cols, group)) throw new LrlException($"group size {group} does not fit rows of {cols} columns");
        var u = InverseCholeskyUpper(hessian, cols, dampening, out var dead);

        int groups = cols / group;
        var codes = new byte[bits == 8 ? (long)rows * cols : (long)rows * cols / 2];
        var scales = new Half[(long)rows * groups];
        var zeros = asymmetric ? new byte[(long)rows * groups] : null;
        var row = new double[cols];
        var part = new float[group];
        var tmp = new int[group];
        var nibbles = new byte[cols];
        double total = 0;
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++) row[c] = dead[c] ? 0 : w[r * cols + c];
            float s = 0; int z = 0, lo = 0, hi = 0;
            double num = 0, den = 0;
            for (int c = 0; c < cols; c++)
            {
                if (c % group == 0)
                {
                    // The group's scale from its current (error-compensated) weights.
                    for (int j = 0; j < group; j++) part[j] = (float)row[c + j];
                    s = (float)(Half)GroupQuantizer.GroupScale(part, bits, tmp, asymmetric, out z);
                    int g = c / group;
                    scales[(long)r * groups + g] = (Half)s;
                    if (zeros != null) zeros[(long)r * groups + g] = (byte)z;
                    (lo, hi) = bits == 8 ? (-127, 127) : (-z, 15 - z);
                }
                int q = s > 0 ? Math.Clamp((int)Math.Round(row[c] / s, MidpointRounding.ToEven), lo, hi) : 0;
                if (bits == 8) codes[(long)r * cols + c] = (byte)(sbyte)q;
                else nibbles[c] = (byte)(q + z);
                double deq = (double)q * s;
                double orig = w[r * cols + c];
                num += (orig - deq) * (orig - deq); den += orig * orig;
                // Spread this column's error over the later columns: w[j] -= err · U[c, j] / U[c, c].
                double err = (row[c] - deq) / u[(long)c * cols + c];
                for (int j = c + 1; j < cols; j++) row[j] -= err * u[(long)c * cols + j];
            }
            if (bits == 4) QuantLayout.PackInt4Row(nibbles, codes.AsSpan((int)((long)r * cols / 2), cols / 2));
            total += den > 0 ? Math.Sqrt(num / den) : 0;
        }
        return new QuantizedMatrix { Bits = bits, GroupSize = group, Rows = rows, Cols = cols, Codes = codes, Scales = scales, Zeros = zeros, RelativeError = total / rows };
    }

    /// <summary>U upper-triangular with H⁻¹ = Uᵀ·U, after dampening H (columns never seen get H[i,i] = 1 and are marked dead).</summary>
    internal static double[] InverseCholeskyUpper(ReadOnlySpan<double> hessian, int n, double dampening, out bool[] dead)
    {
        var h = hessian.ToArray();
        dead = new bool[n];
        double mean = 0;
        for (int i = 0; i < n; i++) mean += h[(long)i * n + i];
        mean /= n;
        for (int i = 0; i < n; i++)
        {
            if (h[(long)i * n + i] <= 0) { dead[i] = true; h[(long)i * n + i] = 1; }
            h[(long)i * n + i] += dampening * Math.Max(mean, 1e-12);
        }
        var l = Cholesky(h, n);                 // H = L Lᵀ
        var inv = new double[(long)n * n];      // H⁻¹ = L⁻ᵀ L⁻¹, column by column
        var e = new double[n];
        for (int c = 0; c < n; c++)
        {
            Array.Clear(e);
            e[c] = 1;
            for (int i = 0; i < n; i++)         // forward: L y = e
            {
                double s = e[i];
                for (int k = 0; k < i; k++) s -= l[(long)i * n + k] * e[k];
                e[i] = s / l[(long)i * n + i];
            }
            for (int i = n - 1; i >= 0; i--)    // backward: Lᵀ x = y
            {
                double s = e[i];
                for (int k = i + 1; k < n; k++) s -= l[(long)k * n + i] * e[k];
                e[i] = s / l[(long)i * n + i];
            }
            for (int i = 0; i < n; i++) inv[(long)i * n + c] = e[i];
        }
        var l2 = Cholesky(inv, n);              // H⁻¹ = L2 L2ᵀ, so U = L2ᵀ
        var u = new double[(long)n * n];
        for (int i = 0; i < n; i++)
            for (int j = i; j < n; j++) u[(long)i * n + j] = l2[(long)j * n + i];
        return u;
    }

    private static double[] Cholesky(double[] a, int n)
    {
        var l = new double[(long)n * n];
        for (int j = 0; j < n; j++)
        {
            double d = a[(long)j * n + j];
            for (int k = 0; k < j; k++) d -= l[(long)j * n + k] * l[(long)j * n + k];
            if (d <= 0) throw new LrlException("GPTQ: the calibration Hessian is not positive definite (raise the dampening)");
            double ljj = Math.Sqrt(d);
            l[(long)j * n + j] = ljj;
            for (int i = j + 1; i < n; i++)
            {
                double s = a[(long)i * n + j];
                for (int k = 0; k < j; k++) s -= l[(long)i * n + k] * l[(long)j * n + k];
                l[(long)i * n + j] = s / ljj;
            }
        }
        return l;
    }
}
