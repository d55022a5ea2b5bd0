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
            RefitScales(w.Slice(r * cols, cols), hessian, cols, group, bits == 8 ? null : nibbles, bits == 8 ? codes.AsSpan((int)((long)r * cols), cols) : default,
                            zeros is null ? default : zeros.AsSpan((int)((long)r * groups), groups), scales.AsSpan((int)((long)r * groups), groups));
            if (bits == 4) QuantLayout.PackInt4Row(nibbles, codes.AsSpan((int)((long)r * cols / 2), cols / 2));
            total += den > 0 ? Math.Sqrt(num / den) : 0;
        }
        return new QuantizedMatrix { Bits = bits, GroupSize = group, Rows = rows, Cols = cols, Codes = codes, Scales = scales, Zeros = zeros, RelativeError = total / rows };
    }

    /// <summary>
    /// With the row's codes fixed, refits its group scales to minimize the output error (w − ŵ)ᵀ H (w − ŵ), ŵ_j = s_g(j)·c_j:
    /// the normal equations M s = b with M_gh = c_gᵀ H c_h and b_g = c_gᵀ H w (groups × groups). The f16-rounded solution
    /// replaces the scales only when it lowers that error.
    /// </summary>
    /// <param name="w">The row's original weights.</param>
    /// <param name="h">Σ x xᵀ [cols, cols] of the layer's inputs.</param>
    /// <param name="nibbles">4-bit: the row's unsigned codes, one per column (null for 8-bit).</param>
    /// <param name="int8Codes">8-bit: the row's signed codes.</param>
    /// <param name="zeros">4-bit asymmetric: the row's zero points per group (empty: the implicit 8).</param>
    /// <param name="scales">The row's group scales, replaced in place.</param>
    public static void RefitScales(ReadOnlySpan<float> w, ReadOnlySpan<double> h, int cols, int group, byte[]? nibbles, ReadOnlySpan<byte> int8Codes,
                                     ReadOnlySpan<byte> zeros, Span<Half> scales)
    {
        int groups = cols / group;
        var c = new double[cols];
        for (int j = 0; j < cols; j++)
            c[j] = nibbles != null ? nibbles[j] - (zeros.IsEmpty ? 8 : zeros[j / group]) : (sbyte)int8Codes[j];
        // hc_g = H c_g (c masked to group g), hw = H w.
        var hc = new double[groups, cols];
        var hw = new double[cols];
        for (int i = 0; i < cols; i++)
        {
            var hrow = h.Slice(i * cols, cols);
            double sw = 0;
            for (int j = 0; j < cols; j++)
            {
                sw += hrow[j] * w[j];
                hc[j / group, i] += hrow[j] * c[j];
            }
            hw[i] = sw;
        }
        var m = new double[groups, groups];
        var b = new double[groups];
        for (int g = 0; g < groups; g++)
        {
            for (int j = g * group; j < (g + 1) * group; j++) b[g] += c[j] * hw[j];
            for (int k = 0; k < groups; k++)
                for (int j = g * group; j < (g + 1) * group; j++) m[g, k] += c[j] * hc[k, j];
        }
        var s = Solve(m, b, groups);
        if (s is null) return;
        var rounded = new Half[groups];
        for (int g = 0; g < groups; g++)
        {
            if (!(s[g] > 0) || !double.IsFinite(s[g])) return;
            rounded[g] = (Half)s[g];
            if (Half.IsInfinity(rounded[g])) return;
        }
        var fresh = new double[groups];
        var current = new double[groups];
        for (int g = 0; g < groups; g++) { fresh[g] = (double)rounded[g]; current[g] = (double)scales[g]; }
        if (OutputError(w, h, c, fresh, group) < OutputError(w, h, c, current, group)) rounded.CopyTo(scales);
    }

    /// <summary>(w − ŵ)ᵀ H (w − ŵ) with ŵ_j = scale[j / group]·c_j.</summary>
    private static double OutputError(ReadOnlySpan<float> w, ReadOnlySpan<double> h, double[] c, double[] scale, int group)
    {
        int cols = w.Length;
        var d = new double[cols];
        for (int j = 0; j < cols; j++) d[j] = w[j] - scale[j / group] * c[j];
        double e = 0;
        for (int i = 0; i < cols; i++)
        {
            var hrow = h.Slice(i * cols, cols);
            double t = 0;
            for (int j = 0; j < cols; j++) t += hrow[j] * d[j];
            e += d[i] * t;
        }
        return e;
    }

    /// <summary>Gaussian elimination with partial pivoting; null when singular.</summary>
    private static double[]? Solve(double[,] a, double[] b, int n)
    {
        a = (double[,])a.Clone(); b = (double[])b.Clone();
        for (int k = 0; k < n; k++)
        {
            int p = k;
            for (int i = k + 1; i < n; i++) if (Math.Abs(a[i, k]) > Math.Abs(a[p, k])) p = i;
            if (Math.Abs(a[p, k]) < 1e-300) return null;
            if (p != k)
            {
                for (int j = 0; j < n; j++) (a[k, j], a[p, j]) = (a[p, j], a[k, j]);
                (b[k], b[p]) = (b[p], b[k]);
            }
            for (int i = k + 1; i < n; i++)
            {
                double f = a[i, k] / a[k, k];
                for (int j = k; j < n; j++) a[i, j] -= f * a[k, j];
                b[i] -= f * b[k];
            }
        }
        var x = new double[n];
        for (int i = n - 1; i >= 0; i--)
        {
            double s = b[i];
            for (int j = i + 1; j < n; j++) s -= a[i, j] * x[j];
            x[i] = s / a[i, i];
        }
        return x;
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
