using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// Causal attention over the KV cache, with split-K chunks (as flash-decoding) and query tiles (as flash-attention).
/// <para>
/// A row that attends to n positions splits them into chunks at fixed positions: [0, L), [L, 2L), ... with
/// L = <see cref="ChunkLength"/>(n) (128 up to 32,768 positions). Each chunk keeps its scores' max, their exp-sum and its
/// unnormalized output; <see cref="MergeChunks"/> combines them. Every score, exponential, sum and weighted sum of a row
/// depends on the row's query, its own position count and the cache alone, never on the other rows of the call, how
/// they are grouped or the thread count: a row of a prompt, of a speculative verify step or of a batched chunk computes
/// bit for bit what the same row decoded alone computes, so greedy speculative decoding reproduces plain greedy decoding
/// exactly (int8 activation rounding would turn a last-bit difference into a different token), and a prompt gives the
/// same cache however it is split into chunks.
/// </para>
/// Two schedules run that arithmetic:
/// <list type="bullet">
/// <item>Tiles (prompts, long verify steps): an item is <see cref="TileRows"/> query rows and one kv head; it walks the
/// tile's chunks, so each key and value row is read once for all the tile's rows and all the query heads of the GQA group
/// (the per-row kernel read the cache once per row: a 512-token prompt ran at ~15-30 GFLOP/s), and merges them in its own
/// scratch.</item>
/// <item>Chunks (decode steps, short verify steps, tree nodes): an item is one row, one kv head and one chunk, so a decode
/// step over a long context still gives every thread work with few kv heads (SmolLM2-135M has 3); the calling thread
/// merges. A tree node (<see cref="RunTree"/>) attends over its own virtual sequence, the cached prefix then its
/// ancestors' and its own slots, as a lone decode row at the end of that sequence.</item>
/// </list>
/// Scratch per thread, sized once to the cache and 64-byte aligned, so that the vectorized softmax sees every row's scores
/// at the same alignment whichever schedule ran it.
/// </summary>
internal sealed unsafe class AttentionJob : IParallelJob
{
    /// <summary>Positions per chunk (split-K) up to <see cref="MaxChunksPerRow"/> chunks; past it the chunk length doubles.</summary>
    internal const int ChunkPositions = 128;
    /// <summary>Most chunks a row splits into: bounds the merge buffers.</summary>
    internal const int MaxChunksPerRow = 256;
    /// <summary>Query rows per tile item.</summary>
    internal const int TileRows = 8;
    /// <summary>Floats of merge buffers per dispatch of the chunk schedule; a call's rows run in blocks that fit.</summary>
    private const long PartialBudget = 4L << 20;

    /// <summary>Per-thread scratch: scores [queries][stride], then a tile's chunk outputs and their (max, sum) pairs.</summary>
    private sealed class Scratch
    {
        public float[] Memory = [];
        public float* Scores, Partial, Stats;
        public int Queries, Stride, Chunks, HeadDim;
    }

    private readonly Scratch[] _scratch;
    private float[] _partial = [], _stats = [];
    private float[] _q = [], _k = [], _v = [], _o = [];
    private int _row0, _pos0, _heads, _kvHeads, _headDim, _chunks; // _chunks: the chunk schedule's slots per row and kv head
    private int _first; // the chunk schedule's current block: its first row of the call
    private int _tiles, _rows; // _tiles > 0: the tile schedule, over the call's _rows rows
    private float _scale;
    // Tree mode: node r's path (its ancestors' and its own slot offsets from pos0, root first) at _paths[r * _pathStride ..],
    // its length at _depths[r].
    private bool _tree;
    private int[] _paths = [], _depths = [];
    private int _pathStride;

    public AttentionJob(int threads)
    {
        _scratch = new Scratch[threads];
        for (int i = 0; i < threads; i++) _scratch[i] = new Scratch();
    }

    /// <summary>Attends query rows row0 .. row0+rows-1 of q (positions pos0 ..) into the same rows of o.</summary>
    public void Run(WorkerPool pool, float[] q, float[] k, float[] v, float[] o, int row0, int rows, int pos0,
                    int heads, int kvHeads, int headDim, float scale)
    {
        Prepare(q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim);
        _tree = false;
        int tiles = (rows + TileRows - 1) / TileRows;
        // Tiles where they give every thread a few items and all their rows share one chunk length.
        if (rows > 1 && tiles * kvHeads >= 3 * pool.ThreadCount && ChunkLength(pos0 + 1) == ChunkLength(pos0 + rows))
        {
            Bind(q, k, v, o, row0, pos0, heads, kvHeads, headDim, scale);
            _tiles = tiles; _rows = rows;
            try { pool.Run(this, tiles * kvHeads); }
            finally { _tiles = 0; _q = _k = _v = _o = []; }
            return;
        }
        RunChunks(pool, q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim, scale, pos0 + rows);
    }

    // The many-sequence schedule (RunSequences): the chunk schedule's items of every sequence of a batched step in one
    // dispatch. Global row gr (the sequences' rows in order) has its items at [_rowItem[gr], _rowItem[gr + 1]) (kv head
    // major, then chunk) and keeps its partial results at slots (_rowItem[gr] + kvh·chunks + c)·group + g.
    private SequenceRows[] _seqs = [];
    private float[][] _seqK = [], _seqV = [];
    private int _seqCount, _batchRows;
    private int[] _rowItem = [], _rowSeq = [], _rowInSeq = [];
    private bool _batch; // the many-sequence schedule is running

