namespace Lrl;

/// <summary>
/// A weight held by a backend, in its stored format (f32/f16/bf16 dense, or quantized).
/// Matrices follow the Hugging Face Linear layout: <see cref="Rows"/> = out features, <see cref="Cols"/> = in features.
/// Vectors (norm weights, biases) have Rows = 1.
/// </summary>
public abstract class Weight : IDisposable
{
    public string Name { get; }
    /// <summary>Storage format name, e.g. "F32", "BF16", "Q8_G64".</summary>
    public abstract string Format { get; }
    public int Rows { get; }
    public int Cols { get; }
    /// <summary>Bytes this weight occupies as stored (what a matrix-vector product reads).</summary>
    public abstract long ByteSize { get; }

    protected Weight(string name, int rows, int cols) { Name = name; Rows = rows; Cols = cols; }
    public virtual void Dispose() { }
    public override string ToString() => $"{Name} {Format} [{Rows}, {Cols}]";
}

/// <summary>An f32 activation buffer owned by a backend (host memory on the CPU, device memory on a GPU).</summary>
public abstract class DeviceBuffer : IDisposable
{
    public long Length { get; }
    protected DeviceBuffer(long length) => Length = length;
    public virtual void Dispose() { }
}

/// <summary>One sequence's rows of a batched step for <see cref="IBackend.AttentionSequences"/>: query rows Row0 .. Row0+Rows-1 at positions Pos0 .., over its own caches.</summary>
public readonly record struct SequenceRows(int Row0, int Rows, int Pos0, DeviceBuffer KCache, DeviceBuffer VCache);

/// <summary>Rotary embedding frequencies (already adjusted for rope_scaling), shared by every layer.</summary>
public sealed class RopeTable
{
    /// <summary>inv_freq[i] for i in [0, rotaryDim/2).</summary>
    public float[] InvFreq { get; }
    /// <summary>Dimensions rotated per head (even, ≤ head_dim); HF rotate_half pairing (i, i + rotaryDim/2).</summary>
    public int RotaryDim => InvFreq.Length * 2;
    public RopeTable(float[] invFreq) => InvFreq = invFreq;

    private sealed record AngleTable(float[] Cos, float[] Sin, int Positions);
    private AngleTable _angles = new([], [], 0);
    private readonly object _grow = new();

    /// <summary>
    /// cos and sin of pos·inv_freq[i] at [pos·RotaryDim/2 + i] for every position below <paramref name="end"/> (at
    /// least), computed in double once per position and kept: every layer, and every sequence of a batched step, reads
    /// the same table instead of recomputing its positions' trigonometry. Safe to call from several threads (a grown
    /// table is published whole; arrays handed out never change).
    /// </summary>
    public (float[] Cos, float[] Sin) Angles(int end)
    {
        var a = Volatile.Read(ref _angles);
        if (a.Positions >= end) return (a.Cos, a.Sin);
        if (end < 0) throw new ArgumentOutOfRangeException(nameof(end), $"position {end} is negative");
        lock (_grow)
        {
            a = _angles;
            if (a.Positions >= end) return (a.Cos, a.Sin);
            int half = InvFreq.Length;
            // Doubling keeps the growth's copies linear in the positions reached.
            int positions = Math.Max(end, (int)Math.Min(2L * a.Positions, int.MaxValue / Math.Max(1, half)));
            var cos = new float[(long)positions * half];
            var sin = new float[cos.Length];
            a.Cos.CopyTo(cos, 0);
            a.Sin.CopyTo(sin, 0);
            for (int pos = a.Positions; pos < positions; pos++)
                for (int i = 0; i < half; i++)
                {
                    double angle = (double)pos * InvFreq[i];
                    cos[(long)pos * half + i] = (float)Math.Cos(angle);
                    sin[(long)pos * half + i] = (float)Math.Sin(angle);
                }
            Volatile.Write(ref _angles, new AngleTable(cos, sin, positions));
            return (cos, sin);
        }
    }
}

