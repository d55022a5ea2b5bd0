using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// Causal attention over the KV cache. Each item covers one query row, one kv head (with its whole group of query heads,
/// so every key and value row is read once per GQA group) and one chunk of the row's visible positions (split-K, as
/// flash-decoding): models with few kv heads (SmolLM2-135M has 3) would otherwise leave threads idle. A chunk keeps
/// its scores' max, their exp-sum and its unnormalized output; the caller merges the chunks.
/// <para>
/// A row's chunks depend only on its own position count (<see cref="Chunks"/>), never on the other rows of the call or
/// the thread count: a row of a speculative verify step, of a batched chunk or of a prompt computes bit for bit what
/// the same row decoded alone computes, so greedy speculative decoding reproduces plain greedy decoding exactly (even
/// where int8 activation rounding would turn a last-bit difference into a different token), and a prompt gives the
/// same cache however it is split into chunks. Calls run in blocks of rows whose merge buffers fit a fixed budget.
/// </para>
/// <para>
/// Tree mode (<see cref="RunTree"/>, speculative verification of a tree of candidates): node r attends over its own
/// virtual sequence, the cached prefix then its ancestors' and its own slots, through the same chunks and arithmetic
/// as a lone decode row at the end of that sequence, so each node too is bit for bit the row plain decoding would
/// compute there.
/// </para>
/// Scratch per thread, sized once to the cache.
/// </summary>
internal sealed unsafe class AttentionJob : IParallelJob
{
    /// <summary>
    /// Positions per chunk (split-K): short rows stay whole (a prompt's rows, most decode steps of a short context), long
    /// ones split so that a decode row's few kv heads still give every thread work.
    /// </summary>
    internal const int ChunkPositions = 128;
    /// <summary>Most chunks a row splits into (past it the chunks grow): bounds the per-item overhead and merge buffers.</summary>
    internal const int MaxChunksPerRow = 64;
    /// <summary>Floats of merge buffers per dispatch; a call's rows run in blocks that fit.</summary>
    private const long PartialBudget = 4L << 20;

    private readonly float[][] _scores;
    private float[] _partial = [], _stats = [];
    private float[] _q = [], _k = [], _v = [], _o = [];
    private int _row0, _pos0, _heads, _kvHeads, _headDim, _chunks; // _chunks: item slots per row and kv head (the most any row uses)
    private int _first; // the current block's first row of the call
    private float _scale;
    // Tree mode: node r's path (its ancestors' and its own slot offsets from pos0, root first) at _paths[r * _pathStride ..],
    // its length at _depths[r].
    private bool _tree;
    private int[] _paths = [], _depths = [];
    private int _pathStride;

    public AttentionJob(int threads)
    {
        _scores = new float[threads][];
        for (int i = 0; i < threads; i++) _scores[i] = [];
    }

    /// <summary>Attends query rows row0 .. row0+rows-1 of q (positions pos0 ..) into the same rows of o.</summary>
    public void Run(WorkerPool pool, float[] q, float[] k, float[] v, float[] o, int row0, int rows, int pos0,
                    int heads, int kvHeads, int headDim, float scale)
    {
        Prepare(q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim);
        _tree = false;
        RunRows(pool, q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim, scale, pos0 + rows);
    }

    /// <summary>
    /// Tree-masked attention (see <see cref="IBackend.AttentionTree"/>): query rows row0 .. row0+rows-1 are tree nodes
    /// whose K/V sit at cache slots pos0 .. pos0+rows-1; node r attends to slots 0 .. pos0-1 and its ancestors' and its
    /// own, each node exactly as a lone decode row at the end of that path.
    /// </summary>
    public void RunTree(WorkerPool pool, float[] q, float[] k, float[] v, float[] o, int row0, int rows, int pos0, ReadOnlySpan<int> parents,
                        int heads, int kvHeads, int headDim, float scale)
    {
        TreeAttention.Validate(parents, rows);
        Prepare(q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim);
        // Each node's path, root first.
        _pathStride = rows;
        if (_paths.Length < rows * rows) _paths = new int[rows * rows];
        if (_depths.Length < rows) _depths = new int[rows];
        int deepest = 0;
        for (int r = 0; r < rows; r++)
        {
            int d = 0;
            for (int a = r; a >= 0; a = parents[a]) d++;
            for (int a = r, at = d - 1; a >= 0; a = parents[a], at--) _paths[r * rows + at] = a;
            _depths[r] = d;
            deepest = Math.Max(deepest, d);
        }
        _tree = true;
        try { RunRows(pool, q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim, scale, pos0 + deepest); }
        finally { _tree = false; }
    }

