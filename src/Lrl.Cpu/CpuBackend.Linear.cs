using System.Numerics.Tensors;

namespace Lrl.Cpu;

/// <summary>The linear-attention ops on host memory: SIMD (System.Numerics.Tensors) over rows and head vectors.</summary>
public sealed partial class CpuBackend : ILinearAttentionOps
{
    private static float[] V(Weight w) => w switch
    {
        CpuVector v => v.Data,
        _ => throw new ArgumentException($"{w.Name}: expected a vector weight, got {w}"),
    };

    private LinearHeadJob? _linearJob;
    /// <summary>The per-head recurrent kernels, created on first use and reused.</summary>
    private LinearHeadJob LinearJob => _linearJob ??= new LinearHeadJob(_pool.ThreadCount);

    private static Span<float> S(DeviceBuffer b, long n) => D(b).AsSpan(0, checked((int)n));

    public void Sigmoid(DeviceBuffer x, long n) { var s = S(x, n); TensorPrimitives.Sigmoid(s, s); }

    public void Silu(DeviceBuffer x, long n)
    {
        var s = S(x, n);
        for (int i = 0; i < s.Length; i++) { float v = s[i]; s[i] = v / (1f + MathF.Exp(-v)); }
    }

    public void Tanh(DeviceBuffer x, long n) { var s = S(x, n); TensorPrimitives.Tanh(s, s); }

    public void ReluSquare(DeviceBuffer x, long n)
    {
        var s = S(x, n);
        TensorPrimitives.Max(s, 0f, s);
        TensorPrimitives.Multiply(s, s, s);
    }

    public void Multiply(DeviceBuffer a, DeviceBuffer b, long n) { var s = S(a, n); TensorPrimitives.Multiply(s, S(b, n), s); }

    public void Scale(DeviceBuffer x, float f, long n) { var s = S(x, n); TensorPrimitives.Multiply(s, f, s); }

    public void MultiplyRow(DeviceBuffer x, Weight v, DeviceBuffer y, int rows)
    {
        var m = V(v); int n = m.Length; var X = D(x); var Y = D(y);
        for (int r = 0; r < rows; r++) TensorPrimitives.Multiply(X.AsSpan(r * n, n), m, Y.AsSpan(r * n, n));
    }

    public void TokenShift(DeviceBuffer x, DeviceBuffer state, DeviceBuffer prev, int rows, int width)
    {
        var X = D(x); var St = D(state); var P = D(prev);
        St.AsSpan(0, width).CopyTo(P.AsSpan(0, width));
        if (rows > 1) X.AsSpan(0, (rows - 1) * width).CopyTo(P.AsSpan(width, (rows - 1) * width));
        X.AsSpan((rows - 1) * width, width).CopyTo(St.AsSpan(0, width));
    }

    public void LerpRow(DeviceBuffer a, DeviceBuffer b, Weight mix, DeviceBuffer y, int rows)
    {
        var m = V(mix); int n = m.Length; var A = D(a); var B = D(b); var Y = D(y);
        for (int r = 0; r < rows; r++)
        {
            var ar = A.AsSpan(r * n, n); var br = B.AsSpan(r * n, n); var yr = Y.AsSpan(r * n, n);
            // y = a + (b - a)·m, elementwise so y may alias a or b.
            for (int i = 0; i < n; i++) { float av = ar[i]; yr[i] = av + (br[i] - av) * m[i]; }
        }
    }

    public void Lerp(DeviceBuffer a, DeviceBuffer b, DeviceBuffer t, DeviceBuffer y, long n)
    {
        var A = S(a, n); var B = S(b, n); var T = S(t, n); var Y = S(y, n);
        for (int i = 0; i < Y.Length; i++) { float av = A[i]; Y[i] = av + (B[i] - av) * T[i]; }
    }

