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
    public static (int Group, double Error) ChooseGroup(ReadOnlySpan<float> w, int rows, int cols, int bits, double threshold, double minGain = 0.05)
    {
        var candidates = Candidates(cols, bits);
        int pick = candidates[0];
        double err = RelativeError(w, rows, cols, bits, pick);
        for (int i = 1; i < candidates.Count && err > threshold; i++)
        {
            double e = RelativeError(w, rows, cols, bits, candidates[i]);
            if (e > err * (1 - minGain)) break;
            pick = candidates[i];
            err = e;
        }
        return (pick, err);
    }

    /// <summary>Mean over rows of ‖row − Q(row)‖/‖row‖ at the given bits and group size.</summary>
    public static double RelativeError(ReadOnlySpan<float> w, int rows, int cols, int bits, int group)
    {
        double total = 0;
        var codes = new int[group];
        for (int r = 0; r < rows; r++)
        {
            double num = 0, den = 0;
            for (int g = 0; g < cols / group; g++)
            {
                var part = w.Slice(r * cols + g * group, group);
                float s = GroupScale(part, bits, codes);
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
    public static QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols, int bits, int group)
    {
        if (bits is not (4 or 8)) throw new LrlException($"bits must be 4 or 8, got {bits}");
        if (!IsValidGroup(cols, group)) throw new LrlException($"group size {group} does not fit rows of {cols} columns");
        if (bits == 4 && cols % 2 != 0) throw new LrlException($"4-bit rows need an even length, got {cols}");
        int groups = cols / group;
        var codes = new byte[bits == 8 ? (long)rows * cols : (long)rows * cols / 2];
        var scales = new Half[(long)rows * groups];
        var q = new int[group];
        var nibbles = new byte[cols];
        double total = 0;
        for (int r = 0; r < rows; r++)
        {
            double num = 0, den = 0;
            for (int g = 0; g < groups; g++)
            {
                var part = w.Slice(r * cols + g * group, group);
                float s = GroupScale(part, bits, q);
                scales[(long)r * groups + g] = (Half)s;
                for (int j = 0; j < group; j++)
                {
                    int c = g * group + j;
                    if (bits == 8) codes[(long)r * cols + c] = (byte)(sbyte)q[j];
                    else nibbles[c] = (byte)(q[j] + 8);
                    double d = part[j] - (double)q[j] * s;
                    num += d * d; den += (double)part[j] * part[j];
                }
            }
            if (bits == 4) QuantLayout.PackInt4Row(nibbles, codes.AsSpan((int)((long)r * cols / 2), cols / 2));
            total += den > 0 ? Math.Sqrt(num / den) : 0;
        }
        return new QuantizedMatrix { Bits = bits, GroupSize = group, Rows = rows, Cols = cols, Codes = codes, Scales = scales, RelativeError = total / rows };
    }

    /// <summary>Chooses the group's scale (already rounded to f16) and writes its signed codes.</summary>
    internal static float GroupScale(ReadOnlySpan<float> part, int bits, Span<int> codes)
    {
        float amax = 0, signedMax = 0;
        foreach (var v in part)
            if (MathF.Abs(v) > amax) { amax = MathF.Abs(v); signedMax = v; }
        if (!float.IsFinite(amax)) throw new LrlException("weights contain NaN or infinity");
        if (amax == 0) { codes[..part.Length].Clear(); return 0; }
        if (bits == 8) return Encode(part, RoundScale(amax / 127f), -127, 127, codes);

        // 4-bit: a small search over scales; keep the one with the least squared error.
        float best = 0; double bestErr = double.MaxValue;
        Span<float> candidates = stackalloc float[8];
        int n = 0;
        foreach (var f in (ReadOnlySpan<float>)[1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f]) candidates[n++] = amax / 7f * f;
        candidates[n++] = MathF.Abs(signedMax) / 8f;
        candidates[n++] = amax / 7.5f;
        foreach (var cand in candidates[..n])
        {
            float s = RoundScale(cand);
            if (s == 0) continue;
            Encode(part, s, -8, 7, codes);
            double e = 0;
            for (int j = 0; j < part.Length; j++) { double d = part[j] - (double)codes[j] * s; e += d * d; }
            if (e < bestErr) { bestErr = e; best = s; }
        }
        return Encode(part, best, -8, 7, codes);
    }

    private static float RoundScale(float s)
    {
        var h = (Half)s;
        if (Half.IsInfinity(h)) throw new LrlException($"a group scale of {s} does not fit in f16");
        return (float)h;
    }

    private static float Encode(ReadOnlySpan<float> part, float s, int min, int max, Span<int> codes)
    {
        float inv = s > 0 ? 1f / s : 0;
        for (int j = 0; j < part.Length; j++)
            codes[j] = Math.Clamp((int)MathF.Round(part[j] * inv), min, max);
        return s;
    }
}
