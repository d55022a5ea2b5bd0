using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Lrl.Cpu;

/// <summary>
/// Causal attention over the KV cache, one item per (query row, kv head) covering its group of query heads: scores q·k for every visible position,
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
        int group = heads / kvHeads;
        for (int i = 0; i < _scores.Length; i++)
            if (_scores[i].Length < capacity * group) _scores[i] = new float[capacity * group];
        _q = q; _k = k; _v = v; _o = o; _pos0 = pos0; _heads = heads; _kvHeads = kvHeads; _headDim = headDim; _scale = scale;
        // One item per (row, kv head): the query heads sharing a kv head (GQA) read its keys and values once.
        pool.Run(this, rows * kvHeads);
        _q = _k = _v = _o = [];
    }

    public unsafe void Execute(int item, int worker)
    {
        int r = item / _kvHeads, kvh = item % _kvHeads;
        int hd = _headDim, kvDim = _kvHeads * hd, group = _heads / _kvHeads;
        int n = _pos0 + r + 1;
        if (hd % 8 != 0 || !Vector256.IsHardwareAccelerated)
        {
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                var s = _scores[worker].AsSpan(0, n);
                var qs = _q.AsSpan((r * _heads + h) * hd, hd);
                for (int t = 0; t < n; t++)
                    s[t] = TensorPrimitives.Dot(qs, _k.AsSpan(t * kvDim + kvh * hd, hd)) * _scale;
                TensorPrimitives.SoftMax(s, s);
                var os = _o.AsSpan((r * _heads + h) * hd, hd);
                os.Clear();
                for (int t = 0; t < n; t++)
                    TensorPrimitives.MultiplyAdd(_v.AsSpan(t * kvDim + kvh * hd, hd), s[t], os, os);
            }
            return;
        }
        // Head dims are multiples of 8 in practice: inline Vector256 loops, each key and value row read once for all
        // the query heads of its group, scores kept per head in [group, n] scratch.
        fixed (float* qp0 = _q, kp0 = _k, vp0 = _v, op0 = _o, sp0 = _scores[worker])
        {
            float* kp = kp0 + kvh * hd, vp = vp0 + kvh * hd;
            int h0 = kvh * group;
            for (int t = 0; t < n; t++)
            {
                float* kt = kp + (long)t * kvDim;
                for (int g = 0; g < group; g++)
                {
                    float* qp = qp0 + (r * _heads + h0 + g) * hd;
                    var acc = Vector256<float>.Zero;
                    for (int i = 0; i < hd; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(qp + i), Vector256.Load(kt + i), acc);
                    sp0[(long)g * n + t] = Vector256.Sum(acc) * _scale;
                }
            }
            for (int g = 0; g < group; g++)
            {
                float* sp = sp0 + (long)g * n;
                float max = float.NegativeInfinity;
                for (int t = 0; t < n; t++) if (sp[t] > max) max = sp[t];
                float sum = 0;
                for (int t = 0; t < n; t++) { float e = MathF.Exp(sp[t] - max); sp[t] = e; sum += e; }
                float inv = 1f / sum;
                for (int t = 0; t < n; t++) sp[t] *= inv;
                float* op = op0 + (r * _heads + h0 + g) * hd;
                for (int i = 0; i < hd; i += 8) Vector256<float>.Zero.Store(op + i);
            }
            for (int t = 0; t < n; t++)
            {
                float* vt = vp + (long)t * kvDim;
                for (int g = 0; g < group; g++)
                {
                    float* op = op0 + (r * _heads + h0 + g) * hd;
                    var w = Vector256.Create(sp0[(long)g * n + t]);
                    for (int i = 0; i < hd; i += 8) Vector256.FusedMultiplyAdd(Vector256.Load(vt + i), w, Vector256.Load(op + i)).Store(op + i);
                }
            }
        }
    }
}
