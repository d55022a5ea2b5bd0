using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>Shape of one attention call (passed to the kernels as one struct).</summary>
public struct AttentionShape
{
    public int Rows, Pos0, Heads, KvHeads, HeadDim;
    /// <summary>Split-K: positions per split and number of splits.</summary>
    public int Chunk, Splits;
    /// <summary>
    /// Split-K with Target &gt; 0: each row splits its positions as a one-row launch at its own length would (Target: the
    /// groups that launch aims at; Splits: the most of any row), so every row's output is bit for bit its decode step's.
    /// </summary>
    public int Target;
    public float Scale;
}

/// <summary>
/// The sequences of a many-sequence launch (<see cref="AttentionKernels.SplitKSequences"/>,
/// <see cref="RopeKernels.RopeQkvCacheSequences"/>), up to <see cref="Max"/>, in one kernel argument (a kernel cannot take
/// an array of views): sequence i's K and V caches, its first query row R, its row count N and its first position P.
/// Launch rows are the sequences' rows in order.
/// </summary>
public struct SequenceCaches
{
    /// <summary>Most sequences one launch takes.</summary>
    public const int Max = 8;
    public ArrayView<float> K0, K1, K2, K3, K4, K5, K6, K7;
    public ArrayView<float> V0, V1, V2, V3, V4, V5, V6, V7;
    public int R0, R1, R2, R3, R4, R5, R6, R7;
    public int N0, N1, N2, N3, N4, N5, N6, N7;
    public int P0, P1, P2, P3, P4, P5, P6, P7;
    public int Count;

    /// <summary>Sets sequence <paramref name="i"/> (host side).</summary>
    public void Set(int i, ArrayView<float> k, ArrayView<float> v, int row0, int rows, int pos0)
    {
        switch (i)
        {
            case 0: K0 = k; V0 = v; R0 = row0; N0 = rows; P0 = pos0; break;
            case 1: K1 = k; V1 = v; R1 = row0; N1 = rows; P1 = pos0; break;
            case 2: K2 = k; V2 = v; R2 = row0; N2 = rows; P2 = pos0; break;
            case 3: K3 = k; V3 = v; R3 = row0; N3 = rows; P3 = pos0; break;
            case 4: K4 = k; V4 = v; R4 = row0; N4 = rows; P4 = pos0; break;
            case 5: K5 = k; V5 = v; R5 = row0; N5 = rows; P5 = pos0; break;
            case 6: K6 = k; V6 = v; R6 = row0; N6 = rows; P6 = pos0; break;
            case 7: K7 = k; V7 = v; R7 = row0; N7 = rows; P7 = pos0; break;
            default: throw new System.ArgumentOutOfRangeException(nameof(i), i, $"a launch takes at most {Max} sequences");
        }
    }

    public readonly ArrayView<float> K(int i) => i switch
    {
        0 => K0,
        1 => K1,
        2 => K2,
        3 => K3,
        4 => K4,
        5 => K5,
        6 => K6,
        _ => K7,
    };

    public readonly ArrayView<float> V(int i) => i switch
    {
        0 => V0,
        1 => V1,
        2 => V2,
        3 => V3,
        4 => V4,
        5 => V5,
        6 => V6,
        _ => V7,
    };

    public readonly int Row(int i) => i switch
    {
        0 => R0,
        1 => R1,
        2 => R2,
        3 => R3,
        4 => R4,
        5 => R5,
        6 => R6,
        _ => R7,
    };

    public readonly int Rows(int i) => i switch
    {
        0 => N0,
        1 => N1,
        2 => N2,
        3 => N3,
        4 => N4,
        5 => N5,
        6 => N6,
        _ => N7,
    };

    public readonly int Pos(int i) => i switch
    {
        0 => P0,
        1 => P1,
        2 => P2,
        3 => P3,
        4 => P4,
        5 => P5,
        6 => P6,
        _ => P7,
    };

    /// <summary>The sequence <paramref name="i"/> and its row <paramref name="rr"/> of launch row <paramref name="r"/>.</summary>
    public readonly void Locate(int r, out int i, out int rr)
    {
        i = 0;
        rr = r;
        while (i < Count - 1 && rr >= Rows(i)) { rr -= Rows(i); i++; }
    }
}

