using System.Numerics.Tensors;

namespace Lrl.Cpu;

/// <summary>A LoRA pair in host memory as f32: A [rank, in] as stored, B transposed to [rank, out] (rows of B's columns).</summary>
internal sealed class CpuLora(string name, int rank, int inF, int outF, float[] a, float[] bt) : LoraWeights(name, rank, inF, outF)
{
    public float[] A { get; } = a;
    public float[] Bt { get; } = bt;
    public override long ByteSize => (A.Length + (long)Bt.Length) * 4;
}

/// <summary>
/// The unmerged LoRA update in two parallel phases: t = x·Aᵀ (rank dot products per row, one item each), then
/// y += scale·t·B (output columns split in chunks, each chunk an axpy per rank over B's transposed rows: contiguous
/// reads). Small updates run on the caller alone (a pool dispatch costs more than they do).
/// </summary>
internal sealed class LoraJob : IParallelJob
{
    private const int Chunk = 256;            // output columns per item of the second phase
    private const long SerialWork = 1 << 16;  // multiply-adds below which the caller does it alone
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
            _t[item] = TensorPrimitives.Dot(_x.AsSpan((_row0 + r) * inF, inF), w.A.AsSpan(j * inF, inF));
            return;
        }
        int o0 = item * Chunk, n = Math.Min(Chunk, outF - o0);
        for (int r = 0; r < _rows; r++)
        {
            var y = _y.AsSpan((_row0 + r) * outF + o0, n);
            for (int j = 0; j < rank; j++)
                TensorPrimitives.MultiplyAdd(w.Bt.AsSpan(j * outF + o0, n), _t[r * rank + j], y, y);
        }
    }
}

// ILoraOps on host memory.
public sealed partial class CpuBackend : ILoraOps
{
    private LoraJob? _loraJob;

    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures)
    {
        if (rank < 1 || inFeatures < 1 || outFeatures < 1 || a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
            throw new ArgumentException($"LoRA {name}: A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]");
        var bt = new float[(long)rank * outFeatures];
        for (int o = 0; o < outFeatures; o++)
            for (int j = 0; j < rank; j++) bt[(long)j * outFeatures + o] = b[o * rank + j];
        return new CpuLora(name, rank, inFeatures, outFeatures, a.ToArray(), bt);
    }

    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) =>
        (_loraJob ??= new LoraJob()).Run(_pool, D(x), row0, rows,
            lora as CpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by the CPU backend"), scale, D(y));
}
