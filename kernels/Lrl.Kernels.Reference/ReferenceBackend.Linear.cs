namespace Lrl.Kernels.Reference;

/// <summary>The linear-attention ops as plain scalar loops accumulating in double (the oracle for other backends).</summary>
public sealed partial class ReferenceBackend : ILinearAttentionOps
{
    public void Sigmoid(DeviceBuffer x, long n)
    {
        var X = D(x);
        for (long i = 0; i < n; i++) X[i] = (float)(1.0 / (1.0 + Math.Exp(-(double)X[i])));
    }

    public void Silu(DeviceBuffer x, long n)
    {
        var X = D(x);
        for (long i = 0; i < n; i++) { double v = X[i]; X[i] = (float)(v / (1.0 + Math.Exp(-v))); }
    }

    public void Tanh(DeviceBuffer x, long n)
    {
        var X = D(x);
        for (long i = 0; i < n; i++) X[i] = (float)Math.Tanh(X[i]);
    }

    public void ReluSquare(DeviceBuffer x, long n)
    {
        var X = D(x);
        for (long i = 0; i < n; i++) { double v = Math.Max(0.0, X[i]); X[i] = (float)(v * v); }
    }

    public void Multiply(DeviceBuffer a, DeviceBuffer b, long n)
    {
        var A = D(a); var B = D(b);
        for (long i = 0; i < n; i++) A[i] = (float)((double)A[i] * B[i]);
    }

    public void Scale(DeviceBuffer x, float s, long n)
    {
        var X = D(x);
        for (long i = 0; i < n; i++) X[i] = (float)((double)X[i] * s);
    }

