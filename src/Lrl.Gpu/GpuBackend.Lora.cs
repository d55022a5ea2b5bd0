using ILGPU;
using ILGPU.Runtime;
using Lrl.Kernels;

namespace Lrl.Gpu;

/// <summary>
/// A LoRA pair in device memory: A [rank, in] as stored and B transposed to [rank, out], held as f32, as bf16 bits (an
/// adapter whose values are exactly bf16: half the bytes) or as int8 codes with one scale per rank row of A and of Bᵀ
/// (values on <see cref="LoraInt8"/>'s grid: a quarter of the bytes, and the same codes and scales the CPU backend holds).
/// </summary>
internal abstract class GpuLora(string name, int rank, int inF, int outF) : LoraWeights(name, rank, inF, outF)
{
    /// <summary>The update of rows [row0, row0 + rows) (<see cref="ILoraOps.LoraRows"/>), through this pair's kernels.</summary>
    public abstract void Rows(GpuBackend g, ArrayView<float> x, int row0, int rows, float scale, ArrayView<float> y);

    /// <summary>The adapted embedding's update (<see cref="ILoraOps.LoraEmbedRows"/>), ids already on the device when several.</summary>
    public abstract void EmbedRows(GpuBackend g, ArrayView<int> ids, int single, int row0, int rows, float scale, ArrayView<float> y);

    /// <summary>Two or three staged updates over one input in one launch; every pair of <paramref name="terms"/> is of this pair's storage.</summary>
    public abstract void RunTerms(GpuBackend g, ReadOnlySpan<GpuBackend.StagedLora> terms, TermsEpilogue epilogue);

    /// <summary>The update of rows 0 .. rows-1 followed by the residual block's add and norm, in one launch.</summary>
    public abstract void RowsAddRmsNorm(GpuBackend g, ArrayView<float> x, int rows, float scale, ArrayView<float> y, AddNormArgs args);
}

/// <summary>A pair held as <typeparamref name="TL"/>; <paramref name="buffers"/> are the device buffers behind A and Bᵀ.</summary>
internal sealed class GpuLora<TL>(string name, int rank, int inF, int outF, TL a, TL bt, long bytes, params MemoryBuffer[] buffers)
    : GpuLora(name, rank, inF, outF) where TL : struct, ILoraMatrix
{
    public TL A => a;
    public TL Bt => bt;
    public override long ByteSize => bytes;
    public override void Rows(GpuBackend g, ArrayView<float> x, int row0, int rows, float scale, ArrayView<float> y) => g.LoraRowsOf(this, x, row0, rows, scale, y);
    public override void EmbedRows(GpuBackend g, ArrayView<int> ids, int single, int row0, int rows, float scale, ArrayView<float> y) =>
        g.LoraEmbedOf(this, ids, single, row0, rows, scale, y);
    public override void RunTerms(GpuBackend g, ReadOnlySpan<GpuBackend.StagedLora> terms, TermsEpilogue epilogue) => g.LoraTermsOf<TL>(terms, epilogue);
    public override void RowsAddRmsNorm(GpuBackend g, ArrayView<float> x, int rows, float scale, ArrayView<float> y, AddNormArgs args) =>
        g.LoraAddRmsNormOf(this, x, rows, scale, y, args);
    public override void Dispose() { foreach (var b in buffers) b.Dispose(); }
}

