using System.Diagnostics;

namespace Lrl.Bench;

/// <summary>
/// Wraps a backend and times every op (synchronizing around each, so GPU times are real): where a decoded token's
/// time goes, by op and by matrix shape, with the GB/s each matrix product reached. For `lrlrun bench --profile`.
/// </summary>
public sealed class ProfilingBackend(IBackend inner) : IBackend, IQuantizedBackend, ILoraOps
{
    private readonly Dictionary<string, (long Ticks, long Calls, long Bytes)> _ops = new();
    private readonly Stopwatch _clock = new();

    public string Name => inner.Name;
    public bool Enabled { get; set; }

    public void Reset() => _ops.Clear();

    /// <summary>(op, total ms, calls, GB/s or 0) sorted by time.</summary>
    public IEnumerable<(string Op, double Ms, long Calls, double GBs)> Report() =>
        _ops.OrderByDescending(kv => kv.Value.Ticks).Select(kv =>
        {
            double s = kv.Value.Ticks / (double)Stopwatch.Frequency;
            return (kv.Key, s * 1e3, kv.Value.Calls, kv.Value.Bytes > 0 ? kv.Value.Bytes / s / 1e9 : 0);
        });

    // Disabled, every op goes straight through (no op name formatted, no closure allocated), so the "unprofiled"
    // time of `bench --profile` is the plain decode loop's.
    private void Time(string op, long bytes, Action run)
    {
        if (!Enabled) { run(); return; }
        inner.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        run();
        inner.Synchronize();
        long dt = Stopwatch.GetTimestamp() - t0;
        _ops[op] = _ops.TryGetValue(op, out var v) ? (v.Ticks + dt, v.Calls + 1, v.Bytes + bytes) : (dt, 1, bytes);
    }

    private static string Shape(Weight w) => $"{w.Format} {w.Rows}x{w.Cols}";