    /// <summary>Checks a call's shapes against the buffers and sizes the per-thread score scratch to the cache.</summary>
    private void Prepare(float[] q, float[] k, float[] v, float[] o, int row0, int rows, int pos0, int heads, int kvHeads, int headDim)
    {
        if (kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"heads {heads} is not a multiple of kv heads {kvHeads}");
        if (row0 < 0 || (long)(row0 + rows) * heads * headDim > Math.Min(q.Length, o.Length))
            throw new ArgumentOutOfRangeException(nameof(rows), $"attention: rows {row0}..{row0 + rows - 1} exceed the q/output buffers");
        if ((long)(pos0 + rows) * kvHeads * headDim > Math.Min(k.Length, v.Length))
            throw new ArgumentOutOfRangeException(nameof(pos0), $"attention: positions up to {pos0 + rows - 1} exceed the cache");
        int capacity = k.Length / (kvHeads * headDim); // scratch sized once to the whole cache: no growth mid-sequence
        int group = heads / kvHeads;
        for (int i = 0; i < _scores.Length; i++)
            if (_scores[i].Length < capacity * group) _scores[i] = new float[capacity * group];
    }

    /// <summary>The call's rows in blocks whose merge buffers stay within <see cref="PartialBudget"/> floats.</summary>
    private void RunRows(WorkerPool pool, float[] q, float[] k, float[] v, float[] o, int row0, int rows, int pos0,
                         int heads, int kvHeads, int headDim, float scale, int mostPositions)
    {
        _q = q; _k = k; _v = v; _o = o; _row0 = row0; _pos0 = pos0; _heads = heads; _kvHeads = kvHeads; _headDim = headDim; _scale = scale;
        int group = heads / kvHeads;
        // Chunks() grows with the position count, so mostPositions sets the most any row of the call has.
        _chunks = Chunks(mostPositions);
        long perRow = (long)kvHeads * _chunks * group;
        int blockRows = _chunks == 1 ? rows : (int)Math.Clamp(PartialBudget / (perRow * headDim), 1, Math.Max(1, rows));
        if (_chunks > 1)
        {
            long most = Math.Min(rows, blockRows) * perRow;
            if (_partial.Length < most * headDim) _partial = new float[most * headDim];
            if (_stats.Length < most * 2) _stats = new float[most * 2];
        }
        try
        {
            for (_first = 0; _first < rows; _first += blockRows)
            {
                int block = Math.Min(blockRows, rows - _first);
                pool.Run(this, block * kvHeads * _chunks);
                if (_chunks > 1)
                    for (int r = 0; r < block; r++)
                        if (Chunks(Positions(_first + r)) > 1) Merge(r, group);
            }
        }
        finally { _q = _k = _v = _o = []; }
    }

    /// <summary>Positions row r of the call attends to (a tree node: the prefix and its path).</summary>
    private int Positions(int r) => _tree ? _pos0 + _depths[r] : _pos0 + r + 1;

    /// <summary>
    /// Position chunks of a row that attends to <paramref name="n"/> positions: one per <see cref="ChunkPositions"/>
    /// (at most <see cref="MaxChunksPerRow"/>), of equal length. A function of n alone: neither the other rows of the
    /// call nor the thread count change a row's arithmetic.
    /// </summary>
    internal static int Chunks(int n) => Math.Clamp((n + ChunkPositions - 1) / ChunkPositions, 1, MaxChunksPerRow);