// ILoraOps on ILGPU kernels (kernels/Lrl.Kernels/LoraKernels.cs): one launch per adapted product for up to
// FusedLoraMaxRows rows (decode, small batches), two past that; one specialization per storage (f32, bf16, int8).
public sealed partial class GpuBackend : ILoraOps
{
    /// <summary>The LoRA kernels of one storage, loaded on first use.</summary>
    private sealed class LoraKernelSet<TL>(Accelerator acc) where TL : struct, ILoraMatrix
    {
        private Action<AcceleratorStream, KernelConfig, ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, int, float>? _fused;
        private Action<AcceleratorStream, KernelConfig, ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, float>? _down;
        private Action<AcceleratorStream, Index1D, ArrayView<float>, TL, ArrayView<float>, int, int, int, int>? _up;
        private Action<AcceleratorStream, Index1D, ArrayView<int>, int, TL, TL, ArrayView<float>, int, int, int, int, int, float>? _embed;
        private Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, LoraTerm<TL>, LoraTerm<TL>, LoraTerm<TL>, int, TermsEpilogue>? _terms;
        private Action<AcceleratorStream, KernelConfig, ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, float, AddNormArgs>? _addNorm;
        public Action<AcceleratorStream, KernelConfig, ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, float, AddNormArgs> AddNorm =>
            _addNorm ??= acc.LoadKernel<ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, float, AddNormArgs>(LoraKernels.FusedAddRmsNorm<TL>);
        /// <summary>The terms of one <see cref="Terms"/> launch (reused: nothing allocated per token).</summary>
        public readonly LoraTerm<TL>[] TermArgs = new LoraTerm<TL>[3];
        public Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, LoraTerm<TL>, LoraTerm<TL>, LoraTerm<TL>, int, TermsEpilogue> Terms =>
            _terms ??= acc.LoadKernel<ArrayView<float>, int, LoraTerm<TL>, LoraTerm<TL>, LoraTerm<TL>, int, TermsEpilogue>(LoraKernels.FusedTerms<TL>);
        public Action<AcceleratorStream, KernelConfig, ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, int, float> Fused =>
            _fused ??= acc.LoadKernel<ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, int, float>(LoraKernels.Fused<TL>);
        public Action<AcceleratorStream, KernelConfig, ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, float> Down =>
            _down ??= acc.LoadKernel<ArrayView<float>, TL, TL, ArrayView<float>, int, int, int, int, float>(LoraKernels.Down<TL>);
        public Action<AcceleratorStream, Index1D, ArrayView<float>, TL, ArrayView<float>, int, int, int, int> Up =>
            _up ??= acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, TL, ArrayView<float>, int, int, int, int>(LoraKernels.Up<TL>);
        public Action<AcceleratorStream, Index1D, ArrayView<int>, int, TL, TL, ArrayView<float>, int, int, int, int, int, float> Embed =>
            _embed ??= acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, int, TL, TL, ArrayView<float>, int, int, int, int, int, float>(LoraKernels.EmbedUp<TL>);
    }

    private readonly Dictionary<Type, object> _loraKernels = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? _loraT; // [rows, rank] scratch, grown on demand
    private MemoryBuffer1D<int, Stride1D.Dense>? _loraTokens;

    private LoraKernelSet<TL> LoraSet<TL>() where TL : struct, ILoraMatrix
    {
        if (!_loraKernels.TryGetValue(typeof(TL), out var set)) _loraKernels[typeof(TL)] = set = new LoraKernelSet<TL>(_accelerator);
        return (LoraKernelSet<TL>)set;
    }

    /// <summary>Rows up to which an update is one launch (<see cref="LoraKernels.Fused{TL}"/>: each group recomputes its row's x·Aᵀ).</summary>
    public const int FusedLoraMaxRows = 4;

