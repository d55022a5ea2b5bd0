using System.Numerics.Tensors;

namespace Lrl.Cpu;

/// <summary>
/// The recurrent linear-attention kernels (RWKV v5/v7 WKV, lightning attention), parallel over heads: each item is one
/// head, which runs through every row in order against its own slice of the state. Per-worker scratch grown once.
/// </summary>
internal sealed class LinearHeadJob : IParallelJob
{
    private enum Mode { Wkv5, Wkv7, LightningRecurrent, LightningChunked }

    private readonly float[][] _scratch;
    private Mode _mode;
    private float[] _r = [], _k = [], _v = [], _w = [], _kk = [], _a = [], _s = [], _o = [], _u = [], _decay = [];
    private int _rows, _heads, _dk, _dv, _block;

    public LinearHeadJob(int threads)
    {
        _scratch = new float[threads][];
        for (int i = 0; i < threads; i++) _scratch[i] = [];
    }

    private void Scratch(int n)
    {
        for (int i = 0; i < _scratch.Length; i++)
            if (_scratch[i].Length < n) _scratch[i] = new float[n];
    }

    private void Run(WorkerPool pool)
    {
        pool.Run(this, _heads);
        _r = _k = _v = _w = _kk = _a = _s = _o = _u = _decay = [];
    }

    public void Wkv5(WorkerPool pool, float[] r, float[] k, float[] v, float[] decay, float[] bonus, float[] state, float[] o,
                     int rows, int heads, int headSize)
    {
        _mode = Mode.Wkv5; _r = r; _k = k; _v = v; _decay = decay; _u = bonus; _s = state; _o = o;
        _rows = rows; _heads = heads; _dk = _dv = headSize;
        Run(pool);
    }

    public void Wkv7(WorkerPool pool, float[] r, float[] w, float[] k, float[] v, float[] kk, float[] a, float[] state, float[] o,
                     int rows, int heads, int headSize)
    {
        Scratch(headSize);
        _mode = Mode.Wkv7; _r = r; _w = w; _k = k; _v = v; _kk = kk; _a = a; _s = state; _o = o;
        _rows = rows; _heads = heads; _dk = _dv = headSize;
        Run(pool);
    }

    public void Lightning(WorkerPool pool, float[] q, float[] k, float[] v, float[] slopes, float[] state, float[] o,
                          int rows, int heads, int keyDim, int valueDim, int blockSize)
    {
        _mode = blockSize <= 0 ? Mode.LightningRecurrent : Mode.LightningChunked;
        if (blockSize > 0) Scratch(Math.Min(blockSize, rows) + keyDim);
        _r = q; _k = k; _v = v; _decay = slopes; _s = state; _o = o;
        _rows = rows; _heads = heads; _dk = keyDim; _dv = valueDim; _block = blockSize;
        Run(pool);
    }

    public void Execute(int h, int worker)
    {
        switch (_mode)
        {
            case Mode.Wkv5: Wkv5Head(h); break;
            case Mode.Wkv7: Wkv7Head(h, _scratch[worker]); break;
            case Mode.LightningRecurrent: RecurrentHead(h); break;
            case Mode.LightningChunked: ChunkedHead(h, _scratch[worker]); break;
        }
    }

    private void Wkv5Head(int h)
    {
        int n = _dk, c = _heads * n;
        for (int t = 0; t < _rows; t++)
        {
            int b = t * c + h * n;
            var vt = _v.AsSpan(b, n);
            var o = _o.AsSpan(b, n);
            o.Clear();
            for (int i = 0; i < n; i++)
            {
                var s = _s.AsSpan((h * n + i) * n, n);
                float ri = _r[b + i], ki = _k[b + i];
                // o += r_i·(u_i·k_i·v + s_i);  s_i = s_i·w_i + k_i·v
                TensorPrimitives.MultiplyAdd(vt, ri * _u[h * n + i] * ki, o, o);
                TensorPrimitives.MultiplyAdd(s, ri, o, o);
                TensorPrimitives.Multiply(s, _decay[h * n + i], s);
                TensorPrimitives.MultiplyAdd(vt, ki, s, s);
            }
        }
    }

