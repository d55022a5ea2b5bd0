using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace Lrl.Kernels;

/// <summary>
/// Prefill products y[r, o] = Σ_i x[r, i]·W[o, i] + bias[o] for bf16, f16, f32, int8 and int4 weights on tensor cores:
/// PTX <c>mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32</c> (sm_80 and later) through ILGPU's inline PTX.
/// The weights are exact in bf16 (bf16 as stored; int8/int4 as their codes q − z, each group's partial sums scaled by
/// its scale when the group ends: <see cref="IMmaTiles"/>) or split in two bf16 terms (f16 exactly, f32 to 16
/// significant bits: a third product per tile, <see cref="GemmF16"/>); each activation is split into two bf16 terms, hi = bf16(x) and lo = bf16(x − hi)
/// (x = hi + lo to ~2^-17 relative, against bf16's 2^-9 alone), so a tile costs two products and the result is an f32
/// product's to within its rounding, not a bf16 one's. A group of <see cref="Threads"/> threads (four warps) computes
/// <see cref="TileM"/> tokens × <see cref="TileN"/> outputs, each warp 32 × 32 (2 × 4 tiles of 16 × 8 in registers);
/// per K step of <see cref="TileK"/> the activation tile (hi and lo) and the weight tile are staged in shared memory
/// with a row pitch of <see cref="Pitch"/> halves (20 words: the fragment reads of a warp fall in 32 distinct banks).
/// Grid = ceil(outF / TileN) · ceil(rows / TileM), output blocks fastest. <c>ex</c>: off CUDA, <see cref="ScratchLength"/>
/// uints for the emulation's register exchange; on CUDA unused (one element).
/// Off CUDA (ILGPU's CPU accelerator with 32-lane warps, the tests) <see cref="Emulate"/> computes the same tiles from
/// the same fragment registers, exchanged through shared memory and read where the PTX ISA's fragment layout puts each
/// element, so the staging, fragment loads and write-back are exercised everywhere; only the instruction is CUDA's. ILGPU's inline PTX takes one output
/// operand, so each product is two inline blocks returning half of its four results each (two issues of the
/// instruction, the outputs passed through local memory: ptxas reports 256 stack bytes and no spills); still the
/// tensor cores' rate against the f32 FMA tile kernel's (<see cref="GemmKernels"/>), untimed until a GPU is lent.
/// </summary>
public static class MmaGemmKernels
{
    public const int TileM = 64, TileN = 64, TileK = 32, Threads = 128;
    public const int Pitch = TileK + 8;

    /// <summary>The warp size the fragments assume (the kernel needs it; the backend launches it only there).</summary>
    public const int WarpLanes = 32;

    public static void GemmBF16(BF16Reader w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias,
                                int rows, int outF, int inF, ArrayView<uint> ex) =>
        Gemm(new BF16Tiles { W = w }, x, y, bias, hasBias, rows, outF, inF, ex);

    /// <summary>
    /// The product for int8 weights in input order (<see cref="QuantShape.Vector"/>, one group per row or groups of 32+
    /// columns): the codes are exact in bf16, so each K step's tile products sum Σ q·x exactly as the f32 product would,
    /// and a group's partial sums are scaled by its f16 scale when the group ends (<see cref="Q8Tiles"/>).
    /// </summary>
    public static void GemmQ8(Q8Reader w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias,
                              int rows, int outF, int inF, ArrayView<uint> ex) =>
        Gemm(new Q8Tiles { W = w }, x, y, bias, hasBias, rows, outF, inF, ex);

    /// <summary>The product for int4 weights (<see cref="GemmQ8"/>'s conditions, whole 64-column blocks): q − z exact in bf16 (<see cref="Q4Tiles"/>).</summary>
    public static void GemmQ4(Q4Reader w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias,
                              int rows, int outF, int inF, ArrayView<uint> ex) =>
        Gemm(new Q4Tiles { W = w }, x, y, bias, hasBias, rows, outF, inF, ex);

