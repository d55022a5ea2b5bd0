namespace Lrl.Loading;

/// <summary>
/// Scans every tensor of a checkpoint for values a model cannot run with: NaN or infinity in float weights and in
/// quantization scales, and int4 zero points outside 0..15. `lrlrun info --check` prints the findings; `quantize`
/// refuses an input that has any.
/// </summary>
public static unsafe class TensorCheck
{
    public sealed record Finding(string Tensor, string Problem);

    public static List<Finding> Scan(Checkpoint checkpoint)
    {
        var findings = new List<Finding>();
        foreach (var t in checkpoint.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            if (t.DType is DType.F32 or DType.F16 or DType.BF16)
            {
                var (nan, inf) = CountNonFinite(t);
                if (nan + inf > 0) findings.Add(new Finding(t.Name, $"{nan} NaN and {inf} infinite values of {t.ElementCount}"));
            }
            else if (t.DType == DType.U8 && t.Name.EndsWith(".zeros", StringComparison.Ordinal))
            {
                long bad = 0;
                foreach (var b in t.Bytes) if (b > 15) bad++;
                if (bad > 0) findings.Add(new Finding(t.Name, $"{bad} int4 zero points outside 0..15"));
            }
        }
        return findings;
    }

    /// <summary>NaN and infinity counts, read in place by the exponent bits (all ones: infinite when the mantissa is zero, else NaN).</summary>
    private static (long Nan, long Inf) CountNonFinite(HostTensor t)
    {
        long nan = 0, inf = 0, n = t.ElementCount;
        if (t.DType == DType.F32)
        {
            var p = (uint*)t.Pointer;
            for (long i = 0; i < n; i++)
                if ((p[i] & 0x7F80_0000u) == 0x7F80_0000u) { if ((p[i] & 0x007F_FFFFu) != 0) nan++; else inf++; }
            return (nan, inf);
        }
        var (exponent, mantissa) = t.DType == DType.BF16 ? (0x7F80, 0x007F) : (0x7C00, 0x03FF); // BF16 or F16
        var h = (ushort*)t.Pointer;
        for (long i = 0; i < n; i++)
            if ((h[i] & exponent) == exponent) { if ((h[i] & mantissa) != 0) nan++; else inf++; }
        return (nan, inf);
    }

    /// <summary>An <see cref="ModelFormatException"/> naming the first finding, when there is one.</summary>
    public static void ThrowIfAny(Checkpoint checkpoint)
    {
        var findings = Scan(checkpoint);
        if (findings.Count > 0)
            throw new ModelFormatException(checkpoint.Directory, $"tensor '{findings[0].Tensor}' has {findings[0].Problem}" +
                (findings.Count > 1 ? $" (and {findings.Count - 1} more tensors; see lrlrun info --check)" : ""));
    }
}