/// <summary>
/// The narrow op-level interface every architecture's forward pass is written against.
/// Activations are f32, row-major [rows, width]. Ops never allocate per call on the hot path.
/// </summary>
public interface IBackend : IDisposable
{
    string Name { get; }

    /// <summary>Makes a weight from a checkpoint tensor (1-D vector or 2-D [out, in] matrix), keeping its stored dtype.</summary>
    Weight LoadWeight(HostTensor tensor);

    DeviceBuffer Allocate(long length);
    void Upload(ReadOnlySpan<float> source, DeviceBuffer destination, long destinationOffset = 0);
    void Download(DeviceBuffer source, long sourceOffset, Span<float> destination);
    void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count);

    /// <summary>x[r, :] = table[tokens[r], :].</summary>
    void Embed(Weight table, ReadOnlySpan<int> tokens, DeviceBuffer x);

    /// <summary>y[r] = x[r] / rms(x[r]) * w, rows of width w.Cols.</summary>
    void RmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, float eps);

    /// <summary>Fused: residual += delta; y = RmsNorm(residual).</summary>
    void AddRmsNorm(DeviceBuffer residual, DeviceBuffer delta, Weight w, DeviceBuffer y, int rows, float eps);

    /// <summary>y[r] = (x[r] - mean) / sqrt(var + eps) * w + b.</summary>
    void LayerNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, float eps);

    /// <summary>y[r, o] = Σ_i x[r, i]·W[o, i] (+ bias[o]) for r &lt; rows.</summary>
    void MatMul(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, Weight? bias = null);

    /// <summary>
    /// A product that ends a residual block, and the next block's norm: y = x·Wᵀ, residual += y, normed =
    /// RmsNorm(residual)·norm. A GPU runs a decode step's in one launch; by default the two ops.
    /// </summary>
    void MatMulAddRmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, DeviceBuffer residual, Weight norm, DeviceBuffer normed, float eps)
    {
        MatMul(x, w, y, rows);
        AddRmsNorm(residual, y, norm, normed, rows, eps);
    }

    /// <summary>
    /// While above 0: products of up to this many rows give every row the bits of its one-row product, whatever the
    /// backend would choose for speed (a speculative verification pass sets it, so each candidate's logits are exactly
    /// those of decoding it alone). Backends whose products are per-row exact already, or that cannot be, ignore it.
    /// </summary>
    int ExactRows { get => 0; set { } }

    /// <summary>
    /// Three products of one input in one pass (Q, K and V): y_j = x·W_jᵀ (+ b_j). Backends fuse them into one dispatch;
    /// the default runs three <see cref="MatMul"/>s.
    /// </summary>
    void MatMul3(DeviceBuffer x, int rows, Weight w0, DeviceBuffer y0, Weight? b0, Weight w1, DeviceBuffer y1, Weight? b1,
                 Weight w2, DeviceBuffer y2, Weight? b2)
    {
        MatMul(x, w0, y0, rows, b0);
        MatMul(x, w1, y1, rows, b1);
        MatMul(x, w2, y2, rows, b2);
    }

    /// <summary>
    /// The SwiGLU MLP's first half: gateOut = silu(x·Gᵀ) ⊙ (x·Uᵀ), with upOut as scratch of the same size.
    /// Backends fuse the two products and the activation; the default runs them one after another.
    /// </summary>
    void GateUpSwiGlu(DeviceBuffer x, int rows, Weight gate, Weight up, DeviceBuffer gateOut, DeviceBuffer upOut)
    {
        MatMul(x, gate, gateOut, rows);
        MatMul(x, up, upOut, rows);
        SwiGlu(gateOut, upOut, gateOut, (long)rows * gate.Rows);
    }

    /// <summary>
    /// In-place rotary embedding of rows row0 .. row0+rows-1 of x [*, heads·headDim]; row row0 + r is at position
    /// pos0 + r (a batched step rotates each sequence's rows by its own positions).
    /// </summary>
    void RopeRows(DeviceBuffer x, int row0, int rows, int heads, int headDim, int pos0, RopeTable rope);

    /// <summary>
    /// As <see cref="BackendOps.Attention"/> for query rows row0 .. row0+rows-1 of q and output (one sequence's rows inside a
    /// batched step whose other rows belong to other sequences with their own caches).
    /// </summary>
    void AttentionRows(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                       int row0, int rows, int pos0, int heads, int kvHeads, int headDim, float scale);

    /// <summary>
    /// <see cref="AttentionRows"/> for several sequences' rows of one batched step at once (each with its own caches and
    /// positions), so a backend can run them in one dispatch or launch; each row's result is what
    /// <see cref="AttentionRows"/> gives it. The default calls <see cref="AttentionRows"/> per sequence.
    /// </summary>
    void AttentionSequences(DeviceBuffer q, DeviceBuffer output, ReadOnlySpan<SequenceRows> sequences, int heads, int kvHeads, int headDim, float scale)
    {
        foreach (var s in sequences) AttentionRows(q, s.KCache, s.VCache, output, s.Row0, s.Rows, s.Pos0, heads, kvHeads, headDim, scale);
    }

    /// <summary>
    /// The attention block's position step for one sequence's rows row0 .. row0+rows-1 at positions pos0 ..: rotate
    /// those rows of q and k, then write the rows of k and v into the caches ([position, kvHeads·headDim]) at pos0 ...
    /// Backends fuse it (one launch on a GPU); the rows of k are unspecified afterwards (attention reads the cache).
    /// </summary>
    void RopeAndCache(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, int row0, int rows, int heads, int kvHeads, int headDim,
                      int pos0, RopeTable rope, DeviceBuffer kCache, DeviceBuffer vCache)
    {
        long kvDim = (long)kvHeads * headDim;
        RopeRows(q, row0, rows, heads, headDim, pos0, rope);
        RopeRows(k, row0, rows, kvHeads, headDim, pos0, rope);
        Copy(k, row0 * kvDim, kCache, pos0 * kvDim, rows * kvDim);
        Copy(v, row0 * kvDim, vCache, pos0 * kvDim, rows * kvDim);
    }

    /// <summary>
    /// <see cref="RopeAndCache"/> for several sequences' rows of one batched step (each at its own positions, into its own
    /// caches), so a backend can run them in one launch; each row's result is what <see cref="RopeAndCache"/> gives it.
    /// The default calls <see cref="RopeAndCache"/> per sequence.
    /// </summary>
    void RopeAndCacheSequences(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences,
                               int heads, int kvHeads, int headDim, RopeTable rope)
    {
        foreach (var s in sequences) RopeAndCache(q, k, v, s.Row0, s.Rows, heads, kvHeads, headDim, s.Pos0, rope, s.KCache, s.VCache);
    }

    /// <summary>
    /// The K/V cache writes of several sequences' rows of one batched step without rotation (GPT-2): rows Row0 .. of k and
    /// v ([row, kvDim]) into each sequence's caches at Pos0 ... The default copies per sequence; a GPU runs them in one
    /// launch.
    /// </summary>
    void CacheSequences(DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences, int kvDim)
    {
        foreach (var s in sequences)
        {
            Copy(k, (long)s.Row0 * kvDim, s.KCache, (long)s.Pos0 * kvDim, (long)s.Rows * kvDim);
            Copy(v, (long)s.Row0 * kvDim, s.VCache, (long)s.Pos0 * kvDim, (long)s.Rows * kvDim);
        }
    }

    /// <summary>
    /// One sequence's attention entry at rows 0 .. rows-1: Q/K/V products (<see cref="MatMul3"/>), then RoPE and the K/V
    /// cache writes (<see cref="RopeAndCache"/>) at positions pos0 ... A GPU runs a decode step's in one launch; by default
    /// the two ops.
    /// </summary>
    void MatMul3RopeAndCache(DeviceBuffer x, int rows, Weight wq, DeviceBuffer q, Weight? bq, Weight wk, DeviceBuffer k, Weight? bk,
                             Weight wv, DeviceBuffer v, Weight? bv, int heads, int kvHeads, int headDim, int pos0, RopeTable rope,
                             DeviceBuffer kCache, DeviceBuffer vCache)
    {
        MatMul3(x, rows, wq, q, bq, wk, k, bk, wv, v, bv);
        RopeAndCache(q, k, v, 0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache);
    }

    /// <summary>
    /// Tree-masked attention for speculative verification of a tree of candidates: query rows row0 .. row0+rows-1 are
    /// tree nodes whose K/V sit in the caches at slots pos0 .. pos0+rows-1 (node order); node r attends to slots
    /// 0 .. pos0-1 (the sequence so far) and to the slots of its ancestors and itself (parents[r]: the parent's node
    /// index, −1 for the root, always below r). A chain (parents[r] = r − 1) is plain causal attention. The default
    /// runs <see cref="TreeAttention.Compute"/> on host copies (correct on every backend); the CPU runs it in place.
    /// </summary>
    void AttentionTree(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                       int row0, int rows, int pos0, ReadOnlySpan<int> parents, int heads, int kvHeads, int headDim, float scale) =>
        TreeAttention.OnHost(this, q, kCache, vCache, output, row0, rows, pos0, parents, heads, kvHeads, headDim, scale);

    /// <summary>y[i] = silu(gate[i]) * up[i] for i &lt; n.</summary>
    void SwiGlu(DeviceBuffer gate, DeviceBuffer up, DeviceBuffer y, long n);

    /// <summary>In place, x[i] = gelu_tanh(x[i]) (GPT-2's gelu_new).</summary>
    void Gelu(DeviceBuffer x, long n);

    /// <summary>a[i] += b[i] for i &lt; n.</summary>
    void Add(DeviceBuffer a, DeviceBuffer b, long n);

    /// <summary>Waits for queued work (no-op on the CPU).</summary>
    void Synchronize();

    /// <summary>
    /// Index of the largest of x[0..n) (the first on ties): greedy decoding's choice. A GPU computes it on the device
    /// and copies back one id instead of the logits; the default reads them to the host.
    /// </summary>
    int Argmax(DeviceBuffer x, int n)
    {
        var v = new float[n];
        Download(x, 0, v);
        return Logits.ArgMax(v);
    }

    /// <summary>
    /// Largest top-k <see cref="Sample"/> takes where the logits are (a GPU: 1024), so generation may sample there and
    /// copy back one id per token; 0 (the default): sampling reads the logits to the host.
    /// </summary>
    int MaxDeviceTopK => 0;

    /// <summary>
    /// Top-k / top-p sampling of x[0..n) at a temperature given a uniform draw in [0, 1) (the rule of
    /// <see cref="Logits.SampleTopK"/>; temperature 0 is the argmax). The default reads the logits to the host.
    /// </summary>
    int Sample(DeviceBuffer x, int n, float temperature, int topK, float topP, float uniform01, float minP = 0)
    {
        var v = new float[n];
        Download(x, 0, v);
        return temperature == 0 ? Logits.ArgMax(v) : Logits.SampleTopK(v, temperature, topK, topP, uniform01, minP);
    }

    /// <summary>
    /// Makes the backend usable from the calling thread (CUDA: its context is current per thread, so the GPU backend
    /// binds it; no-op elsewhere). Models call it at the start of every forward pass, state creation and release, so
    /// callers on any thread (a server's thread pool, a decode loop) launch into the right context.
    /// </summary>
    void Enter() { }
}