    /// <summary>
    /// Holds the pair as <paramref name="stored"/> says (see <see cref="ILoraOps.LoadLora"/>): bf16 bits for BF16, int8
    /// codes and per-rank-row scales for I8 (computed as the CPU backend computes them: the same codes), else f32.
    /// </summary>
    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                                DType stored = DType.F32)
    {
        if (rank < 1 || inFeatures < 1 || outFeatures < 1 || a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
            throw new ArgumentException($"LoRA {name}: A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]");
        var bt = new float[(long)rank * outFeatures];
        for (int o = 0; o < outFeatures; o++)
            for (int j = 0; j < rank; j++) bt[(long)j * outFeatures + o] = b[o * rank + j];
        GpuLora w;
        if (stored == DType.I8)
        {
            var (qa, sa) = LoraCodes(name, a, rank, inFeatures);
            var (qb, sb) = LoraCodes(name, bt, rank, outFeatures);
            var (ca, cs, cb, cbs) = (AllocateRaw<byte>(qa.Length, $"LoRA {name} A"), AllocateRaw<float>(rank, $"LoRA {name} A scales"),
                                     AllocateRaw<byte>(qb.Length, $"LoRA {name} B"), AllocateRaw<float>(rank, $"LoRA {name} B scales"));
            ToDevice(ca.View, qa.AsSpan()); ToDevice(cs.View, sa.AsSpan()); ToDevice(cb.View, qb.AsSpan()); ToDevice(cbs.View, sb.AsSpan());
            w = new GpuLora<LoraQ8>(name, rank, inFeatures, outFeatures, new LoraQ8(ca.View, cs.View), new LoraQ8(cb.View, cbs.View),
                                    qa.Length + qb.Length + 8L * rank, ca, cs, cb, cbs);
        }
        else if (stored == DType.BF16)
        {
            var a16 = new ushort[a.Length];
            for (int i = 0; i < a.Length; i++) a16[i] = DTypes.FloatToBF16(a[i]);
            var b16 = new ushort[bt.Length];
            for (int i = 0; i < bt.Length; i++) b16[i] = DTypes.FloatToBF16(bt[i]);
            var (ad, bd) = (AllocateRaw<ushort>(a16.Length, $"LoRA {name} A"), AllocateRaw<ushort>(b16.Length, $"LoRA {name} B"));
            ToDevice(ad.View, a16.AsSpan()); ToDevice(bd.View, b16.AsSpan());
            w = new GpuLora<LoraBF16>(name, rank, inFeatures, outFeatures, new LoraBF16(ad.View), new LoraBF16(bd.View), 2L * (a16.Length + b16.Length), ad, bd);
        }
        else
        {
            var (ad, bd) = (AllocateRaw<float>(a.Length, $"LoRA {name} A"), AllocateRaw<float>(bt.Length, $"LoRA {name} B"));
            ToDevice(ad.View, a);
            ToDevice(bd.View, bt.AsSpan());
            w = new GpuLora<LoraF32>(name, rank, inFeatures, outFeatures, new LoraF32(ad.View), new LoraF32(bd.View), 4L * (a.Length + bt.Length), ad, bd);
        }
        Sync();
        return w;
    }

    /// <summary>Each row of <paramref name="m"/> [rows, cols] as <see cref="LoraInt8"/> codes (as bytes) and its scale.</summary>
    private static (byte[] Codes, float[] Scales) LoraCodes(string name, ReadOnlySpan<float> m, int rows, int cols)
    {
        var codes = new byte[(long)rows * cols];
        var scales = new float[rows];
        for (int j = 0; j < rows; j++)
        {
            var row = m.Slice(j * cols, cols);
            float max = 0;
            foreach (float v in row) max = float.IsFinite(v) ? MathF.Max(max, MathF.Abs(v)) : throw new ArgumentException($"LoRA {name}: a non-finite value");
            float s = scales[j] = LoraInt8.Scale(max);
            for (int i = 0; i < cols; i++) codes[(long)j * cols + i] = (byte)LoraInt8.Code(row[i], s);
        }
        return (codes, scales);
    }

    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = lora as GpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by this GPU backend");
        if (row0 < 0 || rows < 0 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        if (rows == 0) return;
        w.Rows(this, B(x).View, row0, rows, scale, B(y).View);
    }

    internal void LoraRowsOf<TL>(GpuLora<TL> w, ArrayView<float> x, int row0, int rows, float scale, ArrayView<float> y) where TL : struct, ILoraMatrix
    {
        var k = LoraSet<TL>();
        if (rows <= FusedLoraMaxRows && w.Rank <= LoraKernels.FusedMaxRank)
        {
            int blocks = (w.OutFeatures + LoraKernels.FusedColumns - 1) / LoraKernels.FusedColumns;
            k.Fused(Launch_, new KernelConfig(rows * blocks, _group), x, w.A, w.Bt, y, row0, blocks, w.Rank, w.InFeatures, w.OutFeatures, scale);
            return;
        }
        long need = (long)rows * w.Rank;
        var t = Scratch(ref _loraT, need, "LoRA scratch");
        int perGroup = _group / _warp;
        k.Down(Launch_, new KernelConfig((int)((need + perGroup - 1) / perGroup), _group), x, w.A, w.Bt, t.View, row0, rows, w.Rank, w.InFeatures, scale);
        k.Up(Launch_, N((long)rows * w.OutFeatures), t.View, w.Bt, y, row0, rows, w.Rank, w.OutFeatures);
    }

    public void LoraEmbedRows(ReadOnlySpan<int> tokens, int row0, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = lora as GpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by this GPU backend");
        int rows = tokens.Length;
        if (row0 < 0 || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(row0), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffer");
        if (rows == 0) return;
        foreach (int id in tokens)
            if ((uint)id >= (uint)w.InFeatures) throw new LrlException($"token id {id} is outside the vocabulary (0..{w.InFeatures - 1})");
        ArrayView<int> ids = ArrayView<int>.Empty;
        if (rows > 1)
        {
            var buf = Scratch(ref _loraTokens, rows, "LoRA token ids");
            ToDevice(buf.View, tokens[..rows]);
            ids = buf.View.SubView(0, rows);
        }
        w.EmbedRows(this, ids, tokens[0], row0, rows, scale, B(y).View);
    }

    internal void LoraEmbedOf<TL>(GpuLora<TL> w, ArrayView<int> ids, int single, int row0, int rows, float scale, ArrayView<float> y) where TL : struct, ILoraMatrix =>
        LoraSet<TL>().Embed(Launch_, N((long)rows * w.OutFeatures), ids, single, w.A, w.Bt, y, row0, rows, w.Rank, w.InFeatures, w.OutFeatures, scale);

    /// <summary>An update staged for the next product that writes <see cref="Y"/> (<see cref="StageLora"/>).</summary>
    internal readonly record struct StagedLora(DeviceBuffer X, int Row0, int Rows, GpuLora W, float Scale, DeviceBuffer Y)
    {
        /// <summary>Whether it runs as one group-per-row-and-block launch (<see cref="LoraKernels.Fused{TL}"/>), so it can share one.</summary>
        public bool Fusable => Rows <= FusedLoraMaxRows && W.Rank <= LoraKernels.FusedMaxRank;

        /// <summary>Whether both run in one <see cref="LoraKernels.FusedTerms{TL}"/> launch: decode-sized, one input, one storage and width.</summary>
        public bool SharesLaunchWith(StagedLora o) =>
            Fusable && o.Fusable && ReferenceEquals(X, o.X) && W.GetType() == o.W.GetType() && W.InFeatures == o.W.InFeatures;
    }

    private readonly List<StagedLora> _staged = [];
    private readonly List<StagedLora> _applying = [];
    private readonly StagedLora[] _chunk = new StagedLora[3];

    /// <summary>
    /// Updates are staged and applied by the product that writes their output, right after it: the updates of one
    /// product's outputs that share an input (Q/K/V, gate/up) as one launch (<see cref="LoraKernels.FusedTerms{TL}"/>)
    /// where they are decode-sized, instead of one launch each.
    /// </summary>
    public bool FusesLora => true;

    public void StageLora(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = lora as GpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by this GPU backend");
        if (row0 < 0 || rows < 1 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        _staged.Add(new StagedLora(x, row0, rows, w, scale, y));
    }

    public int PendingLora => _staged.Count;

    public void ClearStagedLora() => _staged.Clear();

    /// <summary>Whether an update is staged for <paramref name="y"/>.</summary>
    private bool StagedFor(DeviceBuffer y)
    {
        foreach (var t in _staged) if (ReferenceEquals(t.Y, y)) return true;
        return false;
    }

    /// <summary>
    /// Applies (and forgets) the staged updates writing <paramref name="y0"/>, <paramref name="y1"/> or
    /// <paramref name="y2"/>: decode-sized ones over the same input, storage and width up to three a launch, the rest
    /// one by one (<see cref="LoraRowsOf{TL}"/>). Called by each product after its own launches.
    /// </summary>
    private void ApplyStaged(DeviceBuffer y0, DeviceBuffer? y1 = null, DeviceBuffer? y2 = null)
    {
        if (_staged.Count == 0) return;
        _applying.Clear();
        for (int i = 0; i < _staged.Count;)
        {
            var t = _staged[i];
            if (ReferenceEquals(t.Y, y0) || ReferenceEquals(t.Y, y1) || ReferenceEquals(t.Y, y2)) { _applying.Add(t); _staged.RemoveAt(i); }
            else i++;
        }
        var chunk = _chunk.AsSpan();
        while (_applying.Count > 0)
        {
            var first = _applying[0];
            _applying.RemoveAt(0);
            int n = 1;
            chunk[0] = first;
            if (first.Fusable)
                for (int i = 0; i < _applying.Count && n < 3;)
                {
                    var t = _applying[i];
                    if (t.SharesLaunchWith(first))
                    {
                        chunk[n++] = t;
                        _applying.RemoveAt(i);
                    }
                    else i++;
                }
            if (n == 1) first.W.Rows(this, B(first.X).View, first.Row0, first.Rows, first.Scale, B(first.Y).View);
            else first.W.RunTerms(this, chunk[..n], default);
        }
        Array.Clear(_chunk);
    }

    /// <summary>
    /// The staged updates of exactly the outputs <paramref name="y0"/>, <paramref name="y1"/> (and <paramref name="y2"/>),
    /// one each, decode-sized, over one input, storage and width, on all <paramref name="rows"/> rows, as one launch that
    /// ends with <paramref name="epilogue"/> (RoPE + cache writes, or SwiGLU) by its last group. False, with nothing run
    /// or dropped, where the staged updates do not take that shape (then ApplyStaged and the op run apart).
    /// </summary>
    private bool TryTermsWithEpilogue(DeviceBuffer y0, DeviceBuffer y1, DeviceBuffer? y2, int rows, TermsEpilogue epilogue)
    {
        int outputs = y2 is null ? 2 : 3;
        var chunk = _chunk.AsSpan(0, outputs);
        int found = 0;
        foreach (var t in _staged)
        {
            int slot = ReferenceEquals(t.Y, y0) ? 0 : ReferenceEquals(t.Y, y1) ? 1 : y2 is not null && ReferenceEquals(t.Y, y2) ? 2 : -1;
            if (slot < 0) continue;
            if (chunk[slot].W is not null || !t.Fusable || t.Row0 != 0 || t.Rows != rows) { Array.Clear(_chunk); return false; }
            chunk[slot] = t;
            found++;
        }
        bool ok = found == outputs;
        for (int i = 1; ok && i < outputs; i++)
            ok = chunk[i].SharesLaunchWith(chunk[0]);
        if (!ok) { Array.Clear(_chunk); return false; }
        foreach (var t in chunk) _staged.Remove(t);
        chunk[0].W.RunTerms(this, chunk, epilogue);
        Array.Clear(_chunk);
        return true;
    }

    internal void LoraTermsOf<TL>(ReadOnlySpan<StagedLora> terms, TermsEpilogue epilogue) where TL : struct, ILoraMatrix
    {
        var set = LoraSet<TL>();
        var ts = set.TermArgs;
        int groups = 0;
        for (int i = 0; i < terms.Length; i++)
        {
            var t = terms[i];
            var w = (GpuLora<TL>)t.W;
            int blocks = (w.OutFeatures + LoraKernels.FusedColumns - 1) / LoraKernels.FusedColumns;
            ts[i] = new LoraTerm<TL>
            {
                A = w.A, Bt = w.Bt, Y = B(t.Y).View, Row0 = t.Row0, Rank = w.Rank, OutF = w.OutFeatures,
                Blocks = blocks, FirstGroup = groups, Scale = t.Scale,
            };
            groups += t.Rows * blocks;
        }
        if (terms.Length < 3) ts[2] = default;
        set.Terms(Launch_, new KernelConfig(groups, _group), B(terms[0].X).View, terms[0].W.InFeatures, ts[0], ts[1], ts[2], terms.Length, epilogue);
    }

    /// <summary>
    /// A residual block's end with one staged update on its product (a decode step with one adapter): the product, then
    /// the update and the add+norm in one launch (<see cref="LoraKernels.FusedAddRmsNorm{TL}"/>). False (nothing run)
    /// unless exactly one decode-sized update covering all <paramref name="rows"/> rows is staged for <paramref name="y"/>.
    /// </summary>
    private bool TryLoraAddRmsNorm(DeviceBuffer x, Weight w, DeviceBuffer y, int rows, DeviceBuffer residual, Weight norm, DeviceBuffer normed, float eps)
    {
        int at = -1;
        for (int i = 0; i < _staged.Count; i++)
            if (ReferenceEquals(_staged[i].Y, y))
            {
                if (at >= 0) return false;
                at = i;
            }
        if (at < 0) return false;
        var t = _staged[at];
        int outF = Wt(w).Rows;
        if (!t.Fusable || t.Row0 != 0 || t.Rows != rows || norm.Cols != outF || t.W.OutFeatures != outF) return false;
        CheckRange(residual, 0, (long)rows * outF, "add_rmsnorm residual");
        CheckRange(normed, 0, (long)rows * outF, "add_rmsnorm output");
        MatMulCore(x, w, y, rows);
        _staged.RemoveAt(at);
        var args = new AddNormArgs
        {
            Residual = B(residual).View, Weight = Vec(norm, outF, "add_rmsnorm"), Output = B(normed).View, Tickets = Tickets(rows).View, Eps = eps,
        };
        t.W.RowsAddRmsNorm(this, B(t.X).View, rows, t.Scale, B(y).View, args);
        return true;
    }

    internal void LoraAddRmsNormOf<TL>(GpuLora<TL> w, ArrayView<float> x, int rows, float scale, ArrayView<float> y, AddNormArgs args) where TL : struct, ILoraMatrix
    {
        int blocks = (w.OutFeatures + LoraKernels.FusedColumns - 1) / LoraKernels.FusedColumns;
        LoraSet<TL>().AddNorm(Launch_, new KernelConfig(rows * blocks, _group), x, w.A, w.Bt, y, blocks, w.Rank, w.InFeatures, w.OutFeatures, scale, args);
    }
}
