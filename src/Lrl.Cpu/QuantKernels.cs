using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// Quantized matrix-vector inner loops. Every kernel computes y[o − rowStart] = Σ_j (q[o, j] − z)·s[o, j / group]·x[j]
/// for stored column order; <see cref="GemvScalar"/> is the plain reference the SIMD ones are tested against.
/// </summary>
internal static unsafe class QuantKernels
{
    public static QuantKernel Best =>
        IsSupported(QuantKernel.Vnni) ? QuantKernel.Vnni : IsSupported(QuantKernel.Avx2Int) ? QuantKernel.Avx2Int : QuantKernel.Scalar;

    public static bool IsSupported(QuantKernel k) => k switch
    {
        QuantKernel.Scalar => true,
        QuantKernel.WidenF32 or QuantKernel.Avx2Int => Avx2.IsSupported && Fma.IsSupported,
        QuantKernel.Vnni => Avx2.IsSupported && Fma.IsSupported && AvxVnni.IsSupported,
        _ => false,
    };

    // ---------------------------------------------------------------- scalar reference

    public static void GemvScalar(QuantizedTensor q, ReadOnlySpan<float> x, Span<float> y, int rowStart, int rowEnd)
    {
        int n = q.Cols, gs = q.GroupSize;
        for (int o = rowStart; o < rowEnd; o++)
        {
            float sum = 0;
            for (int g = 0; g < q.Groups; g++)
            {
                float part = 0;
                for (int j = g * gs; j < (g + 1) * gs; j++) part += q.Code(o, j) * x[j];
                sum += part * q.Scale(o, g);
            }
            y[o - rowStart] = sum;
        }
    }