    public void MultiplyRow(DeviceBuffer x, Weight v, DeviceBuffer y, int rows)
    {
        var X = D(x); var Y = D(y); var V = W(v); int n = v.Cols;
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < n; i++) Y[r * n + i] = (float)((double)X[r * n + i] * V[i]);
    }

    public void TokenShift(DeviceBuffer x, DeviceBuffer state, DeviceBuffer prev, int rows, int width)
    {
        var X = D(x); var S = D(state); var P = D(prev);
        for (int i = 0; i < width; i++) P[i] = S[i];
        for (int r = 1; r < rows; r++)
            for (int i = 0; i < width; i++) P[r * width + i] = X[(r - 1) * width + i];
        for (int i = 0; i < width; i++) S[i] = X[(rows - 1) * width + i];
    }

    public void LerpRow(DeviceBuffer a, DeviceBuffer b, Weight mix, DeviceBuffer y, int rows)
    {
        var A = D(a); var B = D(b); var Y = D(y); var M = W(mix); int n = mix.Cols;
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < n; i++)
            {
                double av = A[r * n + i], bv = B[r * n + i];
                Y[r * n + i] = (float)(av + (bv - av) * M[i]);
            }
    }

    public void Lerp(DeviceBuffer a, DeviceBuffer b, DeviceBuffer t, DeviceBuffer y, long n)
    {
        var A = D(a); var B = D(b); var T = D(t); var Y = D(y);
        for (long i = 0; i < n; i++)
        {
            double av = A[i], bv = B[i];
            Y[i] = (float)(av + (bv - av) * T[i]);
        }
    }

    public void GroupNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, int groups, float eps)
    {
        var X = D(x); var Y = D(y); var G = W(w); var Bi = W(b);
        int n = w.Cols, gs = n / groups;
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++)
            {
                int o = r * n + g * gs;
                double mean = 0, var = 0;
                for (int i = 0; i < gs; i++) mean += X[o + i];
                mean /= gs;
                for (int i = 0; i < gs; i++) { double d = X[o + i] - mean; var += d * d; }
                double inv = 1.0 / Math.Sqrt(var / gs + eps);
                for (int i = 0; i < gs; i++)
                    Y[o + i] = (float)((X[o + i] - mean) * inv * G[g * gs + i] + Bi[g * gs + i]);
            }
    }

    public void L2NormalizeGroups(DeviceBuffer x, int rows, int width, int groupSize, float eps)
    {
        var X = D(x);
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < width / groupSize; g++)
            {
                int o = r * width + g * groupSize;
                double ss = 0;
                for (int i = 0; i < groupSize; i++) ss += (double)X[o + i] * X[o + i];
                double inv = 1.0 / Math.Max(Math.Sqrt(ss), eps);
                for (int i = 0; i < groupSize; i++) X[o + i] = (float)(X[o + i] * inv);
            }
    }

    public void Wkv5(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight decay, Weight bonus, DeviceBuffer state,
                     DeviceBuffer output, int rows, int heads, int headSize)
    {
        var R = D(r); var K = D(k); var V = D(v); var S = D(state); var O = D(output);
        var Wd = W(decay); var U = W(bonus);
        int c = heads * headSize, n = headSize;
        var acc = new double[n];
        for (int t = 0; t < rows; t++)
            for (int h = 0; h < heads; h++)
            {
                int b = t * c + h * n, sb = h * n * n;
                Array.Clear(acc);
                for (int i = 0; i < n; i++)
                {
                    double ri = R[b + i], ki = K[b + i], ui = U[h * n + i], wi = Wd[h * n + i];
                    for (int j = 0; j < n; j++)
                    {
                        double kv = ki * V[b + j];
                        double s = S[sb + i * n + j];
                        acc[j] += ri * (ui * kv + s);
                        S[sb + i * n + j] = (float)(s * wi + kv);
                    }
                }
                for (int j = 0; j < n; j++) O[b + j] = (float)acc[j];
            }
    }

    public void Wkv7(DeviceBuffer r, DeviceBuffer w, DeviceBuffer k, DeviceBuffer v, DeviceBuffer kk, DeviceBuffer a,
                     DeviceBuffer state, DeviceBuffer output, int rows, int heads, int headSize)
    {
        var R = D(r); var Wd = D(w); var K = D(k); var V = D(v); var KK = D(kk); var A = D(a);
        var S = D(state); var O = D(output);
        int c = heads * headSize, n = headSize;
        for (int t = 0; t < rows; t++)
            for (int h = 0; h < heads; h++)
            {
                int b = t * c + h * n, sb = h * n * n;
                for (int i = 0; i < n; i++)
                {
                    double sa = 0;
                    for (int j = 0; j < n; j++) sa += (double)S[sb + i * n + j] * -KK[b + j];
                    double o = 0;
                    for (int j = 0; j < n; j++)
                    {
                        double s = S[sb + i * n + j] * (double)Wd[b + j] + sa * ((double)KK[b + j] * A[b + j])
                                   + (double)V[b + i] * K[b + j];
                        S[sb + i * n + j] = (float)s;
                        o += s * R[b + j];
                    }
                    O[b + i] = (float)o;
                }
            }
    }

    public void Rwkv7Decay(DeviceBuffer w, long n)
    {
        var X = D(w);
        double c = Math.Exp(-0.5);
        for (long i = 0; i < n; i++) X[i] = (float)Math.Exp(-c / (1.0 + Math.Exp(-(double)X[i])));
    }

    public void Rwkv7KeyScale(DeviceBuffer k, DeviceBuffer a, Weight kA, int rows)
    {
        var K = D(k); var A = D(a); var KA = W(kA); int n = kA.Cols;
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < n; i++)
                K[r * n + i] = (float)(K[r * n + i] * (1.0 + ((double)A[r * n + i] - 1.0) * KA[i]));
    }

    public void Rwkv7Bonus(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight rK, DeviceBuffer output, int rows, int heads, int headSize)
    {
        var R = D(r); var K = D(k); var V = D(v); var RK = W(rK); var O = D(output);
        int c = heads * headSize, n = headSize;
        for (int t = 0; t < rows; t++)
            for (int h = 0; h < heads; h++)
            {
                int b = t * c + h * n;
                double s = 0;
                for (int j = 0; j < n; j++) s += (double)R[b + j] * K[b + j] * RK[h * n + j];
                for (int i = 0; i < n; i++) O[b + i] = (float)(O[b + i] + s * V[b + i]);
            }
    }

    public void LightningRecurrent(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                                   DeviceBuffer output, int rows, int heads, int keyDim, int valueDim)
    {
        var Q = D(q); var K = D(k); var V = D(v); var S = D(state); var O = D(output); var Sl = W(slopes);
        for (int t = 0; t < rows; t++)
            for (int h = 0; h < heads; h++)
            {
                double lambda = Math.Exp(-(double)Sl[h]);
                int qb = (t * heads + h) * keyDim, vb = (t * heads + h) * valueDim, sb = h * keyDim * valueDim;
                for (int i = 0; i < keyDim; i++)
                    for (int j = 0; j < valueDim; j++)
                        S[sb + i * valueDim + j] = (float)(lambda * S[sb + i * valueDim + j] + (double)K[qb + i] * V[vb + j]);
                for (int j = 0; j < valueDim; j++)
                {
                    double o = 0;
                    for (int i = 0; i < keyDim; i++) o += (double)Q[qb + i] * S[sb + i * valueDim + j];
                    O[vb + j] = (float)o;
                }
            }
    }

    /// <summary>The scalar oracle computes the chunked form exactly as the recurrence (the block size only changes f32 rounding elsewhere).</summary>
    public void LightningChunked(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                                 DeviceBuffer output, int rows, int heads, int keyDim, int valueDim, int blockSize)
    {
        if (blockSize < 1) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "block size must be ≥ 1");
        LightningRecurrent(q, k, v, slopes, state, output, rows, heads, keyDim, valueDim);
    }

    public void Lrpe(DeviceBuffer x, Weight theta, DeviceBuffer y, int rows, int heads, int headDim, int pos0)
    {
        var X = D(x); var Y = D(y); var T = W(theta);
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < headDim; i++)
                {
                    double a = (double)T[h * headDim + i] * (pos0 + r), v = X[(r * heads + h) * headDim + i];
                    Y[(r * heads + h) * 2 * headDim + i] = (float)(v * Math.Cos(a));
                    Y[(r * heads + h) * 2 * headDim + headDim + i] = (float)(v * Math.Sin(a));
                }
    }

    public void Zero(DeviceBuffer x, long n) => Array.Clear(D(x), 0, checked((int)n));
}
