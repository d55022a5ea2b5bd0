using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lrl.Cpu;

/// <summary>
/// A LoRA pair in host memory, as f32, as bf16 bits (adapter files in bf16: half the bytes a product reads) or as int8
/// codes (<see cref="LoraInt8"/>: a quarter). A is [rank, in] as stored; B is held transposed, [rank, out] (f32/bf16: a
/// product's outputs are contiguous per rank), or for int8 in panels of <see cref="Panel"/> outputs, [out/8][rank][8]
/// (the rank codes of eight outputs in one 8-byte run: an output range reads one contiguous stretch). The int8 scales
/// fold into the down-projection: t[j] = SA[j]·SB[j]·Σ x·qA[j], so the up-projection is codes times t alone.
/// </summary>
internal sealed unsafe class CpuLora : LoraWeights
{
    public const int Panel = 16;
    /// <summary>The adapter pairs of the dispatch that followed the last one this pair opened (a prefetch hint).</summary>
    internal CpuLora[]? NextDispatch;
    public float[]? A { get; }
    public float[]? Bt { get; }
    public ushort[]? A16 { get; }
    public ushort[]? Bt16 { get; }
    public sbyte[]? A8 { get; }
    public sbyte[]? B8 { get; }
    private readonly float[]? _fold; // SA[j]·SB[j] for int8

    public CpuLora(string name, int rank, int inF, int outF, ReadOnlySpan<float> a, ReadOnlySpan<float> b, DType stored) : base(name, rank, inF, outF)
    {
        if (stored == DType.I8)
        {
            A8 = new sbyte[a.Length];
            _fold = new float[rank];
            B8 = new sbyte[(long)(outF + Panel - 1) / Panel * Panel * rank];
            for (int j = 0; j < rank; j++)
            {
                var row = a.Slice(j * inF, inF);
                float sa = LoraInt8.Scale(TensorPrimitives.MaxMagnitude(row) is var m && float.IsFinite(m) ? MathF.Abs(m) : throw new ArgumentException($"LoRA {name}: A holds a non-finite value"));
                for (int i = 0; i < inF; i++) A8[j * inF + i] = LoraInt8.Code(row[i], sa);
                float max = 0;
                for (int o = 0; o < outF; o++) max = MathF.Max(max, MathF.Abs(b[o * rank + j]));
                float sb = LoraInt8.Scale(max);
                for (int o = 0; o < outF; o++) B8[((long)(o / Panel) * rank + j) * Panel + o % Panel] = LoraInt8.Code(b[o * rank + j], sb);
                _fold[j] = sa * sb;
            }
            return;
        }
        var bt = new float[(long)rank * outF];
        for (int o = 0; o < outF; o++)
            for (int j = 0; j < rank; j++) bt[(long)j * outF + o] = b[o * rank + j];
        if (stored != DType.BF16) { A = a.ToArray(); Bt = bt; return; }
        A16 = new ushort[a.Length];
        for (int i = 0; i < a.Length; i++) A16[i] = DTypes.FloatToBF16(a[i]);
        Bt16 = new ushort[bt.Length];
        for (int i = 0; i < bt.Length; i++) Bt16[i] = DTypes.FloatToBF16(bt[i]);
    }

    public override long ByteSize => A is not null ? (A.Length + (long)Bt!.Length) * 4
        : A16 is not null ? (A16.Length + (long)Bt16!.Length) * 2
        : A8!.Length + (long)B8!.Length + 4L * Rank;

    /// <summary>Asks for B's bytes of outputs [start, end) in L2.</summary>
    internal void PrefetchUp(int start, int end)
    {
        if (B8 is null || !Sse.IsSupported) return;
        long from = (long)(start / Panel) * Rank * Panel, to = (long)((end + Panel - 1) / Panel) * Rank * Panel;
        fixed (sbyte* p = B8)
            for (long b = from & ~63L; b < to; b += 64) Sse.Prefetch1(p + b);
    }