/// <summary>The whole-buffer forms of the row-ranged ops (one sequence's rows starting at row 0).</summary>
public static class BackendOps
{
    /// <summary>In-place rotary embedding of x [rows, heads·headDim]; row r is at position pos0 + r.</summary>
    public static void Rope(this IBackend b, DeviceBuffer x, int rows, int heads, int headDim, int pos0, RopeTable rope) =>
        b.RopeRows(x, 0, rows, heads, headDim, pos0, rope);

    /// <summary>
    /// Causal attention against a KV cache laid out [position, kvHeads·headDim] that already holds positions
    /// 0 .. pos0+rows-1. Query row r (position pos0 + r) attends to positions 0 .. pos0 + r.
    /// q and output are [rows, heads·headDim]; query head h reads kv head h / (heads / kvHeads).
    /// </summary>
    public static void Attention(this IBackend b, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                                 int rows, int pos0, int heads, int kvHeads, int headDim, float scale) =>
        b.AttentionRows(q, kCache, vCache, output, 0, rows, pos0, heads, kvHeads, headDim, scale);
}

/// <summary>Host helpers over logits.</summary>
/// <summary>
/// Optional fused op for draft heads: a backend that has it runs a head's residual block in one pass.
/// </summary>
public interface IDraftHeadOps
{
    /// <summary>
    /// y = x + SiLU(x·Wᵀ + b) for one row and a square W [n, n] (Medusa's residual block); false when this weight's format
    /// has no fused kernel (the caller then runs the product, the activation and the add apart). y must not alias x.
    /// </summary>
    bool TryResidualSilu(DeviceBuffer x, Weight w, Weight bias, DeviceBuffer y);
}