/// <summary>
/// Causal grouped-query attention over a KV cache [position, kvHeads·headDim].
/// Decode: <see cref="SplitK"/> scores a chunk of cached positions per group for the query heads of one KV head (partial
/// max, sum and unnormalized output per head), and the last group of each row and block of heads to finish merges the
/// splits. Prefill: <see cref="Prefill"/>, tiled flash-attention style.
/// </summary>
public static class AttentionKernels
{
    /// <summary>Most positions one split may hold (shared score buffer).</summary>
    public const int MaxChunk = 256;
    /// <summary>Largest head_dim the kernels accept.</summary>
    public const int MaxHeadDim = 256;
    /// <summary>Most query heads one split-K group serves (the query heads of a KV head, in blocks of at most this many).</summary>
    public const int MaxHeadsPerGroup = 8;

    /// <summary>Query heads per split-K group: the heads sharing a KV head, at most <see cref="MaxHeadsPerGroup"/>.</summary>
    public static int HeadsPerGroup(int heads, int kvHeads) => XMath.Min(heads / kvHeads, MaxHeadsPerGroup);

    /// <summary>
    /// Split-K groups per row and split: each KV head's query heads in blocks of <see cref="HeadsPerGroup"/> (one per KV
    /// head for every grouped-query model up to 8 query heads a KV head; as many as heads without grouping).
    /// </summary>
    public static int Units(int heads, int kvHeads)
    {
        int perKv = heads / kvHeads, per = HeadsPerGroup(heads, kvHeads);
        return kvHeads * ((perKv + per - 1) / per);
    }

    /// <summary>
    /// Grid = rows·<see cref="Units"/>·splits (split fastest): each group scores one chunk of positions for the query
    /// heads of one KV head (a block of up to <see cref="MaxHeadsPerGroup"/>), reading the chunk's K and V rows from
    /// memory once for all of them (one group per query head read them once per head: 3-4x the L2 traffic of a
    /// grouped-query model's decode attention). partO: [rows·heads·splits, headDim]; partML: [rows·heads·splits, 2] (max,
    /// sum), per row, head and split; the last split of each row and unit to finish merges its heads into output
    /// [rows·heads, headDim] (see <see cref="SplitCore"/>); tickets: [rows·units], zero before the launch and after it.
    /// </summary>
    public static void SplitK(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                              ArrayView<float> partO, ArrayView<float> partML, ArrayView<float> output, ArrayView<int> tickets, AttentionShape s) =>
        SplitCore(q, k, v, partO, partML, default, output, tickets, s, tree: false);

    /// <summary>
    /// <see cref="SplitK"/> over a tree of candidates with per-row splits (Target &gt; 0): row r is tree node r (its K/V at
    /// cache position Pos0 + r, ancestors in <paramref name="masks"/> as for <see cref="TreePrefill"/>) and attends to the
    /// positions 0 .. Pos0 − 1 and then its ancestors in depth order, split and summed exactly as the decode step of its
    /// path alone, where those ancestors sit at positions Pos0, Pos0 + 1, ...: each node's output is that step's, bit for bit.
    /// </summary>
    public static void TreeSplitK(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                  ArrayView<float> partO, ArrayView<float> partML, ArrayView<int> masks, ArrayView<float> output,
                                  ArrayView<int> tickets, AttentionShape s) =>
        SplitCore(q, k, v, partO, partML, masks, output, tickets, s, tree: true);

    /// <summary>Cache position of the path position <paramref name="p"/> of tree node <paramref name="r"/> (see <see cref="TreeSplitK"/>).</summary>
    private static int PathPosition(ArrayView<int> masks, int r, int pos0, int p)
    {
        if (p < pos0) return p;
        int nth = p - pos0; // the nth ancestor (0: the root), node indices rising with depth
        for (int word = 0; word < 2; word++)
        {
            int m = masks[2 * r + word];
            for (int b = 0; b < 32; b++)
                if (((m >> b) & 1) != 0)
                {
                    if (nth == 0) return pos0 + word * 32 + b;
                    nth--;
                }
        }
        return pos0 + r; // not reached for a well-formed mask
    }

    /// <summary>Ancestors of tree node <paramref name="r"/>, itself included: its depth + 1.</summary>
    public static int PathNodes(ArrayView<int> masks, int r)
    {
        int c = 0;
        for (int word = 0; word < 2; word++)
        {
            int m = masks[2 * r + word];
            for (int b = 0; b < 32; b++) c += (m >> b) & 1;
        }
        return c;
    }