    /// <summary>
    /// Asks for the fraction [from, to) of A's bytes in L2 (the down-projection reads A first thing in its dispatch; B is
    /// asked for by each product item before its own product, <see cref="PrefetchUp"/>: asking here too put ~1.5 points
    /// of the products' CPU time on prefetch instructions, perf over `bench --lora-random 1`).
    /// </summary>
    internal void PrefetchSlice(double from, double to)
    {
        if (A is not null) fixed (float* p = A) PrefetchPart(p, A.Length * 4L, from, to);
        else if (A16 is not null) fixed (ushort* p = A16) PrefetchPart(p, A16.Length * 2L, from, to);
        else fixed (sbyte* p = A8) PrefetchPart(p, A8!.Length, from, to);
    }

    private static void PrefetchPart(void* p, long bytes, double from, double to)
    {
        if (!Sse.IsSupported) return;
        byte* b = (byte*)p + ((long)(bytes * from) & ~63L), e = (byte*)p + (long)(bytes * to);
        for (; b < e; b += 64) Sse.Prefetch1(b);
    }

    /// <summary>t[j] = scale·A[j, col] for every rank j (an adapted embedding's lookup; int8: times SA[j]·SB[j]).</summary>
    public void Gather(int col, float scale, float* t)
    {
        int inF = InFeatures;
        if ((uint)col >= (uint)inF) throw new LrlException($"token id {col} is outside the vocabulary (0..{inF - 1})");
        for (int j = 0; j < Rank; j++)
        {
            long at = (long)j * inF + col;
            t[j] = scale * (A is { } a ? a[at] : A16 is { } a16 ? DTypes.BF16ToFloat(a16[at]) : A8![at] * _fold![j]);
        }
    }

    /// <summary>t[j] = scale·Σ x·A[j] for every rank j (int8: times SA[j]·SB[j], B's scale folded in).</summary>
    public void DownAll(ReadOnlySpan<float> x, float scale, float* t)
    {
        int inF = InFeatures, rank = Rank;
        if (A is { } a) for (int j = 0; j < rank; j++) t[j] = scale * TensorPrimitives.Dot(x, a.AsSpan(j * inF, inF));
        else if (A16 is { } a16) fixed (ushort* p = a16) for (int j = 0; j < rank; j++) t[j] = scale * Simd.DotBF16(p + (long)j * inF, x);
        else
            fixed (sbyte* p = A8) fixed (float* xp = x)
            {
                int j = 0;
                for (; j + 4 <= rank; j += 4) Simd.DotI8x4(p + (long)j * inF, inF, xp, t + j);
                for (; j < rank; j++) t[j] = Simd.DotI8(p + (long)j * inF, x);
                for (j = 0; j < rank; j++) t[j] *= scale * _fold![j];
            }
    }
}

/// <summary>
/// The unmerged LoRA update in two parallel phases: t = x·Aᵀ (rank dot products per row, one item each), then
/// y += scale·t·B (output columns split in chunks, each chunk an axpy per rank over B's transposed rows: contiguous
/// reads). Small updates run on the caller alone (a pool dispatch costs more than they do).
/// </summary>
internal sealed unsafe class LoraJob : IParallelJob
{
    private const int Chunk = 512;            // output columns per item of the second phase
    private const long SerialWork = 1 << 17;  // multiply-adds below which the caller does it alone
    private float[] _t = new float[64];       // [rows, rank] scaled x·Aᵀ
    private float[] _x = [], _y = [];
    private CpuLora? _w;
    private int _row0, _rows, _phase;
    private float _scale;

