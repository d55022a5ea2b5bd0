using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using Lrl.Kernels;

namespace Lrl.Gpu;

// The IBackend ops: argument checks on the host, then one or two kernel launches on the stream (no synchronization).
public sealed partial class GpuBackend : IDraftHeadOps
{
    private MemoryBuffer1D<int, Stride1D.Dense>? _tokens;      // prefill token ids
    private MemoryBuffer1D<int, Stride1D.Dense>? _treeMasks;   // tree attention: each node's ancestor mask
    private MemoryBuffer1D<float, Stride1D.Dense>? _partO;     // split-K attention partial outputs
    private MemoryBuffer1D<uint, Stride1D.Dense>? _mmaScratch; // tensor-core product: the emulation's exchange (CPU accelerator)
    private MemoryBuffer1D<float, Stride1D.Dense>? _partML;    // split-K partial (max, sum)
    private MemoryBuffer1D<int, Stride1D.Dense>? _tickets;     // split-K: splits finished per row and unit of query heads (zero between launches)
    private MemoryBuffer1D<float, Stride1D.Dense>? _mlpScratch; // fused gate/up at rows > 1
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _scalar; // device → host token id
    private readonly Dictionary<RopeTable, RopeCache> _ropeTables = new(ReferenceEqualityComparer.Instance);

    /// <summary>cos/sin of every position up to Positions for one RopeTable, [position, half], on the device.</summary>
    private sealed class RopeCache : IDisposable
    {
        public MemoryBuffer1D<float, Stride1D.Dense>? Cos, Sin;
        public int Positions;
        public void Dispose() { Cos?.Dispose(); Sin?.Dispose(); }
    }

    private KernelConfig Rows(int rows) => new(rows, _group);

    /// <summary>Grows a scratch buffer to at least <paramref name="length"/> (allocates only when it must grow).</summary>
    private MemoryBuffer1D<T, Stride1D.Dense> Scratch<T>(ref MemoryBuffer1D<T, Stride1D.Dense>? buf, long length, string what) where T : unmanaged
    {
        if (buf is null || buf.Length < length)
        {
            if (buf is not null) { Sync(); buf.Dispose(); }
            buf = AllocateRaw<T>(Math.Max(length, 64), what);
        }
        return buf;
    }

    /// <summary>
    /// The split-K tickets for <paramref name="count"/> rows·heads: zeroed once when allocated, and left zero by every
    /// launch (the last split of each row and head resets its own).
    /// </summary>
    private MemoryBuffer1D<int, Stride1D.Dense> Tickets(long count)
    {
        if (_tickets is null || _tickets.Length < count)
        {
            var grown = Scratch(ref _tickets, count, "attention split tickets");
            grown.View.MemSetToZero(DeviceCopy_);
        }
        return _tickets!;
    }

    private void DisposeScratch()
    {
        _tokens?.Dispose(); _treeMasks?.Dispose(); _partO?.Dispose(); _partML?.Dispose(); _tickets?.Dispose(); _mlpScratch?.Dispose(); _loraT?.Dispose(); _loraTokens?.Dispose(); _mmaScratch?.Dispose(); _scalar.Dispose();
        foreach (var b in _ropeTables.Values) b.Dispose();
        _ropeTables.Clear();
    }

    private static int Elements(long n, string op)
    {
        if (n < 0 || n > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(n), $"{op}: element count {n} is out of range");
        return (int)n;
    }

    private static ArrayView<float> Vec(Weight w, int n, string what)
    {
        var g = Wt(w);
        if (g.F32 is null || g.Rows * (long)g.Cols < n)
            throw new ArgumentException($"{what}: {w} is not an f32 vector of {n} values");
        return g.FloatView;
    }

    public void Embed(Weight table, ReadOnlySpan<int> tokens, DeviceBuffer x)
    {
        var t = Wt(table);
        int rows = tokens.Length, dim = t.Cols;
        if (rows == 0) return;
        CheckRange(x, 0, (long)rows * dim, "embed output");
        foreach (int id in tokens)
            if ((uint)id >= (uint)t.Rows) throw new LrlException($"token id {id} is outside the vocabulary (0..{t.Rows - 1})");
        ArrayView<int> ids = ArrayView<int>.Empty;
        int single = tokens[0];
        if (rows > 1)
        {
            var buf = Scratch(ref _tokens, rows, "token ids");
            ToDevice(buf.View, tokens[..rows]);
            ids = buf.View.SubView(0, rows);
        }
        var cfg = Rows(rows);
        var xv = B(x).View;
        switch (t.StoredType)
        {
            case DType.F32: KF32.Embed(Launch_, cfg, new F32Reader(t.FloatView), ids, single, xv, dim); break;
            case DType.F16: KF16.Embed(Launch_, cfg, new F16Reader(t.U16!.View), ids, single, xv, dim); break;
            case DType.BF16: KBF16.Embed(Launch_, cfg, new BF16Reader(t.U16!.View), ids, single, xv, dim); break;
            default: QuantEmbed(t, cfg, ids, single, xv, dim); break;
        }
    }