    /// <summary>
    /// <see cref="SplitK"/> with per-row splits (Target &gt; 0) over the rows of up to <see cref="SequenceCaches.Max"/>
    /// sequences at once, each over its own cache: launch row r is row rr of the sequence that holds it (query and output
    /// row Row0 + rr of that sequence, attending to its Pos0 + rr + 1 positions); partials and tickets per launch row. Every
    /// row runs the arithmetic of its own one-row decode launch (the same splits, sums and merge): the same bits as
    /// <see cref="SplitK"/> per sequence, in one launch for all of them (a batched decode step launched two kernels per
    /// sequence and layer).
    /// </summary>
    public static void SplitKSequences(ArrayView<float> q, ArrayView<float> partO, ArrayView<float> partML, ArrayView<float> output,
                                       ArrayView<int> tickets, AttentionShape s, SequenceCaches c)
    {
        int units = Units(s.Heads, s.KvHeads);
        int r = Grid.IdxX / s.Splits / units;
        c.Locate(r, out int i, out int rr);
        int pos0 = c.Pos(i) + rr;
        SplitBody(q, c.K(i), c.V(i), partO, partML, default, output, tickets, s, false, r, c.Row(i) + rr, pos0 + 1, pos0);
    }

    /// <summary>
    /// One split's partial (max, sum, unnormalized output), then the merge by whichever of the row and head's splits
    /// finishes last: each group publishes its partial (a device-level fence) and takes a ticket; the group that takes
    /// the last one merges all of them with <see cref="CombineRow"/>'s arithmetic (what a separate combine launch did,
    /// the same operations in the same order: the same bits) and resets the ticket, so one launch per attention call
    /// does what two did.
    /// </summary>
    private static void SplitCore(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                  ArrayView<float> partO, ArrayView<float> partML, ArrayView<int> masks,
                                  ArrayView<float> output, ArrayView<int> tickets, AttentionShape s, bool tree)
    {
        int r = Grid.IdxX / s.Splits / Units(s.Heads, s.KvHeads);
        int n = tree ? s.Pos0 + PathNodes(masks, r) : s.Pos0 + r + 1;
        SplitBody(q, k, v, partO, partML, masks, output, tickets, s, tree, r, r, n, s.Pos0);
    }

    /// <summary>
    /// The group's work in <see cref="SplitCore"/>: launch row <paramref name="r"/> (its partials and ticket), query and
    /// output row <paramref name="qr"/>, <paramref name="n"/> positions of caches k, v (a tree's path from <paramref name="pos0"/>).
    /// </summary>
    private static void SplitBody(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                  ArrayView<float> partO, ArrayView<float> partML, ArrayView<int> masks,
                                  ArrayView<float> output, ArrayView<int> tickets, AttentionShape s, bool tree, int r, int qr, int n, int pos0)
    {
        var sc = SharedMemory.Allocate<float>(MaxChunk * MaxHeadsPerGroup);
        var qs = SharedMemory.Allocate<float>(MaxHeadDim * MaxHeadsPerGroup);
        var scratch = SharedMemory.Allocate<float>(KernelMath.MaxGroup);
        var last = SharedMemory.Allocate<int>(1);
        int t = Group.IdxX, gi = Grid.IdxX;
        int units = Units(s.Heads, s.KvHeads), per = HeadsPerGroup(s.Heads, s.KvHeads), perKv = s.Heads / s.KvHeads;
        int split = gi % s.Splits, ru = gi / s.Splits, u = ru % units;
        int blocks = units / s.KvHeads, kh = u / blocks, h0 = kh * perKv + (u % blocks) * per;
        int nq = XMath.Min(per, (kh + 1) * perKv - h0); // this group's heads: h0 .. h0 + nq - 1
        int chunk = s.Chunk;
        bool empty = false;
        if (s.Target > 0)
        {
            int splits = SplitsFor(n, units, s.Target, out chunk);
            // A split this row does not have: an empty partial, which the merge skips.
            empty = split >= splits;
        }
        if (empty)
        {
            for (int j = t; j < nq; j += Group.DimX) // groups may have fewer threads than heads (the CPU accelerator's four)
            {
                long pi = ((long)(r * s.Heads + h0 + j) * s.Splits + split) * 2;
                partML[pi] = float.NegativeInfinity; partML[pi + 1] = 0;
            }
        }
        else Partial(q, k, v, partO, partML, masks, s, tree, sc, qs, scratch, split, r, qr, pos0, h0, nq, kh, n, chunk); // uniform per group
        if (!KernelMath.LastToFinish(tickets, ru, s.Splits, last)) return; // uniform per group
        for (int j = 0; j < nq; j++) CombineRow(partO, partML, output, s, r * s.Heads + h0 + j, qr * s.Heads + h0 + j);
        if (t == 0) tickets[ru] = 0;
    }