    /// <summary>The cache row of position t of the row's (virtual) sequence.</summary>
    private interface IRowMap { long Row(int t); }

    /// <summary>A causal row: position t is cache row t.</summary>
    private readonly struct Linear : IRowMap
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public long Row(int t) => t;
    }

    /// <summary>A tree node: the prefix's rows, then its path's slots.</summary>
    private readonly struct PathMap(int pos0, int* path) : IRowMap
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public long Row(int t) => t < pos0 ? t : pos0 + path[t - pos0];
    }

    public void Execute(int item, int worker)
    {
        if (!_tree) { Execute(item, worker, new Linear()); return; }
        fixed (int* paths = _paths)
        {
            int r = _first + item / (_kvHeads * _chunks);
            Execute(item, worker, new PathMap(_pos0, paths + (long)r * _pathStride));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Execute<TMap>(int item, int worker, TMap map) where TMap : struct, IRowMap
    {
        int perRow = _kvHeads * _chunks;
        // b: the row within the block (its merge slots); r: within the call.
        int b = item / perRow, r = _first + b, qr = _row0 + r, kvh = item % perRow / _chunks, c = item % _chunks;
        int chunks = Chunks(Positions(r));
        if (c >= chunks) return; // an earlier row with fewer chunks than the call's slots
        int hd = _headDim, kvDim = _kvHeads * hd, group = _heads / _kvHeads;
        int n = Positions(r), chunkLen = (n + chunks - 1) / chunks;
        int t0 = c * chunkLen, t1 = chunks == 1 ? n : Math.Min(n, t0 + chunkLen);
        int len = Math.Max(0, t1 - t0);
        bool final = chunks == 1;
        fixed (float* qp0 = _q, kp0 = _k, vp0 = _v, op0 = _o, sp0 = _scores[worker], pp0 = _partial, st0 = _stats)
        {
            // Row t of the chunk: key kb + Row(t0 + t)·kvDim, value likewise.
            float* kb = kp0 + kvh * hd, vb = vp0 + kvh * hd;
            int h0 = kvh * group;
            // Scores: each key row once for the whole group. The cache rows of past tokens are cold (a token streams the
            // whole model's weights between two visits of a layer) and strided, so the hardware prefetcher does little:
            // prefetch keys a few rows ahead and each value row as its key is read, for the weighted sum that follows.
            const int Ahead = 8;
            int lines = (hd * sizeof(float) + 63) / 64;
            bool prefetch = Sse.IsSupported;
            if (prefetch)
                for (int t = 0; t < Math.Min(Ahead, len); t++)
                    for (int l = 0; l < lines; l++) Sse.Prefetch0((byte*)(kb + map.Row(t0 + t) * kvDim) + 64 * l);
            int t4 = Avx.IsSupported && hd % 8 == 0 ? len / 4 * 4 : 0;
            var scale4 = Vector128.Create(_scale);
            for (int t = 0; t < len; t++)
            {
                float* kt = kb + map.Row(t0 + t) * kvDim;
                if (prefetch)
                {
                    byte* va = (byte*)(vb + map.Row(t0 + t) * kvDim);
                    for (int l = 0; l < lines; l++)
                    {
                        if (t + Ahead < len) Sse.Prefetch0((byte*)(kb + map.Row(t0 + t + Ahead) * kvDim) + 64 * l);
                        Sse.Prefetch0(va + 64 * l);
                    }
                }
                if (t < t4)
                {
                    // Four keys at a time (t is a multiple of 4 here): four independent FMA chains and one horizontal
                    // reduction for all four scores, instead of a full reduction per score.
                    if ((t & 3) == 3)
                    {
                        float* k0 = kb + map.Row(t0 + t - 3) * kvDim, k1 = kb + map.Row(t0 + t - 2) * kvDim, k2 = kb + map.Row(t0 + t - 1) * kvDim;
                        for (int g = 0; g < group; g++)
                            (Dot4(qp0 + (qr * _heads + h0 + g) * hd, k0, k1, k2, kt, hd) * scale4).Store(sp0 + (long)g * len + t - 3);
                    }
                    continue;
                }
                for (int g = 0; g < group; g++)
                    sp0[(long)g * len + t] = Dot(qp0 + (qr * _heads + h0 + g) * hd, kt, hd) * _scale;
            }
            Span<float> maxes = stackalloc float[group], sums = stackalloc float[group];
            for (int g = 0; g < group; g++)
            {
                var s = new Span<float>(sp0 + (long)g * len, len);
                float max = float.NegativeInfinity, sum = 0;
                if (len > 0)
                {
                    max = TensorPrimitives.Max(s);
                    TensorPrimitives.Subtract(s, max, s);
                    // e^-60 ≈ 1e-26 is nothing next to the max's e^0, and keeps the weights (and their products) out of
                    // the denormal range, where every multiply would cost a microcode assist.
                    TensorPrimitives.Max(s, -60f, s);
                    TensorPrimitives.Exp(s, s);
                    sum = TensorPrimitives.Sum(s);
                }
                maxes[g] = max; sums[g] = sum;
            }
            // Values in blocks of positions (a block's rows stay in L1 while every head of the group reads them).
            const int Block = 64;
            for (int tb = 0; tb < Math.Max(len, 1); tb += Block)
            {
                int bl = Math.Min(Block, len - tb);
                for (int g = 0; g < group; g++)
                {
                    float* dst = final ? op0 + (qr * _heads + h0 + g) * hd : pp0 + Slot(b, kvh, c, group, g) * hd;
                    WeightedSum(vb, kvDim, map, t0 + tb, sp0 + (long)g * len + tb, Math.Max(bl, 0), hd, dst, tb > 0);
                }
            }
            for (int g = 0; g < group; g++)
            {
                if (final)
                {
                    if (sums[g] > 0) TensorPrimitives.Multiply(new Span<float>(op0 + (qr * _heads + h0 + g) * hd, hd), 1f / sums[g], new Span<float>(op0 + (qr * _heads + h0 + g) * hd, hd));
                }
                else
                {
                    long slot = Slot(b, kvh, c, group, g);
                    st0[slot * 2] = maxes[g];
                    st0[slot * 2 + 1] = sums[g];
                }
            }
        }
    }

    /// <summary>Where chunk <paramref name="c"/> of the block's row <paramref name="b"/>, kv head <paramref name="kvh"/>, head <paramref name="g"/> of its group keeps its partial result.</summary>
    private long Slot(int b, int kvh, int c, int group, int g) => (((long)b * _kvHeads + kvh) * _chunks + c) * group + g;

    /// <summary>Merges the chunks of each head of the block's row <paramref name="b"/>: o = Σ e^(m_c − M) o_c / Σ e^(m_c − M) l_c.</summary>
    private void Merge(int b, int group)
    {
        int hd = _headDim, r = _first + b, chunks = Chunks(Positions(r));
        for (int kvh = 0; kvh < _kvHeads; kvh++)
            for (int g = 0; g < group; g++)
            {
                float m = float.NegativeInfinity;
                for (int c = 0; c < chunks; c++) m = Math.Max(m, _stats[Slot(b, kvh, c, group, g) * 2]);
                var o = _o.AsSpan(((_row0 + r) * _heads + kvh * group + g) * hd, hd);
                o.Clear();
                float den = 0;
                for (int c = 0; c < chunks; c++)
                {
                    long slot = Slot(b, kvh, c, group, g);
                    float l = _stats[slot * 2 + 1];
                    if (l == 0) continue;
                    float f = MathF.Exp(_stats[slot * 2] - m);
                    den += f * l;
                    TensorPrimitives.MultiplyAdd(_partial.AsSpan((int)(slot * hd), hd), f, o, o);
                }
                TensorPrimitives.Multiply(o, 1f / den, o);
            }
    }

    /// <summary>q·k for four key rows, n a multiple of 8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Dot4(float* q, float* k, float* k1, float* k2, float* k3, int n)
    {
        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (int i = 0; i < n; i += 8)
        {
            var qv = Vector256.Load(q + i);
            s0 = Vector256.FusedMultiplyAdd(qv, Vector256.Load(k + i), s0);
            s1 = Vector256.FusedMultiplyAdd(qv, Vector256.Load(k1 + i), s1);
            s2 = Vector256.FusedMultiplyAdd(qv, Vector256.Load(k2 + i), s2);
            s3 = Vector256.FusedMultiplyAdd(qv, Vector256.Load(k3 + i), s3);
        }
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(s0, s1), Avx.HorizontalAdd(s2, s3));
        return h.GetLower() + h.GetUpper();
    }

    /// <summary>a·b over n floats with independent accumulators (the FMA latency chain, not the loads, bounds short dots).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float s = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> a0 = default, a1 = default;
            for (; i + 32 <= n; i += 32)
            {
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i + 16), Vector512.Load(b + i + 16), a1);
            }
            if (i + 16 <= n) { a0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), a0); i += 16; }
            s = Vector512.Sum(a0 + a1);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i + 32 <= n; i += 32)
            {
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 8), Vector256.Load(b + i + 8), a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 16), Vector256.Load(b + i + 16), a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 24), Vector256.Load(b + i + 24), a3);
            }
            for (; i + 8 <= n; i += 8) a0 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), a0);
            s = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>
    /// dst[0..hd) (+)= Σ_t w[t]·v_t over positions t0 .. t0+len-1, value row of position t at
    /// v + map.Row(t)·<paramref name="ld"/>; 64 output floats kept in registers at a time.
    /// </summary>
    private static void WeightedSum<TMap>(float* v, int ld, TMap map, int t0, float* w, int len, int hd, float* dst, bool add) where TMap : struct, IRowMap
    {
        int i0 = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i0 + 64 <= hd; i0 += 64)
            {
                float* d = dst + i0;
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
                if (add)
                {
                    a0 = Vector256.Load(d); a1 = Vector256.Load(d + 8); a2 = Vector256.Load(d + 16); a3 = Vector256.Load(d + 24);
                    a4 = Vector256.Load(d + 32); a5 = Vector256.Load(d + 40); a6 = Vector256.Load(d + 48); a7 = Vector256.Load(d + 56);
                }
                for (int t = 0; t < len; t++)
                {
                    float* vt = v + map.Row(t0 + t) * ld + i0;
                    var x = Vector256.Create(w[t]);
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Load(vt), x, a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.Load(vt + 8), x, a1);
                    a2 = Vector256.FusedMultiplyAdd(Vector256.Load(vt + 16), x, a2);
                    a3 = Vector256.FusedMultiplyAdd(Vector256.Load(vt + 24), x, a3);
                    a4 = Vector256.FusedMultiplyAdd(Vector256.Load(vt + 32), x, a4);
                    a5 = Vector256.FusedMultiplyAdd(Vector256.Load(vt + 40), x, a5);
                    a6 = Vector256.FusedMultiplyAdd(Vector256.Load(vt + 48), x, a6);
                    a7 = Vector256.FusedMultiplyAdd(Vector256.Load(vt + 56), x, a7);
                }
                a0.Store(d); a1.Store(d + 8); a2.Store(d + 16); a3.Store(d + 24);
                a4.Store(d + 32); a5.Store(d + 40); a6.Store(d + 48); a7.Store(d + 56);
            }
            for (; i0 + 8 <= hd; i0 += 8)
            {
                Vector256<float> a0 = add ? Vector256.Load(dst + i0) : default;
                for (int t = 0; t < len; t++) a0 = Vector256.FusedMultiplyAdd(Vector256.Load(v + map.Row(t0 + t) * ld + i0), Vector256.Create(w[t]), a0);
                a0.Store(dst + i0);
            }
        }
        for (; i0 < hd; i0++)
        {
            float a = add ? dst[i0] : 0;
            for (int t = 0; t < len; t++) a += v[map.Row(t0 + t) * ld + i0] * w[t];
            dst[i0] = a;
        }
    }
}
