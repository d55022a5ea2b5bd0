using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Lrl.Cpu;

/// <summary>
/// A LoRA pair in host memory: A [rank, in] as stored, B transposed to [rank, out] (rows of B's columns), as f32, or as
/// bf16 bits when the adapter file is bf16 (half the bytes a product reads; widened in registers).
/// </summary>
internal sealed class CpuLora : LoraWeights
{
    public float[]? A { get; }
    public float[]? Bt { get; }
    public ushort[]? A16 { get; }
    public ushort[]? Bt16 { get; }

    public CpuLora(string name, int rank, int inF, int outF, ReadOnlySpan<float> a, ReadOnlySpan<float> b, bool bf16) : base(name, rank, inF, outF)
    {
        var bt = new float[(long)rank * outF];
        for (int o = 0; o < outF; o++)
            for (int j = 0; j < rank; j++) bt[(long)j * outF + o] = b[o * rank + j];
        if (!bf16) { A = a.ToArray(); Bt = bt; return; }
        A16 = new ushort[a.Length];
        for (int i = 0; i < a.Length; i++) A16[i] = DTypes.FloatToBF16(a[i]);
        Bt16 = new ushort[bt.Length];
        for (int i = 0; i < bt.Length; i++) Bt16[i] = DTypes.FloatToBF16(bt[i]);
    }

    public override long ByteSize => A is not null ? (A.Length + (long)Bt!.Length) * 4 : (A16!.Length + (long)Bt16!.Length) * 2;
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

    public void Run(WorkerPool pool, float[] x, int row0, int rows, CpuLora w, float scale, float[] y)
    {
        if (row0 < 0 || rows < 0 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        if (rows == 0) return;
        if (_t.Length < rows * w.Rank) _t = new float[Math.Max(rows * w.Rank, _t.Length * 2)];
        _x = x; _y = y; _w = w; _row0 = row0; _rows = rows;
        bool serial = (long)rows * w.Rank * (w.InFeatures + w.OutFeatures) < SerialWork || pool.ThreadCount == 1;
        _phase = 0;
        int downItems = rows * w.Rank;
        if (serial) for (int i = 0; i < downItems; i++) Execute(i, 0);
        else pool.Run(this, downItems);
        TensorPrimitives.Multiply(_t.AsSpan(0, downItems), scale, _t.AsSpan(0, downItems));
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
            int r = item / rank, j = item % rank;
            var x = _x.AsSpan((_row0 + r) * inF, inF);
            if (w.A is { } a) _t[item] = TensorPrimitives.Dot(x, a.AsSpan(j * inF, inF));
            else fixed (ushort* a16 = &w.A16![j * inF]) _t[item] = Simd.DotBF16(a16, x);
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
public sealed partial class CpuBackend : ILoraOps
{
    private LoraJob? _loraJob;

    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                                DType stored = DType.F32)
    {
        if (rank < 1 || inFeatures < 1 || outFeatures < 1 || a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
            throw new ArgumentException($"LoRA {name}: A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]");
        return new CpuLora(name, rank, inFeatures, outFeatures, a, b, stored == DType.BF16);
    }

    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) =>
        (_loraJob ??= new LoraJob()).Run(_pool, D(x), row0, rows,
            lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend"), scale, D(y));

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
        return _downItems;
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
        for (int j = 0; j < rank; j++)
        {
            float d;
            if (t.W.A is { } a) d = TensorPrimitives.Dot(x, a.AsSpan(j * inF, inF));
            else fixed (ushort* a16 = &t.W.A16![j * inF]) d = Simd.DotBF16(a16, x);
            _t[at + j] = d * t.Scale;
        }
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

    /// <summary>y[o] += Σ_j t[j]·B[start + o, j] for o &lt; n (f32 or bf16 B).</summary>
    internal static void Up(CpuLora w, int start, float* t, float* y, int n)
    {
        if (w.Bt is { } bt) fixed (float* b = &bt[start]) Up(b, w.OutFeatures, t, w.Rank, y, n);
        else fixed (ushort* b = &w.Bt16![start]) Up(b, w.OutFeatures, t, w.Rank, y, n);
    }

    /// <summary>y[o] += Σ_j t[j]·Bᵀ[j, o] for o &lt; n, eight outputs at a time held in a register over every rank.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Up(float* bt, int ld, float* t, int rank, float* y, int n)
    {
        int o = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; o <= n - 8; o += 8)
            {
                var acc = Vector256.Load(y + o);
                for (int j = 0; j < rank; j++) acc = Vector256.FusedMultiplyAdd(Vector256.Load(bt + (long)j * ld + o), Vector256.Create(t[j]), acc);
                acc.Store(y + o);
            }
        for (; o < n; o++)
        {
            float s = y[o];
            for (int j = 0; j < rank; j++) s += t[j] * bt[(long)j * ld + o];
            y[o] = s;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Up(ushort* bt, int ld, float* t, int rank, float* y, int n)
    {
        int o = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; o <= n - 8; o += 8)
            {
                var acc = Vector256.Load(y + o);
                for (int j = 0; j < rank; j++)
                {
                    var (lo, hi) = Vector128.Widen(Vector128.Load(bt + (long)j * ld + o));
                    var w = Vector256.Create(Vector128.ShiftLeft(lo, 16), Vector128.ShiftLeft(hi, 16)).AsSingle();
                    acc = Vector256.FusedMultiplyAdd(w, Vector256.Create(t[j]), acc);
                }
                acc.Store(y + o);
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