    /// <summary>
    /// One split's partial for query heads <paramref name="h0"/> .. h0 + <paramref name="nq"/> − 1 of row
    /// <paramref name="r"/> (all reading KV head <paramref name="kh"/>): per position one warp reads the K row once and
    /// takes every head's dot product (the row stays in L1 for the heads after the first); then one warp per head takes
    /// its softmax (max and sum by warp reductions), and the threads split over heads × head_dim and interleaved positions
    /// take every head's weighted V sum at once: three group barriers a split, where a group-wide max and sum per head
    /// took sixteen each.
    /// </summary>
    private static void Partial(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> partO,
                                ArrayView<float> partML, ArrayView<int> masks, AttentionShape s, bool tree,
                                ArrayView<float> sc, ArrayView<float> qs, ArrayView<float> scratch, int split, int r, int qr, int pos0,
                                int h0, int nq, int kh, int n, int chunk)
    {
        int t = Group.IdxX, g = Group.DimX, hd = s.HeadDim;
        int start = split * chunk;
        int len = XMath.Min(start + chunk, n) - start;
        int kvDim = s.KvHeads * hd;
        long kvOff = (long)kh * hd;
        long qb = (long)(qr * s.Heads + h0) * hd; // the group's heads are adjacent: nq·hd floats
        for (int i = t; i < nq * hd; i += g) qs[i] = q[qb + i] * s.Scale;
        Group.Barrier();

        // Scores: one warp per position, every head of the group.
        int warps = g / Warp.WarpSize;
        for (int p = Warp.WarpIdx; p < len; p += warps)
        {
            long kb = (long)(tree ? PathPosition(masks, r, pos0, start + p) : start + p) * kvDim + kvOff;
            for (int j = 0; j < nq; j++)
            {
                float dot = 0;
                for (int i = Warp.LaneIdx; i < hd; i += Warp.WarpSize) dot += qs[j * hd + i] * k[kb + i];
                dot = KernelMath.WarpSum(dot);
                if (Warp.LaneIdx == 0) sc[j * MaxChunk + p] = dot;
            }
        }
        Group.Barrier();

        // Softmax per head, one warp per head (warp reductions: no group barriers; a group-wide max and sum took 16
        // barriers a head), the group's heads side by side.
        for (int j = Warp.WarpIdx; j < nq; j += warps)
        {
            var scj = sc.SubView(j * MaxChunk, MaxChunk);
            float m = float.NegativeInfinity;
            for (int p = Warp.LaneIdx; p < len; p += Warp.WarpSize) m = XMath.Max(m, scj[p]);
            m = KernelMath.WarpMax(m);
            float l = 0;
            for (int p = Warp.LaneIdx; p < len; p += Warp.WarpSize) { float e = XMath.Exp(scj[p] - m); scj[p] = e; l += e; }
            l = KernelMath.WarpSum(l);
            if (Warp.LaneIdx == 0)
            {
                long gj = (long)(r * s.Heads + h0 + j) * s.Splits + split; // this head's partial
                partML[gj * 2] = m; partML[gj * 2 + 1] = l;
            }
        }
        Group.Barrier(); // publishes the exponentials

        // Unnormalized Σ_p e_p·V[p] for every head at once: threads split into parts × (heads × head_dim); parts take
        // interleaved positions, then one barrier and each output sums its parts.
        int pairs = nq * hd;
        if (pairs <= g)
        {
            int parts = g / pairs;
            int pair = t % pairs, part = t / pairs, j = pair / hd, d = pair % hd;
            float acc = 0;
            if (part < parts)
                for (int p = part; p < len; p += parts)
                    acc += sc[j * MaxChunk + p] * v[(long)(tree ? PathPosition(masks, r, pos0, start + p) : start + p) * kvDim + kvOff + d];
            scratch[t] = acc;
            Group.Barrier();
            if (t < pairs) // then pair = t
            {
                float sum = 0;
                for (int pp = 0; pp < parts; pp++) sum += scratch[pp * pairs + t];
                partO[((long)(r * s.Heads + h0 + j) * s.Splits + split) * hd + d] = sum;
            }
        }
        else
        {
            for (int e = t; e < pairs; e += g)
            {
                int j = e / hd, d = e % hd;
                float acc = 0;
                for (int p = 0; p < len; p++)
                    acc += sc[j * MaxChunk + p] * v[(long)(tree ? PathPosition(masks, r, pos0, start + p) : start + p) * kvDim + kvOff + d];
                partO[((long)(r * s.Heads + h0 + j) * s.Splits + split) * hd + d] = acc;
            }
        }
    }

