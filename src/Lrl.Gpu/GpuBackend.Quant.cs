using ILGPU;
using ILGPU.Runtime;
using Lrl.Kernels;

namespace Lrl.Gpu;

/// <summary>Codes, scales and (optional) zero points and column order of a quantized weight in device memory.</summary>
internal sealed class GpuQuantData : IDisposable
{
    public required int Bits { get; init; }
    public required MemoryBuffer1D<byte, Stride1D.Dense> Codes { get; init; }
    public required MemoryBuffer1D<ushort, Stride1D.Dense> Scales { get; init; }
    public MemoryBuffer1D<byte, Stride1D.Dense>? Zeros { get; init; }
    public MemoryBuffer1D<int, Stride1D.Dense>? StoredColumn { get; init; }
    public required QuantShape Shape { get; init; }
    public required long ByteSize { get; init; }

    public Q8Reader Q8 => new(Codes.View, Scales.View, StoredColumn?.View ?? ArrayView<int>.Empty, Shape);
    public Q4Reader Q4 => new(Codes.View, Scales.View, Zeros?.View ?? ArrayView<byte>.Empty, StoredColumn?.View ?? ArrayView<int>.Empty, Shape);

    public void Dispose()
    {
        Codes.Dispose(); Scales.Dispose(); Zeros?.Dispose(); StoredColumn?.Dispose();
    }
}

// Quantized weights: uploaded packed (codes + f16 scales), dequantized inside the generic GEMV/GEMM/embedding kernels
// through the Q8/Q4 weight readers (kernels/Lrl.Kernels/QuantKernels.cs).
public sealed partial class GpuBackend : IQuantizedBackend
{
    private MatKernels<Q8Reader>? _kQ8;
    private MatKernels<Q4Reader>? _kQ4;
    private MatKernels<Q8Reader> KQ8 => _kQ8 ??= new(_accelerator, MmaGemmKernels.GemmQ8);
    private MatKernels<Q4Reader> KQ4 => _kQ4 ??= new(_accelerator, MmaGemmKernels.GemmQ4);

    public unsafe Weight LoadQuantized(QuantizedTensor q)
    {
        q.Validate();
        var codes = AllocateRaw<byte>(q.CodeBytes, $"codes of {q.Name}");
        codes.View.CopyFromCPU(Upload_, ref *q.Codes, q.CodeBytes);
        var scales = AllocateRaw<ushort>(q.ScaleCount, $"scales of {q.Name}");
        scales.View.CopyFromCPU(Upload_, ref *(ushort*)q.Scales, q.ScaleCount);
        MemoryBuffer1D<byte, Stride1D.Dense>? zeros = null;
        if (q.Zeros != null)
        {
            zeros = AllocateRaw<byte>(q.ScaleCount, $"zero points of {q.Name}");
            zeros.View.CopyFromCPU(Upload_, ref *q.Zeros, q.ScaleCount);
        }
        MemoryBuffer1D<int, Stride1D.Dense>? stored = null;
        if (q.ColumnOrder is { } order)
        {
            var inverse = new int[q.Cols];
            for (int j = 0; j < order.Length; j++) inverse[order[j]] = j;
            stored = AllocateRaw<int>(q.Cols, $"column order of {q.Name}");
            ToDevice(stored.View, inverse.AsSpan());
        }
        var data = new GpuQuantData
        {
            Bits = q.Bits, Codes = codes, Scales = scales, Zeros = zeros, StoredColumn = stored, ByteSize = q.ByteSize,
            Shape = QuantShape.Create(q.Bits, q.Cols, q.GroupSize, q.Groups, q.Zeros != null, stored != null),
        };
        Sync(); // the host memory may be a converted copy that is not kept
        return new GpuWeight(q.Name, q.Rows, q.Cols, q.Bits == 8 ? DType.I8 : DType.U8, q.Format, null, null) { Quant = data };
    }

    private Action<AcceleratorStream, KernelConfig, ArrayView<byte>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, QuantShape>? _gemvQ8;
    private Action<AcceleratorStream, KernelConfig, ArrayView<byte>, ArrayView<ushort>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, QuantShape>? _gemvQ4;