    public void Run(WorkerPool pool, float[] x, int row0, int rows, CpuLora w, float scale, float[] y)
    {
        if (row0 < 0 || rows < 0 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        if (rows == 0) return;
        if (_t.Length < rows * w.Rank) _t = new float[Math.Max(rows * w.Rank, _t.Length * 2)];
        _x = x; _y = y; _w = w; _row0 = row0; _rows = rows;
        bool serial = (long)rows * w.Rank * (w.InFeatures + w.OutFeatures) < SerialWork || pool.ThreadCount == 1;
        _phase = 0;
        _scale = scale;
        if (serial) for (int i = 0; i < rows; i++) Execute(i, 0);
        else pool.Run(this, rows);
        _phase = 1;
        int upItems = (w.OutFeatures + Chunk - 1) / Chunk;
        if (serial) for (int i = 0; i < upItems; i++) Execute(i, 0);
        else pool.Run(this, upItems);
        _x = _y = []; _w = null;
    }

    public void Execute(int item, int worker)
    {
        var w = _w!;
        int rank = w.Rank, inF = w.InFeatures, outF = w.OutFeatures;
        if (_phase == 0)
        {
            fixed (float* t = &_t[item * rank]) w.DownAll(_x.AsSpan((_row0 + item) * inF, inF), _scale, t); // one item per row
            return;
        }
        int o0 = item * Chunk, n = Math.Min(Chunk, outF - o0);
        fixed (float* tp = _t)
            for (int r = 0; r < _rows; r++)
                fixed (float* y = &_y[(_row0 + r) * outF + o0])
                    LoraStage.Up(w, o0, tp + r * rank, y, n);
    }
}

// ILoraOps on host memory.
public sealed unsafe partial class CpuBackend : ILoraOps
{
    private LoraJob? _loraJob;

    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                                DType stored = DType.F32)
    {
        if (rank < 1 || inFeatures < 1 || outFeatures < 1 || a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
            throw new ArgumentException($"LoRA {name}: A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]");
        return new CpuLora(name, rank, inFeatures, outFeatures, a, b, stored);
    }

    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) =>
        (_loraJob ??= new LoraJob()).Run(_pool, D(x), row0, rows,
            lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend"), scale, D(y));

    public void LoraEmbedRows(ReadOnlySpan<int> tokens, int row0, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend");
        var Y = D(y);
        int outF = w.OutFeatures;
        if (row0 < 0 || (long)(row0 + tokens.Length) * outF > Y.Length)
            throw new ArgumentOutOfRangeException(nameof(row0), $"LoRA {w.Name}: rows {row0}..{row0 + tokens.Length - 1} exceed the buffer");
        var t = stackalloc float[w.Rank];
        for (int r = 0; r < tokens.Length; r++)
        {
            w.Gather(tokens[r], scale, t);
            fixed (float* dst = &Y[(long)(row0 + r) * outF]) LoraStage.Up(w, 0, t, dst, outF);
        }
    }

    /// <summary>The products apply staged updates in their own pass (see <see cref="LoraStage"/>).</summary>
    public bool FusesLora => true;

    public void StageLora(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) =>
        _matMul.Stage.Add(D(x), row0, rows, lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend"), scale, D(y));
}

/// <summary>
/// Adapter updates staged for the next products (<see cref="ILoraOps.StageLora"/>), applied inside the dispatch of the
/// product that writes their output, with no dispatch of their own: the dispatch's first items are the down-projections
/// t = scale·x·Aᵀ (one item per term and row: all its rank dot products), claimed before any product item; each product
/// item then adds t·B to the rows and output columns it wrote (<see cref="Epilogue"/>, after waiting for the
/// down-projections, long done by the time its own product is), so the update runs on every thread.
/// </summary>
internal sealed unsafe class LoraStage
{
    internal struct Term
    {
        public float[] X, Y;
        public int Row0, Rows, T, Item; // T: offset of its [rows, rank] block in _t; Item: its first down item
        public CpuLora W;
        public float Scale;
        public bool Active;               // taken by the dispatch being run
    }

    private Term[] _terms = new Term[8];
    private int _count, _active, _downItems, _downDone;
    private float[] _t = new float[256];

    public int Count => _count;

    public void Add(float[] x, int row0, int rows, CpuLora w, float scale, float[] y)
    {
        if (row0 < 0 || rows < 1 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        if (_count == _terms.Length) Array.Resize(ref _terms, _count * 2);
        _terms[_count++] = new Term { X = x, Y = y, Row0 = row0, Rows = rows, W = w, Scale = scale };
    }

    /// <summary>
    /// Takes the staged terms writing one of <paramref name="outputs"/> for the dispatch about to run; returns its down
    /// items (to run, in order, before the product's).
    /// </summary>
    public int Begin(ReadOnlySpan<float[]?> outputs)
    {
        _active = _downItems = _downDone = 0;
        int tUsed = 0;
        for (int i = 0; i < _count; i++)
        {
            ref var t = ref _terms[i];
            bool mine = false;
            foreach (var y in outputs) mine |= ReferenceEquals(y, t.Y);
            t.Active = mine;
            if (!mine) continue;
            t.T = tUsed;
            t.Item = _downItems;
            tUsed += t.Rows * t.W.Rank;
            _downItems += t.Rows;
            _active++;
        }
        if (_t.Length < tUsed) _t = new float[Math.Max(tUsed, 2 * _t.Length)];
        // Learn which pairs the next dispatch runs (decode repeats the same order every token) and let this dispatch's
        // product items fetch them: an adapter's matrices are short streams, evicted by the base's weights every
        // token, that each waited out DRAM latency when read cold (2-3x what their bytes take).
        _next = null;
        if (_active > 0)
        {
            var first = FirstActive();
            if (_lastFirst is not null && _lastFirst != first && _lastFirst.NextDispatch is null)
            {
                var ws = new CpuLora[_active];
                for (int i = 0, k = 0; i < _count; i++) if (_terms[i].Active) ws[k++] = _terms[i].W;
                _lastFirst.NextDispatch = ws;
            }
            _lastFirst = first;
            _next = first.NextDispatch;
        }
        return _downItems;
    }

    private CpuLora? _lastFirst;
    private CpuLora[]? _next;

    private CpuLora FirstActive()
    {
        for (int i = 0; i < _count; i++) if (_terms[i].Active) return _terms[i].W;
        throw new InvalidOperationException("no active term");
    }

    /// <summary>Product item <paramref name="item"/> of <paramref name="items"/>: prefetches its share of the next dispatch's adapter A bytes.</summary>
    public void PrefetchNext(int item, int items)
    {
        if (_next is null || items <= 0) return;
        double from = (double)item / items, to = (double)(item + 1) / items;
        foreach (var w in _next) w.PrefetchSlice(from, to);
    }

    /// <summary>Asks for the B bytes the epilogue of <paramref name="y"/>'s outputs [start, end) will read (before its product).</summary>
    public void PrefetchUp(float[] y, int start, int end)
    {
        for (int i = 0; i < _count; i++)
            if (_terms[i].Active && ReferenceEquals(_terms[i].Y, y)) _terms[i].W.PrefetchUp(start, end);
    }

    /// <summary>Whether the dispatch being run has updates.</summary>
    public bool Active => _active > 0;

    /// <summary>Down item: every rank dot product of one term's row.</summary>
    public void ExecuteDown(int item)
    {
        int n = 0;
        for (int i = 0; i < _count; i++)
            if (_terms[i].Active && _terms[i].Item <= item) n = i;
        ref var t = ref _terms[n];
        int r = item - t.Item, rank = t.W.Rank, inF = t.W.InFeatures;
        var x = t.X.AsSpan((t.Row0 + r) * inF, inF);
        int at = t.T + r * rank;
        fixed (float* tp = &_t[at]) t.W.DownAll(x, t.Scale, tp);
        Interlocked.Increment(ref _downDone);
    }

    /// <summary>Adds the active terms writing <paramref name="y"/> to its rows' output columns [start, end).</summary>
    public void Epilogue(float[] y, int outF, int start, int end)
    {
        if (Volatile.Read(ref _downDone) < _downItems)
        {
            var spin = new SpinWait();
            while (Volatile.Read(ref _downDone) < _downItems) spin.SpinOnce(sleep1Threshold: -1);
        }

        int n = end - start;
        for (int i = 0; i < _count; i++)
        {
            ref var t = ref _terms[i];
            if (!t.Active || !ReferenceEquals(t.Y, y)) continue;
            int rank = t.W.Rank;
            fixed (float* tp = &_t[t.T])
                for (int r = 0; r < t.Rows; r++)
                    fixed (float* dst = &y[(t.Row0 + r) * outF + start])
                        Up(t.W, start, tp + r * rank, dst, n);
        }
    }

    /// <summary>y[o] += Σ_j t[j]·B[start + o, j] for o &lt; n (f32, bf16 or int8 B).</summary>
    internal static void Up(CpuLora w, int start, float* t, float* y, int n)
    {
        if (w.Bt is { } bt) fixed (float* b = &bt[start]) Up(b, w.OutFeatures, t, w.Rank, y, n);
        else if (w.Bt16 is { } b16) fixed (ushort* b = &b16[start]) Up(b, w.OutFeatures, t, w.Rank, y, n);
        else fixed (sbyte* b = w.B8) UpPanels(b, t, w.Rank, y - start, start, start + n);
    }

    /// <summary>
    /// y[o] += Σ_j t[j]·q[o, j] for start ≤ o &lt; end, q in panels [out/16][rank][16] (<see cref="CpuLora"/>): AVX-512
    /// takes four panels (64 outputs) at a time in four registers over every rank (four FMA chains: one chain waited out
    /// each FMA's latency), one 16-byte load widened per panel and rank (the widening shuffle, one a cycle, is the
    /// bound: 16 outputs per shuffle); AVX2 a panel in two registers; partial panels at the range's ends one output at a
    /// time. y is indexed by output.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UpPanels(sbyte* q, float* t, int rank, float* y, int start, int end)
    {
        const int P = CpuLora.Panel;
        int o = start;
        long step = (long)rank * P; // bytes from one panel to the next
        if (Avx2.IsSupported && o % P != 0) o = PartialPanel(q, t, rank, y, o, end); // a range's ragged ends: one vector panel
        if (Avx512F.IsSupported)
        {
            for (; o <= end - 4 * P; o += 4 * P)
            {
                sbyte* p = q + (long)(o / P) * step;
                Vector512<float> a0 = Vector512.Load(y + o), a1 = Vector512.Load(y + o + 16), a2 = Vector512.Load(y + o + 32), a3 = Vector512.Load(y + o + 48);
                for (int j = 0; j < rank; j++, p += P)
                {
                    var tj = Vector512.Create(t[j]);
                    a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p))), tj, a0);
                    a1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p + step))), tj, a1);
                    a2 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p + 2 * step))), tj, a2);
                    a3 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p + 3 * step))), tj, a3);
                }
                a0.Store(y + o); a1.Store(y + o + 16); a2.Store(y + o + 32); a3.Store(y + o + 48);
            }
            for (; o <= end - P; o += P)
            {
                sbyte* p = q + (long)(o / P) * step;
                Vector512<float> a0 = Vector512.Load(y + o), a1 = default;
                int j = 0;
                for (; j + 1 < rank; j += 2, p += 2 * P)
                {
                    a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p))), Vector512.Create(t[j]), a0);
                    a1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p + P))), Vector512.Create(t[j + 1]), a1);
                }
                if (j < rank) a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p))), Vector512.Create(t[j]), a0);
                (a0 + a1).Store(y + o);
            }
        }
        else if (Avx2.IsSupported)
        {
            for (; o <= end - 2 * P; o += 2 * P)
            {
                sbyte* p = q + (long)(o / P) * step;
                Vector256<float> a0 = Vector256.Load(y + o), a1 = Vector256.Load(y + o + 8), a2 = Vector256.Load(y + o + 16), a3 = Vector256.Load(y + o + 24);
                for (int j = 0; j < rank; j++, p += P)
                {
                    var tj = Vector256.Create(t[j]);
                    a0 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p)), tj, a0);
                    a1 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p + 8)), tj, a1);
                    a2 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p + step)), tj, a2);
                    a3 = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p + step + 8)), tj, a3);
                }
                a0.Store(y + o); a1.Store(y + o + 8); a2.Store(y + o + 16); a3.Store(y + o + 24);
            }
        }
        if (Avx2.IsSupported && o < end) o = PartialPanel(q, t, rank, y, o, end);
        for (; o < end; o++) y[o] += UpOne(q, t, rank, o);
    }

    /// <summary>
    /// Outputs [o, min(end, o's panel end)) of one panel: the whole panel's 16 sums in two vector chains (16 widened
    /// FMAs per rank), then only the range's lanes added to y. The product items' row ranges are not panel-aligned, and
    /// their ends taken one output at a time (16 scalar multiply-adds per output) were a tenth of an adapter's time.
    /// Returns the next output.
    /// </summary>
    private static int PartialPanel(sbyte* q, float* t, int rank, float* y, int o, int end)
    {
        const int P = CpuLora.Panel;
        int p0 = o - o % P, stop = Math.Min(end, p0 + P);
        sbyte* p = q + (long)(p0 / P) * rank * P;
        Vector256<float> lo = default, hi = default;
        for (int j = 0; j < rank; j++, p += P)
        {
            var tj = Vector256.Create(t[j]);
            lo = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p)), tj, lo);
            hi = Vector256.FusedMultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p + 8)), tj, hi);
        }
        float* sums = stackalloc float[P];
        lo.Store(sums); hi.Store(sums + 8);
        for (; o < stop; o++) y[o] += sums[o - p0];
        return o;
    }

    private static float UpOne(sbyte* q, float* t, int rank, int o)
    {
        const int P = CpuLora.Panel;
        sbyte* p = q + (long)(o / P) * rank * P + o % P;
        float s = 0;
        for (int j = 0; j < rank; j++) s += t[j] * p[j * P];
        return s;
    }

    /// <summary>y[o] += Σ_j t[j]·Bᵀ[j, o] for o &lt; n, 32 outputs at a time in four registers over every rank.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Up(float* bt, int ld, float* t, int rank, float* y, int n)
    {
        int o = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; o <= n - 32; o += 32)
            {
                Vector256<float> a0 = Vector256.Load(y + o), a1 = Vector256.Load(y + o + 8), a2 = Vector256.Load(y + o + 16), a3 = Vector256.Load(y + o + 24);
                float* b = bt + o;
                for (int j = 0; j < rank; j++, b += ld)
                {
                    var tj = Vector256.Create(t[j]);
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Load(b), tj, a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.Load(b + 8), tj, a1);
                    a2 = Vector256.FusedMultiplyAdd(Vector256.Load(b + 16), tj, a2);
                    a3 = Vector256.FusedMultiplyAdd(Vector256.Load(b + 24), tj, a3);
                }
                a0.Store(y + o); a1.Store(y + o + 8); a2.Store(y + o + 16); a3.Store(y + o + 24);
            }
            for (; o <= n - 8; o += 8)
            {
                var acc = Vector256.Load(y + o);
                for (int j = 0; j < rank; j++) acc = Vector256.FusedMultiplyAdd(Vector256.Load(bt + (long)j * ld + o), Vector256.Create(t[j]), acc);
                acc.Store(y + o);
            }
        }
        for (; o < n; o++)
        {
            float s = y[o];
            for (int j = 0; j < rank; j++) s += t[j] * bt[(long)j * ld + o];
            y[o] = s;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> WidenBF16(ushort* p)
    {
        var (lo, hi) = Vector128.Widen(Vector128.Load(p));
        return Vector256.Create(Vector128.ShiftLeft(lo, 16), Vector128.ShiftLeft(hi, 16)).AsSingle();
    }

    /// <summary>The bf16 form of <see cref="Up(float*, int, float*, int, float*, int)"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Up(ushort* bt, int ld, float* t, int rank, float* y, int n)
    {
        int o = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; o <= n - 32; o += 32)
            {
                Vector256<float> a0 = Vector256.Load(y + o), a1 = Vector256.Load(y + o + 8), a2 = Vector256.Load(y + o + 16), a3 = Vector256.Load(y + o + 24);
                ushort* b = bt + o;
                for (int j = 0; j < rank; j++, b += ld)
                {
                    var tj = Vector256.Create(t[j]);
                    a0 = Vector256.FusedMultiplyAdd(WidenBF16(b), tj, a0);
                    a1 = Vector256.FusedMultiplyAdd(WidenBF16(b + 8), tj, a1);
                    a2 = Vector256.FusedMultiplyAdd(WidenBF16(b + 16), tj, a2);
                    a3 = Vector256.FusedMultiplyAdd(WidenBF16(b + 24), tj, a3);
                }
                a0.Store(y + o); a1.Store(y + o + 8); a2.Store(y + o + 16); a3.Store(y + o + 24);
            }
            for (; o <= n - 8; o += 8)
            {
                var acc = Vector256.Load(y + o);
                for (int j = 0; j < rank; j++) acc = Vector256.FusedMultiplyAdd(WidenBF16(bt + (long)j * ld + o), Vector256.Create(t[j]), acc);
                acc.Store(y + o);
            }
        }
        for (; o < n; o++)
        {
            float s = y[o];
            for (int j = 0; j < rank; j++) s += t[j] * DTypes.BF16ToFloat(bt[(long)j * ld + o]);
            y[o] = s;
        }
    }

    /// <summary>Drops the terms the finished dispatch applied.</summary>
    public void End()
    {
        if (_active == 0) return;
        int kept = 0;
        for (int i = 0; i < _count; i++)
            if (!_terms[i].Active) _terms[kept++] = _terms[i];
        for (int i = kept; i < _count; i++) _terms[i] = default;
        _count = kept;
        _active = _downItems = 0;
    }
}