    /// <summary>
    /// Splits and positions per split of a one-row decode launch over <paramref name="n"/> positions: enough groups of
    /// <paramref name="units"/> (<see cref="Units"/>) to reach <paramref name="target"/>, chunks of 32 to
    /// <see cref="MaxChunk"/> positions (the host's choice, shared).
    /// </summary>
    public static int SplitsFor(int n, int units, int target, out int chunk)
    {
        int splits = XMath.Clamp((target + units - 1) / units, 1, (n + 31) / 32);
        chunk = (n + splits - 1) / splits;
        chunk = XMath.Min(MaxChunk, (chunk + 31) / 32 * 32);
        return (n + chunk - 1) / chunk;
    }

    /// <summary>
    /// output[orh] = Σ_s e^{m_s−M}·O_s / Σ_s e^{m_s−M}·l_s over the partials of row-head <paramref name="rh"/>, by the
    /// calling group (<paramref name="orh"/>: the output's row-head, rh but for a many-sequence launch).
    /// </summary>
    private static void CombineRow(ArrayView<float> partO, ArrayView<float> partML, ArrayView<float> output, AttentionShape s, int rh, int orh)
    {
        int hd = s.HeadDim;
        long pb = (long)rh * s.Splits;
        float big = float.NegativeInfinity;
        for (int sp = 0; sp < s.Splits; sp++)
            if (partML[(pb + sp) * 2 + 1] > 0) big = XMath.Max(big, partML[(pb + sp) * 2]);
        float l = 0;
        for (int sp = 0; sp < s.Splits; sp++)
        {
            float ls = partML[(pb + sp) * 2 + 1];
            if (ls > 0) l += ls * XMath.Exp(partML[(pb + sp) * 2] - big);
        }
        float inv = 1f / l;
        for (int d = Group.IdxX; d < hd; d += Group.DimX)
        {
            float acc = 0;
            for (int sp = 0; sp < s.Splits; sp++)
            {
                float ls = partML[(pb + sp) * 2 + 1];
                if (ls > 0) acc += partO[(pb + sp) * hd + d] * XMath.Exp(partML[(pb + sp) * 2] - big);
            }
            output[(long)orh * hd + d] = acc * inv;
        }
    }

    /// <summary>Query rows per prefill tile.</summary>
    public const int PrefillRows = 8;
    /// <summary>Cached positions per prefill K/V tile.</summary>
    public const int PrefillKeys = 32;
    /// <summary>Largest head_dim the tiled prefill kernel takes (shared memory budget); larger heads use split-K.</summary>
    public const int PrefillMaxHeadDim = 128;

    /// <summary>
    /// Causal prefill: grid = heads · ceil(rows / PrefillRows) (head fastest). Each group holds PrefillRows query rows of one
    /// head and streams K/V tiles of PrefillKeys positions through shared memory with an online softmax, so every K/V
    /// element loaded serves all the tile's queries.
    /// </summary>
    public static void Prefill(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output, AttentionShape s) =>
        PrefillCore(q, k, v, output, s, default, tree: false);

    /// <summary>Most nodes of a tree <see cref="TreePrefill"/> verifies (one 64-bit ancestor mask per node).</summary>
    public const int MaxTreeRows = 64;

