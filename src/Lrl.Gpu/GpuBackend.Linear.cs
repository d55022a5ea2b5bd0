using ILGPU;
using ILGPU.Runtime;
using Lrl.Kernels;

namespace Lrl.Gpu;

// The linear-attention ops (RWKV v5.2/v7, TransNormerLLM lightning attention) on ILGPU kernels
// (kernels/Lrl.Kernels/LinearAttentionKernels.cs), each compiled on first use and kept.
public sealed partial class GpuBackend : ILinearAttentionOps
{
    private Action<AcceleratorStream, Index1D, ArrayView<float>, int, int>? _kUnary;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int>? _kMul;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, float, int>? _kScale;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>? _kMulRow;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>? _kShift;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int>? _kTail;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>? _kLerpRow;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>? _kLerp;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>? _kKeyScale;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, float>? _kGroupNorm;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, int, int, float>? _kL2;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? _kWkv5;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? _kWkv7;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? _kBonus;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? _kLinRec;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>? _kLinChunk;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>? _kLrpe;

    private static ArrayView<float> V(DeviceBuffer b) => B(b).View;
    private static ArrayView<float> Vec(Weight w) => Wt(w).FloatView;

    private static int N(long n) =>
        n is >= 0 and <= int.MaxValue ? (int)n : throw new ArgumentOutOfRangeException(nameof(n), n, "element count must fit in an int");

    private void Unary(DeviceBuffer x, long n, int op)
    {
        if (n == 0) return;
        _kUnary ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, int, int>(LinearAttentionKernels.Unary);
        _kUnary(Launch_, N(n), V(x), N(n), op);
    }

    public void Sigmoid(DeviceBuffer x, long n) => Unary(x, n, 0);
    public void Silu(DeviceBuffer x, long n) => Unary(x, n, 1);
    public void Tanh(DeviceBuffer x, long n) => Unary(x, n, 2);
    public void ReluSquare(DeviceBuffer x, long n) => Unary(x, n, 3);
    public void Rwkv7Decay(DeviceBuffer w, long n) => Unary(w, n, 4);

    public void Multiply(DeviceBuffer a, DeviceBuffer b, long n)
    {
        if (n == 0) return;
        _kMul ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(LinearAttentionKernels.Multiply);
        _kMul(Launch_, N(n), V(a), V(b), N(n));
    }

    public void Scale(DeviceBuffer x, float s, long n)
    {
        if (n == 0) return;
        _kScale ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, float, int>(LinearAttentionKernels.Scale);
        _kScale(Launch_, N(n), V(x), s, N(n));
    }

    public void MultiplyRow(DeviceBuffer x, Weight v, DeviceBuffer y, int rows)
    {
        int n = rows * v.Cols;
        if (n == 0) return;
        _kMulRow ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(LinearAttentionKernels.MultiplyRow);
        _kMulRow(Launch_, n, V(x), Vec(v), V(y), n, v.Cols);
    }

    public void TokenShift(DeviceBuffer x, DeviceBuffer state, DeviceBuffer prev, int rows, int width)
    {
        if (rows <= 0) return;
        _kShift ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(LinearAttentionKernels.ShiftRows);
        _kTail ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int>(LinearAttentionKernels.CopyTail);
        _kShift(Launch_, rows * width, V(x), V(state), V(prev), rows * width, width);
        _kTail(Launch_, width, V(x), V(state), (rows - 1) * width, width);
    }

    public void LerpRow(DeviceBuffer a, DeviceBuffer b, Weight mix, DeviceBuffer y, int rows)
    {
        int n = rows * mix.Cols;
        if (n == 0) return;
        _kLerpRow ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(LinearAttentionKernels.LerpRow);
        _kLerpRow(Launch_, n, V(a), V(b), Vec(mix), V(y), n, mix.Cols);
    }

    public void Lerp(DeviceBuffer a, DeviceBuffer b, DeviceBuffer t, DeviceBuffer y, long n)
    {
        if (n == 0) return;
        _kLerp ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(LinearAttentionKernels.Lerp);
        _kLerp(Launch_, N(n), V(a), V(b), V(t), V(y), N(n));
    }

