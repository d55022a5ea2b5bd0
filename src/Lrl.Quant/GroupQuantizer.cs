namespace Lrl.Quant;

/// <summary>One matrix quantized to lrlrun's layout (see <see cref="QuantizedTensor"/>): codes and f16 group scales.</summary>
public sealed class QuantizedMatrix
{
    public required int Bits { get; init; }
    public required int GroupSize { get; init; }
    public required int Rows { get; init; }
    public required int Cols { get; init; }
    /// <summary>int8: signed bytes [Rows, Cols]; int4: packed unsigned nibbles [Rows, Cols/2] (zero point 8).</summary>
    public required byte[] Codes { get; init; }
    /// <summary>[Rows, Cols/GroupSize].</summary>
    public required Half[] Scales { get; init; }
    /// <summary>4-bit asymmetric only: per-group zero points [Rows, Cols/GroupSize] (else the implicit 8).</summary>
    public byte[]? Zeros { get; init; }
    /// <summary>‖W − Q(W)‖/‖W‖ averaged over rows.</summary>
    public double RelativeError { get; init; }
}

/// <summary>
/// Symmetric round-to-nearest group quantization with f16 scales, and FineQuant's adaptive choice of group size.
/// int8: s = max|w|/127, q = round(w/s) ∈ −127..127. int4: q − 8 ∈ −8..7; the scale is searched among a few candidates
/// around max|w|/7 (and the one mapping the largest-magnitude value to −8) for the least squared error of the group.
/// </summary>
public static class GroupQuantizer
{
    /// <summary>Group sizes the adaptive heuristic walks, coarse to fine: the whole row, then powers of two from half the row down to 32 that divide it.</summary>
    public static IReadOnlyList<int> Candidates(int cols, int bits)
    {
        var list = new List<int> { cols };
        for (int g = 1 << 30; g >= 32; g >>= 1)
            if (g < cols && cols % g == 0) list.Add(g);
        return list;
    }

    /// <summary>Whether <paramref name="group"/> is a usable group size for a row of <paramref name="cols"/> columns.</summary>
    public static bool IsValidGroup(int cols, int group) => group > 0 && cols % group == 0 && (group == cols || group % 32 == 0);

    /// <summary>
    /// FineQuant-style adaptive granularity: start per-channel and halve the group while the coarse group's relative error
    /// is above <paramref name="threshold"/> and the finer group removes at least <paramref name="minGain"/> of it
    /// (outliers make coarse groups lose accuracy; without them the extra scales buy little).
    /// </summary>
    public static (int Group, double Error) ChooseGroup(ReadOnlySpan<float> w, int rows, int cols, int bits, double threshold, double minGain = 0.05, bool asymmetric = false)
    {
        var candidates = Candidates(cols, bits);
        int pick = candidates[0];
        double err = RelativeError(w, rows, cols, bits, pick, asymmetric);
        for (int i = 1; i < candidates.Count && err > threshold; i++)
        {
            double e = RelativeError(w, rows, cols, bits, candidates[i], asymmetric);
            if (e > err * (1 - minGain)) break;
            pick = candidates[i];
            err = e;
        }
        return (pick, err);
    }

    /// <summary>Mean over rows of ‖row − Q(row)‖/‖row‖ at the given bits and group size.</summary>
    public static double RelativeError(ReadOnlySpan<float> w, int rows, int cols, int bits, int group, bool asymmetric = false)
    {
        double total = 0;
        var codes = new int[group];
        for (int r = 0; r < rows; r++)
        {
            double num = 0, den = 0;
            for (int g = 0; g < cols / group; g++)
            {
                var part = w.Slice(r * cols + g * group, group);
                float s = GroupScale(part, bits, codes, asymmetric, out _);
                for (int j = 0; j < group; j++)
                {
                    double d = part[j] - (double)codes[j] * s;
                    num += d * d;
                    den += (double)part[j] * part[j];
                }
            }
            total += den > 0 ? Math.Sqrt(num / den) : 0;
        }
        return total / rows;
    }