    private void QuantMatMul(GpuWeight m, ArrayView<float> xv, ArrayView<float> yv, ArrayView<float> bv, int hasBias, int rows, int outF, int inF)
    {
        var d = m.Quant ?? throw new NotSupportedException(m.Format);
        if ((rows == 1 || rows <= _exactRows) && d.StoredColumn is null)
        {
            // Decode (and rows that must each compute what they compute alone, one grid row each): the group-wise
            // kernels (one scale conversion per group, no per-element index division).
            var cfg = GemvConfig(outF, rows);
            if (d.Bits == 8)
                (_gemvQ8 ??= _accelerator.LoadKernel<ArrayView<byte>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, QuantShape>(QuantGemvKernels.GemvQ8))
                    (Launch_, cfg, d.Codes.View, d.Scales.View, xv, yv, bv, hasBias, outF, d.Shape);
            else
                (_gemvQ4 ??= _accelerator.LoadKernel<ArrayView<byte>, ArrayView<ushort>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, QuantShape>(QuantGemvKernels.GemvQ4))
                    (Launch_, cfg, d.Codes.View, d.Scales.View, d.Zeros?.View ?? ArrayView<byte>.Empty, xv, yv, bv, hasBias, outF, d.Shape);
            return;
        }
        // Prompts and batched steps: the codes (q − z, exact in bf16) on tensor cores where the shape allows, each
        // group's partial sums scaled; else the f32 tile kernel through the generic reader.
        bool tensorCores = UsesTensorCores(m, rows);
        if (d.Bits == 8) RunMatMul(KQ8, d.Q8, xv, yv, bv, hasBias, rows, outF, inF, tensorCores);
        else RunMatMul(KQ4, d.Q4, xv, yv, bv, hasBias, rows, outF, inF, tensorCores);
    }

    /// <summary>
    /// Whether a quantized product of <paramref name="rows"/> rows runs on tensor cores (<see cref="MmaGemmKernels.GemmQ8"/>/
    /// <see cref="MmaGemmKernels.GemmQ4"/>): from <see cref="MmaMinRowsQuantized"/> rows past the exact rows, for shapes
    /// <see cref="MmaGemmKernels.Serves"/> takes.
    /// </summary>
    public bool UsesTensorCores(Weight w, int rows) =>
        w is GpuWeight { Quant: { } d } && rows >= MmaMinRowsQuantized && rows > _exactRows && _tensorCores && MmaGemmKernels.Serves(d.Shape);

    /// <summary>
    /// Fewest rows a quantized product takes to tensor cores: 2. The f32 tile kernel dequantizes each weight element
    /// through the generic reader (139 SASS instructions per element for int4, sm_90, against ~15 per element in the tensor-core
    /// kernel's staging, 8 codes per 8-byte load) and stages the weights again for every 8 rows, so even a
    /// 2-row tile, 62 of its 64 rows zeros, costs less on the tensor cores (bf16 weights, cheap to stage, keep
    /// <see cref="MmaMinRows"/>).
    /// </summary>
    public const int MmaMinRowsQuantized = 2;

    private Action<AcceleratorStream, KernelConfig, Q8Reader, Q8Reader, Q8Reader, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs>? _gemv3Q8;
    private Action<AcceleratorStream, KernelConfig, Q4Reader, Q4Reader, Q4Reader, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs>? _gemv3Q4;
    private Action<AcceleratorStream, KernelConfig, Q8Reader, Q8Reader, Q8Reader, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs> Gemv3Q8Kernel =>
        _gemv3Q8 ??= _accelerator.LoadKernel<Q8Reader, Q8Reader, Q8Reader, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs>(QuantGemvKernels.Gemv3Q8);
    private Action<AcceleratorStream, KernelConfig, Q4Reader, Q4Reader, Q4Reader, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs> Gemv3Q4Kernel =>
        _gemv3Q4 ??= _accelerator.LoadKernel<Q4Reader, Q4Reader, Q4Reader, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs>(QuantGemvKernels.Gemv3Q4);