    public void Rwkv7KeyScale(DeviceBuffer k, DeviceBuffer a, Weight kA, int rows)
    {
        int n = rows * kA.Cols;
        if (n == 0) return;
        _kKeyScale ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(LinearAttentionKernels.KeyScale);
        _kKeyScale(Launch_, n, V(k), V(a), Vec(kA), n, kA.Cols);
    }

    public void GroupNorm(DeviceBuffer x, Weight w, Weight b, DeviceBuffer y, int rows, int groups, float eps)
    {
        int width = w.Cols, gs = width / groups;
        if (gs * groups != width) throw new ArgumentException($"group norm: width {width} is not a multiple of {groups} groups");
        if (rows == 0) return;
        _kGroupNorm ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, float>(LinearAttentionKernels.GroupNorm);
        _kGroupNorm(Launch_, rows * groups, V(x), Vec(w), Vec(b), V(y), rows * groups, gs, width, eps);
    }

    public void L2NormalizeGroups(DeviceBuffer x, int rows, int width, int groupSize, float eps)
    {
        int groups = rows * width / groupSize;
        if (groups == 0) return;
        _kL2 ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, int, int, float>(LinearAttentionKernels.L2Normalize);
        _kL2(Launch_, groups, V(x), groups, groupSize, eps);
    }

    public void Wkv5(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight decay, Weight bonus, DeviceBuffer state,
                     DeviceBuffer output, int rows, int heads, int headSize)
    {
        _kWkv5 ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(LinearAttentionKernels.Wkv5);
        _kWkv5(Launch_, heads * headSize, V(r), V(k), V(v), Vec(decay), Vec(bonus), V(state), V(output), rows, heads, headSize);
    }

    public void Wkv7(DeviceBuffer r, DeviceBuffer w, DeviceBuffer k, DeviceBuffer v, DeviceBuffer kk, DeviceBuffer a,
                     DeviceBuffer state, DeviceBuffer output, int rows, int heads, int headSize)
    {
        _kWkv7 ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(LinearAttentionKernels.Wkv7);
        _kWkv7(Launch_, heads * headSize, V(r), V(w), V(k), V(v), V(kk), V(a), V(state), V(output), rows, heads, headSize);
    }

    public void Rwkv7Bonus(DeviceBuffer r, DeviceBuffer k, DeviceBuffer v, Weight rK, DeviceBuffer output, int rows, int heads, int headSize)
    {
        if (rows == 0) return;
        _kBonus ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(LinearAttentionKernels.Rwkv7Bonus);
        _kBonus(Launch_, rows * heads, V(r), V(k), V(v), Vec(rK), V(output), rows, heads, headSize);
    }

    public void LightningRecurrent(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                                   DeviceBuffer output, int rows, int heads, int keyDim, int valueDim)
    {
        _kLinRec ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(LinearAttentionKernels.LightningRecurrent);
        _kLinRec(Launch_, heads * valueDim, V(q), V(k), V(v), Vec(slopes), V(state), V(output), rows, heads, keyDim, valueDim);
    }

    public void LightningChunked(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, Weight slopes, DeviceBuffer state,
                                 DeviceBuffer output, int rows, int heads, int keyDim, int valueDim, int blockSize)
    {
        if (blockSize < 1) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "block size must be ≥ 1");
        _kLinChunk ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>(LinearAttentionKernels.LightningChunked);
        _kLinChunk(Launch_, heads * valueDim, V(q), V(k), V(v), Vec(slopes), V(state), V(output), rows, heads, keyDim, valueDim, blockSize);
    }

    public void Lrpe(DeviceBuffer x, Weight theta, DeviceBuffer y, int rows, int heads, int headDim, int pos0)
    {
        int n = rows * heads * headDim;
        if (n == 0) return;
        _kLrpe ??= _accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(LinearAttentionKernels.Lrpe);
        _kLrpe(Launch_, n, V(x), Vec(theta), V(y), rows, heads, headDim, pos0);
    }

    public void Zero(DeviceBuffer x, long n)
    {
        if (n == 0) return;
        B(x).View.SubView(0, n).MemSetToZero(Launch_);
    }
}