public static class Logits
{
    /// <summary>Index of the largest value, the first on ties (greedy decoding's choice).</summary>
    public static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        float bv = v[0];
        for (int i = 1; i < v.Length; i++) if (v[i] > bv) { bv = v[i]; best = i; }
        return best;
    }

    /// <summary>
    /// The device sampling rule (SamplingKernels.Sample) on the host: the <paramref name="topK"/> largest values (0: all;
    /// ties: lower id first) best first, softmax((v − max)/temperature) in float, the smallest prefix whose mass
    /// reaches <paramref name="topP"/>, of that the candidates at least <paramref name="minP"/> × as likely as the first,
    /// then the first candidate where the running mass passes uniform01 × the kept mass.
    /// </summary>
    public static int SampleTopK(ReadOnlySpan<float> v, float temperature, int topK, float topP, float uniform01, float minP = 0)
    {
        int k = topK <= 0 ? v.Length : Math.Min(topK, v.Length);
        var ids = new int[v.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = i;
        var keys = v.ToArray();
        Array.Sort(ids, (a, b) => keys[a] != keys[b] ? keys[b].CompareTo(keys[a]) : a.CompareTo(b));
        float max = keys[ids[0]], inv = 1f / temperature, sum = 0;
        var p = new float[k];
        for (int i = 0; i < k; i++) { p[i] = MathF.Exp((keys[ids[i]] - max) * inv); sum += p[i]; }
        float total = 0;
        int keep = k;
        for (int i = 0; i < k; i++)
        {
            total += p[i] / sum;
            if (topP < 1f && total >= topP) { keep = i + 1; break; }
        }
        if (minP > 0)
        {
            float floor = minP * (p[0] / sum);
            int kept = 1;
            while (kept < keep && p[kept] / sum >= floor) kept++;
            if (kept < keep)
            {
                keep = kept;
                total = 0;
                for (int i = 0; i < keep; i++) total += p[i] / sum;
            }
        }
        float r = uniform01 * total;
        for (int i = 0; i < keep; i++)
        {
            r -= p[i] / sum;
            if (r < 0) return ids[i];
        }
        return ids[keep - 1];
    }
}

