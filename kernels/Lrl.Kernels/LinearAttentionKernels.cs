using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>
/// The linear-attention ops (RWKV v5.2/v7, lightning attention) as ILGPU kernels. Elementwise ops use one thread per
/// element; the recurrent ops give each thread one column (or row) of a head's state, which it alone reads and writes,
/// and walk the rows of the batch in order, so no synchronisation is needed.
/// </summary>
public static class LinearAttentionKernels
{
    /// <summary>Unary ops by code: 0 sigmoid, 1 silu, 2 tanh, 3 relu², 4 RWKV v7 decay exp(−e^−½·sigmoid(x)).</summary>
    public static void Unary(Index1D i, ArrayView<float> x, int n, int op)
    {
        if (i >= n) return;
        float v = x[i];
        x[i] = op switch
        {
            0 => 1f / (1f + XMath.Exp(-v)),
            1 => v / (1f + XMath.Exp(-v)),
            2 => XMath.Tanh(v),
            3 => v > 0f ? v * v : 0f,
            _ => XMath.Exp(-0.60653065971f / (1f + XMath.Exp(-v))),
        };
    }

    /// <summary>a[i] = a[i]·b[i].</summary>
    public static void Multiply(Index1D i, ArrayView<float> a, ArrayView<float> b, int n)
    {
        if (i >= n) return;
        a[i] *= b[i];
    }

    /// <summary>x[i] *= s.</summary>
    public static void Scale(Index1D i, ArrayView<float> x, float s, int n)
    {
        if (i >= n) return;
        x[i] *= s;
    }

    /// <summary>y[i] = x[i]·v[i mod width].</summary>
    public static void MultiplyRow(Index1D i, ArrayView<float> x, ArrayView<float> v, ArrayView<float> y, int n, int width)
    {
        if (i >= n) return;
        y[i] = x[i] * v[i % width];
    }

    /// <summary>prev[0, :] = state; prev[r, :] = x[r − 1, :].</summary>
    public static void ShiftRows(Index1D i, ArrayView<float> x, ArrayView<float> state, ArrayView<float> prev, int n, int width)
    {
        if (i >= n) return;
        prev[i] = i < width ? state[i] : x[i - width];
    }

    /// <summary>state[i] = x[offset + i].</summary>
    public static void CopyTail(Index1D i, ArrayView<float> x, ArrayView<float> state, int offset, int width)
    {
        if (i >= width) return;
        state[i] = x[offset + i];
    }

    /// <summary>y[i] = a[i] + (b[i] − a[i])·mix[i mod width].</summary>
    public static void LerpRow(Index1D i, ArrayView<float> a, ArrayView<float> b, ArrayView<float> mix, ArrayView<float> y, int n, int width)
    {
        if (i >= n) return;
        float av = a[i];
        y[i] = av + (b[i] - av) * mix[i % width];
    }

    /// <summary>y[i] = a[i] + (b[i] − a[i])·t[i].</summary>
    public static void Lerp(Index1D i, ArrayView<float> a, ArrayView<float> b, ArrayView<float> t, ArrayView<float> y, int n)
    {
        if (i >= n) return;
        float av = a[i];
        y[i] = av + (b[i] - av) * t[i];
    }

    /// <summary>k[i] *= 1 + (a[i] − 1)·kA[i mod width].</summary>
    public static void KeyScale(Index1D i, ArrayView<float> k, ArrayView<float> a, ArrayView<float> kA, int n, int width)
    {
        if (i >= n) return;
        k[i] *= 1f + (a[i] - 1f) * kA[i % width];
    }

    /// <summary>One thread per (row, group): GroupNorm of that group (y may alias x).</summary>
    public static void GroupNorm(Index1D g, ArrayView<float> x, ArrayView<float> w, ArrayView<float> b, ArrayView<float> y,
                                 int groupsTotal, int groupSize, int width, float eps)
    {
        if (g >= groupsTotal) return;
        int o = g * groupSize, c0 = o % width;
        float mean = 0f;
        for (int i = 0; i < groupSize; i++) mean += x[o + i];
        mean /= groupSize;
        float var = 0f;
        for (int i = 0; i < groupSize; i++) { float d = x[o + i] - mean; var += d * d; }
        float inv = XMath.Rsqrt(var / groupSize + eps);
        for (int i = 0; i < groupSize; i++) y[o + i] = (x[o + i] - mean) * inv * w[c0 + i] + b[c0 + i];
    }

    /// <summary>One thread per group: x /= max(‖x‖₂, eps).</summary>
    public static void L2Normalize(Index1D g, ArrayView<float> x, int groupsTotal, int groupSize, float eps)
    {
        if (g >= groupsTotal) return;
        int o = g * groupSize;
        float ss = 0f;
        for (int i = 0; i < groupSize; i++) ss += x[o + i] * x[o + i];
        float inv = 1f / XMath.Max(XMath.Sqrt(ss), eps);
        for (int i = 0; i < groupSize; i++) x[o + i] *= inv;
    }

    /// <summary>
    /// RWKV v5.2 WKV: thread (h, j) owns state column S_h[:, j] and output element j of head h for every row.
    /// </summary>
    public static void Wkv5(Index1D idx, ArrayView<float> r, ArrayView<float> k, ArrayView<float> v, ArrayView<float> decay,
                            ArrayView<float> bonus, ArrayView<float> state, ArrayView<float> o, int rows, int heads, int n)
    {
        if (idx >= heads * n) return;
        int h = idx / n, j = idx % n, c = heads * n;
        for (int t = 0; t < rows; t++)
        {
            int b = t * c + h * n;
            float vj = v[b + j], acc = 0f;
            for (int i = 0; i < n; i++)
            {
                long si = (long)(h * n + i) * n + j;
                float ki = k[b + i], s = state[si], kv = ki * vj;
                acc += r[b + i] * (bonus[h * n + i] * kv + s);
                state[si] = s * decay[h * n + i] + kv;
            }
            o[b + j] = acc;
        }
    }