    /// <summary>
    /// Attention of several sequences' rows in one dispatch (<see cref="IBackend.AttentionSequences"/>): every row's items
    /// (kv head, chunk) as the chunk schedule makes them, so the arithmetic of each row is that of a lone call. Sequences
    /// whose rows would take the tile schedule (prompt chunks) run alone first.
    /// </summary>
    public void RunSequences(WorkerPool pool, float[] q, float[] o, ReadOnlySpan<SequenceRows> seqs, int heads, int kvHeads, int headDim, float scale)
    {
        int group = heads / kvHeads;
        if (_seqs.Length < seqs.Length) { _seqs = new SequenceRows[seqs.Length]; _seqK = new float[seqs.Length][]; _seqV = new float[seqs.Length][]; }
        _seqCount = 0; _batchRows = 0;
        try
        {
            long items = 0;
            foreach (var sq in seqs)
            {
                float[] k = ((CpuBuffer)sq.KCache).Data, v = ((CpuBuffer)sq.VCache).Data;
                Prepare(q, k, v, o, sq.Row0, sq.Rows, sq.Pos0, heads, kvHeads, headDim);
                int tiles = (sq.Rows + TileRows - 1) / TileRows;
                if (sq.Rows > 1 && tiles * kvHeads >= 3 * pool.ThreadCount && ChunkLength(sq.Pos0 + 1) == ChunkLength(sq.Pos0 + sq.Rows))
                {
                    Run(pool, q, k, v, o, sq.Row0, sq.Rows, sq.Pos0, heads, kvHeads, headDim, scale);
                    continue;
                }
                _seqs[_seqCount] = sq; _seqK[_seqCount] = k; _seqV[_seqCount] = v; _seqCount++;
                _batchRows += sq.Rows;
                for (int r = 0; r < sq.Rows; r++) items += (long)kvHeads * Chunks(sq.Pos0 + r + 1);
            }
            if (_seqCount == 0) return;
            if (items * group * headDim > PartialBudget || _seqCount == 1)
            {
                // Too much to merge at once (very long contexts), or nothing to share: each sequence as its own call.
                for (int i = 0; i < _seqCount; i++)
                    Run(pool, q, _seqK[i], _seqV[i], o, _seqs[i].Row0, _seqs[i].Rows, _seqs[i].Pos0, heads, kvHeads, headDim, scale);
                return;
            }
            if (_rowItem.Length < _batchRows + 1) { _rowItem = new int[_batchRows + 1]; _rowSeq = new int[_batchRows]; _rowInSeq = new int[_batchRows]; }
            int gr = 0, at = 0;
            for (int i = 0; i < _seqCount; i++)
                for (int r = 0; r < _seqs[i].Rows; r++, gr++)
                {
                    _rowItem[gr] = at; _rowSeq[gr] = i; _rowInSeq[gr] = r;
                    at += kvHeads * Chunks(_seqs[i].Pos0 + r + 1);
                }
            _rowItem[gr] = at;
            if (_partial.Length < (long)at * group * headDim) _partial = new float[(long)at * group * headDim];
            if (_stats.Length < (long)at * group * 2) _stats = new float[(long)at * group * 2];
            Bind(q, [], [], o, 0, 0, heads, kvHeads, headDim, scale);
            _batch = true;
            pool.Run(this, at);
            // Rows of several chunks merge here (a row of one chunk was merged by its item).
            fixed (float* pp = _partial, st = _stats, op = _o)
                for (gr = 0; gr < _batchRows; gr++)
                {
                    var sq = _seqs[_rowSeq[gr]];
                    int r = _rowInSeq[gr], chunks = Chunks(sq.Pos0 + r + 1);
                    if (chunks == 1) continue;
                    for (int kvh = 0; kvh < kvHeads; kvh++)
                        for (int g = 0; g < group; g++)
                        {
                            long slot = ((long)_rowItem[gr] + kvh * chunks) * group + g;
                            MergeChunks(pp + slot * headDim, (long)group * headDim, st + slot * 2, group * 2L, chunks, headDim,
                                        op + ((long)(sq.Row0 + r) * heads + kvh * group + g) * headDim);
                        }
                }
        }
        finally { _batch = false; Unbind(); }
    }

    private void Unbind()
    {
        _q = _k = _v = _o = [];
        for (int i = 0; i < _seqCount; i++) { _seqK[i] = _seqV[i] = null!; _seqs[i] = default; }
        _seqCount = 0;
    }

