using System.Numerics.Tensors;

namespace Lrl.Cpu;

/// <summary>
/// Causal attention over the KV cache, one item per (query row, head): scores q·k for every visible position,
/// a numerically stable softmax, then the weighted sum of values. Scratch per thread, sized to the context.
/// </summary>
internal sealed class AttentionJob : IParallelJob
{
    private readonly float[][] _scores;
    private float[] _q = [], _k = [], _v = [], _o = [];
    private int _pos0, _heads, _kvHeads, _headDim;
    private float _scale;

    public AttentionJob(int threads)
    {
        _scores = new float[threads][];
        for (int i = 0; i < threads; i++) _scores[i] = [];
    }

    public void Run(WorkerPool pool, float[] q, float[] k, float[] v, float[] o, int rows, int pos0,
                    int heads, int kvHeads, int headDim, float scale)
    {
        if (heads % kvHeads != 0) throw new ArgumentException($"heads {heads} is not a multiple of kv heads {kvHeads}");
        int capacity = k.Length / (kvHeads * headDim); // scratch sized once to the whole cache: no growth mid-sequence
        for (int i = 0; i < _scores.Length; i++)
            if (_scores[i].Length < capacity) _scores[i] = new float[capacity];
        _q = q; _k = k; _v = v; _o = o; _pos0 = pos0; _heads = heads; _kvHeads = kvHeads; _headDim = headDim; _scale = scale;
        pool.Run(this, rows * heads);
        _q = _k = _v = _o = [];
    }

    public void Execute(int item, int worker)
    {
        int r = item / _heads, h = item % _heads;
        int hd = _headDim, kvDim = _kvHeads * hd, kvh = h / (_heads / _kvHeads);
        int n = _pos0 + r + 1;
        var s = _scores[worker].AsSpan(0, n);
        var q = _q.AsSpan((r * _heads + h) * hd, hd);
        for (int t = 0; t < n; t++)
            s[t] = TensorPrimitives.Dot(q, _k.AsSpan(t * kvDim + kvh * hd, hd)) * _scale;
        TensorPrimitives.SoftMax(s, s);
        var o = _o.AsSpan((r * _heads + h) * hd, hd);
        o.Clear();
        for (int t = 0; t < n; t++)
            TensorPrimitives.MultiplyAdd(_v.AsSpan(t * kvDim + kvh * hd, hd), s[t], o, o);
    }
}