    public void GroupNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, int groups, float eps)
    {
        var g = V(w); var bias = V(b); int n = g.Length, gs = n / groups;
        if (gs * groups != n) throw new ArgumentException($"group norm: width {n} is not a multiple of {groups} groups");
        var X = D(x); var Y = D(y);
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < groups; k++)
            {
                int o = r * n + k * gs;
                var xr = X.AsSpan(o, gs); var yr = Y.AsSpan(o, gs);
                float mean = TensorPrimitives.Sum(xr) / gs;
                TensorPrimitives.Subtract(xr, mean, yr);
                float inv = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(yr) / gs + eps);
                TensorPrimitives.Multiply(yr, inv, yr);
                TensorPrimitives.FusedMultiplyAdd(yr, g.AsSpan(k * gs, gs), bias.AsSpan(k * gs, gs), yr);
            }
    }

    public void L2NormalizeGroups(DeviceBuffer x, int rows, int width, int groupSize, float eps)
    {
        var X = D(x);
        for (int o = 0; o < rows * width; o += groupSize)
        {
            var s = X.AsSpan(o, groupSize);
            float inv = 1f / MathF.Max(MathF.Sqrt(TensorPrimitives.SumOfSquares(s)), eps);
            TensorPrimitives.Multiply(s, inv, s);
        }
    }

    public void Wkv5(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight decay, Weight bonus, DeviceBuffer state,
                     DeviceBuffer output, int rows, int heads, int headSize) =>
        LinearJob.Wkv5(_pool, D(r), D(k), D(v), V(decay), V(bonus), D(state), D(output), rows, heads, headSize);

    public void Wkv7(DeviceBuffer r, DeviceBuffer w, DeviceBuffer k, DeviceBuffer v, DeviceBuffer kk, DeviceBuffer a,
                     DeviceBuffer state, DeviceBuffer output, int rows, int heads, int headSize) =>
        LinearJob.Wkv7(_pool, D(r), D(w), D(k), D(v), D(kk), D(a), D(state), D(output), rows, heads, headSize);

    public void Rwkv7Decay(DeviceBuffer w, long n)
    {
        var s = S(w, n);
        float c = MathF.Exp(-0.5f);
        for (int i = 0; i < s.Length; i++) s[i] = MathF.Exp(-c / (1f + MathF.Exp(-s[i])));
    }

    public void Rwkv7KeyScale(DeviceBuffer k, DeviceBuffer a, Weight kA, int rows)
    {
        var ka = V(kA); int n = ka.Length; var K = D(k); var A = D(a);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < n; i++) K[r * n + i] *= 1f + (A[r * n + i] - 1f) * ka[i];
    }

    public void Rwkv7Bonus(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight rK, DeviceBuffer output, int rows, int heads, int headSize)
    {
        var R = D(r); var K = D(k); var Vv = D(v); var rk = V(rK); var O = D(output);
        int c = heads * headSize, n = headSize;
        for (int t = 0; t < rows; t++)
            for (int h = 0; h < heads; h++)
            {
                int b = t * c + h * n;
                float s = 0;
                for (int j = 0; j < n; j++) s += R[b + j] * K[b + j] * rk[h * n + j];
                var o = O.AsSpan(b, n);
                TensorPrimitives.MultiplyAdd(Vv.AsSpan(b, n), s, o, o);
            }
    }

    public void LightningRecurrent(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                                   DeviceBuffer output, int rows, int heads, int keyDim, int valueDim) =>
        LinearJob.Lightning(_pool, D(q), D(k), D(v), V(slopes), D(state), D(output), rows, heads, keyDim, valueDim, 0);

    public void LightningChunked(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                                 DeviceBuffer output, int rows, int heads, int keyDim, int valueDim, int blockSize)
    {
        if (blockSize < 1) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "block size must be ≥ 1");
        LinearJob.Lightning(_pool, D(q), D(k), D(v), V(slopes), D(state), D(output), rows, heads, keyDim, valueDim, blockSize);
    }

    public void Lrpe(DeviceBuffer x, Weight theta, DeviceBuffer y, int rows, int heads, int headDim, int pos0)
    {
        var X = D(x); var Y = D(y); var th = V(theta);
        for (int r = 0; r < rows; r++)
        {
            // torch computes θ·index in f32, then cos/sin.
            float p = pos0 + r;
            for (int h = 0; h < heads; h++)
            {
                int xb = (r * heads + h) * headDim, yb = (r * heads + h) * 2 * headDim;
                for (int i = 0; i < headDim; i++)
                {
                    float a = th[h * headDim + i] * p, v = X[xb + i];
                    var (sin, cos) = MathF.SinCos(a);
                    Y[yb + i] = v * cos;
                    Y[yb + headDim + i] = v * sin;
                }
            }
        }
    }

    public void Zero(DeviceBuffer x, long n) => S(x, n).Clear();
}
