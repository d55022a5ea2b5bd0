using ILGPU;
using ILGPU.Runtime;
using Lrl.Kernels;

namespace Lrl.Gpu;

/// <summary>A LoRA pair in device memory as f32: A [rank, in] as stored, B transposed to [rank, out].</summary>
internal sealed class GpuLora(string name, int rank, int inF, int outF,
                              MemoryBuffer1D<float, Stride1D.Dense> a, MemoryBuffer1D<float, Stride1D.Dense> bt) : LoraWeights(name, rank, inF, outF)
{
    public ArrayView<float> A => a.View;
    public ArrayView<float> Bt => bt.View;
    public override long ByteSize => (a.Length + bt.Length) * 4;
    public override void Dispose() { a.Dispose(); bt.Dispose(); }
}

// ILoraOps on ILGPU kernels (kernels/Lrl.Kernels/LoraKernels.cs): one launch per adapted product for up to
// FusedMaxRows rows (decode, small batches), two past that.
public sealed partial class GpuBackend : ILoraOps
{
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, float>? _loraDown;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? _loraUp;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, float>? _loraFused;
    private Action<AcceleratorStream, Index1D, ArrayView<int>, int, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, float>? _loraEmbed;
    private MemoryBuffer1D<float, Stride1D.Dense>? _loraT; // [rows, rank] scratch, grown on demand
    private MemoryBuffer1D<int, Stride1D.Dense>? _loraTokens;

    /// <summary>Rows up to which an update is one launch (<see cref="LoraKernels.Fused"/>: each group recomputes its row's x·Aᵀ).</summary>
    public const int FusedLoraMaxRows = 4;

    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                                DType stored = DType.F32)
    {
        if (rank < 1 || inFeatures < 1 || outFeatures < 1 || a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
            throw new ArgumentException($"LoRA {name}: A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]");
        var bt = new float[(long)rank * outFeatures];
        for (int o = 0; o < outFeatures; o++)
            for (int j = 0; j < rank; j++) bt[(long)j * outFeatures + o] = b[o * rank + j];
        var ad = AllocateRaw<float>(a.Length, $"LoRA {name} A");
        var bd = AllocateRaw<float>(bt.Length, $"LoRA {name} B");
        ToDevice(ad.View, a);
        ToDevice(bd.View, bt.AsSpan());
        Sync();
        return new GpuLora(name, rank, inFeatures, outFeatures, ad, bd);
    }

    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = lora as GpuLora ?? throw new ArgumentException($"{lora.Name} was not loaded by this GPU backend");
        if (row0 < 0 || rows < 0 || (long)(row0 + rows) * w.InFeatures > x.Length || (long)(row0 + rows) * w.OutFeatures > y.Length)
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA {w.Name}: rows {row0}..{row0 + rows - 1} exceed the buffers");
        if (rows == 0) return;
        if (rows <= FusedLoraMaxRows && w.Rank <= LoraKernels.FusedMaxRank)
        {
            _loraFused ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, float>(LoraKernels.Fused);
            int blocks = (w.OutFeatures + LoraKernels.FusedColumns - 1) / LoraKernels.FusedColumns;
            _loraFused(Launch_, new KernelConfig(rows * blocks, _group), B(x).View, w.A, w.Bt, B(y).View, row0, blocks, w.Rank, w.InFeatures, w.OutFeatures, scale);
            return;
        }
        long need = (long)rows * w.Rank;
        if (_loraT is null || _loraT.Length < need)
        {
            _loraT?.Dispose();
            _loraT = AllocateRaw<float>(Math.Max(need, 256), "LoRA scratch");
        }
        _loraDown ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, float>(LoraKernels.Down);
        _loraUp ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(LoraKernels.Up);
        int perGroup = _group / _warp;
        _loraDown(Launch_, new KernelConfig((int)((need + perGroup - 1) / perGroup), _group), B(x).View, w.A, _loraT.View, row0, rows, w.Rank, w.InFeatures, scale);
        _loraUp(Launch_, N((long)rows * w.OutFeatures), _loraT.View, w.Bt, B(y).View, row0, rows, w.Rank, w.OutFeatures);
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
        _loraEmbed ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<int>, int, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, float>(LoraKernels.EmbedUp);
        _loraEmbed(Launch_, N((long)rows * w.OutFeatures), ids, tokens[0], w.A, w.Bt, B(y).View, row0, rows, w.Rank, w.InFeatures, w.OutFeatures, scale);
    }
}
