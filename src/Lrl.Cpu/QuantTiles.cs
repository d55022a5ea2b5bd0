using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// Register-blocked integer products for many activation rows against per-channel quantized matrices (one scale per
/// weight row: lrlrun's Q4_GC/Q8_GC, the presets' layout): the products of a batched decode step, speculative
/// verification and prefill.
///
/// <para>The channel order. Every per-channel integer kernel (the one-row GEMVs <see cref="Int8ChannelRow{TDot}"/>,
/// <see cref="Int4ChannelRow{TDot}"/>, the paired rows of <see cref="GemvInt4{TDot}"/>, and these tiles) computes a
/// result (weight row o, activation row m) by the same float operations: one accumulator; per 128-column step (one
/// activation scale d) a = fma(float(I), d, a) where I is the step's exact int32 lane sums; a last partial step (32-96
/// columns) likewise; y = s_o · (<see cref="HSum"/>(a) − z_o · g_m) with g_m = d·Σxq (the zero-point term); columns
/// past the integer part in f32. Integer sums are exact in any grouping, so a tile that reads each weight chunk once for
/// four activation rows gives each row exactly its GEMV's bits: a sequence's output never depends on what it is batched
/// with.</para>
///
/// <para>The tile. Two weight rows per pass against four activation rows (a last group of two or three runs a narrower
/// tile): per 32 columns two weight loads feed eight <c>vpdpbusd</c>, per 128 columns eight converts and eight FMAs; the
/// epilogue reduces four rows at once (<see cref="HSum4"/>). Up to <see cref="PackedTileRowsMax"/> activation rows read
/// the stored codes and unsigned them in registers (int4: nibbles 0..15 with AVX-512's 32 registers; int8: code + 128,
/// VNNI), prefetching the weight stream as the GEMV does; more rows unpack each block of weight rows (about 24 KB, L1)
/// once to unsigned bytes, paid once per block instead of once per group of activation rows.</para>
/// </summary>
internal static unsafe partial class QuantKernels
{
    /// <summary>
    /// Whether <see cref="ChannelTiles"/> serves a matrix: per-channel int4 (64+ columns) and int8 (32+), the int8 codes
    /// biased for VNNI, or without it multiplied as |w| · sign(x, w) (biased codes would saturate pmaddubsw).
    /// </summary>
    public static bool TilesServe(QuantizedTensor q, float[]? channelScales, bool vnni) =>
        channelScales != null && (q.Bits == 4 ? q.Cols >= 64 : q.Cols >= 32);

    /// <summary>Columns the integer kernels cover: full 64-column blocks (4-bit) or 32-column chunks (8-bit).</summary>
    private static int IntegerCols(QuantizedTensor q) => q.Bits == 4 ? q.Cols / 64 * 64 : q.Cols / 32 * 32;

    /// <summary>Weight rows per tile block: about 24 KB of unpacked codes, even, 2 to 64.</summary>
    public static int TileBlockRows(QuantizedTensor q) => Math.Clamp(24576 / Math.Max(32, IntegerCols(q)), 2, 64) & ~1;

    /// <summary>Most activation rows for which the tiles read the stored codes (int4 with AVX-512, int8 with VNNI; see <see cref="ChannelTiles"/>).</summary>
    internal const int PackedTileRowsMax = 12;
    /// <summary>
    /// int4 on AVX2 without AVX-512: up to this many activation rows read the packed nibbles in the tile as well
    /// (env LRL_AVX2_PACKED): unpacking the block to bytes first cost more than it saved at 2-8 rows (SmolLM2-135M q4,
    /// one thread, five alternations: pp2 125-183 -> 194-296 tok/s, pp4 144-312 -> 282-423, pp8 283-434 -> 309-441).
    /// </summary>
    internal static readonly int Avx2PackedRows = int.TryParse(Environment.GetEnvironmentVariable("LRL_AVX2_PACKED"), out var v) ? v : 8;

    [ThreadStatic] private static byte[]? _unpackStore;
    [ThreadStatic] private static nint _unpack;