    /// <summary>Unsigned nibbles of a packed 4-bit row, as floats in stored column order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void UnpackInt4Row(byte* row, int cols, Span<float> dst)
    {
        if (dst.Length < cols) throw new ArgumentException($"destination holds {dst.Length} floats, the row {cols}");
        int full = cols / QuantLayout.Int4Block * QuantLayout.Int4Block, b = 0;
        fixed (float* d = dst)
        {
            if (Avx2.IsSupported)
            {
                // 64 columns (32 bytes) per step: low nibbles are columns 0-31, high nibbles 32-63; each 8 bytes
                // widen to 8 int32 and convert (the scalar loop cost ~3 cycles a weight, most of a short prefill).
                var mask = Vector256.Create((byte)0x0F);
                for (; b < full; b += 64)
                {
                    var v = Vector256.Load(row + b / 2);
                    var lo = v & mask;
                    var hi = Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask;
                    Widen16(lo.GetLower(), d + b); Widen16(lo.GetUpper(), d + b + 16);
                    Widen16(hi.GetLower(), d + b + 32); Widen16(hi.GetUpper(), d + b + 48);
                }
            }
            for (; b < full; b += 64)
            {
                byte* p = row + b / 2;
                for (int j = 0; j < 32; j++)
                {
                    d[b + j] = p[j] & 15;
                    d[b + 32 + j] = p[j] >> 4;
                }
            }
        }
        for (int c = full; c < cols; c++) dst[c] = QuantLayout.Nibble(row, cols, c);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Widen16(Vector128<byte> v, float* d)
    {
        Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(v)).Store(d);
        Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(v, 8))).Store(d + 8);
    }

    // ---------------------------------------------------------------- activation quantization

    /// <summary>Columns that share one activation scale (four 32-column sub-blocks, as llama.cpp's Q8_K shares one per 256).</summary>
    public const int ActivationBlock = 128;

    /// <summary>
    /// x → int8 with one scale per <see cref="ActivationBlock"/> columns (the last, shorter block its own):
    /// d = max|x|/127, xq = round(x/d). D and BSum (d·Σxq) stay per 32 columns (D repeated within a block), so a kernel
    /// may scale per 32 columns or, for weights with one scale per 128 columns or more, sum four integer dot products
    /// before one convert and one FMA. Columns past x.Length are zero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeActivations(ReadOnlySpan<float> x, QuantScratch s)
    {
        int n = x.Length, full = n / 32 * 32;
        fixed (float* xp = x)
        fixed (sbyte* q = s.Xq)
        {
            int c = 0;
            while (c < full)
            {
                int end = Math.Min(full, c + ActivationBlock);
                var m = Vector256<float>.Zero;
                for (int j = c; j < end; j += 8) m = Vector256.Max(m, Vector256.Abs(Vector256.Load(xp + j)));
                float amax = HMax(m);
                float d = amax / 127f, id = amax > 0 ? 127f / amax : 0f;
                var ivec = Vector256.Create(id);
                for (; c < end; c += 32)
                {
                    var i0 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c) * ivec); var i1 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c + 8) * ivec);
                    var i2 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c + 16) * ivec); var i3 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c + 24) * ivec);
                    Vector256.Narrow(Vector256.Narrow(i0, i1), Vector256.Narrow(i2, i3)).Store(q + c);
                    s.D[c / 32] = d;
                    s.BSum[c / 32] = d * Vector256.Sum((i0 + i1) + (i2 + i3));
                }
            }
            if (c < n)
            {
                float amax = 0;
                for (int j = c; j < n; j++) amax = MathF.Max(amax, MathF.Abs(xp[j]));
                float d = amax / 127f, id = amax > 0 ? 127f / amax : 0f;
                int sum = 0;
                for (int j = c; j < c + 32; j++)
                {
                    int v = j < n ? (int)MathF.Round(xp[j] * id) : 0;
                    q[j] = (sbyte)v;
                    sum += v;
                }
                s.D[c / 32] = d;
                s.BSum[c / 32] = d * sum;
                c += 32;
            }
            for (; c < s.Xq.Length; c += 32)
            {
                new Span<sbyte>(q + c, 32).Clear();
                s.D[c / 32] = 0; s.BSum[c / 32] = 0;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float HMax(Vector256<float> m)
    {
        var h = Vector128.Max(m.GetLower(), m.GetUpper());
        h = Vector128.Max(h, Vector128.Shuffle(h, Vector128.Create(2, 3, 0, 1)));
        h = Vector128.Max(h, Vector128.Shuffle(h, Vector128.Create(1, 0, 3, 2)));
        return h.ToScalar();
    }

    // ---------------------------------------------------------------- integer dot products

    /// <summary>u8 × s8 dot products of 4-byte groups into int32 lanes; a type parameter so each variant is its own JIT specialization.</summary>
    private interface IDot
    {
        static abstract Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s);
        /// <summary>acc + Dot(u, s): VNNI accumulates in the same instruction (no separate add).</summary>
        static abstract Vector256<int> Acc(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s);
    }

    private readonly struct VnniDot : IDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s) => AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, u, s);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Acc(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) => AvxVnni.MultiplyWideningAndAdd(acc, u, s);
    }

    private readonly struct Avx2Dot : IDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s) =>
            Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256<short>.One);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Acc(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) => acc + Dot(u, s);
    }

    /// <summary>Group index of column <paramref name="col"/>: a shift when the group is a power of two, else one group per row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int GroupShift(QuantizedTensor q) =>
        q.GroupSize == q.Cols ? 31 : BitOperations.Log2((uint)q.GroupSize);

    /// <summary>
    /// Longest per-channel int4 rows taken two per pass. Short rows gain (per-row work dominates them: SmolLM2-135M q4
    /// 340-367 vs 317-335 tok/s); long rows lose, the two interleaved streams reading slower from memory
    /// (Llama-3.2-1B q4, 2048-column rows: 37-49 vs 45-64 tok/s, alternating runs).
    /// </summary>
    private const int PairedRowsMaxCols = 1536;

    /// <param name="channelScales">Per-channel matrices: the row scales as f32, converted once at load (else null).</param>
    public static void GemvInt(QuantizedTensor q, QuantScratch s, Span<float> y, int rowStart, int rowEnd, bool vnni, float[]? channelScales = null)
    {
        if (q.GroupSize != q.Cols && !BitOperations.IsPow2(q.GroupSize))
        {
            // Non power-of-two groups (not produced by lrlrun's quantizer) take the f32 path.
            GemvWiden(q, s.Permuted.AsSpan(0, q.Cols), y, rowStart, rowEnd);
            return;
        }
        if (q.Bits == 8)
        {
            if (vnni) GemvInt8<VnniDot>(q, s, y, rowStart, rowEnd, channelScales); else GemvInt8<Avx2Dot>(q, s, y, rowStart, rowEnd, channelScales);
        }
        else
        {
            if (vnni) GemvInt4<VnniDot>(q, s, y, rowStart, rowEnd, channelScales); else GemvInt4<Avx2Dot>(q, s, y, rowStart, rowEnd, channelScales);
        }
    }

    /// <summary>
    /// Per-group sums of BSum (d·Σxq) over the columns the integer kernels cover (4-bit: full 64-column blocks; 8-bit:
    /// full 32-column chunks; the tail runs in f32), for the zero-point correction; prepared once per product.
    /// </summary>
    public static void GroupSums(QuantScratch s, int cols, int group, int bits)
    {
        int groups = cols / group, chunks = bits == 4 ? cols / 64 * 2 : cols / 32;
        if (s.GroupBSum.Length < groups) s.GroupBSum = new float[groups];
        var gs = s.GroupBSum.AsSpan(0, groups);
        gs.Clear();
        for (int k = 0; k < chunks; k++) gs[Math.Min(k * 32 / group, groups - 1)] += s.BSum[k];
    }

    /// <summary>8 f16 values to f32 (exact for normal and subnormal values; scales are never inf/NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfToFloat8(Half* p)
    {
        var h = Avx2.ConvertToVector256Int32((ushort*)p);
        var magnitude = ((h & Vector256.Create(0x7FFF)) << 13).AsSingle() * Vector256.Create(BitConverter.Int32BitsToSingle((127 + 112) << 23));
        return (magnitude.AsInt32() | ((h & Vector256.Create(0x8000)) << 16)).AsSingle();
    }

    /// <summary>
    /// Converts row <paramref name="o"/>'s scales to f32 into <paramref name="sc"/> and, when <paramref name="gbs"/> is
    /// given, returns the zero-point term Σ_g z_g·s_g·gbs_g (z = <paramref name="zero"/> without explicit zeros: 8 for
    /// 4-bit codes, 128 for 8-bit codes read as unsigned bytes with their sign bit flipped).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RowScales(QuantizedTensor q, int o, float* sc, float* gbs, float zero = 8)
    {
        int groups = q.Groups, g = 0;
        Half* src = q.Scales + (long)o * groups;
        byte* zp = q.Zeros == null ? null : q.Zeros + (long)o * groups;
        var cv = Vector256<float>.Zero;
        for (; g + 8 <= groups; g += 8)
        {
            var f = HalfToFloat8(src + g);
            f.Store(sc + g);
            if (gbs != null)
            {
                var z = zp == null ? Vector256.Create(zero) : Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(zp + g));
                cv = Fma.MultiplyAdd(f * z, Vector256.Load(gbs + g), cv);
            }
        }
        float corr = Vector256.Sum(cv);
        for (; g < groups; g++)
        {
            sc[g] = DTypes.F16ToFloat(src[g]);
            if (gbs != null) corr += (zp == null ? zero : zp[g]) * sc[g] * gbs[g];
        }
        return corr;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GemvInt8<TDot>(QuantizedTensor q, QuantScratch s, Span<float> y, int rowStart, int rowEnd, float[]? channelScales) where TDot : struct, IDot
    {
        int n = q.Cols, shift = GroupShift(q), chunks = n / 32;
        var rowBuf = QuantScratch.ForThread(n).Row;
        // VNNI multiplies unsigned by signed bytes: with the codes' sign bit flipped (w + 128, one XOR) the product is
        // Σ (w + 128)·xq − 128·Σ xq, the second term a per-group constant of the prepared activations (GroupBSum).
        // Without VNNI the flipped codes would overflow pmaddubsw's int16 pairs, so that path takes |w| and sign(x, w).
        bool biased = typeof(TDot) == typeof(VnniDot);
        fixed (sbyte* xq = s.Xq)
        fixed (float* d = s.D)
        fixed (float* x = s.Permuted)
        fixed (float* gbs = s.GroupBSum)
        fixed (float* sc = rowBuf)
        {
            for (int o = rowStart; o < rowEnd; o++)
            {
                sbyte* w = (sbyte*)q.Codes + (long)o * n;
                float sum;
                if (q.Groups == 1)
                {
                    sc[0] = channelScales != null ? channelScales[o] : DTypes.F16ToFloat(q.Scales[o]);
                    sum = sc[0] * (Int8ChannelRow<TDot>(w, xq, d, chunks) - (biased ? 128 * gbs[0] : 0));
                }
                else
                {
                    float corr = RowScales(q, o, sc, biased ? gbs : null, 128);
                    sum = Int8GroupedRow<TDot>(w, xq, d, sc, shift - 5, chunks) - corr;
                }
                int c = chunks * 32;
                for (; c < n; c++) sum += w[c] * sc[c >> shift] * x[c];
                y[o - rowStart] = sum;
            }
        }
    }

    /// <summary>
    /// A signed int8 × int8 dot product in the u8 × s8 form the instructions take: with VNNI (w xor 0x80) · x, that is
    /// (w + 128) · x, the caller subtracting 128·Σx; without, |w| · sign(x, w) (w + 128 would saturate pmaddubsw).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> DotS8<TDot>(Vector256<sbyte> w, sbyte* x) where TDot : struct, IDot =>
        typeof(TDot) == typeof(VnniDot)
            ? TDot.Dot(w.AsByte() ^ Vector256.Create((byte)0x80), Vector256.Load(x))
            : TDot.Dot(Avx2.Abs(w), Avx2.Sign(Vector256.Load(x), w));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> AccS8<TDot>(Vector256<int> acc, Vector256<sbyte> w, sbyte* x) where TDot : struct, IDot =>
        typeof(TDot) == typeof(VnniDot)
            ? TDot.Acc(acc, w.AsByte() ^ Vector256.Create((byte)0x80), Vector256.Load(x))
            : TDot.Acc(acc, Avx2.Abs(w), Avx2.Sign(Vector256.Load(x), w));

    /// <summary>
    /// Σ over the row's full 32-column chunks of int8 codes · int8 activations, each 128-column step (one activation
    /// scale) as two integer chains of two, one convert and one FMA; the row's own scale is the caller's. A lean method
    /// of its own: written inline in the row loop, its pointers were spilled to the stack.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Int8ChannelRow<TDot>(sbyte* wp, sbyte* xp, float* d, int chunks) where TDot : struct, IDot
    {
        Vector256<float> a0 = default, a1 = default;
        int k = 0;
        for (; k + 8 <= chunks; k += 8, wp += 256, xp += 256)
        {
            Simd.PrefetchStream(wp);
            Simd.PrefetchStream(wp + 64);
            Simd.PrefetchStream(wp + 128);
            Simd.PrefetchStream(wp + 192);
            var i0 = AccS8<TDot>(DotS8<TDot>(Vector256.Load(wp), xp), Vector256.Load(wp + 32), xp + 32);
            var i1 = AccS8<TDot>(DotS8<TDot>(Vector256.Load(wp + 64), xp + 64), Vector256.Load(wp + 96), xp + 96);
            var i2 = AccS8<TDot>(DotS8<TDot>(Vector256.Load(wp + 128), xp + 128), Vector256.Load(wp + 160), xp + 160);
            var i3 = AccS8<TDot>(DotS8<TDot>(Vector256.Load(wp + 192), xp + 192), Vector256.Load(wp + 224), xp + 224);
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0 + i1), Vector256.Create(d[k]), a0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2 + i3), Vector256.Create(d[k + 4]), a1);
        }
        for (; k + 2 <= chunks; k += 2, wp += 64, xp += 64)
        {
            // 64 columns: both halves share an activation scale (activation blocks are 128 columns, chunks of 32 even).
            var i0 = AccS8<TDot>(DotS8<TDot>(Vector256.Load(wp), xp), Vector256.Load(wp + 32), xp + 32);
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(d[k]), a0);
        }
        if (k < chunks)
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotS8<TDot>(Vector256.Load(wp), xp)), Vector256.Create(d[k]), a1);
        return Vector256.Sum(a0 + a1);
    }

    /// <summary>Σ over the row's full 32-column chunks, chunk k scaled by d[k]·sc[k &gt;&gt; groupShift] (groups of 32·2^groupShift).</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Int8GroupedRow<TDot>(sbyte* wp, sbyte* xp, float* d, float* sc, int groupShift, int chunks) where TDot : struct, IDot
    {
        Vector256<float> a0 = default, a1 = default;
        int k = 0;
        for (; k + 2 <= chunks; k += 2, wp += 64, xp += 64)
        {
            Simd.PrefetchStream(wp);
            var p0 = DotS8<TDot>(Vector256.Load(wp), xp);
            var p1 = DotS8<TDot>(Vector256.Load(wp + 32), xp + 32);
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p0), Vector256.Create(d[k] * sc[k >> groupShift]), a0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p1), Vector256.Create(d[k + 1] * sc[(k + 1) >> groupShift]), a1);
        }
        if (k < chunks)
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotS8<TDot>(Vector256.Load(wp), xp)), Vector256.Create(d[k] * sc[k >> groupShift]), a0);
        return Vector256.Sum(a0 + a1);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GemvInt4<TDot>(QuantizedTensor q, QuantScratch s, Span<float> y, int rowStart, int rowEnd, float[]? channelScales) where TDot : struct, IDot
    {
        int n = q.Cols, shift = GroupShift(q), blocks = n / 64;
        var mask = Vector256.Create((byte)0x0F);
        var local = QuantScratch.ForThread(n);
        fixed (sbyte* xq = s.Xq)
        fixed (float* d = s.D)
        fixed (float* gbs = s.GroupBSum)
        fixed (float* x = s.Permuted)
        fixed (float* sc = local.Row)
        fixed (float* cs = local.ChunkScale)
        {
            int o = rowStart;
            if (channelScales != null && n % 64 == 0 && n <= PairedRowsMaxCols)
            {
                // Per-channel rows whose length is a multiple of 64, two rows per pass: the per-row work (loop
                // set-up, horizontal sum, zero-point term) is then shared or overlapped, and it dominates short rows
                // (576 columns: about two thirds of the row's time when taken one at a time).
                float z = q.Zeros == null ? 8 : 0;
                for (; o + 2 <= rowEnd; o += 2)
                {
                    byte* p0 = q.Codes + (long)o * (n / 2), p1 = p0 + n / 2;
                    sbyte* xp = xq;
                    float* dp = d;
                    Vector256<float> a = default, b = default;
                    int c = 0;
                    for (; c + 128 <= n; c += 128, p0 += 64, p1 += 64, xp += 128, dp += 4)
                    {
                        Simd.PrefetchStream(p0);
                        Simd.PrefetchStream(p1);
                        var x0 = Vector256.Load(xp); var x1 = Vector256.Load(xp + 32);
                        var x2 = Vector256.Load(xp + 64); var x3 = Vector256.Load(xp + 96);
                        var v = Vector256.Load(p0); var u = Vector256.Load(p0 + 32);
                        var i0 = TDot.Acc(TDot.Acc(TDot.Acc(TDot.Dot(v & mask, x0), Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, x1),
                                                   u & mask, x2), Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, x3);
                        v = Vector256.Load(p1); u = Vector256.Load(p1 + 32);
                        var i1 = TDot.Acc(TDot.Acc(TDot.Acc(TDot.Dot(v & mask, x0), Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, x1),
                                                   u & mask, x2), Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, x3);
                        var dv = Vector256.Create(dp[0]);
                        a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), dv, a);
                        b = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), dv, b);
                    }
                    if (c < n)
                    {
                        // A last 64-column block: its two halves may belong to different activation scales.
                        var x0 = Vector256.Load(xp); var x1 = Vector256.Load(xp + 32);
                        var d0 = Vector256.Create(dp[0]); var d1 = Vector256.Create(dp[1]);
                        var v = Vector256.Load(p0); var u = Vector256.Load(p1);
                        a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(v & mask, x0)), d0, a);
                        a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, x1)), d1, a);
                        b = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(u & mask, x0)), d0, b);
                        b = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, x1)), d1, b);
                    }
                    float s0 = channelScales[o], s1 = channelScales[o + 1];
                    float z0 = q.Zeros == null ? z : q.Zeros[o], z1 = q.Zeros == null ? z : q.Zeros[o + 1];
                    y[o - rowStart] = s0 * (Vector256.Sum(a) - z0 * gbs[0]);
                    y[o + 1 - rowStart] = s1 * (Vector256.Sum(b) - z1 * gbs[0]);
                }
            }
            for (; o < rowEnd; o++)
            {
                byte* w = q.Codes + (long)o * (n / 2);
                // Σ_g z_g·s_g·(d·Σxq over the full blocks of group g): the zero-point term, once per row.
                float corr;
                if (channelScales != null)
                {
                    sc[0] = channelScales[o];
                    corr = (q.Zeros == null ? 8 : q.Zeros[o]) * sc[0] * gbs[0];
                }
                else corr = RowScales(q, o, sc, gbs);
                float grouped;
                if (q.Groups == 1 || q.GroupSize >= QuantKernels.ActivationBlock)
                {
                    // Per-channel rows and groups of 128 or more: one weight scale and one activation scale per
                    // 128-column step, so four integer dots are summed before one convert and one FMA (half the
                    // multiply-port work of scaling every 32 columns).
                    // In a lean method of its own: inline here, the accumulators and the mask lived on the stack
                    // (the row loop's register pressure), a store-forwarding round trip on every step.
                    grouped = q.Groups == 1
                        ? sc[0] * WideRow<TDot, RowScale>(w, xq, d, sc, 31, blocks)
                        : WideRow<TDot, GroupScale>(w, xq, d, sc, shift - 7, blocks);
                }
                else
                {
                    // Groups of 32 or 64: one combined scale (group scale × activation scale) per 32 columns, made once
                    // per row, then a lean loop in a method of its own (written inline here, the row loop's register
                    // pressure spilled its pointers to the stack every step: 7-9 GB/s hot against 15-26 per-channel).
                    grouped = GroupedRow<TDot>(w, xq, d, sc, shift - 5, cs, blocks);
                }
                float sum = grouped - corr;
                int c = blocks * 64;
                // The tail (a short last block) runs in f32 against the unquantized x, its zero term included.
                for (; c < n; c++) sum += q.Code(o, c) * sc[c >> shift] * x[c];
                y[o - rowStart] = sum;
            }
        }
    }

    /// <summary>
    /// Whether <see cref="Int4ChannelPairs4"/> serves a matrix: per-channel int4 rows, a multiple of 64 columns long and
    /// short enough that the GEMV takes them two at a time (the float arithmetic it mirrors).
    /// </summary>
    public static bool PairsEligible(QuantizedTensor q, float[]? channelScales) =>
        q.Bits == 4 && channelScales != null && q.ColumnOrder == null && q.Cols % 64 == 0 && q.Cols <= PairedRowsMaxCols;

    public static void Int4ChannelPairs4(QuantizedTensor q, QuantScratch[] xs, int m0, float[] channelScales, Span<float> y, int outF,
                                         int rowStart, int rowEnd, bool vnni)
    {
        if (vnni) Int4ChannelPairs4<VnniDot>(q, xs, m0, channelScales, y, outF, rowStart, rowEnd);
        else Int4ChannelPairs4<Avx2Dot>(q, xs, m0, channelScales, y, outF, rowStart, rowEnd);
    }

    /// <summary>
    /// Four activation rows (m0 .. m0+3) against weight rows [rowStart, rowEnd) taken two at a time (an even count):
    /// each step's 128 columns of both weight rows are loaded and unpacked once and used for all four activation rows,
    /// and every (weight row, activation row) result goes through exactly the float operations of the GEMV's paired
    /// rows (one accumulator, one FMA per step with the step's activation scale, the same tail), so a batched product
    /// equals each row's GEMV bit for bit. y is [rows, outF].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Int4ChannelPairs4<TDot>(QuantizedTensor q, QuantScratch[] xs, int m0, float[] channelScales, Span<float> y, int outF,
                                                int rowStart, int rowEnd) where TDot : struct, IDot
    {
        int n = q.Cols;
        var mask = Vector256.Create((byte)0x0F);
        QuantScratch sa = xs[m0], sb = xs[m0 + 1], sc = xs[m0 + 2], se = xs[m0 + 3];
        fixed (sbyte* xa0 = sa.Xq) fixed (sbyte* xb0 = sb.Xq) fixed (sbyte* xc0 = sc.Xq) fixed (sbyte* xe0 = se.Xq)
        fixed (float* da = sa.D) fixed (float* db = sb.D) fixed (float* dc = sc.D) fixed (float* de = se.D)
        {
            for (int o = rowStart; o + 2 <= rowEnd; o += 2)
            {
                byte* p0 = q.Codes + (long)o * (n / 2), p1 = p0 + n / 2;
                Vector256<float> a0 = default, a1 = default, b0 = default, b1 = default, c0 = default, c1 = default, e0 = default, e1 = default;
                int c = 0;
                for (; c + 128 <= n; c += 128, p0 += 64, p1 += 64)
                {
                    var v = Vector256.Load(p0); var u = Vector256.Load(p0 + 32);
                    var w00 = v & mask; var w01 = Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask;
                    var w02 = u & mask; var w03 = Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask;
                    v = Vector256.Load(p1); u = Vector256.Load(p1 + 32);
                    var w10 = v & mask; var w11 = Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask;
                    var w12 = u & mask; var w13 = Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask;
                    int k = c >> 5;
                    Step(xa0 + c, da[k], w00, w01, w02, w03, w10, w11, w12, w13, ref a0, ref a1);
                    Step(xb0 + c, db[k], w00, w01, w02, w03, w10, w11, w12, w13, ref b0, ref b1);
                    Step(xc0 + c, dc[k], w00, w01, w02, w03, w10, w11, w12, w13, ref c0, ref c1);
                    Step(xe0 + c, de[k], w00, w01, w02, w03, w10, w11, w12, w13, ref e0, ref e1);
                }
                if (c < n)
                {
                    // A last 64-column block: its two halves scaled separately, as the GEMV does.
                    var v = Vector256.Load(p0); var u = Vector256.Load(p1);
                    int k = c >> 5;
                    Tail(xa0 + c, da[k], da[k + 1], v, u, ref a0, ref a1);
                    Tail(xb0 + c, db[k], db[k + 1], v, u, ref b0, ref b1);
                    Tail(xc0 + c, dc[k], dc[k + 1], v, u, ref c0, ref c1);
                    Tail(xe0 + c, de[k], de[k + 1], v, u, ref e0, ref e1);
                }
                float s0 = channelScales[o], s1 = channelScales[o + 1];
                float z0 = q.Zeros == null ? 8 : q.Zeros[o], z1 = q.Zeros == null ? 8 : q.Zeros[o + 1];
                float g;
                g = sa.GroupBSum[0]; y[m0 * outF + o] = s0 * (Vector256.Sum(a0) - z0 * g); y[m0 * outF + o + 1] = s1 * (Vector256.Sum(a1) - z1 * g);
                g = sb.GroupBSum[0]; y[(m0 + 1) * outF + o] = s0 * (Vector256.Sum(b0) - z0 * g); y[(m0 + 1) * outF + o + 1] = s1 * (Vector256.Sum(b1) - z1 * g);
                g = sc.GroupBSum[0]; y[(m0 + 2) * outF + o] = s0 * (Vector256.Sum(c0) - z0 * g); y[(m0 + 2) * outF + o + 1] = s1 * (Vector256.Sum(c1) - z1 * g);
                g = se.GroupBSum[0]; y[(m0 + 3) * outF + o] = s0 * (Vector256.Sum(e0) - z0 * g); y[(m0 + 3) * outF + o + 1] = s1 * (Vector256.Sum(e1) - z1 * g);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void Step(sbyte* x, float d, Vector256<byte> w00, Vector256<byte> w01, Vector256<byte> w02, Vector256<byte> w03,
                         Vector256<byte> w10, Vector256<byte> w11, Vector256<byte> w12, Vector256<byte> w13, ref Vector256<float> r0, ref Vector256<float> r1)
        {
            var x0 = Vector256.Load(x); var x1 = Vector256.Load(x + 32); var x2 = Vector256.Load(x + 64); var x3 = Vector256.Load(x + 96);
            var i0 = TDot.Acc(TDot.Acc(TDot.Acc(TDot.Dot(w00, x0), w01, x1), w02, x2), w03, x3);
            var i1 = TDot.Acc(TDot.Acc(TDot.Acc(TDot.Dot(w10, x0), w11, x1), w12, x2), w13, x3);
            var dv = Vector256.Create(d);
            r0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), dv, r0);
            r1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), dv, r1);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void Tail(sbyte* x, float d0s, float d1s, Vector256<byte> v, Vector256<byte> u, ref Vector256<float> r0, ref Vector256<float> r1)
        {
            var mask = Vector256.Create((byte)0x0F);
            var x0 = Vector256.Load(x); var x1 = Vector256.Load(x + 32);
            var d0 = Vector256.Create(d0s); var d1 = Vector256.Create(d1s);
            r0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(v & mask, x0)), d0, r0);
            r0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, x1)), d1, r0);
            r1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(u & mask, x0)), d0, r1);
            r1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, x1)), d1, r1);
        }
    }

    /// <summary>The scale of 128-column step k: activation scale d[4k], times the weight group's scale where groups vary.</summary>
    private interface IStepScale
    {
        static abstract Vector256<float> Of(float* d, float* sc, int k, int stepShift);
    }

    /// <summary>One weight scale for the row, applied by the caller: the step's FMA takes d[4k] as a broadcast operand.</summary>
    private readonly struct RowScale : IStepScale
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Of(float* d, float* sc, int k, int stepShift) => Vector256.Create(d[4 * k]);
    }

    private readonly struct GroupScale : IStepScale
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Of(float* d, float* sc, int k, int stepShift) => Vector256.Create(d[4 * k] * sc[k >> stepShift]);
    }

    /// <summary>
    /// Σ over <paramref name="blocks"/> 64-column int4 blocks of codes · int8 activations for a row with one weight scale
    /// per 128 columns or more: step k (128 columns, one activation scale d[4k]) is scaled by
    /// <typeparamref name="TScale"/> (d[4k]·sc[k &gt;&gt; stepShift], or d[4k] alone when the caller applies the row's one
    /// scale). Each step's four integer dots run as two chains of two (half the latency of one chain of four); two float
    /// accumulators.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float WideRow<TDot, TScale>(byte* wp, sbyte* xp, float* d, float* sc, int stepShift, int blocks) where TDot : struct, IDot where TScale : struct, IStepScale
    {
        var mask = Vector256.Create((byte)0x0F);
        Vector256<float> a0 = default, a1 = default;
        int steps = blocks / 2, k = 0;
        for (; k + 2 <= steps; k += 2, wp += 128, xp += 256)
        {
            Simd.PrefetchStream(wp);
            Simd.PrefetchStream(wp + 64);
            var v = Vector256.Load(wp); var u = Vector256.Load(wp + 32);
            var i0 = TDot.Acc(TDot.Dot(v & mask, Vector256.Load(xp)), Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 32));
            var i1 = TDot.Acc(TDot.Dot(u & mask, Vector256.Load(xp + 64)), Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 96));
            v = Vector256.Load(wp + 64); u = Vector256.Load(wp + 96);
            var i2 = TDot.Acc(TDot.Dot(v & mask, Vector256.Load(xp + 128)), Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 160));
            var i3 = TDot.Acc(TDot.Dot(u & mask, Vector256.Load(xp + 192)), Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 224));
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0 + i1), TScale.Of(d, sc, k, stepShift), a0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2 + i3), TScale.Of(d, sc, k + 1, stepShift), a1);
        }
        if (k < steps)
        {
            var v = Vector256.Load(wp); var u = Vector256.Load(wp + 32);
            var i0 = TDot.Acc(TDot.Dot(v & mask, Vector256.Load(xp)), Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 32));
            var i1 = TDot.Acc(TDot.Dot(u & mask, Vector256.Load(xp + 64)), Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 96));
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0 + i1), TScale.Of(d, sc, k, stepShift), a0);
            wp += 64; xp += 128; k++;
        }
        if (blocks % 2 != 0)
        {
            // A last 64-column block.
            var v = Vector256.Load(wp);
            var f = TScale.Of(d, sc, k, stepShift); // the block's two halves share the 128-column activation scale
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(v & mask, Vector256.Load(xp))), f, a0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 32))), f, a1);
        }
        return Vector256.Sum(a0 + a1);
    }

    /// <summary>
    /// Σ over <paramref name="blocks"/> 64-column int4 blocks of (codes · int8 activations) per 32 columns, each scaled by
    /// activation scale × group scale, combined first into <paramref name="cs"/> (zero points are corrected by the
    /// caller). 128 columns per step, four independent accumulators.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float GroupedRow<TDot>(byte* wp, sbyte* xp, float* d, float* sc, int groupShift, float* cs, int blocks) where TDot : struct, IDot
    {
        // Combined scales: activation scale (per 32 columns) × group scale (per 2^groupShift chunks of 32).
        int chunks = blocks * 2, k = 0;
        if (groupShift == 0)
            for (; k + 8 <= chunks; k += 8) (Vector256.Load(d + k) * Vector256.Load(sc + k)).Store(cs + k);
        else if (groupShift == 1)
            for (; k + 8 <= chunks; k += 8)
            {
                var s4 = Vector128.Load(sc + k / 2); // groups of 64: each scale covers two chunks
                (Vector256.Load(d + k) * Vector256.Create(Sse.UnpackLow(s4, s4), Sse.UnpackHigh(s4, s4))).Store(cs + k);
            }
        for (; k < chunks; k++) cs[k] = d[k] * sc[k >> groupShift];
        var mask = Vector256.Create((byte)0x0F);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int b = 0;
        for (; b + 2 <= blocks; b += 2, wp += 64, xp += 128, cs += 4)
        {
            Simd.PrefetchStream(wp);
            var v = Vector256.Load(wp);
            var u = Vector256.Load(wp + 32);
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(v & mask, Vector256.Load(xp))), Vector256.Create(cs[0]), a0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 32))), Vector256.Create(cs[1]), a1);
            a2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(u & mask, Vector256.Load(xp + 64))), Vector256.Create(cs[2]), a2);
            a3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 96))), Vector256.Create(cs[3]), a3);
        }
        if (b < blocks)
        {
            var v = Vector256.Load(wp);
            a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(v & mask, Vector256.Load(xp))), Vector256.Create(cs[0]), a0);
            a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 32))), Vector256.Create(cs[1]), a1);
        }
        return Vector256.Sum((a0 + a1) + (a2 + a3));
    }

    // ---------------------------------------------------------------- widen to f32 (no activation quantization)

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void GemvWiden(QuantizedTensor q, ReadOnlySpan<float> xs, Span<float> y, int rowStart, int rowEnd)
    {
        int n = q.Cols, gs = q.GroupSize, groups = q.Groups;
        byte* nib = stackalloc byte[64];
        var mask = Vector256.Create((byte)0x0F);
        fixed (float* x = xs)
        {
            for (int o = rowStart; o < rowEnd; o++)
            {
                Half* sc = q.Scales + (long)o * groups;
                Vector256<float> acc = default;
                float tail = 0;
                if (q.Bits == 8)
                {
                    sbyte* w = (sbyte*)q.Codes + (long)o * n;
                    for (int g = 0; g < groups; g++)
                    {
                        int j = g * gs, end = j + gs;
                        Vector256<float> ga = default, gb = default;
                        for (; j + 16 <= end; j += 16)
                        {
                            ga = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + j)), Vector256.Load(x + j), ga);
                            gb = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + j + 8)), Vector256.Load(x + j + 8), gb);
                        }
                        float s = (float)sc[g], t = 0;
                        for (; j < end; j++) t += w[j] * x[j];
                        acc = Fma.MultiplyAdd(ga + gb, Vector256.Create(s), acc);
                        tail += t * s;
                    }
                }
                else
                {
                    byte* w = q.Codes + (long)o * (n / 2);
                    int full = n / 64 * 64;
                    int c = 0;
                    for (; c < full; c += 64)
                    {
                        var v = Vector256.Load(w + c / 2);
                        (v & mask).Store(nib);
                        (Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask).Store(nib + 32);
                        for (int h = 0; h < 2; h++)
                        {
                            int col = c + 32 * h, g = col / gs;
                            float z = q.Zeros != null ? q.Zeros[(long)o * groups + g] : 8;
                            var zv = Vector256.Create(z);
                            Vector256<float> ga = default;
                            for (int k = 0; k < 32; k += 8)
                                ga = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(nib + 32 * h + k)) - zv,
                                                     Vector256.Load(x + col + k), ga);
                            acc = Fma.MultiplyAdd(ga, Vector256.Create((float)sc[g]), acc);
                        }
                    }
                    for (; c < n; c++) tail += q.Code(o, c) * (float)sc[c / gs] * x[c];
                }
                y[o - rowStart] = Vector256.Sum(acc) + tail;
            }
        }
    }
}
