using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// Quantized matrix-vector inner loops. Every kernel computes y[o − rowStart] = Σ_j (q[o, j] − z)·s[o, j / group]·x[j]
/// for stored column order; <see cref="GemvScalar"/> is the plain reference the SIMD ones are tested against.
/// </summary>
internal static unsafe partial class QuantKernels
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
                for (int j = c; j < end; j += 8) m = Vector256.MaxNative(m, Vector256.Abs(Vector256.Load(xp + j)));
                float amax = HMax(m);
                float d = amax / 127f, id = amax > 0 ? 127f / amax : 0f;
                var ivec = Vector256.Create(id);
                for (; c < end; c += 32)
                {
                    var i0 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c) * ivec); var i1 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c + 8) * ivec);
                    var i2 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c + 16) * ivec); var i3 = Avx.ConvertToVector256Int32(Vector256.Load(xp + c + 24) * ivec);
                    StoreInt8(i0, i1, i2, i3, q + c);
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

    /// <summary>
    /// 32 int32 values of magnitude ≤ 127 stored as int8 in order. Saturating packs equal truncation there: two word
    /// packs and a byte pack interleave the 128-bit lanes, one dword permute restores column order (Narrow took ~15
    /// shuffle-port uops).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreInt8(Vector256<int> i0, Vector256<int> i1, Vector256<int> i2, Vector256<int> i3, sbyte* q)
    {
        var packed = Avx2.PackSignedSaturate(Avx2.PackSignedSaturate(i0, i1), Avx2.PackSignedSaturate(i2, i3));
        Avx2.PermuteVar8x32(packed.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte().Store(q);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float HMax(Vector256<float> m)
    {
        var h = Vector128.MaxNative(m.GetLower(), m.GetUpper());
        h = Vector128.MaxNative(h, Vector128.Shuffle(h, Vector128.Create(2, 3, 0, 1)));
        h = Vector128.MaxNative(h, Vector128.Shuffle(h, Vector128.Create(1, 0, 3, 2)));
        return h.ToScalar();
    }

    // ---------------------------------------------------------------- integer dot products

    /// <summary>u8 × s8 dot products of 4-byte groups into int32 lanes; a type parameter so each variant is its own JIT specialization.</summary>
    private interface IDot
    {
        static abstract Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s);
        /// <summary>acc + Dot(u, s): VNNI accumulates in the same instruction (no separate add).</summary>
        static abstract Vector256<int> Acc(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s);
        /// <summary>
        /// Whether the tiles may add <see cref="Pairs"/> as int16 within a 128-column block (int4 codes without VNNI:
        /// pmaddubsw pairs of at most 2·15·128) and widen once per block.
        /// </summary>
        static abstract bool Sums16 { get; }
        /// <summary>The int16 sums of adjacent u8 × s8 products (pmaddubsw), when <see cref="Sums16"/>.</summary>
        static abstract Vector256<short> Pairs(Vector256<byte> u, Vector256<sbyte> s);
    }

    private readonly struct VnniDot : IDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s) => AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, u, s);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Acc(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) => AvxVnni.MultiplyWideningAndAdd(acc, u, s);
        public static bool Sums16 => false;
        public static Vector256<short> Pairs(Vector256<byte> u, Vector256<sbyte> s) => throw new NotSupportedException();
    }

    private readonly struct Avx2Dot : IDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s) =>
            Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256<short>.One);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Acc(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) => acc + Dot(u, s);
        /// <summary>
        /// <see cref="Pairs"/> is taken only over int4 codes (the int4 tiles and <see cref="Sum2{TDot}"/> / <see cref="Sum4{TDot}"/>
        /// in the int4 GEMV; int8 goes through <c>DotS8</c> and <c>Avx2SignedDot</c>), so the pairs stay within 2·15·128.
        /// </summary>
        public static bool Sums16 => true;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<short> Pairs(Vector256<byte> u, Vector256<sbyte> s) => Avx2.MultiplyAddAdjacent(u, s);
    }

    /// <summary>
    /// Σ of two u8 × s8 products as int32 lanes: with <see cref="IDot.Sums16"/> (int4 codes, no VNNI) the pair sums are
    /// added as int16 and widened once; else two dot products. The same exact integer sums either way.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Sum2<TDot>(Vector256<byte> a, Vector256<sbyte> x, Vector256<byte> b, Vector256<sbyte> y) where TDot : struct, IDot =>
        TDot.Sums16 ? Avx2.MultiplyAddAdjacent(TDot.Pairs(a, x) + TDot.Pairs(b, y), Vector256<short>.One) : TDot.Acc(TDot.Dot(a, x), b, y);

    /// <summary><see cref="Sum2{TDot}"/> of four products (int16 sums of at most four pairs of 2·15·128).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Sum4<TDot>(Vector256<byte> a, Vector256<sbyte> x, Vector256<byte> b, Vector256<sbyte> y,
                                              Vector256<byte> c, Vector256<sbyte> z, Vector256<byte> e, Vector256<sbyte> w) where TDot : struct, IDot =>
        TDot.Sums16
            ? Avx2.MultiplyAddAdjacent((TDot.Pairs(a, x) + TDot.Pairs(b, y)) + (TDot.Pairs(c, z) + TDot.Pairs(e, w)), Vector256<short>.One)
            : TDot.Acc(TDot.Acc(TDot.Acc(TDot.Dot(a, x), b, y), c, z), e, w);

    /// <summary>Group index of column <paramref name="col"/>: a shift when the group is a power of two, else one group per row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int GroupShift(QuantizedTensor q) =>
        q.GroupSize == q.Cols ? 31 : BitOperations.Log2((uint)q.GroupSize);

    /// <summary>
    /// Longest per-channel int4 rows taken two per pass (LRL_PAIRED_COLS overrides). Short rows gain (per-row work
    /// dominates them: SmolLM2-135M q4 340-367 vs 317-335 tok/s on the Intel VM; 576-column products 13-14 vs 8-9 GB/s on
    /// an AMD EPYC); long rows lose, the two interleaved streams reading slower from memory (Llama-3.2-1B q4, 2048-column
    /// rows: 37-49 vs 45-64 tok/s; on the EPYC SmolLM2-135M's 1536-column down projection 8.4-9.1 paired vs 11.5-12.7 GB/s
    /// one row at a time, `bench --profile`).
    /// </summary>
    private static readonly int PairedRowsMaxCols = int.TryParse(Environment.GetEnvironmentVariable("LRL_PAIRED_COLS"), out var pc) ? pc : 1024;

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
    /// Σ over the row's full 32-column chunks of int8 codes · int8 activations in the channel order (see
    /// <see cref="ChannelStep"/>): each 128-column step's integer dot (two chains of two) converted once and scaled by
    /// its activation scale into one accumulator, a last partial step (1-3 chunks) likewise, then <see cref="HSum"/>.
    /// The row's own scale is the caller's. A lean method of its own: written inline in the row loop, its pointers
    /// were spilled to the stack.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Int8ChannelRow<TDot>(sbyte* wp, sbyte* xp, float* d, int chunks) where TDot : struct, IDot
    {
        Vector256<float> a = default;
        int k = 0;
        for (; k + 4 <= chunks; k += 4, wp += 128, xp += 128)
        {
            Simd.PrefetchStream(wp);
            Simd.PrefetchStream(wp + 64);
            var i0 = AccS8<TDot>(DotS8<TDot>(Vector256.Load(wp), xp), Vector256.Load(wp + 32), xp + 32);
            var i1 = AccS8<TDot>(DotS8<TDot>(Vector256.Load(wp + 64), xp + 64), Vector256.Load(wp + 96), xp + 96);
            a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0 + i1), Vector256.Create(d[k]), a);
        }
        if (k < chunks)
        {
            var i = DotS8<TDot>(Vector256.Load(wp), xp);
            for (int j = 1; j < chunks - k; j++) i = AccS8<TDot>(i, Vector256.Load(wp + 32 * j), xp + 32 * j);
            a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i), Vector256.Create(d[k]), a);
        }
        return HSum(a);
    }

    /// <summary>
    /// The horizontal sum every per-channel integer kernel ends with, ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)): the
    /// order <see cref="HSum4"/> gives four rows at once, so a tile of rows and the one-row GEMV agree bit for bit.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float HSum(Vector256<float> v)
    {
        var h = Avx.HorizontalAdd(v, v);
        h = Avx.HorizontalAdd(h, h);
        return h.GetLower().ToScalar() + h.GetUpper().ToScalar();
    }

    /// <summary>[HSum(a), HSum(b), HSum(c), HSum(e)] with three horizontal adds and one add.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> HSum4(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> e)
    {
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a, b), Avx.HorizontalAdd(c, e));
        return h.GetLower() + h.GetUpper();
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
                        var i0 = Sum4<TDot>(v & mask, x0, Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, x1,
                                            u & mask, x2, Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, x3);
                        v = Vector256.Load(p1); u = Vector256.Load(p1 + 32);
                        var i1 = Sum4<TDot>(v & mask, x0, Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, x1,
                                            u & mask, x2, Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, x3);
                        var dv = Vector256.Create(dp[0]);
                        a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), dv, a);
                        b = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), dv, b);
                    }
                    if (c < n)
                    {
                        // A last 64-column block: a partial step, one convert and one FMA (the channel order).
                        var x0 = Vector256.Load(xp); var x1 = Vector256.Load(xp + 32);
                        var d0 = Vector256.Create(dp[0]);
                        var v = Vector256.Load(p0); var u = Vector256.Load(p1);
                        a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Sum2<TDot>(v & mask, x0, Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, x1)), d0, a);
                        b = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Sum2<TDot>(u & mask, x0, Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, x1)), d0, b);
                    }
                    float s0 = channelScales[o], s1 = channelScales[o + 1];
                    float z0 = q.Zeros == null ? z : q.Zeros[o], z1 = q.Zeros == null ? z : q.Zeros[o + 1];
                    y[o - rowStart] = s0 * (HSum(a) - z0 * gbs[0]);
                    y[o + 1 - rowStart] = s1 * (HSum(b) - z1 * gbs[0]);
                }
            }
            for (; o < rowEnd; o++)
            {
                byte* w = q.Codes + (long)o * (n / 2);
                float sum;
                if (channelScales != null)
                {
                    // One scale per row: the channel order (ChannelStep), as the paired rows above and the tiles.
                    sc[0] = channelScales[o];
                    sum = sc[0] * (Int4ChannelRow<TDot>(w, xq, d, blocks) - (q.Zeros == null ? 8 : q.Zeros[o]) * gbs[0]);
                    int t = blocks * 64;
                    for (; t < n; t++) sum += q.Code(o, t) * sc[0] * x[t];
                    y[o - rowStart] = sum;
                    continue;
                }
                // Σ_g z_g·s_g·(d·Σxq over the full blocks of group g): the zero-point term, once per row.
                float corr = RowScales(q, o, sc, gbs);
                float grouped;
                if (q.GroupSize >= QuantKernels.ActivationBlock)
                {
                    // Groups of 128 or more: one weight scale and one activation scale per 128-column step, so four
                    // integer dots are summed before one convert and one FMA (half the multiply-port work of scaling
                    // every 32 columns).
                    // In a lean method of its own: inline here, the accumulators and the mask lived on the stack
                    // (the row loop's register pressure), a store-forwarding round trip on every step.
                    grouped = WideRow<TDot, GroupScale>(w, xq, d, sc, shift - 7, blocks);
                }
                else
                {
                    // Groups of 32 or 64: one combined scale (group scale × activation scale) per 32 columns, made once
                    // per row, then a lean loop in a method of its own (written inline here, the row loop's register
                    // pressure spilled its pointers to the stack every step: 7-9 GB/s hot against 15-26 per-channel).
                    grouped = GroupedRow<TDot>(w, xq, d, sc, shift - 5, cs, blocks);
                }
                sum = grouped - corr;
                int c = blocks * 64;
                // The tail (a short last block) runs in f32 against the unquantized x, its zero term included.
                for (; c < n; c++) sum += q.Code(o, c) * sc[c >> shift] * x[c];
                y[o - rowStart] = sum;
            }
        }
    }

    /// <summary>The scale of 128-column step k: activation scale d[4k], times the weight group's scale where groups vary.</summary>
    private interface IStepScale
    {
        static abstract Vector256<float> Of(float* d, float* sc, int k, int stepShift);
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