    private static byte* UnpackBuffer(int bytes)
    {
        if (_unpackStore == null || _unpackStore.Length < bytes + 64)
        {
            _unpackStore = GC.AllocateArray<byte>(bytes + 64, pinned: true);
            fixed (byte* p = _unpackStore) _unpack = ((nint)p + 63) & ~(nint)63;
        }
        return (byte*)_unpack;
    }

    /// <summary>
    /// y[m, o] for activation rows m &lt; <paramref name="rows"/> (not 4k + 1: groups of four and a last one of two or three,
    /// prepared in <paramref name="xs"/>) and an
    /// even number of weight rows [rowStart, rowEnd); y is [rows, outF].
    /// </summary>
    public static void ChannelTiles(QuantizedTensor q, QuantScratch[] xs, int rows, float[] channelScales, Span<float> y, int outF,
                                    int rowStart, int rowEnd, bool vnni)
    {
        if (vnni) ChannelTiles<VnniDot>(q, xs, rows, channelScales, y, outF, rowStart, rowEnd);
        else if (q.Bits == 8) ChannelTiles<Avx2SignedDot>(q, xs, rows, channelScales, y, outF, rowStart, rowEnd);
        else ChannelTiles<Avx2Dot>(q, xs, rows, channelScales, y, outF, rowStart, rowEnd);
    }