    /// <summary>RWKV v7 WKV: thread (h, i) owns state row S_h[i, :] and output element i of head h for every row.</summary>
    public static void Wkv7(Index1D idx, ArrayView<float> r, ArrayView<float> w, ArrayView<float> k, ArrayView<float> v,
                            ArrayView<float> kk, ArrayView<float> a, ArrayView<float> state, ArrayView<float> o, int rows, int heads, int n)
    {
        if (idx >= heads * n) return;
        int h = idx / n, i = idx % n, c = heads * n;
        long sb = (long)(h * n + i) * n;
        for (int t = 0; t < rows; t++)
        {
            int b = t * c + h * n;
            float sa = 0f;
            for (int j = 0; j < n; j++) sa -= state[sb + j] * kk[b + j];
            float vi = v[b + i], acc = 0f;
            for (int j = 0; j < n; j++)
            {
                float s = state[sb + j] * w[b + j] + sa * kk[b + j] * a[b + j] + vi * k[b + j];
                state[sb + j] = s;
                acc += s * r[b + j];
            }
            o[b + i] = acc;
        }
    }

    /// <summary>One thread per (row, head): o[h, :] += (Σ_j r·k·rK)·v[h, :].</summary>
    public static void Rwkv7Bonus(Index1D idx, ArrayView<float> r, ArrayView<float> k, ArrayView<float> v, ArrayView<float> rK,
                                  ArrayView<float> o, int rows, int heads, int n)
    {
        if (idx >= rows * heads) return;
        int h = idx % heads, b = idx * n;
        float s = 0f;
        for (int j = 0; j < n; j++) s += r[b + j] * k[b + j] * rK[h * n + j];
        for (int i = 0; i < n; i++) o[b + i] += s * v[b + i];
    }

    /// <summary>Lightning attention, recurrent form: thread (h, j) owns KV_h[:, j].</summary>
    public static void LightningRecurrent(Index1D idx, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> slopes,
                                          ArrayView<float> state, ArrayView<float> o, int rows, int heads, int dk, int dv)
    {
        if (idx >= heads * dv) return;
        int h = idx / dv, j = idx % dv;
        float lambda = XMath.Exp(-slopes[h]);
        long sb = (long)h * dk * dv + j;
        for (int t = 0; t < rows; t++)
        {
            int qb = (t * heads + h) * dk;
            float vj = v[(t * heads + h) * dv + j], acc = 0f;
            for (int i = 0; i < dk; i++)
            {
                float s = lambda * state[sb + (long)i * dv] + k[qb + i] * vj;
                state[sb + (long)i * dv] = s;
                acc += q[qb + i] * s;
            }
            o[(t * heads + h) * dv + j] = acc;
        }
    }

    /// <summary>
    /// Lightning attention, chunked form: thread (h, j) computes output column j of head h block by block, the
    /// intra-block part as the decayed masked q·kᵀ product and the inter-block part from KV_h[:, j], then updates
    /// KV_h[:, j] = λ^m·KV + Σ_s λ^(m−1−s)·k_s·v_s[j].
    /// </summary>
    public static void LightningChunked(Index1D idx, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> slopes,
                                        ArrayView<float> state, ArrayView<float> o, int rows, int heads, int dk, int dv, int block)
    {
        if (idx >= heads * dv) return;
        int h = idx / dv, j = idx % dv, qs = heads * dk, vs = heads * dv;
        float lambda = XMath.Exp(-slopes[h]);
        long sb = (long)h * dk * dv + j;
        for (int s0 = 0; s0 < rows; s0 += block)
        {
            int m = XMath.Min(block, rows - s0);
            for (int jj = 0; jj < m; jj++)
            {
                int t = s0 + jj, qb = t * qs + h * dk;
                float inter = 0f;
                for (int i = 0; i < dk; i++) inter += q[qb + i] * state[sb + (long)i * dv];
                float acc = inter * XMath.Pow(lambda, jj + 1);
                for (int s = 0; s <= jj; s++)
                {
                    int kb = (s0 + s) * qs + h * dk;
                    float dot = 0f;
                    for (int i = 0; i < dk; i++) dot += q[qb + i] * k[kb + i];
                    acc += dot * XMath.Pow(lambda, jj - s) * v[(s0 + s) * vs + h * dv + j];
                }
                o[t * vs + h * dv + j] = acc;
            }
            float bd = XMath.Pow(lambda, m);
            for (int i = 0; i < dk; i++)
            {
                float s = bd * state[sb + (long)i * dv];
                for (int ss = 0; ss < m; ss++)
                    s += XMath.Pow(lambda, m - 1 - ss) * k[(s0 + ss) * qs + h * dk + i] * v[(s0 + ss) * vs + h * dv + j];
                state[sb + (long)i * dv] = s;
            }
        }
    }

    /// <summary>LRPE: thread per (row, head, i) writes y[r, h, i] = x·cos(θp) and y[r, h, d + i] = x·sin(θp).</summary>
    public static void Lrpe(Index1D idx, ArrayView<float> x, ArrayView<float> theta, ArrayView<float> y, int rows, int heads, int d, int pos0)
    {
        if (idx >= rows * heads * d) return;
        int i = idx % d, rh = idx / d, h = rh % heads, r = rh / heads;
        float a = theta[h * d + i] * (pos0 + r), xv = x[idx];
        y[rh * 2 * d + i] = xv * XMath.Cos(a);
        y[rh * 2 * d + d + i] = xv * XMath.Sin(a);
    }
}