    /// <summary>
    /// The product for f16 weights: each weight is hi + lo, two bf16 terms, exactly (f16's 11 significant bits are bf16's 8
    /// and a remainder of at most 4, within bf16's exponent range), so a tile costs three products, Xhi·Whi + Xlo·Whi +
    /// Xhi·Wlo (Xlo·Wlo, ~2^-17 of the sum, is left out), and the result is the f32 product's to within its rounding.
    /// </summary>
    public static void GemmF16(F16Reader w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias,
                               int rows, int outF, int inF, ArrayView<uint> ex) =>
        Gemm(new F16Tiles { W = w }, x, y, bias, hasBias, rows, outF, inF, ex);

    /// <summary>
    /// The product for f32 weights, as <see cref="GemmF16"/>: each weight split into hi + lo bf16 terms (16 of its 24
    /// significant bits, as for the activations: ~2^-17 relative), three products per tile.
    /// </summary>
    public static void GemmF32(F32Reader w, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias,
                               int rows, int outF, int inF, ArrayView<uint> ex) =>
        Gemm(new F32Tiles { W = w }, x, y, bias, hasBias, rows, outF, inF, ex);

    /// <summary>Whether a quantized matrix of this shape takes <see cref="GemmQ8"/> / <see cref="GemmQ4"/>.</summary>
    public static bool Serves(QuantShape s) => s.Vector != 0 && (s.Groups == 1 || s.Group >= TileK);

    /// <summary>
    /// How a product stages its weight tile: <see cref="TileN"/> rows × <see cref="TileK"/> columns as bf16 bits at the
    /// shared pitch (zeros past the matrix), for f16/f32 weights also the remainders (<see cref="Split"/>), and, for
    /// quantized weights, the scale by which the partial sums of a group are multiplied when it ends.
    /// </summary>
    private interface IMmaTiles
    {
        /// <summary>Whether partial sums are scaled per group (quantized) or accumulate directly (bf16).</summary>
        bool Scaled { get; }
        /// <summary>Whether each weight is staged as two bf16 terms, hi in <c>ws</c> and lo in <c>wl</c> (f16, f32).</summary>
        bool Split { get; }
        void Stage(ArrayView<ushort> ws, ArrayView<uint> ws2, ArrayView<ushort> wl, int tid, int n0, int k0, int outF, int inF);
        /// <summary>The scale of output <paramref name="o"/>'s group holding column <paramref name="k"/>.</summary>
        float Scale(int o, int k);
        /// <summary>Whether the group holding column <paramref name="k"/> ends before column k + <see cref="TileK"/> (or the row does).</summary>
        bool GroupEnds(int k, int inF);
    }

    private struct BF16Tiles : IMmaTiles
    {
        public BF16Reader W;
        public readonly bool Scaled => false;
        public readonly bool Split => false;
        public readonly float Scale(int o, int k) => 1f;
        public readonly bool GroupEnds(int k, int inF) => false;

        public readonly void Stage(ArrayView<ushort> ws, ArrayView<uint> ws2, ArrayView<ushort> wl, int tid, int n0, int k0, int outF, int inF) =>
            Stage16<AsBF16>(W.Data, W.Quads, ws, wl, tid, n0, k0, outF, inF);
    }

    /// <summary>f16 weights as hi + lo bf16 terms (exact).</summary>
    private struct F16Tiles : IMmaTiles
    {
        public F16Reader W;
        public readonly bool Scaled => false;
        public readonly bool Split => true;
        public readonly float Scale(int o, int k) => 1f;
        public readonly bool GroupEnds(int k, int inF) => false;

        public readonly void Stage(ArrayView<ushort> ws, ArrayView<uint> ws2, ArrayView<ushort> wl, int tid, int n0, int k0, int outF, int inF) =>
            Stage16<F16Split>(W.Data, W.Quads, ws, wl, tid, n0, k0, outF, inF);
    }

    /// <summary>Where a 16-bit weight goes in the staged tile (bf16: as it is; f16: split in two bf16 terms).</summary>
    private interface IStage16
    {
        void Put(ArrayView<ushort> ws, ArrayView<ushort> wl, int at, ushort bits);
    }

    private struct AsBF16 : IStage16
    {
        public readonly void Put(ArrayView<ushort> ws, ArrayView<ushort> wl, int at, ushort bits) => ws[at] = bits;
    }

    private struct F16Split : IStage16
    {
        public readonly void Put(ArrayView<ushort> ws, ArrayView<ushort> wl, int at, ushort bits) => SplitInto(ws, wl, at, KernelMath.HalfToFloat(bits));
    }