    private void Wkv7Head(int h, float[] scratch)
    {
        int n = _dk, c = _heads * n;
        var beta = scratch.AsSpan(0, n);
        for (int t = 0; t < _rows; t++)
        {
            int b = t * c + h * n;
            var kkh = _kk.AsSpan(b, n); var wh = _w.AsSpan(b, n); var kh = _k.AsSpan(b, n); var rh = _r.AsSpan(b, n);
            TensorPrimitives.Multiply(kkh, _a.AsSpan(b, n), beta);
            for (int i = 0; i < n; i++)
            {
                var s = _s.AsSpan((h * n + i) * n, n);
                float sa = -TensorPrimitives.Dot(s, kkh);
                // s = s·w + sa·β + v_i·k
                TensorPrimitives.Multiply(s, wh, s);
                TensorPrimitives.MultiplyAdd(beta, sa, s, s);
                TensorPrimitives.MultiplyAdd(kh, _v[b + i], s, s);
                _o[b + i] = TensorPrimitives.Dot(s, rh);
            }
        }
    }

    private void RecurrentHead(int h)
    {
        int dk = _dk, dv = _dv, heads = _heads;
        float lambda = MathF.Exp(-_decay[h]);
        var kv = _s.AsSpan(h * dk * dv, dk * dv);
        for (int t = 0; t < _rows; t++)
        {
            int qb = (t * heads + h) * dk, vb = (t * heads + h) * dv;
            var vt = _v.AsSpan(vb, dv);
            var o = _o.AsSpan(vb, dv);
            o.Clear();
            for (int i = 0; i < dk; i++)
            {
                var s = kv.Slice(i * dv, dv);
                TensorPrimitives.Multiply(s, lambda, s);
                TensorPrimitives.MultiplyAdd(vt, _k[qb + i], s, s);
                TensorPrimitives.MultiplyAdd(s, _r[qb + i], o, o);
            }
        }
    }

    private void ChunkedHead(int h, float[] scratch)
    {
        int dk = _dk, dv = _dv, rows = _rows, bs = Math.Min(_block, rows);
        int qs = _heads * dk, vs = _heads * dv;
        var scores = scratch.AsSpan(0, bs);
        var kdec = scratch.AsSpan(bs, dk);
        float lambda = MathF.Exp(-_decay[h]);
        var kv = _s.AsSpan(h * dk * dv, dk * dv);
        for (int s0 = 0; s0 < rows; s0 += bs)
        {
            int m = Math.Min(bs, rows - s0);
            for (int j = 0; j < m; j++)
            {
                int t = s0 + j;
                var qt = _r.AsSpan(t * qs + h * dk, dk);
                var o = _o.AsSpan(t * vs + h * dv, dv);
                // Inter-block: λ^(j+1)·q_t·KV_prev.
                o.Clear();
                for (int i = 0; i < dk; i++)
                    TensorPrimitives.MultiplyAdd(kv.Slice(i * dv, dv), qt[i], o, o);
                TensorPrimitives.Multiply(o, MathF.Pow(lambda, j + 1), o);
                // Intra-block: Σ_{s ≤ t in block} λ^(t−s)(q_t·k_s)v_s.
                for (int s = 0; s <= j; s++)
                    scores[s] = TensorPrimitives.Dot(qt, _k.AsSpan((s0 + s) * qs + h * dk, dk)) * MathF.Pow(lambda, j - s);
                for (int s = 0; s <= j; s++)
                    TensorPrimitives.MultiplyAdd(_v.AsSpan((s0 + s) * vs + h * dv, dv), scores[s], o, o);
            }
            // KV = λ^m·KV + Σ_s λ^(m−1−s)·k_sᵀv_s.
            TensorPrimitives.Multiply(kv, MathF.Pow(lambda, m), kv);
            for (int s = 0; s < m; s++)
            {
                TensorPrimitives.Multiply(_k.AsSpan((s0 + s) * qs + h * dk, dk), MathF.Pow(lambda, m - 1 - s), kdec);
                var vrow = _v.AsSpan((s0 + s) * vs + h * dv, dv);
                for (int i = 0; i < dk; i++)
                {
                    var kvRow = kv.Slice(i * dv, dv);
                    TensorPrimitives.MultiplyAdd(vrow, kdec[i], kvRow, kvRow);
                }
            }
        }
    }
}