    public Weight LoadWeight(HostTensor tensor) => inner.LoadWeight(tensor);
    public Weight LoadQuantized(QuantizedTensor q) =>
        (inner as IQuantizedBackend ?? throw new LrlException($"backend {inner.Name} has no quantized weights")).LoadQuantized(q);
    private ILoraOps Lora => inner as ILoraOps ?? throw new LrlException($"backend {inner.Name} has no LoRA ops");
    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                                DType stored = DType.F32) =>
        Lora.LoadLora(name, a, b, rank, inFeatures, outFeatures, stored);
    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y)
    {
        if (!Enabled) { Lora.LoraRows(x, row0, rows, lora, scale, y); return; }
        Time($"lora r{lora.Rank} {lora.OutFeatures}x{lora.InFeatures}", lora.ByteSize, () => Lora.LoraRows(x, row0, rows, lora, scale, y));
    }
    public void LoraEmbedRows(ReadOnlySpan<int> tokens, int row0, LoraWeights lora, float scale, DeviceBuffer y)
    {
        if (!Enabled) { Lora.LoraEmbedRows(tokens, row0, lora, scale, y); return; }
        var ids = tokens.ToArray();
        Time($"lora embedding r{lora.Rank}", 0, () => Lora.LoraEmbedRows(ids, row0, lora, scale, y));
    }
    public bool FusesLora => (inner as ILoraOps)?.FusesLora == true;
    public int MaxDeviceTopK => inner.MaxDeviceTopK;
    public int Argmax(DeviceBuffer x, int n)
    {
        if (!Enabled) return inner.Argmax(x, n); // no closure per token when not profiling
        int id = 0;
        Time("argmax", 0, () => id = inner.Argmax(x, n));
        return id;
    }
    public int Sample(DeviceBuffer x, int n, float temperature, int topK, float topP, float uniform01, float minP = 0)
    {
        if (!Enabled) return inner.Sample(x, n, temperature, topK, topP, uniform01, minP);
        int id = 0;
        Time("sample", 0, () => id = inner.Sample(x, n, temperature, topK, topP, uniform01, minP));
        return id;
    }
    public void StageLora(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y) => Lora.StageLora(x, row0, rows, lora, scale, y);
    public int PendingLora => (inner as ILoraOps)?.PendingLora ?? 0;
    public void ClearStagedLora() => (inner as ILoraOps)?.ClearStagedLora();
    public void Enter() => inner.Enter();
    public DeviceBuffer Allocate(long length) => inner.Allocate(length);
    public void Upload(ReadOnlySpan<float> source, DeviceBuffer destination, long destinationOffset = 0) => inner.Upload(source, destination, destinationOffset);
    public void Download(DeviceBuffer source, long sourceOffset, Span<float> destination)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Download(source, sourceOffset, destination);
        if (Enabled) Add("download", Stopwatch.GetTimestamp() - t0, 0);
    }
    private void Add(string op, long dt, long bytes) =>
        _ops[op] = _ops.TryGetValue(op, out var v) ? (v.Ticks + dt, v.Calls + 1, v.Bytes + bytes) : (dt, 1, bytes);

    public void Copy(DeviceBuffer s, long so, DeviceBuffer d, long dO, long n)
    {
        if (!Enabled) { inner.Copy(s, so, d, dO, n); return; }
        Time("copy", 0, () => inner.Copy(s, so, d, dO, n));
    }
    public void Embed(Weight table, ReadOnlySpan<int> tokens, DeviceBuffer x)
    {
        if (!Enabled) { inner.Embed(table, tokens, x); return; }
        var ids = tokens.ToArray(); // a lambda cannot capture a span
        Time("embed", 0, () => inner.Embed(table, ids, x));
    }
    public void RmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, float eps)
    {
        if (!Enabled) { inner.RmsNorm(x, w, y, rows, eps); return; }
        Time("rmsnorm", 0, () => inner.RmsNorm(x, w, y, rows, eps));
    }
    public void AddRmsNorm(DeviceBuffer r, DeviceBuffer d, Weight w, DeviceBuffer y, int rows, float eps)
    {
        if (!Enabled) { inner.AddRmsNorm(r, d, w, y, rows, eps); return; }
        Time("add_rmsnorm", 0, () => inner.AddRmsNorm(r, d, w, y, rows, eps));
    }
    public void LayerNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, float eps)
    {
        if (!Enabled) { inner.LayerNorm(x, w, b, y, rows, eps); return; }
        Time("layernorm", 0, () => inner.LayerNorm(x, w, b, y, rows, eps));
    }

    public int ExactRows { get => inner.ExactRows; set => inner.ExactRows = value; }

    public void MatMul(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, Weight? bias = null)
    {
        if (!Enabled) { inner.MatMul(x, w, y, rows, bias); return; }
        Time($"matmul {Shape(w)}", w.ByteSize, () => inner.MatMul(x, w, y, rows, bias));
    }
    public void MatMul3(DeviceBuffer x, int rows, Weight w0, DeviceBuffer y0, Weight? b0, Weight w1, DeviceBuffer y1, Weight? b1, Weight w2, DeviceBuffer y2, Weight? b2)
    {
        if (!Enabled) { inner.MatMul3(x, rows, w0, y0, b0, w1, y1, b1, w2, y2, b2); return; }
        Time($"matmul3 {Shape(w0)}+{w1.Rows}+{w2.Rows}", w0.ByteSize + w1.ByteSize + w2.ByteSize,
             () => inner.MatMul3(x, rows, w0, y0, b0, w1, y1, b1, w2, y2, b2));
    }
    public void GateUpSwiGlu(DeviceBuffer x, int rows, Weight gate, Weight up, DeviceBuffer gateOut, DeviceBuffer upOut)
    {
        if (!Enabled) { inner.GateUpSwiGlu(x, rows, gate, up, gateOut, upOut); return; }
        Time($"gate_up_swiglu 2x{Shape(gate)}", gate.ByteSize + up.ByteSize, () => inner.GateUpSwiGlu(x, rows, gate, up, gateOut, upOut));
    }
    public void RopeAndCache(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, int row0, int rows, int heads, int kvHeads, int headDim,
                             int pos0, RopeTable rope, DeviceBuffer kCache, DeviceBuffer vCache)
    {
        if (!Enabled) { inner.RopeAndCache(q, k, v, row0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache); return; }
        Time("rope+cache", 0, () => inner.RopeAndCache(q, k, v, row0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache));
    }

    public void RopeAndCacheSequences(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences,
                                      int heads, int kvHeads, int headDim, RopeTable rope)
    {
        if (!Enabled) { inner.RopeAndCacheSequences(q, k, v, sequences, heads, kvHeads, headDim, rope); return; }
        var copy = sequences.ToArray();
        Time("rope+cache", 0, () => inner.RopeAndCacheSequences(q, k, v, copy, heads, kvHeads, headDim, rope));
    }

    public void CacheSequences(DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences, int kvDim)
    {
        if (!Enabled) { inner.CacheSequences(k, v, sequences, kvDim); return; }
        var copy = sequences.ToArray();
        Time("cache", 0, () => inner.CacheSequences(k, v, copy, kvDim));
    }

    public void RopeRows(DeviceBuffer x, int row0, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        if (!Enabled) { inner.RopeRows(x, row0, rows, heads, headDim, pos0, rope); return; }
        Time("rope", 0, () => inner.RopeRows(x, row0, rows, heads, headDim, pos0, rope));
    }
    public void AttentionRows(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer o, int row0, int rows, int pos0, int heads, int kvHeads, int headDim, float scale)
    {
        if (!Enabled) { inner.AttentionRows(q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim, scale); return; }
        Time("attention", 0, () => inner.AttentionRows(q, k, v, o, row0, rows, pos0, heads, kvHeads, headDim, scale));
    }
    public void AttentionSequences(DeviceBuffer q, DeviceBuffer o, ReadOnlySpan<SequenceRows> sequences, int heads, int kvHeads, int headDim, float scale)
    {
        if (!Enabled) { inner.AttentionSequences(q, o, sequences, heads, kvHeads, headDim, scale); return; }
        var copy = sequences.ToArray();
        Time("attention", 0, () => inner.AttentionSequences(q, o, copy, heads, kvHeads, headDim, scale));
    }
    public void SwiGlu(DeviceBuffer g, DeviceBuffer u, DeviceBuffer y, long n)
    {
        if (!Enabled) { inner.SwiGlu(g, u, y, n); return; }
        Time("swiglu", 0, () => inner.SwiGlu(g, u, y, n));
    }
    public void Gelu(DeviceBuffer x, long n)
    {
        if (!Enabled) { inner.Gelu(x, n); return; }
        Time("gelu", 0, () => inner.Gelu(x, n));
    }
    public void Add(DeviceBuffer a, DeviceBuffer b, long n)
    {
        if (!Enabled) { inner.Add(a, b, n); return; }
        Time("add", 0, () => inner.Add(a, b, n));
    }
    public void Synchronize() => inner.Synchronize();
    public void Dispose() => inner.Dispose();
}
