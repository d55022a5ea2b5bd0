using System.Runtime.Intrinsics;
using System.Numerics.Tensors;

namespace Lrl.Cpu;

/// <summary>
/// The default backend: SIMD kernels (System.Numerics.Tensors, Vector256) over host memory, multithreaded with a
/// persistent <see cref="WorkerPool"/>. Matrices are read in place from the memory-mapped checkpoint in their stored
/// dtype. No allocation per op: every parallel op is a reusable job object.
/// </summary>
public sealed partial class CpuBackend : IBackend
{
    private readonly WorkerPool _pool;
    private readonly MatMulJob _matMul;
    private readonly AttentionJob _attention;
    private readonly WeightArena? _arena;

    public string Name => "cpu";
    /// <summary>Whether weights are copied into the backend's own memory (--no-mmap) rather than read in place.</summary>
    public bool CopiesWeights => _arena is not null;
    public int Threads => _pool.ThreadCount;

    /// <inheritdoc/>
    public int ExactRows
    {
        get => _matMul.ExactRows;
        set => _matMul.ExactRows = value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "exact rows must be ≥ 0");
    }

    /// <param name="threads">Worker threads including the caller; 0 = one per physical core.</param>
    /// <param name="copyWeights">Copy weights out of the memory-mapped file into huge-page memory (faster decode,
    /// anonymous memory instead of evictable page cache); false reads them in place (zero-copy).</param>
    public CpuBackend(int threads = 0, bool copyWeights = false)
    {
        if (threads < 0) throw new LrlException($"--threads must be ≥ 0, got {threads}");
        if (copyWeights) _arena = new WeightArena();
        _pool = new WorkerPool(threads == 0 ? DefaultThreads : threads);
        _matMul = new MatMulJob(_pool.ThreadCount);
        _attention = new AttentionJob(_pool.ThreadCount);
    }

    /// <summary>
    /// One thread per physical core this process may run on (as llama.cpp): hyperthread siblings share a core's load
    /// ports and FMA units, so a second thread per core adds no decode bandwidth and its spinning takes issue slots from
    /// the working sibling. Linux: the distinct sibling sets of the CPUs in /proc/self/status Cpus_allowed_list; never
    /// more than <see cref="Environment.ProcessorCount"/> (which honours cgroup quotas); elsewhere that count.
    /// </summary>
    public static int DefaultThreads { get; } = PhysicalCores() is int c and > 0 ? Math.Min(c, Environment.ProcessorCount) : Environment.ProcessorCount;

    private static int? PhysicalCores()
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return null;
            var allowed = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal));
            if (allowed is null) return null;
            var siblings = new List<string>();
            foreach (int cpu in ParseCpuList(allowed["Cpus_allowed_list:".Length..]))
            {
                string path = $"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list";
                if (!File.Exists(path)) return null;
                siblings.Add(File.ReadAllText(path));
            }
            return CountCores(siblings);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            return null;
        }
    }

    /// <summary>Distinct cores among CPUs given by their sibling lists ("0,8" or "0-1"): the count of distinct sets.</summary>
    internal static int CountCores(IEnumerable<string> siblingLists) =>
        siblingLists.Select(l => string.Join(',', ParseCpuList(l).Order())).Distinct().Count();

    /// <summary>A Linux CPU list ("0-3,8,10-11") as CPU numbers.</summary>
    internal static IEnumerable<int> ParseCpuList(string list)
    {
        foreach (var part in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int dash = part.IndexOf('-');
            int lo = int.Parse(dash < 0 ? part : part[..dash], System.Globalization.CultureInfo.InvariantCulture);
            int hi = dash < 0 ? lo : int.Parse(part[(dash + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            if (lo < 0 || hi < lo || hi - lo > 65536) throw new FormatException($"bad CPU range '{part}'");
            for (int c = lo; c <= hi; c++) yield return c;
        }
    }

    internal WorkerPool Pool => _pool;

    private static float[] D(DeviceBuffer b) => ((CpuBuffer)b).Data;

    public unsafe Weight LoadWeight(HostTensor t)
    {
        if (t.Rank == 1)
            return new CpuVector(t.Name, t.ToFloatArray(), t.DType);
        if (t.Rank != 2) throw new ModelFormatException(t.Source, $"tensor '{t.Name}' has shape {t.ShapeString}; expected a vector or matrix");
        var data = _arena is null ? t.Pointer : _arena.Copy(t.Pointer, t.ByteLength);
        return new DenseMatrix(t.Name, t.Shape[0], t.Shape[1], t.DType, data);
    }

    public DeviceBuffer Allocate(long length) => new CpuBuffer(length);

    public void Upload(ReadOnlySpan<float> source, DeviceBuffer destination, long destinationOffset = 0) =>
        source.CopyTo(D(destination).AsSpan(checked((int)destinationOffset)));

    public void Download(DeviceBuffer source, long sourceOffset, Span<float> destination) =>
        D(source).AsSpan(checked((int)sourceOffset), destination.Length).CopyTo(destination);

    public void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count) =>
        Array.Copy(D(source), sourceOffset, D(destination), destinationOffset, count);

    public void Embed(Weight table, ReadOnlySpan<int> tokens, DeviceBuffer x)
    {
        int dim = table.Cols;
        var X = D(x);
        for (int r = 0; r < tokens.Length; r++)
        {
            int id = tokens[r];
            if ((uint)id >= (uint)table.Rows) throw new LrlException($"token id {id} is outside the vocabulary (0..{table.Rows - 1})");
            var dst = X.AsSpan(r * dim, dim);
            switch (table)
            {
                case CpuMatrix m: m.RowToFloat(id, dst); break;
                case CpuVector v: v.Data.AsSpan(id * dim, dim).CopyTo(dst); break;
            }
        }
    }

    public void RmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, float eps)
    {
        int n = w.Cols;
        var g = ((CpuVector)w).Data;
        var X = D(x); var Y = D(y);
        for (int r = 0; r < rows; r++)
        {
            var xr = X.AsSpan(r * n, n);
            float inv = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xr) / n + eps);
            var yr = Y.AsSpan(r * n, n);
            TensorPrimitives.Multiply(xr, inv, yr);
            TensorPrimitives.Multiply(yr, g, yr);
        }
    }

    public void AddRmsNorm(DeviceBuffer residual, DeviceBuffer delta, Weight w, DeviceBuffer y, int rows, float eps)
    {
        int n = rows * w.Cols;
        TensorPrimitives.Add(D(residual).AsSpan(0, n), D(delta).AsSpan(0, n), D(residual).AsSpan(0, n));
        RmsNorm(residual, w, y, rows, eps);
    }

    public void LayerNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, float eps)
    {
        int n = w.Cols;
        var g = ((CpuVector)w).Data; var bias = ((CpuVector)b).Data;
        var X = D(x); var Y = D(y);
        for (int r = 0; r < rows; r++)
        {
            var xr = X.AsSpan(r * n, n);
            var yr = Y.AsSpan(r * n, n);
            float mean = TensorPrimitives.Sum(xr) / n;
            TensorPrimitives.Subtract(xr, mean, yr);
            float inv = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(yr) / n + eps);
            TensorPrimitives.Multiply(yr, inv, yr);
            TensorPrimitives.FusedMultiplyAdd(yr, g, bias, yr);
        }
    }

    public void MatMul(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, Weight? bias = null) =>
        _matMul.Run(_pool, D(x), (CpuMatrix)w, D(y), rows, (bias as CpuVector)?.Data);

    public void MatMul3(DeviceBuffer x, int rows, Weight w0, DeviceBuffer y0, Weight? b0, Weight w1, DeviceBuffer y1, Weight? b1,
                        Weight w2, DeviceBuffer y2, Weight? b2) =>
        _matMul.Run3(_pool, D(x), rows, (CpuMatrix)w0, D(y0), (b0 as CpuVector)?.Data, (CpuMatrix)w1, D(y1), (b1 as CpuVector)?.Data,
                     (CpuMatrix)w2, D(y2), (b2 as CpuVector)?.Data);

    public void GateUpSwiGlu(DeviceBuffer x, int rows, Weight gate, Weight up, DeviceBuffer gateOut, DeviceBuffer upOut)
    {
        if ((long)rows * up.Rows > upOut.Length) throw new ArgumentException($"GateUpSwiGlu: up buffer too small for {rows} rows of {up}");
        _matMul.RunSwiGlu(_pool, D(x), rows, (CpuMatrix)gate, D(gateOut), (CpuMatrix)up, D(upOut));
    }

    public void RopeRows(DeviceBuffer x, int row0, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        var X = D(x);
        if (row0 < 0 || (long)(row0 + rows) * heads * headDim > X.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"rope: rows {row0}..{row0 + rows - 1} exceed the buffer");
        if (pos0 < 0) throw new ArgumentOutOfRangeException(nameof(pos0), $"rope: position {pos0} is negative");
        int half = rope.RotaryDim / 2;
        // The table of every position (one per model): a batched step's sequences each sit at their own positions, and
        // recomputing their cos/sin per call was most of a 16-sequence step's RoPE time.
        var (ropeCos, ropeSin) = rope.Angles(pos0 + rows);
        for (int r = 0; r < rows; r++)
        {
            var cos = ropeCos.AsSpan((pos0 + r) * half, half);
            var sin = ropeSin.AsSpan((pos0 + r) * half, half);
            for (int h = 0; h < heads; h++)
            {
                var v = X.AsSpan(((row0 + r) * heads + h) * headDim, rope.RotaryDim);
                int i = 0;
                // The same multiplies and adds per element as the scalar loop (no FMA), eight at a time.
                for (; i + 8 <= half; i += 8)
                {
                    Vector256<float> a0 = Vector256.Create<float>(v[i..]), a1 = Vector256.Create<float>(v[(i + half)..]);
                    Vector256<float> c = Vector256.Create<float>(cos[i..]), sn = Vector256.Create<float>(sin[i..]);
                    (a0 * c - a1 * sn).CopyTo(v[i..]);
                    (a1 * c + a0 * sn).CopyTo(v[(i + half)..]);
                }
                for (; i < half; i++)
                {
                    float a0 = v[i], a1 = v[i + half];
                    v[i] = a0 * cos[i] - a1 * sin[i];
                    v[i + half] = a1 * cos[i] + a0 * sin[i];
                }
            }
        }
    }

    public void AttentionRows(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                              int row0, int rows, int pos0, int heads, int kvHeads, int headDim, float scale) =>
        _attention.Run(_pool, D(q), D(kCache), D(vCache), D(output), row0, rows, pos0, heads, kvHeads, headDim, scale);

    public void AttentionSequences(DeviceBuffer q, DeviceBuffer output, ReadOnlySpan<SequenceRows> sequences, int heads, int kvHeads, int headDim, float scale) =>
        _attention.RunSequences(_pool, D(q), D(output), sequences, heads, kvHeads, headDim, scale);

    public void AttentionTree(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                              int row0, int rows, int pos0, ReadOnlySpan<int> parents, int heads, int kvHeads, int headDim, float scale) =>
        _attention.RunTree(_pool, D(q), D(kCache), D(vCache), D(output), row0, rows, pos0, parents, heads, kvHeads, headDim, scale);

    public void SwiGlu(DeviceBuffer gate, DeviceBuffer up, DeviceBuffer y, long n)
    {
        var g = D(gate).AsSpan(0, (int)n); var u = D(up).AsSpan(0, (int)n); var o = D(y).AsSpan(0, (int)n);
        // silu(g)·u = g·u / (1 + e^-g); y may alias gate or up.
        for (int i = 0; i < o.Length; i++)
        {
            float gv = g[i];
            o[i] = gv * u[i] / (1f + MathF.Exp(-gv));
        }
    }

    public void Gelu(DeviceBuffer x, long n)
    {
        var v = D(x).AsSpan(0, (int)n);
        const float c = 0.7978845608028654f; // sqrt(2/pi)
        // 0.5·(1 + tanh z) = 1 / (1 + e^(-2z)): the same tanh approximation without the cancellation of 1 + tanh z
        // for negative z (there tanhf's last-bit error became a 1e-3 relative error of the output).
        for (int i = 0; i < v.Length; i++)
        {
            float a = v[i];
            v[i] = a / (1f + MathF.Exp(-2f * c * (a + 0.044715f * a * a * a)));
        }
    }

    public void Add(DeviceBuffer a, DeviceBuffer b, long n)
    {
        var A = D(a).AsSpan(0, (int)n);
        TensorPrimitives.Add(A, D(b).AsSpan(0, (int)n), A);
    }

    public void Synchronize() { }

    /// <summary>The argmax read in place (the interface's default copies the logits out: a vocabulary's floats per token).</summary>
    public int Argmax(DeviceBuffer x, int n) => Logits.ArgMax(D(x).AsSpan(0, n));

    public int Sample(DeviceBuffer x, int n, float temperature, int topK, float topP, float uniform01, float minP = 0) =>
        temperature == 0 ? Argmax(x, n) : Logits.SampleTopK(D(x).AsSpan(0, n), temperature, topK, topP, uniform01, minP);

    public void Dispose()
    {
        _pool.Dispose();
        _arena?.Dispose();
    }
}