    /// <summary>The many-sequence schedule's item: one row of one sequence, one kv head, one chunk, over that sequence's cache.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecuteSequenceItem(int item, int worker)
    {
        // The item's row: binary search over the rows' first items.
        int lo = 0, hi = _batchRows - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (_rowItem[mid] <= item) lo = mid; else hi = mid - 1;
        }
        int gr = lo, si = _rowSeq[gr], r = _rowInSeq[gr];
        var sq = _seqs[si];
        int n = sq.Pos0 + r + 1, chunks = Chunks(n), within = item - _rowItem[gr];
        int kvh = within / chunks, qr = sq.Row0 + r;
        long slot0 = (long)item * (_heads / _kvHeads);
        AttendRowChunk(new Linear(), qr, kvh, n, within % chunks, _seqK[si], _seqV[si], slot0, worker);
        // A row of one chunk is done: its merge here (the same call the caller would make), not serially after.
        if (chunks == 1)
        {
            int hd = _headDim, group = _heads / _kvHeads;
            fixed (float* op = _o, pp = _partial, st = _stats)
                for (int g = 0; g < group; g++)
                    MergeChunks(pp + (slot0 + g) * hd, (long)group * hd, st + (slot0 + g) * 2, group * 2L, 1, hd, op + ((long)qr * _heads + kvh * group + g) * hd);
        }
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
        try { RunChunks(pool, q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim, scale, pos0 + deepest); }
        finally { _tree = false; }
    }

    /// <summary>Checks a call's shapes against the buffers and sizes the per-thread scratch to the cache.</summary>
    private void Prepare(float[] q, float[] k, float[] v, float[] o, int row0, int rows, int pos0, int heads, int kvHeads, int headDim)
    {
        if (kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"heads {heads} is not a multiple of kv heads {kvHeads}");
        if (row0 < 0 || (long)(row0 + rows) * heads * headDim > Math.Min(q.Length, o.Length))
            throw new ArgumentOutOfRangeException(nameof(rows), $"attention: rows {row0}..{row0 + rows - 1} exceed the q/output buffers");
        if ((long)(pos0 + rows) * kvHeads * headDim > Math.Min(k.Length, v.Length))
            throw new ArgumentOutOfRangeException(nameof(pos0), $"attention: positions up to {pos0 + rows - 1} exceed the cache");
        // Scratch sized once to the whole cache: no growth mid-sequence.
        int capacity = Math.Max(1, k.Length / (kvHeads * headDim));
        int queries = TileRows * (heads / kvHeads), stride = (ChunkLength(capacity) + 15) & ~15, chunks = Chunks(capacity);
        foreach (var s in _scratch)
        {
            if (s.Queries >= queries && s.Stride >= stride && s.Chunks >= chunks && s.HeadDim >= headDim) continue;
            s.Queries = Math.Max(s.Queries, queries); s.Stride = Math.Max(s.Stride, stride);
            s.Chunks = Math.Max(s.Chunks, chunks); s.HeadDim = Math.Max(s.HeadDim, headDim);
            long scores = (long)s.Queries * s.Stride, partial = (long)s.Chunks * s.Queries * s.HeadDim, stats = (long)s.Chunks * s.Queries * 2;
            s.Memory = GC.AllocateUninitializedArray<float>(checked((int)(scores + partial + stats + 16)), pinned: true);
            float* p = (float*)(((nint)Unsafe.AsPointer(ref s.Memory[0]) + 63) & ~(nint)63);
            s.Scores = p; s.Partial = p + scores; s.Stats = p + scores + partial;
        }
    }

    private void Bind(float[] q, float[] k, float[] v, float[] o, int row0, int pos0, int heads, int kvHeads, int headDim, float scale)
    {
        _q = q; _k = k; _v = v; _o = o; _row0 = row0; _pos0 = pos0; _heads = heads; _kvHeads = kvHeads; _headDim = headDim; _scale = scale;
    }

    /// <summary>The chunk schedule: the call's rows in blocks whose merge buffers stay within <see cref="PartialBudget"/> floats.</summary>
    private void RunChunks(WorkerPool pool, float[] q, float[] k, float[] v, float[] o, int row0, int rows, int pos0,
                           int heads, int kvHeads, int headDim, float scale, int mostPositions)
    {
        Bind(q, k, v, o, row0, pos0, heads, kvHeads, headDim, scale);
        int group = heads / kvHeads;
        // Chunks() grows with the position count, so mostPositions sets the most any row of the call has.
        _chunks = Chunks(mostPositions);
        long perRow = (long)kvHeads * _chunks * group;
        int blockRows = (int)Math.Clamp(PartialBudget / (perRow * headDim), 1, Math.Max(1, rows));
        long most = Math.Min(rows, blockRows) * perRow;
        if (_partial.Length < most * headDim) _partial = new float[most * headDim];
        if (_stats.Length < most * 2) _stats = new float[most * 2];
        try
        {
            for (_first = 0; _first < rows; _first += blockRows)
            {
                int block = Math.Min(blockRows, rows - _first);
                pool.Run(this, block * kvHeads * _chunks);
                fixed (float* pp = _partial, st = _stats, op = _o)
                    for (int b = 0; b < block; b++)
                    {
                        int chunks = Chunks(Positions(_first + b));
                        for (int kvh = 0; kvh < _kvHeads; kvh++)
                            for (int g = 0; g < group; g++)
                            {
                                long slot = Slot(b, kvh, 0, group, g);
                                MergeChunks(pp + slot * headDim, (long)group * headDim, st + slot * 2, group * 2L, chunks, headDim,
                                            op + ((long)(_row0 + _first + b) * _heads + kvh * group + g) * headDim);
                            }
                    }
            }
        }
        finally { _q = _k = _v = _o = []; }
    }

    /// <summary>Positions row r of the call attends to (a tree node: the prefix and its path).</summary>
    private int Positions(int r) => _tree ? _pos0 + _depths[r] : _pos0 + r + 1;

    /// <summary>
    /// Chunk length of a row that attends to <paramref name="n"/> positions: <see cref="ChunkPositions"/>, doubled until
    /// at most <see cref="MaxChunksPerRow"/> chunks cover n. A function of n alone.
    /// </summary>
    internal static int ChunkLength(int n)
    {
        int l = ChunkPositions;
        while ((n + (long)l - 1) / l > MaxChunksPerRow) l *= 2;
        return l;
    }

    /// <summary>Chunks of a row that attends to <paramref name="n"/> positions (at least one).</summary>
    internal static int Chunks(int n)
    {
        int l = ChunkLength(n);
        return Math.Max(1, (int)((n + (long)l - 1) / l));
    }

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
        if (_tiles > 0) { ExecuteTile(item, worker); return; }
        if (_batch) { ExecuteSequenceItem(item, worker); return; }
        if (!_tree) { ExecuteChunk(item, worker, new Linear()); return; }
        fixed (int* paths = _paths)
        {
            int r = _first + item / (_kvHeads * _chunks);
            ExecuteChunk(item, worker, new PathMap(_pos0, paths + (long)r * _pathStride));
        }
    }

    /// <summary>The chunk schedule's item: one row, one kv head (its group of query heads), one chunk.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecuteChunk<TMap>(int item, int worker, TMap map) where TMap : struct, IRowMap
    {
        int perRow = _kvHeads * _chunks;
        // b: the row within the block (its merge slots); r: within the call.
        int b = item / perRow, r = _first + b, kvh = item % perRow / _chunks, c = item % _chunks;
        int n = Positions(r);
        if (c >= Chunks(n)) return; // a row with fewer chunks than the call's slots
        AttendRowChunk(map, _row0 + r, kvh, n, c, _k, _v, Slot(b, kvh, c, _heads / _kvHeads, 0), worker);
    }

    /// <summary>
    /// Chunk <paramref name="c"/> of query row <paramref name="qr"/> (attending to <paramref name="n"/> positions of the
    /// caches k, v) for the query heads of kv head <paramref name="kvh"/>: head g's unnormalized output and (max, sum) go
    /// to partial slot <paramref name="slot0"/> + g.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void AttendRowChunk<TMap>(TMap map, int qr, int kvh, int n, int c, float[] k, float[] v, long slot0, int worker) where TMap : struct, IRowMap
    {
        int hd = _headDim, group = _heads / _kvHeads, L = ChunkLength(n);
        int t0 = c * L, len = Math.Min(n, t0 + L) - t0;
        var s = _scratch[worker];
        float** qs = stackalloc float*[group];
        float** outs = stackalloc float*[group];
        float** stats = stackalloc float*[group];
        int* lens = stackalloc int[group];
        fixed (float* qp0 = _q, kp0 = k, vp0 = v, pp0 = _partial, st0 = _stats)
        {
            for (int g = 0; g < group; g++)
            {
                qs[g] = qp0 + ((long)qr * _heads + kvh * group + g) * hd;
                outs[g] = pp0 + (slot0 + g) * hd;
                stats[g] = st0 + (slot0 + g) * 2;
                lens[g] = len;
            }
            AttendChunk(map, kp0 + kvh * hd, vp0 + kvh * hd, _kvHeads * hd, t0, qs, lens, group, hd, _scale, s.Scores, s.Stride, outs, stats);
        }
    }

    /// <summary>
    /// The tile schedule's item: <see cref="TileRows"/> rows and one kv head, every chunk of the tile, then each row's merge.
    /// Items run the last tiles (the most positions) first.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecuteTile(int item, int worker)
    {
        int tile = _tiles - 1 - item / _kvHeads, kvh = item % _kvHeads;
        int group = _heads / _kvHeads, hd = _headDim;
        int a = tile * TileRows, bEnd = Math.Min(a + TileRows, _rows);
        int nLast = _pos0 + bEnd, L = ChunkLength(nLast), chunks = Chunks(nLast);
        var s = _scratch[worker];
        int qn = (bEnd - a) * group;
        float** qs = stackalloc float*[qn];
        float** outs = stackalloc float*[qn];
        float** stats = stackalloc float*[qn];
        int* lens = stackalloc int[qn];
        fixed (float* qp0 = _q, kp0 = _k, vp0 = _v, op0 = _o)
        {
            for (int c = 0; c < chunks; c++)
            {
                int t0 = c * L;
                // Rows that reach into chunk c: n = pos0 + r + 1 > t0.
                int rFirst = Math.Max(a, t0 - _pos0);
                int count = 0;
                for (int r = rFirst; r < bEnd; r++)
                {
                    int n = _pos0 + r + 1, len = Math.Min(n, t0 + L) - t0;
                    for (int g = 0; g < group; g++, count++)
                    {
                        int qi = (r - a) * group + g;
                        qs[count] = qp0 + ((long)(_row0 + r) * _heads + kvh * group + g) * hd;
                        lens[count] = len;
                        outs[count] = s.Partial + ((long)c * s.Queries + qi) * s.HeadDim;
                        stats[count] = s.Stats + ((long)c * s.Queries + qi) * 2;
                    }
                }
                if (count > 0)
                    AttendChunk(new Linear(), kp0 + kvh * hd, vp0 + kvh * hd, _kvHeads * hd, t0, qs, lens, count, hd, _scale, s.Scores, s.Stride, outs, stats);
            }
            for (int r = a; r < bEnd; r++)
            {
                int rc = Chunks(_pos0 + r + 1);
                for (int g = 0; g < group; g++)
                {
                    int qi = (r - a) * group + g;
                    MergeChunks(s.Partial + (long)qi * s.HeadDim, (long)s.Queries * s.HeadDim, s.Stats + (long)qi * 2, (long)s.Queries * 2, rc, hd,
                                op0 + ((long)(_row0 + r) * _heads + kvh * group + g) * hd);
                }
            }
        }
    }

    /// <summary>Where chunk <paramref name="c"/> of the block's row <paramref name="b"/>, kv head <paramref name="kvh"/>, head <paramref name="g"/> of its group keeps its partial result (chunk schedule).</summary>
    private long Slot(int b, int kvh, int c, int group, int g) => (((long)b * _kvHeads + kvh) * _chunks + c) * group + g;

    /// <summary>
    /// One chunk of positions t0 .. for <paramref name="count"/> queries that share a kv head: query i attends to the
    /// chunk's first lens[i] positions (lens non-decreasing), and leaves its unnormalized output at outs[i] and its
    /// scores' (max, exp-sum) at stats[i]. Every query's arithmetic is the same whatever the other queries are.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AttendChunk<TMap>(TMap map, float* kb, float* vb, int kvDim, int t0, float** qs, int* lens, int count, int hd,
                                          float scale, float* scores, int stride, float** outs, float** stats) where TMap : struct, IRowMap
    {
        int maxLen = lens[count - 1];
        // The cache rows of past tokens are cold in decode (a token streams the whole model's weights between two visits
        // of a layer) and strided, so the hardware prefetcher does little: prefetch keys a few rows ahead and each value
        // row as its key is read, for the weighted sum that follows.
        const int Ahead = 8;
        int lines = (hd * sizeof(float) + 63) / 64;
        bool prefetch = Sse.IsSupported;
        if (prefetch)
            for (int t = 0; t < Math.Min(Ahead, maxLen); t++)
                for (int l = 0; l < lines; l++) Sse.Prefetch0((byte*)(kb + map.Row(t0 + t) * kvDim) + 64 * l);
        int lo = 0; // the first query that reaches position t
        if (Avx.IsSupported && hd % 8 == 0)
        {
            // Scores four keys at a time, two queries at a time: each score is Dot4's arithmetic for its (query, key) pair.
            var scale4 = Vector128.Create(scale);
            bool wide = Avx512F.VL.IsSupported; // 32 vector registers: four queries' 16 accumulators fit
            for (int t = 0; t < maxLen; t += 4)
            {
                float* k0 = kb + map.Row(t0 + t) * kvDim;
                float* k1 = t + 1 < maxLen ? kb + map.Row(t0 + t + 1) * kvDim : k0;
                float* k2 = t + 2 < maxLen ? kb + map.Row(t0 + t + 2) * kvDim : k0;
                float* k3 = t + 3 < maxLen ? kb + map.Row(t0 + t + 3) * kvDim : k0;
                if (prefetch)
                    for (int j = 0; j < 4 && t + j < maxLen; j++)
                    {
                        byte* kn = t + Ahead + j < maxLen ? (byte*)(kb + map.Row(t0 + t + Ahead + j) * kvDim) : null;
                        byte* va = (byte*)(vb + map.Row(t0 + t + j) * kvDim);
                        for (int l = 0; l < lines; l++)
                        {
                            if (kn != null) Sse.Prefetch0(kn + 64 * l);
                            Sse.Prefetch0(va + 64 * l);
                        }
                    }
                while (lens[lo] <= t) lo++;
                int i = lo;
                if (wide)
                    for (; i + 3 < count; i += 4)
                    {
                        Dot4x4(qs[i], qs[i + 1], qs[i + 2], qs[i + 3], k0, k1, k2, k3, hd, out var a, out var b, out var c, out var d);
                        (a * scale4).Store(scores + (long)i * stride + t);
                        (b * scale4).Store(scores + (long)(i + 1) * stride + t);
                        (c * scale4).Store(scores + (long)(i + 2) * stride + t);
                        (d * scale4).Store(scores + (long)(i + 3) * stride + t);
                    }
                for (; i + 1 < count; i += 2)
                {
                    Dot2x4(qs[i], qs[i + 1], k0, k1, k2, k3, hd, out var a, out var b);
                    (a * scale4).Store(scores + (long)i * stride + t);
                    (b * scale4).Store(scores + (long)(i + 1) * stride + t);
                }
                if (i < count) (Dot4(qs[i], k0, k1, k2, k3, hd) * scale4).Store(scores + (long)i * stride + t);
            }
        }
        else
        {
            for (int t = 0; t < maxLen; t++)
            {
                float* kt = kb + map.Row(t0 + t) * kvDim;
                if (prefetch)
                {
                    byte* va = (byte*)(vb + map.Row(t0 + t) * kvDim);
                    for (int l = 0; l < lines; l++) Sse.Prefetch0(va + 64 * l);
                }
                while (lens[lo] <= t) lo++;
                for (int i = lo; i < count; i++) scores[(long)i * stride + t] = Dot(qs[i], kt, hd) * scale;
            }
        }
        for (int i = 0; i < count; i++) Softmax(scores + (long)i * stride, lens[i], stats[i]);
        // Weighted sums four queries at a time (the last group padded with copies of its last query, which compute and
        // store the same values), each value row read once for the four; a query whose positions end earlier drops out.
        int* idx = stackalloc int[4];
        for (int i = 0; i < count; i += 4)
        {
            idx[0] = i; idx[1] = Math.Min(i + 1, count - 1); idx[2] = Math.Min(i + 2, count - 1); idx[3] = Math.Min(i + 3, count - 1);
            int ts = 0;
            for (int j = 0; j < 4; j++)
            {
                int te = lens[idx[j]];
                if (te <= ts) continue;
                // Queries j..3 still run over [ts, te).
                int a0 = idx[j], a1 = idx[Math.Max(j, 1)], a2 = idx[Math.Max(j, 2)], a3 = idx[3];
                WeightedSum4(vb, kvDim, map, t0, ts, te, hd,
                             scores + (long)a0 * stride, scores + (long)a1 * stride, scores + (long)a2 * stride, scores + (long)a3 * stride,
                             outs[a0], outs[a1], outs[a2], outs[a3]);
                ts = te;
            }
        }
    }

    /// <summary>
    /// Turns scores s[0..len) into e^(s − max) in place (exponents clamped at −60: e^-60 ≈ 1e-26 is nothing next to the
    /// max's e^0, and keeps the weights and their products out of the denormal range, where every multiply would cost a
    /// microcode assist) and writes (max, Σ) to stats. s is 64-byte aligned with room up to len rounded to 16; lanes past
    /// len are read and written but masked out of the max and the sum.
    /// </summary>
    private static void Softmax(float* s, int len, float* stats)
    {
        float max = float.NegativeInfinity, sum = 0;
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var ninf = Vector512.Create(float.NegativeInfinity);
            var vmax = ninf;
            for (; i + 16 <= len; i += 16) vmax = Vector512.MaxNative(vmax, Vector512.Load(s + i));
            if (i < len)
                vmax = Vector512.MaxNative(vmax, Vector512.ConditionalSelect(Tail512(len - i), Vector512.Load(s + i), ninf));
            var m8 = Vector256.MaxNative(vmax.GetLower(), vmax.GetUpper());
            var m4 = Vector128.MaxNative(m8.GetLower(), m8.GetUpper());
            max = MathF.Max(MathF.Max(m4[0], m4[1]), MathF.Max(m4[2], m4[3]));
            var vm = Vector512.Create(max);
            var floor = Vector512.Create(-60f);
            var acc = Vector512<float>.Zero;
            for (i = 0; i < len; i += 16)
            {
                var e = Vector512.Exp(Vector512.MaxNative(Vector512.Load(s + i) - vm, floor));
                if (i + 16 > len) e = Vector512.ConditionalSelect(Tail512(len - i), e, Vector512<float>.Zero);
                e.Store(s + i);
                acc += e;
            }
            sum = Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var ninf = Vector256.Create(float.NegativeInfinity);
            var vmax = ninf;
            for (; i + 8 <= len; i += 8) vmax = Vector256.MaxNative(vmax, Vector256.Load(s + i));
            if (i < len)
                vmax = Vector256.MaxNative(vmax, Vector256.ConditionalSelect(Tail256(len - i), Vector256.Load(s + i), ninf));
            var m4 = Vector128.MaxNative(vmax.GetLower(), vmax.GetUpper());
            max = MathF.Max(MathF.Max(m4[0], m4[1]), MathF.Max(m4[2], m4[3]));
            var vm = Vector256.Create(max);
            var floor = Vector256.Create(-60f);
            var acc = Vector256<float>.Zero;
            for (i = 0; i < len; i += 8)
            {
                var e = Vector256.Exp(Vector256.MaxNative(Vector256.Load(s + i) - vm, floor));
                if (i + 8 > len) e = Vector256.ConditionalSelect(Tail256(len - i), e, Vector256<float>.Zero);
                e.Store(s + i);
                acc += e;
            }
            sum = Vector256.Sum(acc);
        }
        else
        {
            for (; i < len; i++) max = MathF.Max(max, s[i]);
            for (i = 0; i < len; i++) { s[i] = MathF.Exp(MathF.Max(s[i] - max, -60f)); sum += s[i]; }
        }
        stats[0] = max;
        stats[1] = sum;
    }

    /// <summary>All-ones lanes below <paramref name="n"/> (1..15).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Tail512(int n) => Vector512.LessThan(Vector512<int>.Indices, Vector512.Create(n)).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Tail256(int n) => Vector256.LessThan(Vector256<int>.Indices, Vector256.Create(n)).AsSingle();

    /// <summary>
    /// Merges a head's chunk results (chunk c's output at partial + c·partialStride, its (max, sum) at stats + c·statStride)
    /// into dst: o = Σ e^(m_c − M) o_c / Σ e^(m_c − M) l_c. One chunk gives o_0 / l_0 exactly.
    /// </summary>
    private static void MergeChunks(float* partial, long partialStride, float* stats, long statStride, int chunks, int hd, float* dst)
    {
        float m = float.NegativeInfinity;
        for (int c = 0; c < chunks; c++) m = Math.Max(m, stats[c * statStride]);
        var o = new Span<float>(dst, hd);
        o.Clear();
        float den = 0;
        for (int c = 0; c < chunks; c++)
        {
            float l = stats[c * statStride + 1];
            if (l == 0) continue;
            float f = MathF.Exp(stats[c * statStride] - m);
            den += f * l;
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(partial + c * partialStride, hd), f, o, o);
        }
        TensorPrimitives.Multiply(o, 1f / den, o);
    }

    /// <summary>Dot4 for two queries at once (each score the same arithmetic as <see cref="Dot4"/>), n a multiple of 8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot2x4(float* qa, float* qb, float* k0, float* k1, float* k2, float* k3, int n, out Vector128<float> ra, out Vector128<float> rb)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        for (int i = 0; i < n; i += 8)
        {
            var x = Vector256.Load(qa + i);
            var y = Vector256.Load(qb + i);
            var w0 = Vector256.Load(k0 + i);
            a0 = Vector256.FusedMultiplyAdd(x, w0, a0);
            b0 = Vector256.FusedMultiplyAdd(y, w0, b0);
            var w1 = Vector256.Load(k1 + i);
            a1 = Vector256.FusedMultiplyAdd(x, w1, a1);
            b1 = Vector256.FusedMultiplyAdd(y, w1, b1);
            var w2 = Vector256.Load(k2 + i);
            a2 = Vector256.FusedMultiplyAdd(x, w2, a2);
            b2 = Vector256.FusedMultiplyAdd(y, w2, b2);
            var w3 = Vector256.Load(k3 + i);
            a3 = Vector256.FusedMultiplyAdd(x, w3, a3);
            b3 = Vector256.FusedMultiplyAdd(y, w3, b3);
        }
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
        ra = h.GetLower() + h.GetUpper();
        var g = Avx.HorizontalAdd(Avx.HorizontalAdd(b0, b1), Avx.HorizontalAdd(b2, b3));
        rb = g.GetLower() + g.GetUpper();
    }

    /// <summary>Dot4 for four queries at once (16 accumulators: needs AVX-512's 32 registers), n a multiple of 8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4x4(float* qa, float* qb, float* qc, float* qd, float* k0, float* k1, float* k2, float* k3, int n,
                               out Vector128<float> ra, out Vector128<float> rb, out Vector128<float> rc, out Vector128<float> rd)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default, d0 = default, d1 = default, d2 = default, d3 = default;
        for (int i = 0; i < n; i += 8)
        {
            var w0 = Vector256.Load(k0 + i); var w1 = Vector256.Load(k1 + i); var w2 = Vector256.Load(k2 + i); var w3 = Vector256.Load(k3 + i);
            var x = Vector256.Load(qa + i);
            a0 = Vector256.FusedMultiplyAdd(x, w0, a0); a1 = Vector256.FusedMultiplyAdd(x, w1, a1);
            a2 = Vector256.FusedMultiplyAdd(x, w2, a2); a3 = Vector256.FusedMultiplyAdd(x, w3, a3);
            x = Vector256.Load(qb + i);
            b0 = Vector256.FusedMultiplyAdd(x, w0, b0); b1 = Vector256.FusedMultiplyAdd(x, w1, b1);
            b2 = Vector256.FusedMultiplyAdd(x, w2, b2); b3 = Vector256.FusedMultiplyAdd(x, w3, b3);
            x = Vector256.Load(qc + i);
            c0 = Vector256.FusedMultiplyAdd(x, w0, c0); c1 = Vector256.FusedMultiplyAdd(x, w1, c1);
            c2 = Vector256.FusedMultiplyAdd(x, w2, c2); c3 = Vector256.FusedMultiplyAdd(x, w3, c3);
            x = Vector256.Load(qd + i);
            d0 = Vector256.FusedMultiplyAdd(x, w0, d0); d1 = Vector256.FusedMultiplyAdd(x, w1, d1);
            d2 = Vector256.FusedMultiplyAdd(x, w2, d2); d3 = Vector256.FusedMultiplyAdd(x, w3, d3);
        }
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
        ra = h.GetLower() + h.GetUpper();
        h = Avx.HorizontalAdd(Avx.HorizontalAdd(b0, b1), Avx.HorizontalAdd(b2, b3));
        rb = h.GetLower() + h.GetUpper();
        h = Avx.HorizontalAdd(Avx.HorizontalAdd(c0, c1), Avx.HorizontalAdd(c2, c3));
        rc = h.GetLower() + h.GetUpper();
        h = Avx.HorizontalAdd(Avx.HorizontalAdd(d0, d1), Avx.HorizontalAdd(d2, d3));
        rd = h.GetLower() + h.GetUpper();
    }

    /// <summary>q·k for four key rows, n a multiple of 8: 8-lane partial sums, then a fixed pairwise reduction per key.</summary>
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

    /// <summary>a·b over n floats (head sizes that are not a multiple of 8, or no AVX).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float s = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<float> a0 = default;
            for (; i + 8 <= n; i += 8) a0 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), a0);
            s = Vector256.Sum(a0);
        }
        else if (Vector128.IsHardwareAccelerated && n >= 4)
        {
            Vector128<float> a0 = default;
            for (; i + 4 <= n; i += 4) a0 = Vector128.FusedMultiplyAdd(Vector128.Load(a + i), Vector128.Load(b + i), a0);
            s = Vector128.Sum(a0);
        }
        for (; i < n; i++) s = MathF.FusedMultiplyAdd(a[i], b[i], s);
        return s;
    }

    /// <summary>
    /// d_j[0..hd) (+= if ts > 0) Σ_{t in [ts, te)} w_j[t]·v_t for four queries j, value row of position t at
    /// v + map.Row(t0 + t)·<paramref name="ld"/>; each output lane one FMA chain in position order, whatever the vector width.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSum4<TMap>(float* v, int ld, TMap map, int t0, int ts, int te, int hd,
                                           float* w0, float* w1, float* w2, float* w3, float* d0, float* d1, float* d2, float* d3)
        where TMap : struct, IRowMap
    {
        bool add = ts > 0;
        int i0 = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i0 + 64 <= hd; i0 += 64)
            {
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
                Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, e0 = default, e1 = default, e2 = default, e3 = default;
                if (add)
                {
                    a0 = Vector512.Load(d0 + i0); a1 = Vector512.Load(d0 + i0 + 16); a2 = Vector512.Load(d0 + i0 + 32); a3 = Vector512.Load(d0 + i0 + 48);
                    b0 = Vector512.Load(d1 + i0); b1 = Vector512.Load(d1 + i0 + 16); b2 = Vector512.Load(d1 + i0 + 32); b3 = Vector512.Load(d1 + i0 + 48);
                    c0 = Vector512.Load(d2 + i0); c1 = Vector512.Load(d2 + i0 + 16); c2 = Vector512.Load(d2 + i0 + 32); c3 = Vector512.Load(d2 + i0 + 48);
                    e0 = Vector512.Load(d3 + i0); e1 = Vector512.Load(d3 + i0 + 16); e2 = Vector512.Load(d3 + i0 + 32); e3 = Vector512.Load(d3 + i0 + 48);
                }
                for (int t = ts; t < te; t++)
                {
                    float* vt = v + map.Row(t0 + t) * ld + i0;
                    var v0 = Vector512.Load(vt); var v1 = Vector512.Load(vt + 16); var v2 = Vector512.Load(vt + 32); var v3 = Vector512.Load(vt + 48);
                    var x = Vector512.Create(w0[t]);
                    a0 = Vector512.FusedMultiplyAdd(v0, x, a0); a1 = Vector512.FusedMultiplyAdd(v1, x, a1);
                    a2 = Vector512.FusedMultiplyAdd(v2, x, a2); a3 = Vector512.FusedMultiplyAdd(v3, x, a3);
                    x = Vector512.Create(w1[t]);
                    b0 = Vector512.FusedMultiplyAdd(v0, x, b0); b1 = Vector512.FusedMultiplyAdd(v1, x, b1);
                    b2 = Vector512.FusedMultiplyAdd(v2, x, b2); b3 = Vector512.FusedMultiplyAdd(v3, x, b3);
                    x = Vector512.Create(w2[t]);
                    c0 = Vector512.FusedMultiplyAdd(v0, x, c0); c1 = Vector512.FusedMultiplyAdd(v1, x, c1);
                    c2 = Vector512.FusedMultiplyAdd(v2, x, c2); c3 = Vector512.FusedMultiplyAdd(v3, x, c3);
                    x = Vector512.Create(w3[t]);
                    e0 = Vector512.FusedMultiplyAdd(v0, x, e0); e1 = Vector512.FusedMultiplyAdd(v1, x, e1);
                    e2 = Vector512.FusedMultiplyAdd(v2, x, e2); e3 = Vector512.FusedMultiplyAdd(v3, x, e3);
                }
                a0.Store(d0 + i0); a1.Store(d0 + i0 + 16); a2.Store(d0 + i0 + 32); a3.Store(d0 + i0 + 48);
                b0.Store(d1 + i0); b1.Store(d1 + i0 + 16); b2.Store(d1 + i0 + 32); b3.Store(d1 + i0 + 48);
                c0.Store(d2 + i0); c1.Store(d2 + i0 + 16); c2.Store(d2 + i0 + 32); c3.Store(d2 + i0 + 48);
                e0.Store(d3 + i0); e1.Store(d3 + i0 + 16); e2.Store(d3 + i0 + 32); e3.Store(d3 + i0 + 48);
            }
            for (; i0 + 16 <= hd; i0 += 16)
            {
                Vector512<float> a = add ? Vector512.Load(d0 + i0) : default, b = add ? Vector512.Load(d1 + i0) : default;
                Vector512<float> c = add ? Vector512.Load(d2 + i0) : default, e = add ? Vector512.Load(d3 + i0) : default;
                for (int t = ts; t < te; t++)
                {
                    var vv = Vector512.Load(v + map.Row(t0 + t) * ld + i0);
                    a = Vector512.FusedMultiplyAdd(vv, Vector512.Create(w0[t]), a);
                    b = Vector512.FusedMultiplyAdd(vv, Vector512.Create(w1[t]), b);
                    c = Vector512.FusedMultiplyAdd(vv, Vector512.Create(w2[t]), c);
                    e = Vector512.FusedMultiplyAdd(vv, Vector512.Create(w3[t]), e);
                }
                a.Store(d0 + i0); b.Store(d1 + i0); c.Store(d2 + i0); e.Store(d3 + i0);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i0 + 16 <= hd; i0 += 16)
            {
                Vector256<float> a0 = default, a1 = default, b0 = default, b1 = default, c0 = default, c1 = default, e0 = default, e1 = default;
                if (add)
                {
                    a0 = Vector256.Load(d0 + i0); a1 = Vector256.Load(d0 + i0 + 8); b0 = Vector256.Load(d1 + i0); b1 = Vector256.Load(d1 + i0 + 8);
                    c0 = Vector256.Load(d2 + i0); c1 = Vector256.Load(d2 + i0 + 8); e0 = Vector256.Load(d3 + i0); e1 = Vector256.Load(d3 + i0 + 8);
                }
                for (int t = ts; t < te; t++)
                {
                    float* vt = v + map.Row(t0 + t) * ld + i0;
                    var v0 = Vector256.Load(vt); var v1 = Vector256.Load(vt + 8);
                    var x = Vector256.Create(w0[t]);
                    a0 = Vector256.FusedMultiplyAdd(v0, x, a0); a1 = Vector256.FusedMultiplyAdd(v1, x, a1);
                    x = Vector256.Create(w1[t]);
                    b0 = Vector256.FusedMultiplyAdd(v0, x, b0); b1 = Vector256.FusedMultiplyAdd(v1, x, b1);
                    x = Vector256.Create(w2[t]);
                    c0 = Vector256.FusedMultiplyAdd(v0, x, c0); c1 = Vector256.FusedMultiplyAdd(v1, x, c1);
                    x = Vector256.Create(w3[t]);
                    e0 = Vector256.FusedMultiplyAdd(v0, x, e0); e1 = Vector256.FusedMultiplyAdd(v1, x, e1);
                }
                a0.Store(d0 + i0); a1.Store(d0 + i0 + 8); b0.Store(d1 + i0); b1.Store(d1 + i0 + 8);
                c0.Store(d2 + i0); c1.Store(d2 + i0 + 8); e0.Store(d3 + i0); e1.Store(d3 + i0 + 8);
            }
            for (; i0 + 8 <= hd; i0 += 8)
            {
                Vector256<float> a = add ? Vector256.Load(d0 + i0) : default, b = add ? Vector256.Load(d1 + i0) : default;
                Vector256<float> c = add ? Vector256.Load(d2 + i0) : default, e = add ? Vector256.Load(d3 + i0) : default;
                for (int t = ts; t < te; t++)
                {
                    var vv = Vector256.Load(v + map.Row(t0 + t) * ld + i0);
                    a = Vector256.FusedMultiplyAdd(vv, Vector256.Create(w0[t]), a);
                    b = Vector256.FusedMultiplyAdd(vv, Vector256.Create(w1[t]), b);
                    c = Vector256.FusedMultiplyAdd(vv, Vector256.Create(w2[t]), c);
                    e = Vector256.FusedMultiplyAdd(vv, Vector256.Create(w3[t]), e);
                }
                a.Store(d0 + i0); b.Store(d1 + i0); c.Store(d2 + i0); e.Store(d3 + i0);
            }
        }
        for (; i0 < hd; i0++)
        {
            float a = add ? d0[i0] : 0, b = add ? d1[i0] : 0, c = add ? d2[i0] : 0, e = add ? d3[i0] : 0;
            for (int t = ts; t < te; t++)
            {
                float x = v[map.Row(t0 + t) * ld + i0];
                a = MathF.FusedMultiplyAdd(x, w0[t], a);
                b = MathF.FusedMultiplyAdd(x, w1[t], b);
                c = MathF.FusedMultiplyAdd(x, w2[t], c);
                e = MathF.FusedMultiplyAdd(x, w3[t], e);
            }
            d0[i0] = a; d1[i0] = b; d2[i0] = c; d3[i0] = e;
        }
    }
}
