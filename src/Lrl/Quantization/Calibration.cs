using Lrl.Cpu;
using Lrl.Models;

namespace Lrl.Quantization;

/// <summary>
/// Collects GPTQ's calibration statistics: runs a dense model on calibration tokens and accumulates, for every matrix
/// product, H = Σ x xᵀ over the rows x that entered it (keyed by the weight's tensor name). Works for any architecture
/// whose forward pass uses <see cref="IBackend"/>'s matrix products.
/// </summary>
public static class Calibration
{
    /// <summary>Hessians of every Linear weight over <paramref name="sequences"/>, each run from position 0 (cut to the context length).</summary>
    public static Dictionary<string, double[]> CollectHessians(string modelDir, IReadOnlyList<int[]> sequences, int threads = 0,
                                                               IProgress<string>? progress = null)
    {
        if (sequences.Sum(s => s.Length) < 2) throw new LrlException("calibration needs at least 2 tokens");
        int context = Math.Max(1, sequences.Max(s => s.Length));
        using var cpu = new CpuBackend(threads);
        var capture = new CapturingBackend(cpu);
        using var model = ModelRegistry.Load(modelDir, capture, new ModelLoadOptions { ContextLength = context, BatchSize = context });
        int window = Math.Min(context, model.ContextLength);
        var logits = new float[model.VocabSize];
        int done = 0, total = sequences.Sum(s => Math.Min(s.Length, window));
        foreach (var sequence in sequences)
        {
            if (sequence.Length == 0) continue;
            var chunk = sequence.Length <= window ? sequence : sequence[..window];
            model.Forward(chunk, 0, logits);
            done += chunk.Length;
            progress?.Report($"calibration: {done}/{total} tokens");
        }
        return capture.Hessians;
    }

    /// <summary>Wraps a backend and records Σ x xᵀ of every matrix product's input rows.</summary>
    private sealed class CapturingBackend(IBackend inner) : IBackend
    {
        public Dictionary<string, double[]> Hessians { get; } = new(StringComparer.Ordinal);
        private float[] _x = [];

        private void Capture(DeviceBuffer x, int rows, params Weight[] weights)
        {
            int n = weights[0].Cols;
            long len = (long)rows * n;
            if (_x.Length < len) _x = new float[len];
            inner.Download(x, 0, _x.AsSpan(0, (int)len));
            var h0 = Get(weights[0].Name, n);
            // Weights that always share this input (Q/K/V, gate/up) share its statistics: one array for all of them.
            for (int k = 1; k < weights.Length; k++) Hessians.TryAdd(weights[k].Name, h0);
            for (int r = 0; r < rows; r++)
            {
                var xr = _x.AsSpan(r * n, n);
                for (int i = 0; i < n; i++)
                {
                    double xi = xr[i];
                    if (xi == 0) continue;
                    long off = (long)i * n;
                    for (int j = 0; j < n; j++) h0[off + j] += xi * xr[j];
                }
            }
        }

        private double[] Get(string name, int n)
        {
            if (!Hessians.TryGetValue(name, out var h)) Hessians[name] = h = new double[(long)n * n];
            return h;
        }

        public string Name => inner.Name;
        public Weight LoadWeight(HostTensor tensor) => inner.LoadWeight(tensor);
        public DeviceBuffer Allocate(long length) => inner.Allocate(length);
        public void Upload(ReadOnlySpan<float> s, DeviceBuffer d, long o = 0) => inner.Upload(s, d, o);
        public void Download(DeviceBuffer s, long o, Span<float> d) => inner.Download(s, o, d);
        public void Copy(DeviceBuffer s, long so, DeviceBuffer d, long dO, long n) => inner.Copy(s, so, d, dO, n);
        public void Embed(Weight table, ReadOnlySpan<int> tokens, DeviceBuffer x) => inner.Embed(table, tokens, x);
        public void RmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, float eps) => inner.RmsNorm(x, w, y, rows, eps);
        public void AddRmsNorm(DeviceBuffer r, DeviceBuffer d, Weight w, DeviceBuffer y, int rows, float eps) => inner.AddRmsNorm(r, d, w, y, rows, eps);
        public void LayerNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, float eps) => inner.LayerNorm(x, w, b, y, rows, eps);
        public void MatMul(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, Weight? bias = null)
        {
            Capture(x, rows, w);
            inner.MatMul(x, w, y, rows, bias);
        }
        public void MatMul3(DeviceBuffer x, int rows, Weight w0, DeviceBuffer y0, Weight? b0, Weight w1, DeviceBuffer y1, Weight? b1, Weight w2, DeviceBuffer y2, Weight? b2)
        {
            Capture(x, rows, w0, w1, w2);
            inner.MatMul3(x, rows, w0, y0, b0, w1, y1, b1, w2, y2, b2);
        }
        public void GateUpSwiGlu(DeviceBuffer x, int rows, Weight gate, Weight up, DeviceBuffer gateOut, DeviceBuffer upOut)
        {
            Capture(x, rows, gate, up);
            inner.GateUpSwiGlu(x, rows, gate, up, gateOut, upOut);
        }
        public void RopeRows(DeviceBuffer x, int row0, int rows, int heads, int headDim, int pos0, RopeTable rope) => inner.RopeRows(x, row0, rows, heads, headDim, pos0, rope);
        public void AttentionRows(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer o, int row0, int rows, int pos0, int heads, int kvHeads, int headDim, float scale) =>
            inner.AttentionRows(q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim, scale);
        public void AttentionSequences(DeviceBuffer q, DeviceBuffer o, ReadOnlySpan<SequenceRows> sequences, int heads, int kvHeads, int headDim, float scale) =>
            inner.AttentionSequences(q, o, sequences, heads, kvHeads, headDim, scale);
        public void SwiGlu(DeviceBuffer g, DeviceBuffer u, DeviceBuffer y, long n) => inner.SwiGlu(g, u, y, n);
        public void Gelu(DeviceBuffer x, long n) => inner.Gelu(x, n);
        public void Add(DeviceBuffer a, DeviceBuffer b, long n) => inner.Add(a, b, n);
        public void Synchronize() => inner.Synchronize();
        public void Dispose() { }
    }
}
