using ILGPU;
using ILGPU.Runtime;
using Lrl.Kernels;

namespace Lrl.Gpu;

// Kernel loading: each kernel is compiled on first use (per dtype for the weight-reading ones) and kept.
public sealed partial class GpuBackend
{
    /// <summary>
    /// The weight-reading kernels specialized for one stored dtype, and its tensor-core prompt product
    /// (<paramref name="mma"/>, a <see cref="MmaGemmKernels"/> entry point; every dtype has one).
    /// </summary>
    private sealed class MatKernels<TW>(Accelerator a, Action<TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, ArrayView<uint>> mma)
        where TW : struct, IWeightReader
    {
        private Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, ArrayView<uint>>? _mma;
        public Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, ArrayView<uint>> Mma =>
            _mma ??= a.LoadKernel(mma);
        private Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? _gemv;
        private Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? _gemm;
        private Action<AcceleratorStream, KernelConfig, TW, TW, ArrayView<float>, ArrayView<float>, int, int>? _gemvSwiGlu;
        private Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>? _gemvResidualSilu;
        public Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> GemvResidualSilu =>
            _gemvResidualSilu ??= a.LoadKernel<TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(GemvKernels.GemvResidualSilu<TW>);
        private Action<AcceleratorStream, KernelConfig, TW, ArrayView<int>, int, ArrayView<float>, int>? _embed;
        private Action<AcceleratorStream, KernelConfig, TW, TW, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs>? _gemv3;

        public Action<AcceleratorStream, KernelConfig, TW, TW, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs> Gemv3 =>
            _gemv3 ??= a.LoadKernel<TW, TW, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, Gemv3Shape, RopeArgs>(GemvKernels.Gemv3<TW>);

        private Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, int, int, AddNormArgs>? _gemvAddRmsNorm;
        public Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, int, int, AddNormArgs> GemvAddRmsNorm =>
            _gemvAddRmsNorm ??= a.LoadKernel<TW, ArrayView<float>, ArrayView<float>, int, int, AddNormArgs>(GemvKernels.GemvAddRmsNorm<TW>);
        public Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int> Gemv =>
            _gemv ??= a.LoadKernel<TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(GemvKernels.Gemv<TW>);
        public Action<AcceleratorStream, KernelConfig, TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> Gemm =>
            _gemm ??= a.LoadKernel<TW, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(GemmKernels.Gemm<TW>);
        public Action<AcceleratorStream, KernelConfig, TW, TW, ArrayView<float>, ArrayView<float>, int, int> GemvSwiGlu =>
            _gemvSwiGlu ??= a.LoadKernel<TW, TW, ArrayView<float>, ArrayView<float>, int, int>(GemvKernels.GemvSwiGlu<TW>);
        public Action<AcceleratorStream, KernelConfig, TW, ArrayView<int>, int, ArrayView<float>, int> Embed =>
            _embed ??= a.LoadKernel<TW, ArrayView<int>, int, ArrayView<float>, int>(EmbedKernels.Embed<TW>);
    }

    private MatKernels<F32Reader>? _kF32;
    private MatKernels<F16Reader>? _kF16;
    private MatKernels<BF16Reader>? _kBF16;
    private MatKernels<F32Reader> KF32 => _kF32 ??= new(_accelerator, MmaGemmKernels.GemmF32);
    private MatKernels<F16Reader> KF16 => _kF16 ??= new(_accelerator, MmaGemmKernels.GemmF16);
    private MatKernels<BF16Reader> KBF16 => _kBF16 ??= new(_accelerator, MmaGemmKernels.GemmBF16);

    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>? _rmsNorm;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>? _addRmsNorm;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>? _layerNorm;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>? _rope;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape>? _attnSplit;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>? _attnPrefill;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>? _swiGlu;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, int>? _gelu;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int>? _add;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, ArrayView<int>>? _argmax;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, int, float, float, float, float, ArrayView<int>>? _sample;

    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> RmsNormKernel =>
        _rmsNorm ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(NormKernels.RmsNorm);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> AddRmsNormKernel =>
        _addRmsNorm ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(NormKernels.AddRmsNorm);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> LayerNormKernel =>
        _layerNorm ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(NormKernels.LayerNorm);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int> RopeKernel =>
        _rope ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>(RopeKernels.Rope);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape> AttnSplitKernel =>
        _attnSplit ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape>(AttentionKernels.SplitK);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape, SequenceCaches>? _attnSequences;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape, SequenceCaches> AttnSequencesKernel =>
        _attnSequences ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape, SequenceCaches>(AttentionKernels.SplitKSequences);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, AttentionShape>? _attnTreeSplit;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, AttentionShape> AttnTreeSplitKernel =>
        _attnTreeSplit ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, AttentionShape>(AttentionKernels.TreeSplitK);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape>? _attnTree;
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape> AttnTreeKernel =>
        _attnTree ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, AttentionShape>(AttentionKernels.TreePrefill);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape> AttnPrefillKernel =>
        _attnPrefill ??= _accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(AttentionKernels.Prefill);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> SwiGluKernel =>
        _swiGlu ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(ActivationKernels.SwiGlu);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, int> GeluKernel =>
        _gelu ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, int>(ActivationKernels.Gelu);
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int> AddKernel =>
        _add ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(ActivationKernels.Add);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, ArrayView<int>> ArgmaxKernel =>
        _argmax ??= _accelerator.LoadKernel<ArrayView<float>, int, ArrayView<int>>(SamplingKernels.Argmax);
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, int, float, float, float, float, ArrayView<int>> SampleKernel =>
        _sample ??= _accelerator.LoadKernel<ArrayView<float>, int, int, float, float, float, float, ArrayView<int>>(SamplingKernels.Sample);
}