    /// <summary>
    /// Signed int8 codes times int8 activations without VNNI, the GEMV's <see cref="DotS8{TDot}"/> for
    /// <see cref="Avx2Dot"/>: pmaddubsw of |w| and sign(x, w), pairs summed to int32 (|w|·|x| ≤ 128·127, no saturation).
    /// The tiles pass the stored codes as the "unsigned" operand (<see cref="StoredSignedInt8Pair"/>); only they use it.
    /// </summary>
    private readonly struct Avx2SignedDot : IDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector256<byte> w, Vector256<sbyte> x) => Avx2Dot.Dot(Avx2.Abs(w.AsSByte()), Avx2.Sign(x, w.AsSByte()));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Acc(Vector256<int> acc, Vector256<byte> w, Vector256<sbyte> x) => acc + Dot(w, x);
        public static bool Sums16 => false; // |w|·|x| pairs reach 32,512: no room to add two
        public static Vector256<short> Pairs(Vector256<byte> u, Vector256<sbyte> s) => throw new NotSupportedException();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ChannelTiles<TDot>(QuantizedTensor q, QuantScratch[] xs, int rows, float[] channelScales, Span<float> y, int outF,
                                           int rowStart, int rowEnd) where TDot : struct, IDot
    {
        int n = q.Cols, kInt = IntegerCols(q);
        // int4 with few activation rows (verify steps, small batches; AVX-512's 32 registers, or AVX2 up to Avx2PackedRows):
        // the tile unpacks the nibbles in registers; else the block is unpacked to bytes once for
        // all activation rows (prompts: 16+ row groups would repeat the unpack; SmolLM2-135M q4 pp128 measured slower).
        // Signed int8 without VNNI reads the stored codes at any row count (there is nothing to unpack).
        bool signed8 = typeof(TDot) == typeof(Avx2SignedDot);
        bool packed = signed8 || (q.Bits == 4 ? (Avx512F.VL.IsSupported || rows <= Avx2PackedRows) : typeof(TDot) == typeof(VnniDot)) && rows <= PackedTileRowsMax;
        byte* buf = null;
        if (!packed)
        {
            buf = UnpackBuffer((rowEnd - rowStart) * kInt);
            Unpack(q, rowStart, rowEnd, kInt, buf);
        }
        float zero = q.Bits == 4 ? 8 : signed8 ? 0 : 128;
        fixed (float* yp = y)
        fixed (float* scales = channelScales)
        {
            int pairs = (rowEnd - rowStart) / 2;
            float* sums = stackalloc float[8 * pairs]; // per weight row: the four activation rows' HSum
            for (int m = 0; m < rows; m += 4)
            {
                // A last group of two or three rows runs a narrower tile: same integer sums and float steps per row.
                int live = Math.Min(4, rows - m);
                QuantScratch s0 = xs[m], s1 = xs[m + 1], s2 = xs[m + Math.Min(2, live - 1)], s3 = xs[m + Math.Min(3, live - 1)];
                var g = Vector128.Create(s0.GroupBSum[0], s1.GroupBSum[0], s2.GroupBSum[0], s3.GroupBSum[0]);
                fixed (sbyte* x0 = s0.Xq) fixed (sbyte* x1 = s1.Xq) fixed (sbyte* x2 = s2.Xq) fixed (sbyte* x3 = s3.Xq)
                {
                    var t = new TileArgs { X0 = x0, X1 = x1, X2 = x2, X3 = x3, D0 = s0.DPointer, D1 = s1.DPointer, D2 = s2.DPointer, D3 = s3.DPointer };
                    int ld = packed ? n * q.Bits / 8 : kInt;
                    byte* w = packed ? q.Codes + (long)rowStart * ld : buf;
                    int how = signed8 ? -8 : packed ? q.Bits : 0;
                    if (live == 4) Tile<TDot, Rows4>(how, w, ld, kInt, pairs, t, sums);
                    else if (live == 3) Tile<TDot, Rows3>(how, w, ld, kInt, pairs, t, sums);
                    else Tile<TDot, Rows2>(how, w, ld, kInt, pairs, t, sums);
                }
                float* y0 = yp + (long)m * outF, y1 = y0 + outF, y2 = y1 + outF, y3 = y2 + outF;
                for (int o = rowStart; o < rowEnd; o += 2)
                {
                    // y = s·(HSum − z·g), as the GEMV computes it, for weight rows o and o + 1 and the group's rows.
                    float* r = sums + 4 * (o - rowStart);
                    float za = q.Zeros == null ? zero : q.Zeros[o], zb = q.Zeros == null ? zero : q.Zeros[o + 1];
                    var va = (Vector128.Load(r) - Vector128.Create(za) * g) * Vector128.Create(scales[o]);
                    var vb = (Vector128.Load(r + 4) - Vector128.Create(zb) * g) * Vector128.Create(scales[o + 1]);
                    var lo = Sse.UnpackLow(va, vb); var hi = Sse.UnpackHigh(va, vb);
                    Sse.StoreLow(y0 + o, lo); Sse.StoreHigh(y1 + o, lo);
                    if (live > 2) Sse.StoreLow(y2 + o, hi);
                    if (live > 3) Sse.StoreHigh(y3 + o, hi);
                }
                if (kInt < n)
                    for (int i = 0; i < live; i++)
                    {
                        var xf = xs[m + i].Permuted;
                        for (int o = rowStart; o < rowEnd; o++)
                        {
                            float s = scales[o], sum = yp[(long)(m + i) * outF + o];
                            for (int t = kInt; t < n; t++) sum += q.Code(o, t) * s * xf[t];
                            yp[(long)(m + i) * outF + o] = sum;
                        }
                    }
            }
        }
    }

    /// <summary>One tile pass over the block, through the weight reader the matrix and the dot product want.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile<TDot, TR>(int stored, byte* w, int ld, int kInt, int pairs, in TileArgs t, float* sums)
        where TDot : struct, IDot where TR : struct, ITileRows
    {
        if (stored == 4) TileRun<TDot, PackedInt4Pair, TR>(w, ld, kInt, pairs, t, sums);
        else if (stored == 8) TileRun<TDot, StoredInt8Pair, TR>(w, ld, kInt, pairs, t, sums);
        else if (stored == -8) TileRun<TDot, StoredSignedInt8Pair, TR>(w, ld, kInt, pairs, t, sums);
        else TileRun<TDot, UnpackedPair, TR>(w, ld, kInt, pairs, t, sums);
    }

    /// <summary>A tile's activation rows: quantized codes and per-128-column scales; rows past the tile's count unread.</summary>
    private struct TileArgs
    {
        public sbyte* X0, X1, X2, X3;
        public float* D0, D1, D2, D3;
    }

    /// <summary>Activation rows per tile pass (2, 3 or 4): a constant per instantiation, the unused rows' code compiled away.</summary>
    private interface ITileRows { static abstract int N { get; } }
    private readonly struct Rows2 : ITileRows { public static int N => 2; }
    private readonly struct Rows3 : ITileRows { public static int N => 3; }
    private readonly struct Rows4 : ITileRows { public static int N => 4; }

    /// <summary>Weight rows [r0, r1) as unsigned bytes, <paramref name="kInt"/> per row in stored column order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Unpack(QuantizedTensor q, int r0, int r1, int kInt, byte* dst)
    {
        var mask = Vector256.Create((byte)0x0F);
        var flip = Vector256.Create((byte)0x80);
        for (int o = r0; o < r1; o++, dst += kInt)
        {
            if (q.Bits == 4)
            {
                byte* src = q.Codes + (long)o * (q.Cols / 2);
                for (int c = 0; c < kInt; c += 64)
                {
                    if ((c & 127) == 0) Simd.PrefetchStream(src + c / 2);
                    var v = Vector256.Load(src + c / 2);
                    (v & mask).Store(dst + c);
                    (Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask).Store(dst + c + 32);
                }
            }
            else
            {
                byte* src = q.Codes + (long)o * q.Cols;
                for (int c = 0; c < kInt; c += 32)
                {
                    if ((c & 63) == 0) Simd.PrefetchStream(src + c);
                    (Vector256.Load(src + c) ^ flip).Store(dst + c);
                }
            }
        }
    }

    /// <summary>Where a tile reads its two weight rows' unsigned codes, 32 columns at a time.</summary>
    private interface IWeightPair
    {
        /// <summary>Columns per step: 32, or 64 when one load serves two halves.</summary>
        static abstract int Step { get; }
        /// <summary>Codes of columns c + 32·half .. + 31 of the rows at w0 and w1.</summary>
        static abstract void Load(byte* w0, byte* w1, int c, int half, out Vector256<byte> a, out Vector256<byte> b);
        /// <summary>Whether the rows stream from the stored matrix (prefetched), not from an unpacked block in L1.</summary>
        static abstract bool Streams { get; }
    }

    /// <summary>Rows unpacked to one byte per code (<see cref="Unpack"/>).</summary>
    private readonly struct UnpackedPair : IWeightPair
    {
        public static int Step => 32;
        public static bool Streams => false;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* w0, byte* w1, int c, int half, out Vector256<byte> a, out Vector256<byte> b)
        {
            a = Vector256.Load(w0 + c);
            b = Vector256.Load(w1 + c);
        }
    }

    /// <summary>Stored int8 rows, biased in registers (code xor 0x80 = code + 128, for VNNI's unsigned operand).</summary>
    private readonly struct StoredInt8Pair : IWeightPair
    {
        public static int Step => 32;
        public static bool Streams => true;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* w0, byte* w1, int c, int half, out Vector256<byte> a, out Vector256<byte> b)
        {
            var flip = Vector256.Create((byte)0x80);
            a = Vector256.Load(w0 + c) ^ flip;
            b = Vector256.Load(w1 + c) ^ flip;
        }
    }

    /// <summary>Stored int8 rows as they are (signed codes, for <see cref="Avx2SignedDot"/>).</summary>
    private readonly struct StoredSignedInt8Pair : IWeightPair
    {
        public static int Step => 32;
        public static bool Streams => true;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* w0, byte* w1, int c, int half, out Vector256<byte> a, out Vector256<byte> b)
        {
            a = Vector256.Load(w0 + c);
            b = Vector256.Load(w1 + c);
        }
    }

    /// <summary>Stored int4 rows: per 64 columns the low nibbles hold the first 32, the high ones the next 32.</summary>
    private readonly struct PackedInt4Pair : IWeightPair
    {
        public static int Step => 64;
        public static bool Streams => true;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* w0, byte* w1, int c, int half, out Vector256<byte> a, out Vector256<byte> b)
        {
            var mask = Vector256.Create((byte)0x0F);
            var pa = Vector256.Load(w0 + c / 2); var pb = Vector256.Load(w1 + c / 2);
            if (half != 0)
            {
                pa = Avx2.ShiftRightLogical(pa.AsUInt16(), 4).AsByte();
                pb = Avx2.ShiftRightLogical(pb.AsUInt16(), 4).AsByte();
            }
            a = pa & mask;
            b = pb & mask;
        }
    }

    /// <summary>
    /// <typeparamref name="TR"/>.N (2-4) activation rows × <paramref name="pairs"/> pairs of weight rows (<paramref name="ld"/>
    /// bytes apart, read through <typeparamref name="TW"/>) over <paramref name="kInt"/> columns in the channel order: for
    /// each pair, the four row slots' HSum for its first weight row, then for its second, at <paramref name="sums"/> (slots
    /// past N hold zeros). Per lane and 128-column block the integer sums of the row's GEMV, then the same conversion, FMA
    /// and <see cref="HSum4"/>: bit-identical results.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void TileRun<TDot, TW, TR>(byte* w, int ld, int kInt, int pairs, in TileArgs t, float* sums)
        where TDot : struct, IDot where TW : struct, IWeightPair where TR : struct, ITileRows
    {
        sbyte* x0 = t.X0, x1 = t.X1, x2 = t.X2, x3 = t.X3;
        float* d0 = t.D0, d1 = t.D1, d2 = t.D2, d3 = t.D3;
        for (int p = 0; p < pairs; p++, w += 2 * ld, sums += 8)
        {
            byte* w0 = w, w1 = w + ld;
            Vector256<float> f00 = default, f01 = default, f10 = default, f11 = default, f20 = default, f21 = default, f30 = default, f31 = default;
            int c = 0;
            while (c < kInt)
            {
                int end = Math.Min(kInt, c + ActivationBlock), k = c >> 5;
                if (TW.Streams)
                {
                    // The stored rows stream from memory: one 64-byte line per row per 128 columns of int4, two of int8
                    // (see Simd.PrefetchStream; without it a 4-row tile over SmolLM2-135M's layers read 5.6 GB/s, slower
                    // than four GEMVs).
                    int at = TW.Step == 64 ? c / 2 : c;
                    Simd.PrefetchStream(w0 + at);
                    Simd.PrefetchStream(w1 + at);
                    if (TW.Step == 32)
                    {
                        Simd.PrefetchStream(w0 + at + 64);
                        Simd.PrefetchStream(w1 + at + 64);
                    }
                }
                Vector256<int> i00 = default, i01 = default, i10 = default, i11 = default, i20 = default, i21 = default, i30 = default, i31 = default;
                if (TDot.Sums16)
                {
                    // pmaddubsw's int16 pair sums of a 128-column block added as int16 (at most four per block, each at
                    // most 2·15·128 in magnitude for int4 codes: no overflow), widened to int32 once per block: two
                    // instructions per 32 columns and row pair instead of three. The same exact integer sums.
                    Vector256<short> s00 = default, s01 = default, s10 = default, s11 = default, s20 = default, s21 = default, s30 = default, s31 = default;
                    for (; c < end; c += TW.Step)
                    {
                        TW.Load(w0, w1, c, 0, out var a, out var b);
                        var x = Vector256.Load(x0 + c); s00 += TDot.Pairs(a, x); s01 += TDot.Pairs(b, x);
                        x = Vector256.Load(x1 + c); s10 += TDot.Pairs(a, x); s11 += TDot.Pairs(b, x);
                        if (TR.N > 2) { x = Vector256.Load(x2 + c); s20 += TDot.Pairs(a, x); s21 += TDot.Pairs(b, x); }
                        if (TR.N > 3) { x = Vector256.Load(x3 + c); s30 += TDot.Pairs(a, x); s31 += TDot.Pairs(b, x); }
                        if (TW.Step == 64)
                        {
                            TW.Load(w0, w1, c, 1, out a, out b);
                            x = Vector256.Load(x0 + c + 32); s00 += TDot.Pairs(a, x); s01 += TDot.Pairs(b, x);
                            x = Vector256.Load(x1 + c + 32); s10 += TDot.Pairs(a, x); s11 += TDot.Pairs(b, x);
                            if (TR.N > 2) { x = Vector256.Load(x2 + c + 32); s20 += TDot.Pairs(a, x); s21 += TDot.Pairs(b, x); }
                            if (TR.N > 3) { x = Vector256.Load(x3 + c + 32); s30 += TDot.Pairs(a, x); s31 += TDot.Pairs(b, x); }
                        }
                    }
                    var one = Vector256<short>.One;
                    i00 = Avx2.MultiplyAddAdjacent(s00, one); i01 = Avx2.MultiplyAddAdjacent(s01, one);
                    i10 = Avx2.MultiplyAddAdjacent(s10, one); i11 = Avx2.MultiplyAddAdjacent(s11, one);
                    if (TR.N > 2) { i20 = Avx2.MultiplyAddAdjacent(s20, one); i21 = Avx2.MultiplyAddAdjacent(s21, one); }
                    if (TR.N > 3) { i30 = Avx2.MultiplyAddAdjacent(s30, one); i31 = Avx2.MultiplyAddAdjacent(s31, one); }
                }
                else
                for (; c < end; c += TW.Step)
                {
                    TW.Load(w0, w1, c, 0, out var a, out var b);
                    var x = Vector256.Load(x0 + c); i00 = TDot.Acc(i00, a, x); i01 = TDot.Acc(i01, b, x);
                    x = Vector256.Load(x1 + c); i10 = TDot.Acc(i10, a, x); i11 = TDot.Acc(i11, b, x);
                    if (TR.N > 2) { x = Vector256.Load(x2 + c); i20 = TDot.Acc(i20, a, x); i21 = TDot.Acc(i21, b, x); }
                    if (TR.N > 3) { x = Vector256.Load(x3 + c); i30 = TDot.Acc(i30, a, x); i31 = TDot.Acc(i31, b, x); }
                    if (TW.Step == 64)
                    {
                        TW.Load(w0, w1, c, 1, out a, out b);
                        x = Vector256.Load(x0 + c + 32); i00 = TDot.Acc(i00, a, x); i01 = TDot.Acc(i01, b, x);
                        x = Vector256.Load(x1 + c + 32); i10 = TDot.Acc(i10, a, x); i11 = TDot.Acc(i11, b, x);
                        if (TR.N > 2) { x = Vector256.Load(x2 + c + 32); i20 = TDot.Acc(i20, a, x); i21 = TDot.Acc(i21, b, x); }
                        if (TR.N > 3) { x = Vector256.Load(x3 + c + 32); i30 = TDot.Acc(i30, a, x); i31 = TDot.Acc(i31, b, x); }
                    }
                }
                var dv = Vector256.Create(d0[k]);
                f00 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i00), dv, f00); f01 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i01), dv, f01);
                dv = Vector256.Create(d1[k]);
                f10 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i10), dv, f10); f11 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i11), dv, f11);
                if (TR.N > 2)
                {
                    dv = Vector256.Create(d2[k]);
                    f20 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i20), dv, f20); f21 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i21), dv, f21);
                }
                if (TR.N > 3)
                {
                    dv = Vector256.Create(d3[k]);
                    f30 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i30), dv, f30); f31 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i31), dv, f31);
                }
            }
            HSum4(f00, f10, f20, f30).Store(sums);
            HSum4(f01, f11, f21, f31).Store(sums + 4);
        }
    }

    /// <summary>
    /// Σ over <paramref name="blocks"/> 64-column int4 blocks of codes · int8 activations for a per-channel row, in the
    /// channel order (the row's scale and zero point are the caller's).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Int4ChannelRow<TDot>(byte* wp, sbyte* xp, float* d, int blocks) where TDot : struct, IDot
    {
        var mask = Vector256.Create((byte)0x0F);
        Vector256<float> a = default;
        int k = 0;
        for (; k + 2 <= blocks; k += 2, wp += 64, xp += 128, d += 4)
        {
            Simd.PrefetchStream(wp);
            var v = Vector256.Load(wp); var u = Vector256.Load(wp + 32);
            var i = Sum4<TDot>(v & mask, Vector256.Load(xp), Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 32),
                               u & mask, Vector256.Load(xp + 64), Avx2.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 96));
            a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i), Vector256.Create(d[0]), a);
        }
        if (k < blocks)
        {
            var v = Vector256.Load(wp);
            var i0 = Sum2<TDot>(v & mask, Vector256.Load(xp), Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask, Vector256.Load(xp + 32));
            a = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(d[0]), a);
        }
        return HSum(a);
    }
}
