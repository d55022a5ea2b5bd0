using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

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

    public unsafe void Execute(int item, int worker)
    {
        int r = item / _heads, h = item % _heads;
        int hd = _headDim, kvDim = _kvHeads * hd, kvh = h / (_heads / _kvHeads);
        int n = _pos0 + r + 1;
        var s = _scores[worker].AsSpan(0, n);
        if (hd % 8 != 0 || !Vector256.IsHardwareAccelerated)
        {
            var qs = _q.AsSpan((r * _heads + h) * hd, hd);
            for (int t = 0; t < n; t++)
                s[t] = TensorPrimitives.Dot(qs, _k.AsSpan(t * kvDim + kvh * hd, hd)) * _scale;
            TensorPrimitives.SoftMax(s, s);
            var os = _o.AsSpan((r * _heads + h) * hd, hd);
            os.Clear();
            for (int t = 0; t < n; t++)
                TensorPrimitives.MultiplyAdd(_v.AsSpan(t * kvDim + kvh * hd, hd), s[t], os, os);
            return;
        }
        // Head dims are multiples of 8 in practice: inline Vector256 loops instead of a library call per position
        // (at short contexts the per-call cost was most of the attention time).
        fixed (float* qp0 = _q, kp0 = _k, vp0 = _v, op0 = _o, sp = s)
        {
            float* qp = qp0 + (r * _heads + h) * hd, op = op0 + (r * _heads + h) * hd;
            float* kp = kp0 + kvh * hd, vp = vp0 + kvh * hd;
            float max = float.NegativeInfinity;
            for (int t = 0; t < n; t++)
            {
                float* kt = kp + (long)t * kvDim;
                var acc = Vector256<float>.Zero;
                for (int i = 0; i < hd; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(qp + i), Vector256.Load(kt + i), acc);
                float v = Vector256.Sum(acc) * _scale;
                sp[t] = v;
                if (v > max) max = v;
            }
            float sum = 0;
            for (int t = 0; t < n; t++) { float e = MathF.Exp(sp[t] - max); sp[t] = e; sum += e; }
            float inv = 1f / sum;
            for (int i = 0; i < hd; i += 8) Vector256<float>.Zero.Store(op + i);
            for (int t = 0; t < n; t++)
            {
                float* vt = vp + (long)t * kvDim;
                var w = Vector256.Create(sp[t] * inv);
                for (int i = 0; i < hd; i += 8) Vector256.FusedMultiplyAdd(Vector256.Load(vt + i), w, Vector256.Load(op + i)).Store(op + i);
            }
        }
    }
}