    public void RmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, float eps)
    {
        int n = w.Cols;
        if (rows <= 0) return;
        CheckRange(x, 0, (long)rows * n, "rmsnorm input");
        CheckRange(y, 0, (long)rows * n, "rmsnorm output");
        RmsNormKernel(Launch_, Rows(rows), B(x).View, Vec(w, n, "rmsnorm"), B(y).View, n, eps);
    }

    public void AddRmsNorm(DeviceBuffer residual, DeviceBuffer delta, Weight w, DeviceBuffer y, int rows, float eps)
    {
        int n = w.Cols;
        if (rows <= 0) return;
        CheckRange(residual, 0, (long)rows * n, "add_rmsnorm residual");
        CheckRange(delta, 0, (long)rows * n, "add_rmsnorm delta");
        CheckRange(y, 0, (long)rows * n, "add_rmsnorm output");
        AddRmsNormKernel(Launch_, Rows(rows), B(residual).View, B(delta).View, Vec(w, n, "add_rmsnorm"), B(y).View, n, eps);
    }

    public void LayerNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, float eps)
    {
        int n = w.Cols;
        if (rows <= 0) return;
        CheckRange(x, 0, (long)rows * n, "layernorm input");
        CheckRange(y, 0, (long)rows * n, "layernorm output");
        LayerNormKernel(Launch_, Rows(rows), B(x).View, Vec(w, n, "layernorm weight"), Vec(b, n, "layernorm bias"), B(y).View, n, eps);
    }

    /// <summary>
    /// Products of up to this many rows (and attention over them) run the one-row kernels, one grid row per activation
    /// row: each row's result is bit for bit what it gives alone (<see cref="IBackend.ExactRows"/>). 0: rows past one
    /// take the tiled GEMM and attention kernels.
    /// </summary>
    public int ExactRows { get => _exactRows; set => _exactRows = Math.Max(0, value); }

    private int _exactRows;

    /// <summary>
    /// A one-row kernel's launch of <paramref name="blocks"/> groups per activation row for <paramref name="rows"/> rows:
    /// one row, grid X the block; more, grid X the row and grid Y the block, at least two (<see cref="KernelMath.RowsBlock"/>).
    /// </summary>
    private KernelConfig RowsConfig(int blocks, int rows, int group = 0)
    {
        if (group == 0) group = _group;
        return rows == 1 ? new KernelConfig(blocks, group) : new KernelConfig(new Index3D(rows, Math.Max(2, blocks), 1), new Index3D(group, 1, 1));
    }

    /// <summary>
    /// The fewest groups a one-row GEMV launch aims at (<see cref="GemvConfig"/>): two per multiprocessor by default; the
    /// tests raise it to force one-warp groups on the CPU accelerator.
    /// </summary>
    public int GemvGroupsTarget
    {
        get => _gemvGroupsTarget ??= 2 * _accelerator.NumMultiprocessors;
        set => _gemvGroupsTarget = value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "must be positive");
    }
    private int? _gemvGroupsTarget;

    /// <summary>
    /// The launch of a one-warp-per-output-row GEMV over <paramref name="outRows"/> outputs for <paramref name="rows"/>
    /// activation rows: groups of <c>_group</c> threads, halved while that leaves fewer than two groups per multiprocessor
    /// (down to one warp), so a small product (SmolLM2-135M's K/V: 192 rows, 24 groups of 8 warps on an H100's 132
    /// multiprocessors) spreads over the device. A row's arithmetic is its warp's alone: the group size changes no bits.
    /// </summary>
    private KernelConfig GemvConfig(int outRows, int rows)
    {
        int warps = _group / _warp, target = GemvGroupsTarget;
        while (warps > 1 && (outRows + warps - 1) / warps < target) warps >>= 1;
        return RowsConfig((outRows + warps - 1) / warps, rows, warps * _warp);
    }

    public void MatMul(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, Weight? bias = null)
    {
        MatMulCore(x, w, y, rows, bias);
        ApplyStaged(y);
    }

    /// <summary>The product alone (the caller applies staged adapter updates once its products are done).</summary>
    private void MatMulCore(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, Weight? bias = null)
    {
        var m = Wt(w);
        int inF = m.Cols, outF = m.Rows;
        if (rows <= 0) return;
        CheckRange(x, 0, (long)rows * inF, $"matmul input ({w.Name})");
        CheckRange(y, 0, (long)rows * outF, $"matmul output ({w.Name})");
        var bv = bias is null ? ArrayView<float>.Empty : Vec(bias, outF, $"bias of {w.Name}");
        int hasBias = bias is null ? 0 : 1;
        var xv = B(x).View; var yv = B(y).View;
        switch (m.StoredType)
        {
            case DType.F32: RunMatMul(KF32, new F32Reader(m.FloatView), xv, yv, bv, hasBias, rows, outF, inF, UsesTensorCores(rows)); break;
            case DType.F16: RunMatMul(KF16, new F16Reader(m.U16!.View), xv, yv, bv, hasBias, rows, outF, inF, UsesTensorCores(rows)); break;
            case DType.BF16: RunMatMul(KBF16, new BF16Reader(m.U16!.View), xv, yv, bv, hasBias, rows, outF, inF, UsesTensorCores(rows)); break;
            default: QuantMatMul(m, xv, yv, bv, hasBias, rows, outF, inF); break;
        }
    }

    /// <summary>
    /// The product that ends a residual block and the next norm in one launch for a decode row (and exact rows): the
    /// GEMV, whose last group per row then adds the row to the residual and normalizes it with <see cref="AddRmsNorm"/>'s
    /// arithmetic at the same group size (bit for bit the two launches). Other shapes: the two ops.
    /// </summary>
    public void MatMulAddRmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, DeviceBuffer residual, Weight norm, DeviceBuffer normed, float eps)
    {
        var m = Wt(w);
        int inF = m.Cols, outF = m.Rows;
        if (rows <= 0) return;
        if (StagedFor(y) && TryLoraAddRmsNorm(x, w, y, rows, residual, norm, normed, eps)) return;
        if ((rows != 1 && rows > _exactRows) || m.Quant is { StoredColumn: not null } || norm.Cols != outF || StagedFor(y))
        {
            MatMul(x, w, y, rows);
            AddRmsNorm(residual, y, norm, normed, rows, eps);
            return;
        }
        CheckRange(x, 0, (long)rows * inF, $"matmul input ({w.Name})");
        CheckRange(y, 0, (long)rows * outF, $"matmul output ({w.Name})");
        CheckRange(residual, 0, (long)rows * outF, "add_rmsnorm residual");
        CheckRange(normed, 0, (long)rows * outF, "add_rmsnorm output");
        var a = new AddNormArgs
        {
            Residual = B(residual).View, Weight = Vec(norm, outF, "add_rmsnorm"), Output = B(normed).View, Tickets = Tickets(rows).View, Eps = eps,
        };
        int perGroup = _group / _warp;
        var cfg = RowsConfig((outF + perGroup - 1) / perGroup, rows);
        var (xv, yv) = (B(x).View, B(y).View);
        switch (m.StoredType)
        {
            case DType.F32: KF32.GemvAddRmsNorm(Launch_, cfg, new F32Reader(m.FloatView), xv, yv, outF, inF, a); break;
            case DType.F16: KF16.GemvAddRmsNorm(Launch_, cfg, new F16Reader(m.U16!.View), xv, yv, outF, inF, a); break;
            case DType.BF16: KBF16.GemvAddRmsNorm(Launch_, cfg, new BF16Reader(m.U16!.View), xv, yv, outF, inF, a); break;
            default: QuantGemvAddRmsNorm(m, cfg, xv, yv, outF, a); break;
        }
    }

    /// <summary>A draft head's residual block y = x + SiLU(x·Wᵀ + b) in one launch (float weights; quantized: false).</summary>
    public bool TryResidualSilu(DeviceBuffer x, Weight w, Weight bias, DeviceBuffer y)
    {
        var m = Wt(w);
        int n = m.Rows;
        if (m.Cols != n) throw new ArgumentException($"{w.Name}: a residual block needs a square matrix, got [{m.Rows}, {m.Cols}]");
        if (ReferenceEquals(x, y)) throw new ArgumentException("the residual block's output must not alias its input");
        CheckRange(x, 0, n, $"residual block input ({w.Name})");
        CheckRange(y, 0, n, $"residual block output ({w.Name})");
        var bv = Vec(bias, n, $"bias of {w.Name}");
        var cfg = new KernelConfig((n + _group / _warp - 1) / (_group / _warp), _group);
        switch (m.StoredType)
        {
            case DType.F32: KF32.GemvResidualSilu(Launch_, cfg, new F32Reader(m.FloatView), B(x).View, B(y).View, bv, n); return true;
            case DType.F16: KF16.GemvResidualSilu(Launch_, cfg, new F16Reader(m.U16!.View), B(x).View, B(y).View, bv, n); return true;
            case DType.BF16: KBF16.GemvResidualSilu(Launch_, cfg, new BF16Reader(m.U16!.View), B(x).View, B(y).View, bv, n); return true;
            default: return false;
        }
    }

    /// <summary>
    /// Whether a bf16, f16 or f32 product of <paramref name="rows"/> rows runs on tensor cores (<see cref="MmaGemmKernels"/>): on CUDA
    /// devices of compute capability 8.0 or later, and on the CPU accelerator with 32-lane warps (the instruction emulated
    /// from the same fragments, for the tests), from <see cref="MmaMinRows"/> rows (below, the 8-row tiles waste less).
    /// <c>LRL_GPU_MMA=0</c> turns it off (to compare the two kernels on a device).
    /// </summary>
    public bool UsesTensorCores(int rows) => rows >= MmaMinRows && _tensorCores;

    /// <summary>Fewest rows the tensor-core product takes.</summary>
    public const int MmaMinRows = 16;

    private bool? _tensorCoresCached;
    private bool _tensorCores => _tensorCoresCached ??= Environment.GetEnvironmentVariable("LRL_GPU_MMA") != "0" && _warp == MmaGemmKernels.WarpLanes
        && MmaGemmKernels.Threads <= _accelerator.MaxNumThreadsPerGroup
        && (_accelerator is not ILGPU.Runtime.Cuda.CudaAccelerator cuda || cuda.Architecture is { } arch && arch.Major >= 8);

    /// <summary>
    /// The grid of a tensor-core product (<see cref="MmaGemmKernels"/>) and the emulation's register exchange off CUDA
    /// (grown on demand; one element on CUDA, where it is unused).
    /// </summary>
    private KernelConfig MmaConfig(int rows, int outF, out ArrayView<uint> exchange)
    {
        int blocks = (outF + MmaGemmKernels.TileN - 1) / MmaGemmKernels.TileN * ((rows + MmaGemmKernels.TileM - 1) / MmaGemmKernels.TileM);
        long need = IsCuda ? 1 : MmaGemmKernels.ScratchLength(blocks);
        if (_mmaScratch is null || _mmaScratch.Length < need)
        {
            _mmaScratch?.Dispose();
            _mmaScratch = AllocateRaw<uint>(need, "tensor-core emulation scratch");
        }
        exchange = _mmaScratch.View;
        return new KernelConfig(blocks, MmaGemmKernels.Threads);
    }

    /// <summary>
    /// y = x·Wᵀ (+ bias) over <paramref name="rows"/> rows: the GEMV for one row and exact rows, else the tensor-core
    /// product where <paramref name="tensorCores"/> (the caller's <see cref="UsesTensorCores(int)"/> or, for quantized
    /// weights, its shape check), else the f32 tile kernel.
    /// </summary>
    private void RunMatMul<TW>(MatKernels<TW> k, TW reader, ArrayView<float> x, ArrayView<float> y, ArrayView<float> bias,
                               int hasBias, int rows, int outF, int inF, bool tensorCores) where TW : struct, IWeightReader
    {
        if (rows == 1 || rows <= _exactRows)
        {
            // One row, or rows that must each compute what they compute alone: the GEMV, one grid row per activation row.
            k.Gemv(Launch_, GemvConfig(outF, rows), reader, x, y, bias, hasBias, outF, inF);
        }
        else if (tensorCores)
            k.Mma(Launch_, MmaConfig(rows, outF, out var ex), reader, x, y, bias, hasBias, rows, outF, inF, ex);
        else
        {
            int outBlocks = (outF + _group - 1) / _group, rowBlocks = (rows + GemmKernels.TileRows - 1) / GemmKernels.TileRows;
            k.Gemm(Launch_, new KernelConfig(outBlocks * rowBlocks, _group), reader, x, y, bias, hasBias, rows, outF, inF);
        }
    }

    /// <summary>
    /// Fused SwiGLU MLP front half: y = silu(x·Gateᵀ) ⊙ (x·Upᵀ). At one row a single kernel reads x once for both
    /// matrices; at more rows it runs the two tiled products and the activation.
    /// </summary>
    public void MatMulSwiGlu(DeviceBuffer x, Weight gate, Weight up, DeviceBuffer y, int rows)
    {
        var g = Wt(gate); var u = Wt(up);
        if (g.Rows != u.Rows || g.Cols != u.Cols || g.StoredType != u.StoredType)
            throw new ArgumentException($"{gate} and {up} differ in shape or dtype");
        if (rows <= 0) return;
        int inF = g.Cols, outF = g.Rows;
        CheckRange(x, 0, (long)rows * inF, "swiglu matmul input");
        CheckRange(y, 0, (long)rows * outF, "swiglu matmul output");
        if (rows > 1 && rows > _exactRows)
        {
            var scratch = Scratch(ref _mlpScratch, (long)rows * outF, "MLP scratch");
            var tmp = new GpuBuffer(scratch, (long)rows * outF);
            MatMul(x, gate, y, rows);
            MatMul(x, up, tmp, rows);
            SwiGlu(y, tmp, y, (long)rows * outF);
            return;
        }
        var cfg = GemvConfig(outF, rows);
        var xv = B(x).View; var yv = B(y).View;
        switch (g.StoredType)
        {
            case DType.F32: KF32.GemvSwiGlu(Launch_, cfg, new F32Reader(g.FloatView), new F32Reader(u.FloatView), xv, yv, outF, inF); break;
            case DType.F16: KF16.GemvSwiGlu(Launch_, cfg, new F16Reader(g.U16!.View), new F16Reader(u.U16!.View), xv, yv, outF, inF); break;
            case DType.BF16: KBF16.GemvSwiGlu(Launch_, cfg, new BF16Reader(g.U16!.View), new BF16Reader(u.U16!.View), xv, yv, outF, inF); break;
            default: QuantGemvSwiGlu(g, u, cfg, xv, yv, outF, inF); break;
        }
    }

    /// <summary>IBackend's fused MLP front half: the fused gate+up+SwiGLU GEMV at batch 1 (upOut unused there).</summary>
    public void GateUpSwiGlu(DeviceBuffer x, int rows, Weight gate, Weight up, DeviceBuffer gateOut, DeviceBuffer upOut)
    {
        if (rows > 1 && rows > _exactRows || StagedFor(gateOut) || StagedFor(upOut))
        {
            // Staged adapter updates land before the activation: both products, their updates (one launch where they
            // share it, SwiGLU by its last group), else the updates and then SwiGLU.
            MatMulCore(x, gate, gateOut, rows);
            MatMulCore(x, up, upOut, rows);
            long n = (long)rows * gate.Rows;
            if (rows <= FusedRopeRowsMax && n <= int.MaxValue)
            {
                CheckRange(gateOut, 0, n, "swiglu gate"); CheckRange(upOut, 0, n, "swiglu up");
                var swiglu = new TermsEpilogue { Kind = TermsEpilogue.SwiGlu, Gate = B(gateOut).View, Up = B(upOut).View, N = (int)n, Tickets = Tickets(1).View };
                if (TryTermsWithEpilogue(gateOut, upOut, null, rows, swiglu)) return;
            }
            ApplyStaged(gateOut, upOut);
            SwiGlu(gateOut, upOut, gateOut, n);
            return;
        }
        MatMulSwiGlu(x, gate, up, gateOut, rows);
    }

    /// <summary>
    /// Q/K/V in one launch at one row (and exact rows) for dense weights and for int8/int4 weights in input order (one
    /// warp per output row of the three, each row as its own product computes it); else three products.
    /// </summary>
    public void MatMul3(DeviceBuffer x, int rows, Weight w0, DeviceBuffer y0, Weight? b0, Weight w1, DeviceBuffer y1, Weight? b1,
                        Weight w2, DeviceBuffer y2, Weight? b2)
    {
        if (!TryQkv(x, rows, w0, y0, b0, w1, y1, b1, w2, y2, b2, default))
        {
            MatMulCore(x, w0, y0, rows, b0);
            MatMulCore(x, w1, y1, rows, b1);
            MatMulCore(x, w2, y2, rows, b2);
        }
        ApplyStaged(y0, y1, y2);
    }

    /// <summary>
    /// Q/K/V, RoPE and the K/V cache writes in one launch for a decode row (and exact rows) where the products fuse
    /// (<see cref="RopeKernels.RopeQkvCacheByLastGroup"/>: the launch's last group runs RopeAndCache's element code, the
    /// same bits as its launch); else MatMul3 then RopeAndCache.
    /// </summary>
    public void MatMul3RopeAndCache(DeviceBuffer x, int rows, Weight wq, DeviceBuffer q, Weight? bq, Weight wk, DeviceBuffer k, Weight? bk,
                                    Weight wv, DeviceBuffer v, Weight? bv, int heads, int kvHeads, int headDim, int pos0, RopeTable rope,
                                    DeviceBuffer kCache, DeviceBuffer vCache)
    {
        if (rows <= 0) return;
        if (rows > FusedRopeRowsMax)
        {
            // One group rotating many rows would be a serial tail longer than the launch it saves.
            MatMul3(x, rows, wq, q, bq, wk, k, bk, wv, v, bv);
            RopeAndCache(q, k, v, 0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache);
            return;
        }
        var shape = RopeCacheCheck(q, k, v, 0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache, out var cache);
        var args = new RopeArgs
        {
            KCache = B(kCache).View, VCache = B(vCache).View, Cos = cache.Cos!.View, Sin = cache.Sin!.View, Tickets = Tickets(1).View, Shape = shape,
        };
        if (StagedFor(q) || StagedFor(k) || StagedFor(v))
        {
            // Adapter updates land before the rotation: the products, then the updates with RoPE and the cache writes
            // by the update launch's last group (where the updates take one launch), else apart.
            if (!TryQkv(x, rows, wq, q, bq, wk, k, bk, wv, v, bv, default))
            {
                MatMulCore(x, wq, q, rows, bq);
                MatMulCore(x, wk, k, rows, bk);
                MatMulCore(x, wv, v, rows, bv);
            }
            if (TryTermsWithEpilogue(q, k, v, rows, new TermsEpilogue { Kind = TermsEpilogue.Rope, Q = B(q).View, K = B(k).View, V = B(v).View, RopeArgs = args }))
                return;
            ApplyStaged(q, k, v);
            RopeAndCache(q, k, v, 0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache);
            return;
        }
        if (TryQkv(x, rows, wq, q, bq, wk, k, bk, wv, v, bv, args)) return;
        MatMul3(x, rows, wq, q, bq, wk, k, bk, wv, v, bv);
        RopeAndCache(q, k, v, 0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache);
    }

    /// <summary>
    /// Most rows whose RoPE and cache writes ride on the Q/K/V launch, or on an adapter update launch with SwiGLU (its last
    /// group does them all: a decode row's few thousand elements).
    /// </summary>
    public const int FusedRopeRowsMax = 4;

    /// <summary>The fused Q/K/V launch (with <paramref name="rope"/>'s rotation when it has tickets); false where the weights do not fuse.</summary>
    private bool TryQkv(DeviceBuffer x, int rows, Weight w0, DeviceBuffer y0, Weight? b0, Weight w1, DeviceBuffer y1, Weight? b1,
                        Weight w2, DeviceBuffer y2, Weight? b2, RopeArgs rope)
    {
        var m0 = Wt(w0); var m1 = Wt(w1); var m2 = Wt(w2);
        var (q0, q1, q2) = (m0.Quant, m1.Quant, m2.Quant);
        bool quant = q0 is not null && q1 is not null && q2 is not null && q0.Bits == q1.Bits && q0.Bits == q2.Bits
                     && q0.StoredColumn is null && q1.StoredColumn is null && q2.StoredColumn is null;
        bool dense = q0 is null && q1 is null && q2 is null;
        if ((rows != 1 && rows > _exactRows) || m0.StoredType != m1.StoredType || m0.StoredType != m2.StoredType || !(dense || quant)
            || m0.Cols != m1.Cols || m0.Cols != m2.Cols)
            return false;
        int inF = m0.Cols;
        CheckRange(x, 0, (long)rows * inF, "matmul3 input");
        CheckRange(y0, 0, (long)rows * m0.Rows, $"matmul output ({w0.Name})");
        CheckRange(y1, 0, (long)rows * m1.Rows, $"matmul output ({w1.Name})");
        CheckRange(y2, 0, (long)rows * m2.Rows, $"matmul output ({w2.Name})");
        ArrayView<float> Bias(Weight? b, int n, Weight w) => b is null ? ArrayView<float>.Empty : Vec(b, n, $"bias of {w.Name}");
        var shape = new Gemv3Shape
        {
            Out0 = m0.Rows, Out1 = m1.Rows, Out2 = m2.Rows, InF = inF,
            HasBias = (b0 is null ? 0 : 1) | (b1 is null ? 0 : 2) | (b2 is null ? 0 : 4),
        };
        var cfg = GemvConfig(m0.Rows + m1.Rows + m2.Rows, rows);
        var (xv, v0, v1, v2) = (B(x).View, B(y0).View, B(y1).View, B(y2).View);
        var (c0, c1, c2) = (Bias(b0, m0.Rows, w0), Bias(b1, m1.Rows, w1), Bias(b2, m2.Rows, w2));
        if (quant)
        {
            if (q0!.Bits == 8) Gemv3Q8Kernel(Launch_, cfg, q0.Q8, q1!.Q8, q2!.Q8, xv, v0, v1, v2, c0, c1, c2, shape, rope);
            else Gemv3Q4Kernel(Launch_, cfg, q0.Q4, q1!.Q4, q2!.Q4, xv, v0, v1, v2, c0, c1, c2, shape, rope);
            return true;
        }
        switch (m0.StoredType)
        {
            case DType.F32: KF32.Gemv3(Launch_, cfg, new F32Reader(m0.FloatView), new F32Reader(m1.FloatView), new F32Reader(m2.FloatView), xv, v0, v1, v2, c0, c1, c2, shape, rope); break;
            case DType.F16: KF16.Gemv3(Launch_, cfg, new F16Reader(m0.U16!.View), new F16Reader(m1.U16!.View), new F16Reader(m2.U16!.View), xv, v0, v1, v2, c0, c1, c2, shape, rope); break;
            default: KBF16.Gemv3(Launch_, cfg, new BF16Reader(m0.U16!.View), new BF16Reader(m1.U16!.View), new BF16Reader(m2.U16!.View), xv, v0, v1, v2, c0, c1, c2, shape, rope); break;
        }
        return true;
    }

    /// <summary>RoPE of Q and K, and the K/V cache writes, in one launch (<see cref="RopeKernels.RopeQkvCache"/>).</summary>
    public void RopeAndCache(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, int row0, int rows, int heads, int kvHeads, int headDim,
                             int pos0, RopeTable rope, DeviceBuffer kCache, DeviceBuffer vCache)
    {
        if (rows <= 0) return;
        var shape = RopeCacheCheck(q, k, v, row0, rows, heads, kvHeads, headDim, pos0, rope, kCache, vCache, out var cache);
        int total = RopeKernels.Elements(shape);
        _ropeCache ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, RopeCacheShape>(RopeKernels.RopeQkvCache);
        _ropeCache(Launch_, total, B(q).View, B(k).View, B(v).View, B(kCache).View, B(vCache).View, cache.Cos!.View, cache.Sin!.View, shape);
    }

    /// <summary>
    /// RoPE and the cache writes of up to <see cref="SequenceCaches.Max"/> sequences in one launch
    /// (<see cref="RopeKernels.RopeQkvCacheSequences"/>: each element the same operations as <see cref="RopeAndCache"/>'s).
    /// </summary>
    public void RopeAndCacheSequences(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences,
                                      int heads, int kvHeads, int headDim, RopeTable rope)
    {
        int n = GroupedSequences(sequences, int.MaxValue);
        for (int at = 0; at < n; at += SequenceCaches.Max)
            RopeGroup(q, k, v, sequences, _grouped.AsSpan(at, Math.Min(SequenceCaches.Max, n - at)), heads, kvHeads, headDim, rope);
    }

    /// <summary>
    /// The unrotated K/V cache writes of up to <see cref="SequenceCaches.Max"/> sequences in one launch
    /// (<see cref="RopeKernels.RopeQkvCacheSequences"/> with no Q pairs and no rotated dimensions: its plain copies);
    /// one sequence alone takes the two device copies.
    /// </summary>
    public void CacheSequences(DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences, int kvDim)
    {
        int n = GroupedSequences(sequences, int.MaxValue);
        for (int at = 0; at < n; at += SequenceCaches.Max)
            CacheGroup(k, v, sequences, _grouped.AsSpan(at, Math.Min(SequenceCaches.Max, n - at)), kvDim);
    }

    private void CacheGroup(DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences, ReadOnlySpan<int> group, int kvDim)
    {
        if (group.Length == 1)
        {
            var one = sequences[group[0]];
            Copy(k, (long)one.Row0 * kvDim, one.KCache, (long)one.Pos0 * kvDim, (long)one.Rows * kvDim);
            Copy(v, (long)one.Row0 * kvDim, one.VCache, (long)one.Pos0 * kvDim, (long)one.Rows * kvDim);
            return;
        }
        if (kvDim <= 0) throw new ArgumentOutOfRangeException(nameof(kvDim), kvDim, "cache writes: kv dim must be ≥ 1");
        var set = new SequenceCaches { Count = group.Length };
        int rows = 0;
        for (int i = 0; i < group.Length; i++)
        {
            var s = sequences[group[i]];
            if (s.Row0 < 0 || s.Pos0 < 0) throw new ArgumentOutOfRangeException(nameof(sequences), $"cache writes: row {s.Row0} or position {s.Pos0} is negative");
            CheckRange(k, (long)s.Row0 * kvDim, (long)s.Rows * kvDim, "cache k");
            CheckRange(v, (long)s.Row0 * kvDim, (long)s.Rows * kvDim, "cache v");
            CheckRange(s.KCache, (long)s.Pos0 * kvDim, (long)s.Rows * kvDim, "k cache");
            CheckRange(s.VCache, (long)s.Pos0 * kvDim, (long)s.Rows * kvDim, "v cache");
            set.Set(i, B(s.KCache).View, B(s.VCache).View, s.Row0, s.Rows, s.Pos0);
            rows += s.Rows;
        }
        var shape = new RopeCacheShape { Rows = rows, Heads = 0, KvHeads = 1, HeadDim = kvDim, Half = 0 };
        int total = checked(2 * rows * kvDim);
        _ropeCacheSeqs ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, RopeCacheShape, SequenceCaches>(RopeKernels.RopeQkvCacheSequences);
        // No Q pairs and no rotated dimension: q, cos and sin are never read.
        _ropeCacheSeqs(Launch_, total, B(k).View, B(k).View, B(v).View, B(k).View, B(k).View, shape, set);
    }

    private void RopeGroup(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, ReadOnlySpan<SequenceRows> sequences, ReadOnlySpan<int> group,
                           int heads, int kvHeads, int headDim, RopeTable rope)
    {
        if (group.Length == 1)
        {
            var one = sequences[group[0]];
            RopeAndCache(q, k, v, one.Row0, one.Rows, heads, kvHeads, headDim, one.Pos0, rope, one.KCache, one.VCache);
            return;
        }
        var set = new SequenceCaches { Count = group.Length };
        int rows = 0;
        RopeCacheShape shape = default;
        RopeCache? cache = null;
        for (int i = 0; i < group.Length; i++)
        {
            var s = sequences[group[i]];
            shape = RopeCacheCheck(q, k, v, s.Row0, s.Rows, heads, kvHeads, headDim, s.Pos0, rope, s.KCache, s.VCache, out cache);
            set.Set(i, B(s.KCache).View, B(s.VCache).View, s.Row0, s.Rows, s.Pos0);
            rows += s.Rows;
        }
        shape.Row0 = shape.Pos0 = 0;
        shape.Rows = rows;
        int total = checked(rows * heads * shape.Half + 2 * rows * kvHeads * headDim);
        _ropeCacheSeqs ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, RopeCacheShape, SequenceCaches>(RopeKernels.RopeQkvCacheSequences);
        _ropeCacheSeqs(Launch_, total, B(q).View, B(k).View, B(v).View, cache!.Cos!.View, cache.Sin!.View, shape, set);
    }

    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, RopeCacheShape, SequenceCaches>? _ropeCacheSeqs;

    /// <summary>The checks of a RoPE-and-cache step, its cos/sin tables grown to its positions, and its launch shape.</summary>
    private RopeCacheShape RopeCacheCheck(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, int row0, int rows, int heads, int kvHeads, int headDim,
                                          int pos0, RopeTable rope, DeviceBuffer kCache, DeviceBuffer vCache, out RopeCache cache)
    {
        if (rope.RotaryDim > headDim || rope.RotaryDim == 0)
            throw new ArgumentException($"rope: rotary dim {rope.RotaryDim} does not fit head_dim {headDim}");
        if (row0 < 0) throw new ArgumentOutOfRangeException(nameof(row0), row0, "rope: first row must be ≥ 0");
        if (pos0 < 0) throw new ArgumentOutOfRangeException(nameof(pos0), pos0, "rope: position must be ≥ 0");
        long kvDim = (long)kvHeads * headDim;
        CheckRange(q, (long)row0 * heads * headDim, (long)rows * heads * headDim, "rope q");
        CheckRange(k, row0 * kvDim, rows * kvDim, "rope k");
        CheckRange(v, row0 * kvDim, rows * kvDim, "cache v");
        CheckRange(kCache, pos0 * kvDim, rows * kvDim, "k cache");
        CheckRange(vCache, pos0 * kvDim, rows * kvDim, "v cache");
        int half = rope.RotaryDim / 2;
        if (!_ropeTables.TryGetValue(rope, out cache!)) _ropeTables[rope] = cache = new RopeCache();
        int needed = pos0 + rows;
        if (cache.Positions < needed) GrowRope(cache, rope, Math.Max(needed, Math.Max(256, cache.Positions * 2)));
        _ = checked(rows * heads * half + 2 * rows * (int)kvDim); // the element count fits an int
        return new RopeCacheShape { Row0 = row0, Rows = rows, Heads = heads, KvHeads = kvHeads, HeadDim = headDim, Half = half, Pos0 = pos0 };
    }

    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, RopeCacheShape>? _ropeCache;

    public void RopeRows(DeviceBuffer x, int row0, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        if (rows <= 0) return;
        if (rope.RotaryDim > headDim || rope.RotaryDim == 0)
            throw new ArgumentException($"rope: rotary dim {rope.RotaryDim} does not fit head_dim {headDim}");
        if (row0 < 0) throw new ArgumentOutOfRangeException(nameof(row0), row0, "rope: first row must be ≥ 0");
        long at = (long)row0 * heads * headDim, len = (long)rows * heads * headDim;
        CheckRange(x, at, len, "rope input");
        if (pos0 < 0) throw new ArgumentOutOfRangeException(nameof(pos0), pos0, "rope: position must be ≥ 0");
        int half = rope.RotaryDim / 2;
        if (!_ropeTables.TryGetValue(rope, out var cache)) _ropeTables[rope] = cache = new RopeCache();
        int needed = pos0 + rows;
        if (cache.Positions < needed) GrowRope(cache, rope, Math.Max(needed, Math.Max(256, cache.Positions * 2)));
        int total = rows * heads * half;
        RopeKernel(Launch_, total, B(x).View.SubView(at, len), cache.Cos!.View, cache.Sin!.View, half, heads, headDim, pos0, total);
    }

    /// <summary>Recomputes the cos/sin tables for positions [0, positions) on the host (rare: capacity doubles).</summary>
    private void GrowRope(RopeCache cache, RopeTable rope, int positions)
    {
        int half = rope.RotaryDim / 2;
        long n = (long)positions * half;
        var cos = new float[n];
        var sin = new float[n];
        for (int p = 0; p < positions; p++)
            for (int i = 0; i < half; i++)
            {
                double a = (double)p * rope.InvFreq[i];
                cos[(long)p * half + i] = (float)Math.Cos(a);
                sin[(long)p * half + i] = (float)Math.Sin(a);
            }
        Sync();
        cache.Dispose();
        cache.Cos = AllocateRaw<float>(n, "rope cos table");
        cache.Sin = AllocateRaw<float>(n, "rope sin table");
        ToDevice(cache.Cos.View, cos.AsSpan());
        ToDevice(cache.Sin.View, sin.AsSpan());
        cache.Positions = positions;
    }

    public void AttentionTree(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                              int row0, int rows, int pos0, ReadOnlySpan<int> parents, int heads, int kvHeads, int headDim, float scale)
    {
        if (rows > AttentionKernels.MaxTreeRows || headDim > AttentionKernels.PrefillMaxHeadDim || kvHeads <= 0 || heads % kvHeads != 0)
        {
            TreeAttention.OnHost(this, q, kCache, vCache, output, row0, rows, pos0, parents, heads, kvHeads, headDim, scale);
            return;
        }
        var masks = TreeAttention.AncestorMasks(parents);
        int kvDim = kvHeads * headDim;
        long at = (long)row0 * heads * headDim, len = (long)rows * heads * headDim;
        CheckRange(q, at, len, "tree attention q");
        CheckRange(output, at, len, "tree attention output");
        CheckRange(kCache, 0, (long)(pos0 + rows) * kvDim, "tree attention k cache");
        CheckRange(vCache, 0, (long)(pos0 + rows) * kvDim, "tree attention v cache");
        var mb = Scratch(ref _treeMasks, masks.Length, "tree masks");
        ToDevice(mb.View, masks.AsSpan());
        var shape = new AttentionShape { Rows = rows, Pos0 = pos0, Heads = heads, KvHeads = kvHeads, HeadDim = headDim, Scale = scale };
        if (rows <= _exactRows)
        {
            // Each node as the decode step of its path alone (split-K over the prefix and its ancestors at its own
            // length): a verification pass's tree gives exactly the logits of decoding each path.
            int target = Math.Max(1, 4 * _accelerator.NumMultiprocessors), most = 1, units = AttentionKernels.Units(heads, kvHeads);
            var depth = new int[rows];
            for (int r = 0; r < rows; r++)
            {
                depth[r] = parents[r] < 0 ? 0 : depth[parents[r]] + 1;
                most = Math.Max(most, AttentionKernels.SplitsFor(pos0 + depth[r] + 1, units, target, out _));
            }
            shape.Target = target; shape.Splits = most;
            long partials = (long)rows * heads * most;
            var po = Scratch(ref _partO, partials * headDim, "attention partials");
            var pml = Scratch(ref _partML, partials * 2, "attention partials");
            AttnTreeSplitKernel(Launch_, new KernelConfig(checked((int)((long)rows * units * most)), _group), B(q).View.SubView(at, len), B(kCache).View, B(vCache).View,
                                po.View, pml.View, mb.View.SubView(0, masks.Length), B(output).View.SubView(at, len),
                                Tickets((long)rows * units).View, shape);
            return;
        }
        int blocks = (rows + AttentionKernels.PrefillRows - 1) / AttentionKernels.PrefillRows;
        AttnTreeKernel(Launch_, new KernelConfig(heads * blocks, _group), B(q).View.SubView(at, len), B(kCache).View, B(vCache).View,
                       B(output).View.SubView(at, len), mb.View.SubView(0, masks.Length), shape);
    }

    public void AttentionRows(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                              int row0, int rows, int pos0, int heads, int kvHeads, int headDim, float scale)
    {
        if (rows <= 0) return;
        AttentionCheck(q, kCache, vCache, output, row0, rows, pos0, heads, kvHeads, headDim);
        int n = pos0 + rows;
        long at = (long)row0 * heads * headDim, len = (long)rows * heads * headDim;
        var qv = B(q).View.SubView(at, len);
        var ov = B(output).View.SubView(at, len);
        var shape = new AttentionShape
        {
            Rows = rows, Pos0 = pos0, Heads = heads, KvHeads = kvHeads, HeadDim = headDim, Scale = scale,
        };
        int target = Math.Max(1, 4 * _accelerator.NumMultiprocessors), units = AttentionKernels.Units(heads, kvHeads);
        if (rows > 1 && rows <= _exactRows)
        {
            // Each row as its own decode step would run it (split-K at its length): a verification pass's rows, and
            // batch-invariant steps, give exactly the logits of decoding them one at a time.
            int most = 1;
            for (int r = 0; r < rows; r++) most = Math.Max(most, AttentionKernels.SplitsFor(pos0 + r + 1, units, target, out _));
            shape.Target = target; shape.Splits = most;
            SplitAndCombine(qv, kCache, vCache, ov, shape, rows, heads, units, headDim, most);
            return;
        }
        if (rows > 1 && headDim <= AttentionKernels.PrefillMaxHeadDim)
        {
            int blocks = (rows + AttentionKernels.PrefillRows - 1) / AttentionKernels.PrefillRows;
            AttnPrefillKernel(Launch_, new KernelConfig(heads * blocks, _group), qv, B(kCache).View, B(vCache).View, ov, shape);
            return;
        }
        // Split-K: enough groups to fill the device, chunks of 32..MaxChunk positions.
        int splits = Math.Clamp((target + rows * units - 1) / (rows * units), 1, (n + 31) / 32);
        int chunk = (n + splits - 1) / splits;
        chunk = Math.Min(AttentionKernels.MaxChunk, (chunk + 31) / 32 * 32);
        splits = (n + chunk - 1) / chunk;
        shape.Chunk = chunk; shape.Splits = splits;
        SplitAndCombine(qv, kCache, vCache, ov, shape, rows, heads, units, headDim, splits);
    }

    /// <summary>The checks of one sequence's attention rows: shapes, and the q/output rows and cache positions in range.</summary>
    private static void AttentionCheck(DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer output,
                                       int row0, int rows, int pos0, int heads, int kvHeads, int headDim)
    {
        if (row0 < 0) throw new ArgumentOutOfRangeException(nameof(row0), row0, "attention: first row must be ≥ 0");
        if (pos0 < 0) throw new ArgumentOutOfRangeException(nameof(pos0), pos0, "attention: first position must be ≥ 0");
        if (kvHeads <= 0 || heads % kvHeads != 0)
            throw new ArgumentException($"attention: {heads} heads are not a multiple of {kvHeads} kv heads");
        if (headDim <= 0 || headDim > AttentionKernels.MaxHeadDim)
            throw new ArgumentException($"attention: head_dim {headDim} is outside 1..{AttentionKernels.MaxHeadDim}");
        long kvDim = (long)kvHeads * headDim, at = (long)row0 * heads * headDim, len = (long)rows * heads * headDim;
        CheckRange(q, at, len, "attention q");
        CheckRange(output, at, len, "attention output");
        CheckRange(kCache, 0, (pos0 + rows) * kvDim, "attention k cache");
        CheckRange(vCache, 0, (pos0 + rows) * kvDim, "attention v cache");
    }

    /// <summary>
    /// Decode rows (and verify steps up to <see cref="ExactRows"/>) of up to <see cref="SequenceCaches.Max"/> sequences
    /// in one launch (<see cref="AttentionKernels.SplitKSequences"/>: each row split as its one-row launch splits it, the
    /// same bits as <see cref="AttentionRows"/>); a prompt chunk, or a sequence left alone, runs <see cref="AttentionRows"/>.
    /// </summary>
    public void AttentionSequences(DeviceBuffer q, DeviceBuffer output, ReadOnlySpan<SequenceRows> sequences, int heads, int kvHeads, int headDim, float scale)
    {
        foreach (var s in sequences)
            if (s.Rows > 1 && s.Rows > _exactRows)
                AttentionRows(q, s.KCache, s.VCache, output, s.Row0, s.Rows, s.Pos0, heads, kvHeads, headDim, scale);
        int n = GroupedSequences(sequences, _exactRows);
        for (int at = 0; at < n; at += SequenceCaches.Max)
            AttentionGroup(q, output, sequences, _grouped.AsSpan(at, Math.Min(SequenceCaches.Max, n - at)), heads, kvHeads, headDim, scale);
    }

    /// <summary>
    /// The indices of <paramref name="sequences"/> that share many-sequence launches, in order, into <see cref="_grouped"/>
    /// (reused: nothing allocated per step): those with rows, one row or up to <paramref name="mostRows"/>. Returns their count.
    /// </summary>
    private int GroupedSequences(ReadOnlySpan<SequenceRows> sequences, int mostRows)
    {
        if (_grouped.Length < sequences.Length) _grouped = new int[Math.Max(sequences.Length, 2 * _grouped.Length)];
        int n = 0;
        for (int i = 0; i < sequences.Length; i++)
            if (sequences[i].Rows == 1 || sequences[i].Rows > 1 && sequences[i].Rows <= mostRows) _grouped[n++] = i;
        return n;
    }

    private int[] _grouped = new int[SequenceCaches.Max];

    private void AttentionGroup(DeviceBuffer q, DeviceBuffer output, ReadOnlySpan<SequenceRows> sequences, ReadOnlySpan<int> group,
                                int heads, int kvHeads, int headDim, float scale)
    {
        if (group.Length == 1)
        {
            var one = sequences[group[0]];
            AttentionRows(q, one.KCache, one.VCache, output, one.Row0, one.Rows, one.Pos0, heads, kvHeads, headDim, scale);
            return;
        }
        int target = Math.Max(1, 4 * _accelerator.NumMultiprocessors), units = AttentionKernels.Units(heads, kvHeads);
        var set = new SequenceCaches { Count = group.Length };
        int rows = 0, most = 1;
        for (int i = 0; i < group.Length; i++)
        {
            var s = sequences[group[i]];
            AttentionCheck(q, s.KCache, s.VCache, output, s.Row0, s.Rows, s.Pos0, heads, kvHeads, headDim);
            set.Set(i, B(s.KCache).View, B(s.VCache).View, s.Row0, s.Rows, s.Pos0);
            for (int r = 0; r < s.Rows; r++) most = Math.Max(most, AttentionKernels.SplitsFor(s.Pos0 + r + 1, units, target, out _));
            rows += s.Rows;
        }
        var shape = new AttentionShape { Rows = rows, Heads = heads, KvHeads = kvHeads, HeadDim = headDim, Scale = scale, Target = target, Splits = most };
        long partials = (long)rows * heads * most;
        var po = Scratch(ref _partO, partials * headDim, "attention partials");
        var pml = Scratch(ref _partML, partials * 2, "attention partials");
        AttnSequencesKernel(Launch_, new KernelConfig(checked((int)((long)rows * units * most)), _group), B(q).View, po.View, pml.View,
                            B(output).View, Tickets((long)rows * units).View, shape, set);
    }

    /// <summary>Split-K attention: rows·units·splits groups (<see cref="AttentionKernels.SplitK"/>), partials per row, head and split.</summary>
    private void SplitAndCombine(ArrayView<float> qv, DeviceBuffer kCache, DeviceBuffer vCache, ArrayView<float> ov, AttentionShape shape,
                                 int rows, int heads, int units, int headDim, int splits)
    {
        long partials = (long)rows * heads * splits;
        var po = Scratch(ref _partO, partials * headDim, "attention partials");
        var pml = Scratch(ref _partML, partials * 2, "attention partials");
        AttnSplitKernel(Launch_, new KernelConfig(checked((int)((long)rows * units * splits)), _group), qv, B(kCache).View, B(vCache).View, po.View, pml.View, ov,
                        Tickets((long)rows * units).View, shape);
    }

    public void SwiGlu(DeviceBuffer gate, DeviceBuffer up, DeviceBuffer y, long n)
    {
        int m = Elements(n, "swiglu");
        if (m == 0) return;
        CheckRange(gate, 0, n, "swiglu gate"); CheckRange(up, 0, n, "swiglu up"); CheckRange(y, 0, n, "swiglu output");
        SwiGluKernel(Launch_, m, B(gate).View, B(up).View, B(y).View, m);
    }

    public void Gelu(DeviceBuffer x, long n)
    {
        int m = Elements(n, "gelu");
        if (m == 0) return;
        CheckRange(x, 0, n, "gelu");
        GeluKernel(Launch_, m, B(x).View, m);
    }

    public void Add(DeviceBuffer a, DeviceBuffer b, long n)
    {
        int m = Elements(n, "add");
        if (m == 0) return;
        CheckRange(a, 0, n, "add a"); CheckRange(b, 0, n, "add b");
        AddKernel(Launch_, m, B(a).View, B(b).View, m);
    }
}