    /// <summary>A 64 × 32 tile of 16-bit weights, four at a time where the row length allows 8-byte loads (zeros past the matrix).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Stage16<TS>(ArrayView<ushort> data, ArrayView<ulong> quads, ArrayView<ushort> ws, ArrayView<ushort> wl,
                                    int tid, int n0, int k0, int outF, int inF) where TS : struct, IStage16
    {
        var sink = default(TS);
        bool byQuads = (inF & 3) == 0;
        for (int e = tid; e < TileN * TileK / 4; e += Threads)
        {
            int rr = e / (TileK / 4), cc = (e % (TileK / 4)) * 4, o = n0 + rr, k = k0 + cc;
            int at = rr * Pitch + cc;
            if (o < outF && byQuads && k + 3 < inF)
            {
                ulong v = quads[((long)o * inF + k) / 4];
                for (int j = 0; j < 4; j++) sink.Put(ws, wl, at + j, (ushort)(v >> (16 * j)));
            }
            else
                for (int j = 0; j < 4; j++) sink.Put(ws, wl, at + j, o < outF && k + j < inF ? data[(long)o * inF + k + j] : (ushort)0);
        }
    }

    /// <summary>f32 weights as hi + lo bf16 terms (16 significant bits).</summary>
    private struct F32Tiles : IMmaTiles
    {
        public F32Reader W;
        public readonly bool Scaled => false;
        public readonly bool Split => true;
        public readonly float Scale(int o, int k) => 1f;
        public readonly bool GroupEnds(int k, int inF) => false;

        public readonly void Stage(ArrayView<ushort> ws, ArrayView<uint> ws2, ArrayView<ushort> wl, int tid, int n0, int k0, int outF, int inF)
        {
            for (int e = tid; e < TileN * TileK; e += Threads)
            {
                int rr = e / TileK, cc = e % TileK, o = n0 + rr, k = k0 + cc;
                SplitInto(ws, wl, rr * Pitch + cc, o < outF && k < inF ? W.Data[(long)o * inF + k] : 0f);
            }
        }
    }

    /// <summary>hi = bf16(v) into <paramref name="hi"/>, lo = bf16(v − hi) into <paramref name="lo"/>, at <paramref name="at"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SplitInto(ArrayView<ushort> hi, ArrayView<ushort> lo, int at, float v)
    {
        ushort h = ToBF16(v);
        hi[at] = h;
        lo[at] = ToBF16(v - KernelMath.BF16ToFloat(h));
    }

    /// <summary>int8 codes: per row 32 bytes of the K step as four 8-byte loads, each code's bf16 (exact: |q| ≤ 127).</summary>
    private struct Q8Tiles : IMmaTiles
    {
        public Q8Reader W;
        public readonly bool Scaled => true;
        public readonly bool Split => false;
        public readonly float Scale(int o, int k) => QScale(W.Scales, W.Shape, o, k);
        public readonly bool GroupEnds(int k, int inF) => QGroupEnds(W.Shape, k, inF);

        public readonly void Stage(ArrayView<ushort> ws, ArrayView<uint> ws2, ArrayView<ushort> wl, int tid, int n0, int k0, int outF, int inF)
        {
            var codes = W.Codes.Cast<ulong>();
            for (int e = tid; e < TileN * TileK / 8; e += Threads)
            {
                int rr = e >> 2, qd = e & 3, o = n0 + rr, k = k0 + 8 * qd;
                // Rows hold whole 8-column chunks (QuantShape.Vector): a chunk is all in or all out.
                ulong v = o < outF && k < inF ? codes[((long)o * inF + k) >> 3] : 0UL;
                int at = (rr * Pitch + 8 * qd) >> 1;
                for (int j = 0; j < 4; j++)
                    ws2[at + j] = Pack(BF16Int(SignedByte(v, 16 * j)), BF16Int(SignedByte(v, 16 * j + 8)));
            }
        }
    }

    /// <summary>
    /// int4 codes in 64-column blocks: a K step is one half of a block (low nibbles: its first 32 columns, high: the
    /// next 32), so per row the block's 32 bytes as four 8-byte loads, each code's q − z in bf16 (exact: |q − z| ≤ 16).
    /// </summary>
    private struct Q4Tiles : IMmaTiles
    {
        public Q4Reader W;
        public readonly bool Scaled => true;
        public readonly bool Split => false;
        public readonly float Scale(int o, int k) => QScale(W.Scales, W.Shape, o, k);
        public readonly bool GroupEnds(int k, int inF) => QGroupEnds(W.Shape, k, inF);

        public readonly void Stage(ArrayView<ushort> ws, ArrayView<uint> ws2, ArrayView<ushort> wl, int tid, int n0, int k0, int outF, int inF)
        {
            var codes = W.Codes.Cast<ulong>();
            int shift = (k0 & 32) >> 3; // 4 for the high half
            for (int e = tid; e < TileN * TileK / 8; e += Threads)
            {
                int rr = e >> 2, qd = e & 3, o = n0 + rr;
                int at = (rr * Pitch + 8 * qd) >> 1;
                if (o >= outF)
                {
                    for (int j = 0; j < 4; j++) ws2[at + j] = 0;
                    continue;
                }
                // Whole 64-column blocks (QuantShape.Vector): bytes 8qd .. 8qd+7 of block k0 / 64 of row o.
                ulong v = codes[(((long)o * inF + (k0 & ~63)) >> 4) + qd];
                long g = (long)o * W.Shape.Groups + (W.Shape.Groups == 1 ? 0 : k0 >> W.Shape.GroupShift);
                int z = W.Shape.HasZeros != 0 ? W.Zeros[g] : 8;
                for (int j = 0; j < 4; j++)
                    ws2[at + j] = Pack(BF16Int((int)((v >> (16 * j + shift)) & 15) - z), BF16Int((int)((v >> (16 * j + 8 + shift)) & 15) - z));
            }
        }
    }

    private static float QScale(ArrayView<ushort> scales, QuantShape s, int o, int k) =>
        KernelMath.HalfToFloat(scales[(long)o * s.Groups + (s.Groups == 1 ? 0 : k >> s.GroupShift)]);

    /// <summary>Groups of 32+ columns (a power of two) or one per row: a K step never straddles two.</summary>
    private static bool QGroupEnds(QuantShape s, int k, int inF) =>
        k + TileK >= inF || s.Groups != 1 && ((k + TileK) & (s.Group - 1)) == 0;

    /// <summary>
    /// The signed byte at bit <paramref name="at"/> of <paramref name="v"/>, sign-extended by shifts: ILGPU 1.5.3 compiles
    /// <c>(sbyte)(byte)v</c> to PTX as an unsigned byte (cvt.u8, cvt.s32.u8, cvt.rn.f32.u32), so on CUDA every negative
    /// code would read as 128 + |q| (the CPU accelerator runs the IL and is right; <c>PtxTests</c> checks the int8 kernels
    /// convert signed).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int SignedByte(ulong v, int at) => (int)((uint)(v >> at) << 24) >> 24;

    /// <summary>bf16 bits of a small integer (exact for |v| ≤ 256).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint BF16Int(int v) => (uint)Interop.FloatAsInt(v) >> 16;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Pack(uint lo, uint hi) => lo | (hi << 16);

    private static void Gemm<TT>(TT tiles, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias, int hasBias,
                                 int rows, int outF, int inF, ArrayView<uint> ex) where TT : struct, IMmaTiles
    {
        var xh = SharedMemory.Allocate<ushort>(TileM * Pitch);
        var xl = SharedMemory.Allocate<ushort>(TileM * Pitch);
        var ws = SharedMemory.Allocate<ushort>(TileN * Pitch);
        var wl = SharedMemory.Allocate<ushort>(tiles.Split ? TileN * Pitch : 2); // split weights' lo terms (f16, f32)
        var xh2 = xh.Cast<uint>(); var xl2 = xl.Cast<uint>(); var ws2 = ws.Cast<uint>(); var wl2 = wl.Cast<uint>();
        int tid = Group.IdxX, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
        int nBlocks = (outF + TileN - 1) / TileN;
        int n0 = (Grid.IdxX % nBlocks) * TileN, m0 = (Grid.IdxX / nBlocks) * TileM;
        int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
        int col = n0 + wn + 2 * t;
        Acc c00 = default, c01 = default, c02 = default, c03 = default, c10 = default, c11 = default, c12 = default, c13 = default;
        // Quantized weights: the current group's partial sums, scaled into c when it ends.
        Acc p00 = default, p01 = default, p02 = default, p03 = default, p10 = default, p11 = default, p12 = default, p13 = default;
        for (int k0 = 0; k0 < inF; k0 += TileK)
        {
            // Activations: 64 × 32 floats, split into hi and lo halves.
            for (int e = tid; e < TileM * TileK; e += Threads)
            {
                int rr = e / TileK, cc = e % TileK, r = m0 + rr, k = k0 + cc;
                float v = r < rows && k < inF ? x[(long)r * inF + k] : 0f;
                ushort hi = ToBF16(v);
                xh[rr * Pitch + cc] = hi;
                xl[rr * Pitch + cc] = ToBF16(v - KernelMath.BF16ToFloat(hi));
            }
            tiles.Stage(ws, ws2, wl, tid, n0, k0, outF, inF);
            Group.Barrier();
            for (int ks = 0; ks < TileK; ks += 16)
            {
                if (tiles.Scaled) Step(ex, xh2, xl2, ws2, wl2, false, tid, wm, wn, g, t, ks, ref p00, ref p01, ref p02, ref p03, ref p10, ref p11, ref p12, ref p13);
                else Step(ex, xh2, xl2, ws2, wl2, tiles.Split, tid, wm, wn, g, t, ks, ref c00, ref c01, ref c02, ref c03, ref c10, ref c11, ref c12, ref c13);
            }
            Group.Barrier();
            if (tiles.Scaled && tiles.GroupEnds(k0, inF))
            {
                // This lane's eight output columns: col + 8·ni and the one after it.
                float s0 = ColScale(tiles, col, k0, outF), s1 = ColScale(tiles, col + 1, k0, outF);
                Flush(ref c00, ref p00, s0, s1); Flush(ref c10, ref p10, s0, s1);
                s0 = ColScale(tiles, col + 8, k0, outF); s1 = ColScale(tiles, col + 9, k0, outF);
                Flush(ref c01, ref p01, s0, s1); Flush(ref c11, ref p11, s0, s1);
                s0 = ColScale(tiles, col + 16, k0, outF); s1 = ColScale(tiles, col + 17, k0, outF);
                Flush(ref c02, ref p02, s0, s1); Flush(ref c12, ref p12, s0, s1);
                s0 = ColScale(tiles, col + 24, k0, outF); s1 = ColScale(tiles, col + 25, k0, outF);
                Flush(ref c03, ref p03, s0, s1); Flush(ref c13, ref p13, s0, s1);
            }
        }
        int row = m0 + wm + g;
        Store(y, bias, hasBias, c00, row, col, rows, outF); Store(y, bias, hasBias, c01, row, col + 8, rows, outF);
        Store(y, bias, hasBias, c02, row, col + 16, rows, outF); Store(y, bias, hasBias, c03, row, col + 24, rows, outF);
        Store(y, bias, hasBias, c10, row + 16, col, rows, outF); Store(y, bias, hasBias, c11, row + 16, col + 8, rows, outF);
        Store(y, bias, hasBias, c12, row + 16, col + 16, rows, outF); Store(y, bias, hasBias, c13, row + 16, col + 24, rows, outF);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ColScale<TT>(TT tiles, int o, int k, int outF) where TT : struct, IMmaTiles => o < outF ? tiles.Scale(o, k) : 0f;

    /// <summary>c += s·p for a lane's share of a 16 × 8 tile (columns col and col + 1 scaled by s0 and s1), then p = 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Flush(ref Acc c, ref Acc p, float s0, float s1)
    {
        c.C0 += p.C0 * s0; c.C1 += p.C1 * s1; c.C2 += p.C2 * s0; c.C3 += p.C3 * s1;
        p = default;
    }

    /// <summary>
    /// One 16-wide K slice of the staged tiles into this warp's eight accumulators (2 row tiles × 4 column tiles): on
    /// CUDA the mma instruction; elsewhere <see cref="Emulate"/> over the registers every lane published.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(ArrayView<uint> ex, ArrayView<uint> xh2, ArrayView<uint> xl2, ArrayView<uint> ws2, ArrayView<uint> wl2, bool split, int tid, int wm, int wn,
                             int g, int t, int ks, ref Acc c00, ref Acc c01, ref Acc c02, ref Acc c03, ref Acc c10, ref Acc c11,
                             ref Acc c12, ref Acc c13)
    {
        // Fragment halves are adjacent in K, so each register is one aligned 32-bit shared load.
        int ka = ks + 2 * t;
        int ra0 = (wm + g) * Pitch + ka, ra1 = (wm + 16 + g) * Pitch + ka;
        var h0 = new A4(xh2[ra0 / 2], xh2[(ra0 + 8 * Pitch) / 2], xh2[(ra0 + 8) / 2], xh2[(ra0 + 8 * Pitch + 8) / 2]);
        var h1 = new A4(xh2[ra1 / 2], xh2[(ra1 + 8 * Pitch) / 2], xh2[(ra1 + 8) / 2], xh2[(ra1 + 8 * Pitch + 8) / 2]);
        var l0 = new A4(xl2[ra0 / 2], xl2[(ra0 + 8 * Pitch) / 2], xl2[(ra0 + 8) / 2], xl2[(ra0 + 8 * Pitch + 8) / 2]);
        var l1 = new A4(xl2[ra1 / 2], xl2[(ra1 + 8 * Pitch) / 2], xl2[(ra1 + 8) / 2], xl2[(ra1 + 8 * Pitch + 8) / 2]);
        int rb = (wn + g) * Pitch + ka;
        if (CudaAsm.IsSupported)
        {
            for (int ni = 0; ni < 4; ni++)
            {
                ulong b = LoadB(ws2, rb, ni);
                // Unrolled (constant ni): the accumulators stay in registers.
                if (ni == 0) { Mma2(h0, l0, b, ref c00); Mma2(h1, l1, b, ref c10); }
                else if (ni == 1) { Mma2(h0, l0, b, ref c01); Mma2(h1, l1, b, ref c11); }
                else if (ni == 2) { Mma2(h0, l0, b, ref c02); Mma2(h1, l1, b, ref c12); }
                else { Mma2(h0, l0, b, ref c03); Mma2(h1, l1, b, ref c13); }
                if (!split) continue;
                // Split weights: the third product, Xhi·Wlo.
                ulong bl = LoadB(wl2, rb, ni);
                if (ni == 0) { Mma(h0, bl, ref c00); Mma(h1, bl, ref c10); }
                else if (ni == 1) { Mma(h0, bl, ref c01); Mma(h1, bl, ref c11); }
                else if (ni == 2) { Mma(h0, bl, ref c02); Mma(h1, bl, ref c12); }
                else { Mma(h0, bl, ref c03); Mma(h1, bl, ref c13); }
            }
        }
        else
        {
            // The emulation: every lane publishes the registers it loaded (the group's own slots of the
            // scratch), then computes its accumulators' share of the eight tile products from the registers of
            // the lanes the PTX layout puts the elements in.
            int mine = (Grid.IdxX * Threads + tid) * Exchange;
            Put(ex, mine, h0); Put(ex, mine + 4, h1); Put(ex, mine + 8, l0); Put(ex, mine + 12, l1);
            for (int ni = 0; ni < 4; ni++)
            {
                ulong b = LoadB(ws2, rb, ni);
                ex[mine + 16 + 2 * ni] = (uint)b;
                ex[mine + 17 + 2 * ni] = (uint)(b >> 32);
                ulong bl = split ? LoadB(wl2, rb, ni) : 0UL;
                ex[mine + 24 + 2 * ni] = (uint)bl;
                ex[mine + 25 + 2 * ni] = (uint)(bl >> 32);
            }
            Group.Barrier();
            int lanes = (Grid.IdxX * Threads + (tid & ~31)) * Exchange;
            Emulate(ex, lanes, 0, 0, g, t, split, ref c00); Emulate(ex, lanes, 0, 1, g, t, split, ref c01);
            Emulate(ex, lanes, 0, 2, g, t, split, ref c02); Emulate(ex, lanes, 0, 3, g, t, split, ref c03);
            Emulate(ex, lanes, 1, 0, g, t, split, ref c10); Emulate(ex, lanes, 1, 1, g, t, split, ref c11);
            Emulate(ex, lanes, 1, 2, g, t, split, ref c12); Emulate(ex, lanes, 1, 3, g, t, split, ref c13);
            Group.Barrier();
        }
    }

    /// <summary>This lane's B fragment of column tile <paramref name="ni"/> (both branches load it here: the emulation checks the addressing CUDA runs).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong LoadB(ArrayView<uint> ws2, int rb, int ni)
    {
        int at = rb + ni * 8 * Pitch;
        return ws2[at / 2] | ((ulong)ws2[(at + 8) / 2] << 32);
    }

    /// <summary>One lane's share of a 16 × 8 f32 tile: (row, col), (row, col + 1), (row + 8, col), (row + 8, col + 1).</summary>
    public struct Acc
    {
        public float C0, C1, C2, C3;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ArrayView<float> y, ArrayView<float> bias, int hasBias, Acc c, int row, int col, int rows, int outF)
    {
        float b0 = hasBias != 0 && col < outF ? bias[col] : 0f, b1 = hasBias != 0 && col + 1 < outF ? bias[col + 1] : 0f;
        if (row < rows)
        {
            if (col < outF) y[(long)row * outF + col] = c.C0 + b0;
            if (col + 1 < outF) y[(long)row * outF + col + 1] = c.C1 + b1;
        }
        if (row + 8 < rows)
        {
            if (col < outF) y[(long)(row + 8) * outF + col] = c.C2 + b0;
            if (col + 1 < outF) y[(long)(row + 8) * outF + col + 1] = c.C3 + b1;
        }
    }

    /// <summary>f32 → bf16 bits, rounded to nearest even (finite values; NaN stays a NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ushort ToBF16(float v)
    {
        uint b = (uint)Interop.FloatAsInt(v);
        if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (ushort)((b >> 16) | 0x40);
        return (ushort)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }

    /// <summary>One lane's A fragment of a 16 × 16 bf16 tile: four registers of two bf16 each (see <see cref="Mma2"/>).</summary>
    public struct A4
    {
        public uint R0, R1, R2, R3;
        public A4(uint r0, uint r1, uint r2, uint r3) { R0 = r0; R1 = r1; R2 = r2; R3 = r3; }
    }

    /// <summary>
    /// c += (Hi + Lo)·B: two 16 × 16 (A, row-major) by 16 × 8 (B, column-major) bf16 tile products into one f32
    /// accumulator, every lane of the warp together. Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
    /// point type"), g = lane / 4, t = lane % 4, each register two bf16 with the lower index in the low half:
    /// R0 = A[g][2t, 2t+1], R1 = A[g+8][2t, 2t+1], R2 = A[g][2t+8, 2t+9], R3 = A[g+8][2t+8, 2t+9]; b's low word
    /// B[2t, 2t+1][g], its high word B[2t+8, 2t+9][g]; c as <see cref="Acc"/> with row g and column 2t. Two instructions,
    /// each as two inline blocks returning a pair of its four results (ILGPU's inline PTX has one output operand). CUDA
    /// only: elsewhere the kernel runs <see cref="Emulate"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Mma2(A4 hi, A4 lo, ulong b, ref Acc c)
    {
        Mma(hi, b, ref c);
        Mma(lo, b, ref c);
    }

    /// <summary>
    /// Registers one lane publishes for the emulation: A hi and lo of both row tiles (16), B of four column tiles (8), and
    /// split weights' B lo of the four (8).
    /// </summary>
    private const int Exchange = 32;

    /// <summary>The emulation's scratch for a grid of <paramref name="groups"/> groups.</summary>
    public static long ScratchLength(int groups) => (long)groups * Threads * Exchange;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Put(ArrayView<uint> ex, int at, A4 a)
    {
        ex[at] = a.R0; ex[at + 1] = a.R1; ex[at + 2] = a.R2; ex[at + 3] = a.R3;
    }

    /// <summary>
    /// What <see cref="Mma2"/> adds to this lane's accumulator of row tile <paramref name="mi"/> and column tile
    /// <paramref name="ni"/>, computed from the published registers (<paramref name="lanes"/>: the warp's first lane's
    /// slot) by the PTX layout: lane 4g + s holds rows g and g+8 at K 2s, 2s+1 (R0, R1) and 2s+8, 2s+9 (R2, R3); lane
    /// 4n + s holds column n at K 2s, 2s+1 (b's low word) and 2s+8, 2s+9 (its high word).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Emulate(ArrayView<uint> ex, int lanes, int mi, int ni, int g, int t, bool split, ref Acc c)
    {
        float s0 = c.C0, s1 = c.C1, s2 = c.C2, s3 = c.C3;
        for (int src = 0; src < 4; src++)
        {
            int ha = lanes + (4 * g + src) * Exchange + 4 * mi, la = ha + 8;
            int bb0 = lanes + (4 * (2 * t) + src) * Exchange + 16 + 2 * ni, bb1 = lanes + (4 * (2 * t + 1) + src) * Exchange + 16 + 2 * ni;
            uint b00 = ex[bb0], b01 = ex[bb0 + 1], b10 = ex[bb1], b11 = ex[bb1 + 1];
            s0 += (Dot2(ex[ha], b00) + Dot2(ex[ha + 2], b01)) + (Dot2(ex[la], b00) + Dot2(ex[la + 2], b01));
            s1 += (Dot2(ex[ha], b10) + Dot2(ex[ha + 2], b11)) + (Dot2(ex[la], b10) + Dot2(ex[la + 2], b11));
            s2 += (Dot2(ex[ha + 1], b00) + Dot2(ex[ha + 3], b01)) + (Dot2(ex[la + 1], b00) + Dot2(ex[la + 3], b01));
            s3 += (Dot2(ex[ha + 1], b10) + Dot2(ex[ha + 3], b11)) + (Dot2(ex[la + 1], b10) + Dot2(ex[la + 3], b11));
            if (!split) continue;
            // Split weights' lo terms (8 slots past the hi ones) times the activations' hi.
            uint l00 = ex[bb0 + 8], l01 = ex[bb0 + 9], l10 = ex[bb1 + 8], l11 = ex[bb1 + 9];
            s0 += Dot2(ex[ha], l00) + Dot2(ex[ha + 2], l01);
            s1 += Dot2(ex[ha], l10) + Dot2(ex[ha + 2], l11);
            s2 += Dot2(ex[ha + 1], l00) + Dot2(ex[ha + 3], l01);
            s3 += Dot2(ex[ha + 1], l10) + Dot2(ex[ha + 3], l11);
        }
        c.C0 = s0; c.C1 = s1; c.C2 = s2; c.C3 = s3;
    }

    /// <summary>c += A·B, the one instruction (CUDA only).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Mma(A4 a, ulong b, ref Acc c)
    {
        ulong aLo = a.R0 | ((ulong)a.R1 << 32), aHi = a.R2 | ((ulong)a.R3 << 32);
        ulong cLo = (uint)Interop.FloatAsInt(c.C0) | ((ulong)(uint)Interop.FloatAsInt(c.C1) << 32);
        ulong cHi = (uint)Interop.FloatAsInt(c.C2) | ((ulong)(uint)Interop.FloatAsInt(c.C3) << 32);
        CudaAsm.Emit(MmaLow, out ulong dLo, aLo, aHi, b, cLo, cHi);
        CudaAsm.Emit(MmaHigh, out ulong dHi, aLo, aHi, b, cLo, cHi);
        c.C0 = Interop.IntAsFloat((uint)dLo); c.C1 = Interop.IntAsFloat((uint)(dLo >> 32));
        c.C2 = Interop.IntAsFloat((uint)dHi); c.C3 = Interop.IntAsFloat((uint)(dHi >> 32));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot2(uint a, uint b) =>
        KernelMath.BF16ToFloat((ushort)a) * KernelMath.BF16ToFloat((ushort)b) + KernelMath.BF16ToFloat((ushort)(a >> 16)) * KernelMath.BF16ToFloat((ushort)(b >> 16));

    private const string MmaBody =
        "{ .reg .b32 fa<4>, fb<2>; .reg .f32 fc<4>, fd<4>; " +
        "mov.b64 {fa0, fa1}, %1; mov.b64 {fa2, fa3}, %2; mov.b64 {fb0, fb1}, %3; mov.b64 {fc0, fc1}, %4; mov.b64 {fc2, fc3}, %5; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {fd0, fd1, fd2, fd3}, {fa0, fa1, fa2, fa3}, {fb0, fb1}, {fc0, fc1, fc2, fc3}; ";
    private const string MmaLow = MmaBody + "mov.b64 %0, {fd0, fd1}; }";
    private const string MmaHigh = MmaBody + "mov.b64 %0, {fd2, fd3}; }";
}