    private Action<AcceleratorStream, KernelConfig, ArrayView<byte>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, QuantShape, AddNormArgs>? _gemvQ8AddNorm;
    private Action<AcceleratorStream, KernelConfig, ArrayView<byte>, ArrayView<ushort>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, int, QuantShape, AddNormArgs>? _gemvQ4AddNorm;

    /// <summary>The int8/int4 group-wise GEMV (input order) with the residual add and RMSNorm by each row's last group.</summary>
    private void QuantGemvAddRmsNorm(GpuWeight m, KernelConfig cfg, ArrayView<float> xv, ArrayView<float> yv, int outF, AddNormArgs a)
    {
        var d = m.Quant ?? throw new NotSupportedException(m.Format);
        if (d.Bits == 8)
            (_gemvQ8AddNorm ??= _accelerator.LoadKernel<ArrayView<byte>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, int, QuantShape, AddNormArgs>(QuantGemvKernels.GemvQ8AddRmsNorm))
                (Launch_, cfg, d.Codes.View, d.Scales.View, xv, yv, outF, d.Shape, a);
        else
            (_gemvQ4AddNorm ??= _accelerator.LoadKernel<ArrayView<byte>, ArrayView<ushort>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, int, QuantShape, AddNormArgs>(QuantGemvKernels.GemvQ4AddRmsNorm))
                (Launch_, cfg, d.Codes.View, d.Scales.View, d.Zeros?.View ?? ArrayView<byte>.Empty, xv, yv, outF, d.Shape, a);
    }

    private void QuantEmbed(GpuWeight t, KernelConfig cfg, ArrayView<int> ids, int single, ArrayView<float> xv, int dim)
    {
        var d = t.Quant ?? throw new NotSupportedException(t.Format);
        if (d.Bits == 8) KQ8.Embed(Launch_, cfg, d.Q8, ids, single, xv, dim);
        else KQ4.Embed(Launch_, cfg, d.Q4, ids, single, xv, dim);
    }

    private Action<AcceleratorStream, KernelConfig, Q8Reader, Q8Reader, ArrayView<float>, ArrayView<float>, int>? _gemvSwiGluQ8;
    private Action<AcceleratorStream, KernelConfig, Q4Reader, Q4Reader, ArrayView<float>, ArrayView<float>, int>? _gemvSwiGluQ4;

    /// <summary>Whether a quantized weight's GEMV rows read 8 bytes per lane (<see cref="QuantShape.Vector"/>: input order, whole 8-column chunks or 64-column blocks).</summary>
    public static bool ReadsWide(Weight w) => w is GpuWeight { Quant.Shape.Vector: 1 };

    private void QuantGemvSwiGlu(GpuWeight g, GpuWeight u, KernelConfig cfg, ArrayView<float> xv, ArrayView<float> yv, int outF, int inF)
    {
        var dg = g.Quant ?? throw new NotSupportedException(g.Format);
        var du = u.Quant ?? throw new NotSupportedException(u.Format);
        if (dg.Bits != du.Bits) throw new ArgumentException($"{g} and {u} differ in bits");
        if (dg.StoredColumn is null && du.StoredColumn is null)
        {
            // Input order: the group-wise row code (8 bytes per lane where the shape allows; one scale per group).
            if (dg.Bits == 8)
                (_gemvSwiGluQ8 ??= _accelerator.LoadKernel<Q8Reader, Q8Reader, ArrayView<float>, ArrayView<float>, int>(QuantGemvKernels.GemvSwiGluQ8))
                    (Launch_, cfg, dg.Q8, du.Q8, xv, yv, outF);
            else
                (_gemvSwiGluQ4 ??= _accelerator.LoadKernel<Q4Reader, Q4Reader, ArrayView<float>, ArrayView<float>, int>(QuantGemvKernels.GemvSwiGluQ4))
                    (Launch_, cfg, dg.Q4, du.Q4, xv, yv, outF);
            return;
        }
        if (dg.Bits == 8) KQ8.GemvSwiGlu(Launch_, cfg, dg.Q8, du.Q8, xv, yv, outF, inF);
        else KQ4.GemvSwiGlu(Launch_, cfg, dg.Q4, du.Q4, xv, yv, outF, inF);
    }
}
