using System.Numerics.Tensors;

namespace Lrl.Cpu;

/// <summary>
/// y[r, o] = Σ_i x[r, i]·W[o, i] + b[o], split over blocks of output features.
/// One row (decode): each block is a GEMV reading its weight rows once, in the stored dtype.
/// Several rows (prefill): each weight row is converted to f32 once into per-thread scratch and reused for every
/// input row, so the weights are read once per pass, not once per token.
/// </summary>
internal sealed class MatMulJob : IParallelJob
{
    private const int PrefillTile = 4;
    private readonly float[][] _scratch;
    private float[] _x = [], _y = [];
    private float[]? _bias;
    private CpuMatrix _w = null!;
    private int _rows, _block;

    public MatMulJob(int threads)
    {
        _scratch = new float[threads][];
        for (int i = 0; i < threads; i++) _scratch[i] = [];
    }

    public void Run(WorkerPool pool, float[] x, CpuMatrix w, float[] y, int rows, float[]? bias)
    {
        if ((long)rows * w.Cols > x.Length || (long)rows * w.Rows > y.Length)
            throw new ArgumentException($"MatMul {w.Name}: buffers too small for {rows} rows of [{w.Rows}, {w.Cols}]");
        _x = x; _w = w; _y = y; _rows = rows; _bias = bias;
        int target = pool.ThreadCount * (rows == 1 ? 8 : 4);
        _block = Math.Max(rows == 1 ? 16 : PrefillTile, (w.Rows + target - 1) / target);
        if (rows > 1) _block = (_block + PrefillTile - 1) / PrefillTile * PrefillTile;
        if (rows == 1) w.PrepareGemv(x.AsSpan(0, w.Cols));
        try { pool.Run(this, (w.Rows + _block - 1) / _block); }
        finally { if (rows == 1) w.EndGemv(); }
        _x = _y = []; _w = null!; _bias = null;
    }

    public void Execute(int item, int worker)
    {
        int start = item * _block, end = Math.Min(_w.Rows, start + _block);
        int inF = _w.Cols, outF = _w.Rows;
        if (_rows == 1)
        {
            var y = _y.AsSpan(start, end - start);
            _w.Gemv(_x.AsSpan(0, inF), y, start, end);
            if (_bias != null) TensorPrimitives.Add(y, _bias.AsSpan(start, end - start), y);
            return;
        }

        var scratch = _scratch[worker];
        if (scratch.Length < PrefillTile * inF) _scratch[worker] = scratch = new float[PrefillTile * inF];
        for (int o = start; o < end; o += PrefillTile)
        {
            int tile = Math.Min(PrefillTile, end - o);
            for (int t = 0; t < tile; t++) _w.RowToFloat(o + t, scratch.AsSpan(t * inF, inF));
            for (int r = 0; r < _rows; r++)
            {
                var xr = _x.AsSpan(r * inF, inF);
                for (int t = 0; t < tile; t++)
                    _y[(long)r * outF + o + t] = TensorPrimitives.Dot(scratch.AsSpan(t * inF, inF), xr) + (_bias?[o + t] ?? 0f);
            }
        }
    }
}