    /// <summary>
    /// Tree-masked attention for speculative verification (as <see cref="Prefill"/>, grid = heads · ceil(rows /
    /// PrefillRows)): query row r is a tree node whose K/V sit at cache position Pos0 + r; it attends to positions
    /// 0 .. Pos0 − 1 and to the nodes whose bit is set in its ancestor mask (itself included): masks[2r] holds nodes
    /// 0-31, masks[2r + 1] nodes 32-63.
    /// </summary>
    public static void TreePrefill(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output,
                                   ArrayView<int> masks, AttentionShape s) =>
        PrefillCore(q, k, v, output, s, masks, tree: true);

    /// <summary>Four floats: a 16-byte shared load (<c>ld.shared.v4.f32</c>) where the offset is a multiple of four.</summary>
    public struct F4
    {
        public float X, Y, Z, W;
    }

    private static void PrefillCore(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output, AttentionShape s,
                                    ArrayView<int> masks, bool tree)
    {
        const int QB = PrefillRows, TK = PrefillKeys, HD = PrefillMaxHeadDim;
        var qs = SharedMemory.Allocate<float>(QB * HD);
        var os = SharedMemory.Allocate<float>(QB * HD);
        // K rows at a pitch of head_dim + 4 (head_dim a multiple of 4; otherwise head_dim | 1): the score loop's lanes
        // take consecutive keys j and read ks[j·pitch + d .. d + 3] together, which at a pitch of head_dim (a multiple of
        // 32) fell in one bank (32-way conflicts); + 4 puts the eight lanes of each 16-byte phase on distinct banks.
        var ks = SharedMemory.Allocate<float>(TK * (HD + 4));
        var vs = SharedMemory.Allocate<float>(TK * HD);
        var sc = SharedMemory.Allocate<float>(QB * TK);
        var rowM = SharedMemory.Allocate<float>(QB);
        var rowL = SharedMemory.Allocate<float>(QB);
        var rowC = SharedMemory.Allocate<float>(QB);
        int t = Group.IdxX, g = Group.DimX, hd = s.HeadDim;
        bool quads = (hd & 3) == 0;
        int kp = quads ? hd + 4 : hd | 1;
        var qs4 = qs.Cast<F4>(); var ks4 = ks.Cast<F4>(); var sc4 = sc.Cast<F4>();
        int h = Grid.IdxX % s.Heads;
        int r0 = (Grid.IdxX / s.Heads) * QB;
        int qDim = s.Heads * hd, kvDim = s.KvHeads * hd;
        long kvOff = (long)(h / (s.Heads / s.KvHeads)) * hd;
        for (int e = t; e < QB * hd; e += g)
        {
            int qi = e / hd, d = e % hd;
            int r = r0 + qi;
            qs[e] = r < s.Rows ? q[(long)r * qDim + (long)h * hd + d] * s.Scale : 0f;
            os[e] = 0f;
        }
        for (int qi = t; qi < QB; qi += g) { rowM[qi] = float.NegativeInfinity; rowL[qi] = 0f; }
        int lastRow = XMath.Min(r0 + QB, s.Rows) - 1;
        int lastPos = s.Pos0 + lastRow;
        int warps = g / Warp.WarpSize;
        for (int p0 = 0; p0 <= lastPos; p0 += TK)
        {
            for (int e = t; e < TK * hd; e += g)
            {
                int j = e / hd, d = e % hd;
                int p = p0 + j;
                bool ok = p <= lastPos;
                ks[j * kp + d] = ok ? k[(long)p * kvDim + kvOff + d] : 0f;
                vs[e] = ok ? v[(long)p * kvDim + kvOff + d] : 0f;
            }
            Group.Barrier();
            for (int e = t; e < QB * TK; e += g)
            {
                int qi = e / TK, j = e % TK;
                int r = r0 + qi, p = p0 + j;
                float dot = float.NegativeInfinity;
                bool visible = p <= s.Pos0 + r;
                if (tree && r < s.Rows && p >= s.Pos0)
                {
                    int node = p - s.Pos0;
                    visible = ((masks[2 * r + (node >> 5)] >> (node & 31)) & 1) != 0;
                }
                if (r < s.Rows && visible)
                {
                    // q·k over d in order, four per 16-byte load of each (the scalar loop's sum, bit for bit).
                    dot = 0f;
                    if (quads)
                    {
                        int qa = qi * (hd >> 2), ka = j * (kp >> 2);
                        for (int d4 = 0; d4 < hd >> 2; d4++)
                        {
                            var a = qs4[qa + d4]; var b = ks4[ka + d4];
                            dot += a.X * b.X; dot += a.Y * b.Y; dot += a.Z * b.Z; dot += a.W * b.W;
                        }
                    }
                    else
                        for (int d = 0; d < hd; d++) dot += qs[qi * hd + d] * ks[j * kp + d];
                }
                sc[e] = dot;
            }
            Group.Barrier();
            // The online softmax: one warp per query row, its lanes over the tile's keys (each key's exp computed once,
            // in parallel; one thread per row looped over the 32 keys while the rest of the group waited).
            for (int qi = Warp.WarpIdx; qi < QB; qi += warps)
            {
                float mOld = rowM[qi], tileMax = float.NegativeInfinity;
                for (int j = Warp.LaneIdx; j < TK; j += Warp.WarpSize) tileMax = XMath.Max(tileMax, sc[qi * TK + j]);
                float mNew = XMath.Max(mOld, KernelMath.WarpMax(tileMax));
                float sum = 0f;
                for (int j = Warp.LaneIdx; j < TK; j += Warp.WarpSize)
                {
                    float e = mNew == float.NegativeInfinity ? 0f : XMath.Exp(sc[qi * TK + j] - mNew);
                    sc[qi * TK + j] = e;
                    sum += e;
                }
                sum = KernelMath.WarpSum(sum);
                if (Warp.LaneIdx == 0)
                {
                    float corr = mNew == float.NegativeInfinity ? 1f : mOld == float.NegativeInfinity ? 0f : XMath.Exp(mOld - mNew);
                    rowM[qi] = mNew;
                    rowL[qi] = rowL[qi] * corr + sum;
                    rowC[qi] = corr;
                }
            }
            Group.Barrier();
            if (quads)
            {
                // Four outputs d .. d + 3 per thread: per four keys one 16-byte load of the row's weights and one of each
                // key's V, sixteen FMAs; each output's sum in key order (the scalar loop's, bit for bit).
                int hd4 = hd >> 2;
                var os4 = os.Cast<F4>(); var vs4 = vs.Cast<F4>();
                for (int e = t; e < QB * hd4; e += g)
                {
                    int qi = e / hd4, d4 = e % hd4;
                    float c = rowC[qi];
                    var o = os4[e];
                    float a0 = o.X * c, a1 = o.Y * c, a2 = o.Z * c, a3 = o.W * c;
                    for (int j4 = 0; j4 < TK / 4; j4++)
                    {
                        var w = sc4[qi * (TK / 4) + j4];
                        int vb = 4 * j4 * hd4 + d4;
                        var v0 = vs4[vb]; var v1 = vs4[vb + hd4]; var v2 = vs4[vb + 2 * hd4]; var v3 = vs4[vb + 3 * hd4];
                        a0 += w.X * v0.X; a1 += w.X * v0.Y; a2 += w.X * v0.Z; a3 += w.X * v0.W;
                        a0 += w.Y * v1.X; a1 += w.Y * v1.Y; a2 += w.Y * v1.Z; a3 += w.Y * v1.W;
                        a0 += w.Z * v2.X; a1 += w.Z * v2.Y; a2 += w.Z * v2.Z; a3 += w.Z * v2.W;
                        a0 += w.W * v3.X; a1 += w.W * v3.Y; a2 += w.W * v3.Z; a3 += w.W * v3.W;
                    }
                    os4[e] = new F4 { X = a0, Y = a1, Z = a2, W = a3 };
                }
            }
            else
                for (int e = t; e < QB * hd; e += g)
                {
                    int qi = e / hd, d = e % hd;
                    float acc = os[e] * rowC[qi];
                    for (int j = 0; j < TK; j++) acc += sc[qi * TK + j] * vs[j * hd + d];
                    os[e] = acc;
                }
            Group.Barrier();
        }
        for (int e = t; e < QB * hd; e += g)
        {
            int qi = e / hd, d = e % hd;
            int r = r0 + qi;
            if (r < s.Rows) output[(long)r * qDim + (long)h * hd + d] = os[e] / rowL[qi];
        }
    }
}