/// <summary>The host algorithm of <see cref="IBackend.AttentionTree"/> (float products, double softmax sums).</summary>
public static class TreeAttention
{
    /// <summary>Checks a parent array: one root (−1) first, every other node's parent an earlier node.</summary>
    public static void Validate(ReadOnlySpan<int> parents, int rows)
    {
        if (parents.Length != rows) throw new ArgumentException($"parents holds {parents.Length} entries for {rows} rows");
        for (int r = 0; r < rows; r++)
            if (r == 0 ? parents[r] != -1 : parents[r] < 0 || parents[r] >= r)
                throw new ArgumentException($"tree node {r} has parent {parents[r]}: the root comes first (−1), every other node after its parent");
    }

    /// <summary>
    /// <see cref="IBackend.AttentionTree"/> on host copies of the backend's buffers (the interface's default, and a
    /// fallback for shapes a backend's kernel does not take).
    /// </summary>
    public static void OnHost(IBackend b, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                              int row0, int rows, int pos0, ReadOnlySpan<int> parents, int heads, int kvHeads, int headDim, float scale)
    {
        int qDim = heads * headDim, kvDim = kvHeads * headDim, slots = pos0 + rows;
        var qh = new float[rows * qDim];
        var kh = new float[(long)slots * kvDim];
        var vh = new float[(long)slots * kvDim];
        var oh = new float[rows * qDim];
        b.Download(q, (long)row0 * qDim, qh);
        b.Download(kCache, 0, kh);
        b.Download(vCache, 0, vh);
        Compute(qh, kh, vh, oh, 0, rows, pos0, parents, heads, kvHeads, headDim, scale);
        b.Upload(oh, output, (long)row0 * qDim);
    }

