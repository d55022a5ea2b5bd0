namespace Lrl.Kernels.Reference;

/// <summary>
/// The scalar oracle: every op as the plainest loop, accumulating in double. Slow on purpose.
/// Tests compare every other backend with this one on random inputs, and run whole models through it.
/// </summary>
public sealed partial class ReferenceBackend : IBackend
{
    public string Name => "reference";

    public sealed class RefWeight(string name, int rows, int cols, float[] data, string format) : Weight(name, rows, cols)
    {
        public float[] Data { get; } = data;
        public override string Format => format;
        public override long ByteSize => (long)Data.Length * 4;
    }

    public sealed class RefBuffer(long length) : DeviceBuffer(length)
    {
        public float[] Data { get; } = new float[length];
    }

    private static float[] D(DeviceBuffer b) => ((RefBuffer)b).Data;
    private static float[] W(Weight w) => ((RefWeight)w).Data;

    public Weight LoadWeight(HostTensor t)
    {
        if (t.Rank is < 1 or > 2) throw new ArgumentException($"{t.Name}: expected a vector or matrix, got {t.ShapeString}");
        int rows = t.Rank == 2 ? t.Shape[0] : 1, cols = t.Shape[^1];
        return new RefWeight(t.Name, rows, cols, t.ToFloatArray(), t.DType.ToString());
    }

    public DeviceBuffer Allocate(long length) => new RefBuffer(length);
    public void Upload(ReadOnlySpan<float> s, DeviceBuffer d, long off = 0) => s.CopyTo(D(d).AsSpan((int)off));
    public void Download(DeviceBuffer s, long off, Span<float> d) => D(s).AsSpan((int)off, d.Length).CopyTo(d);
    public void Copy(DeviceBuffer s, long so, DeviceBuffer d, long dO, long n) => Array.Copy(D(s), so, D(d), dO, n);

    public void Embed(Weight table, ReadOnlySpan<int> tokens, DeviceBuffer x)
    {
        int dim = table.Cols;
        for (int r = 0; r < tokens.Length; r++)
            Array.Copy(W(table), (long)tokens[r] * dim, D(x), (long)r * dim, dim);
    }

    public void RmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, float eps)
    {
        int n = w.Cols; var X = D(x); var Y = D(y); var G = W(w);
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < n; i++) ss += (double)X[r * n + i] * X[r * n + i];
            double inv = 1.0 / Math.Sqrt(ss / n + eps);
            for (int i = 0; i < n; i++) Y[r * n + i] = (float)(X[r * n + i] * inv * G[i]);
        }
    }

    public void AddRmsNorm(DeviceBuffer residual, DeviceBuffer delta, Weight w, DeviceBuffer y, int rows, float eps)
    {
        Add(residual, delta, (long)rows * w.Cols);
        RmsNorm(residual, w, y, rows, eps);
    }

    public void LayerNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, float eps)
    {
        int n = w.Cols; var X = D(x); var Y = D(y); var G = W(w); var B = W(b);
        for (int r = 0; r < rows; r++)
        {
            double mean = 0, var = 0;
            for (int i = 0; i < n; i++) mean += X[r * n + i];
            mean /= n;
            for (int i = 0; i < n; i++) { double d = X[r * n + i] - mean; var += d * d; }
            double inv = 1.0 / Math.Sqrt(var / n + eps);
            for (int i = 0; i < n; i++) Y[r * n + i] = (float)((X[r * n + i] - mean) * inv * G[i] + B[i]);
        }
    }

    public void MatMul(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, Weight? bias = null)
    {
        int inF = w.Cols, outF = w.Rows; var X = D(x); var Y = D(y); var M = W(w);
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outF; o++)
            {
                double s = bias is null ? 0 : W(bias)[o];
                for (int i = 0; i < inF; i++) s += (double)X[(long)r * inF + i] * M[(long)o * inF + i];
                Y[(long)r * outF + o] = (float)s;
            }
    }

    public void RopeRows(DeviceBuffer x, int row0, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        var X = D(x); int half = rope.RotaryDim / 2;
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                int b = ((row0 + r) * heads + h) * headDim;
                for (int i = 0; i < half; i++)
                {
                    double ang = (double)(pos0 + r) * rope.InvFreq[i];
                    double c = Math.Cos(ang), s = Math.Sin(ang);
                    double a0 = X[b + i], a1 = X[b + i + half];
                    X[b + i] = (float)(a0 * c - a1 * s);
                    X[b + i + half] = (float)(a1 * c + a0 * s);
                }
            }
    }

    public void AttentionRows(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                              int row0, int rows, int pos0, int heads, int kvHeads, int headDim, float scale)
    {
        var Q = D(q); var K = D(kCache); var V = D(vCache); var O = D(output);
        int kvDim = kvHeads * headDim, group = heads / kvHeads;
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / group, n = pos0 + r + 1;
                var att = new double[n];
                double max = double.NegativeInfinity;
                for (int t = 0; t < n; t++)
                {
                    double s = 0;
                    for (int i = 0; i < headDim; i++) s += (double)Q[((row0 + r) * heads + h) * headDim + i] * K[t * kvDim + kvh * headDim + i];
                    att[t] = s * scale;
                    max = Math.Max(max, att[t]);
                }
                double sum = 0;
                for (int t = 0; t < n; t++) { att[t] = Math.Exp(att[t] - max); sum += att[t]; }
                for (int i = 0; i < headDim; i++)
                {
                    double acc = 0;
                    for (int t = 0; t < n; t++) acc += att[t] / sum * V[t * kvDim + kvh * headDim + i];
                    O[((row0 + r) * heads + h) * headDim + i] = (float)acc;
                }
            }
    }

    public void SwiGlu(DeviceBuffer gate, DeviceBuffer up, DeviceBuffer y, long n)
    {
        var G = D(gate); var U = D(up); var Y = D(y);
        for (long i = 0; i < n; i++) { double g = G[i]; Y[i] = (float)(g / (1 + Math.Exp(-g)) * U[i]); }
    }

    public void Gelu(DeviceBuffer x, long n)
    {
        var X = D(x);
        for (long i = 0; i < n; i++)
        {
            double v = X[i];
            X[i] = (float)(0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v))));
        }
    }

    public void Add(DeviceBuffer a, DeviceBuffer b, long n)
    {
        var A = D(a); var B = D(b);
        for (long i = 0; i < n; i++) A[i] += B[i];
    }

    public void Synchronize() { }
    public void Dispose() { }
}