    /// <summary>Quantizes a row-major f32 matrix [rows, cols] with one group size.</summary>
    public static QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols, int bits, int group, bool asymmetric = false)
    {
        if (asymmetric && bits != 4) throw new LrlException("asymmetric (zero-point) quantization is 4-bit only");
        if (bits is not (4 or 8)) throw new LrlException($"bits must be 4 or 8, got {bits}");
        if (!IsValidGroup(cols, group)) throw new LrlException($"group size {group} does not fit rows of {cols} columns");
        if (bits == 4 && cols % 2 != 0) throw new LrlException($"4-bit rows need an even length, got {cols}");
        int groups = cols / group;
        var codes = new byte[bits == 8 ? (long)rows * cols : (long)rows * cols / 2];
        var scales = new Half[(long)rows * groups];
        var zeros = asymmetric ? new byte[(long)rows * groups] : null;
        var q = new int[group];
        var nibbles = new byte[cols];
        double total = 0;
        for (int r = 0; r < rows; r++)
        {
            double num = 0, den = 0;
            for (int g = 0; g < groups; g++)
            {
                var part = w.Slice(r * cols + g * group, group);
                float s = GroupScale(part, bits, q, asymmetric, out int z);
                scales[(long)r * groups + g] = (Half)s;
                if (zeros != null) zeros[(long)r * groups + g] = (byte)z;
                for (int j = 0; j < group; j++)
                {
                    int c = g * group + j;
                    if (bits == 8) codes[(long)r * cols + c] = (byte)(sbyte)q[j];
                    else nibbles[c] = (byte)(q[j] + z);
                    double d = part[j] - (double)q[j] * s;
                    num += d * d; den += (double)part[j] * part[j];
                }
            }
            if (bits == 4) QuantLayout.PackInt4Row(nibbles, codes.AsSpan((int)((long)r * cols / 2), cols / 2));
            total += den > 0 ? Math.Sqrt(num / den) : 0;
        }
        return new QuantizedMatrix { Bits = bits, GroupSize = group, Rows = rows, Cols = cols, Codes = codes, Scales = scales, Zeros = zeros, RelativeError = total / rows };
    }

    /// <summary>
    /// Chooses the group's scale (rounded to f16) and zero point and writes its codes q − z. Symmetric: z = 8 for 4-bit
    /// (0 for 8-bit). Asymmetric 4-bit: z ∈ 0..15 from a search over clipped [min, max] ranges. The chosen codes' scale is
    /// then refit by least squares (s = Σw·c / Σc²) when that lowers the error.
    /// </summary>
    internal static float GroupScale(ReadOnlySpan<float> part, int bits, Span<int> codes, bool asymmetric, out int zero)
    {
        zero = bits == 4 ? 8 : 0;
        float amax = 0, signedMax = 0, min = 0, max = 0;
        foreach (var v in part)
        {
            if (MathF.Abs(v) > amax) { amax = MathF.Abs(v); signedMax = v; }
            min = MathF.Min(min, v); max = MathF.Max(max, v);
        }
        if (!float.IsFinite(amax)) throw new LrlException("weights contain NaN or infinity");
        codes = codes[..part.Length];
        if (amax == 0) { codes.Clear(); return 0; }
        if (bits == 8) return Encode(part, RoundScale(amax / 127f), 0, -127, 127, codes);

        Span<float> cands = stackalloc float[8];
        Span<int> zs = stackalloc int[8];
        int n = 0;
        if (!asymmetric)
        {
            foreach (var f in (ReadOnlySpan<float>)[1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f]) { cands[n] = amax / 7f * f; zs[n++] = 8; }
            cands[n] = MathF.Abs(signedMax) / 8f; zs[n++] = 8;
            cands[n] = amax / 7.5f; zs[n++] = 8;
        }
        else
        {
            foreach (var f in (ReadOnlySpan<float>)[1.0f, 0.95f, 0.9f, 0.85f, 0.8f])
            {
                float lo = min * f, hi = max * f, sc = (hi - lo) / 15f;
                if (sc <= 0) continue;
                cands[n] = sc; zs[n++] = Math.Clamp((int)MathF.Round(-lo / sc), 0, 15);
            }
        }
        float best = 0; int bestZero = 8; double bestErr = double.MaxValue;
        for (int i = 0; i < n; i++)
        {
            float sc = RoundScale(cands[i]);
            if (sc == 0) continue;
            int z = zs[i];
            double e = Sse(part, Encode(part, sc, z, -z, 15 - z, codes), codes);
            if (e < bestErr) { bestErr = e; best = sc; bestZero = z; }
        }
        zero = bestZero;
        Encode(part, best, zero, -zero, 15 - zero, codes);
        // Least-squares refit of the scale for these codes.
        double wc = 0, cc = 0;
        for (int j = 0; j < part.Length; j++) { wc += part[j] * (double)codes[j]; cc += (double)codes[j] * codes[j]; }
        if (cc > 0)
        {
            float refit = RoundScale((float)(wc / cc));
            if (refit > 0 && Sse(part, refit, codes) < Sse(part, best, codes)) best = refit;
        }
        return best;
    }

    private static double Sse(ReadOnlySpan<float> part, float s, ReadOnlySpan<int> codes)
    {
        double e = 0;
        for (int j = 0; j < part.Length; j++) { double d = part[j] - (double)codes[j] * s; e += d * d; }
        return e;
    }

    private static float RoundScale(float s)
    {
        var h = (Half)s;
        if (Half.IsInfinity(h)) throw new LrlException($"a group scale of {s} does not fit in f16");
        return (float)h;
    }

    /// <summary>codes = clamp(round(w/s) + z, 0, ..) − z, i.e. clamped to [min, max].</summary>
    private static float Encode(ReadOnlySpan<float> part, float s, int z, int min, int max, Span<int> codes)
    {
        float inv = s > 0 ? 1f / s : 0;
        for (int j = 0; j < part.Length; j++)
            codes[j] = Math.Clamp((int)MathF.Round(part[j] * inv), min, max);
        return s;
    }
}