    /// <summary>Each node's ancestors-and-itself as a 64-bit mask (two ints, low word first); at most 64 nodes.</summary>
    public static int[] AncestorMasks(ReadOnlySpan<int> parents)
    {
        Validate(parents, parents.Length);
        if (parents.Length > 64) throw new ArgumentException($"a tree mask holds at most 64 nodes, got {parents.Length}");
        var masks = new int[2 * parents.Length];
        for (int r = 0; r < parents.Length; r++)
            for (int a = r; a >= 0; a = parents[a]) masks[2 * r + (a >> 5)] |= 1 << (a & 31);
        return masks;
    }

    /// <summary>
    /// Rows row0 .. row0+rows-1 of q/output ([*, heads·headDim]) against caches [slot, kvHeads·headDim] as
    /// <see cref="IBackend.AttentionTree"/> describes.
    /// </summary>
    public static void Compute(ReadOnlySpan<float> q, ReadOnlySpan<float> kCache, ReadOnlySpan<float> vCache, Span<float> output,
                               int row0, int rows, int pos0, ReadOnlySpan<int> parents, int heads, int kvHeads, int headDim, float scale)
    {
        Validate(parents, rows);
        int qDim = heads * headDim, kvDim = kvHeads * headDim, group = heads / kvHeads;
        var slots = new int[pos0 + rows];
        var scores = new float[pos0 + rows];
        var acc = new double[headDim];
        for (int r = 0; r < rows; r++)
        {
            // The slots this node sees: the prefix, then its ancestors' and its own (in slot order).
            int n = 0;
            for (int s = 0; s < pos0; s++) slots[n++] = s;
            int depth = 0;
            for (int a = r; a >= 0; a = parents[a]) depth++;
            n += depth;
            for (int a = r, at = n - 1; a >= 0; a = parents[a], at--) slots[at] = pos0 + a;
            for (int h = 0; h < heads; h++)
            {
                var qr = q.Slice((row0 + r) * qDim + h * headDim, headDim);
                int kvOff = h / group * headDim;
                float max = float.NegativeInfinity;
                for (int i = 0; i < n; i++)
                {
                    var k = kCache.Slice(slots[i] * kvDim + kvOff, headDim);
                    float dot = 0;
                    for (int j = 0; j < headDim; j++) dot += qr[j] * k[j];
                    float d = dot * scale;
                    scores[i] = d;
                    if (d > max) max = d;
                }
                double sum = 0;
                Array.Clear(acc);
                for (int i = 0; i < n; i++)
                {
                    double w = Math.Exp(scores[i] - max);
                    sum += w;
                    var v = vCache.Slice(slots[i] * kvDim + kvOff, headDim);
                    for (int j = 0; j < headDim; j++) acc[j] += w * v[j];
                }
                var o = output.Slice((row0 + r) * qDim + h * headDim, headDim);
                for (int j = 0; j < headDim; j++) o[j] = (float)(acc[j] / sum);
            }
        }
    }
}
