using System.Runtime.InteropServices;

namespace Lrl.Tests;

/// <summary>Random tensors in native memory (kept alive for the test's lifetime), stored in any float dtype.</summary>
public sealed unsafe class RandomTensors : IDisposable
{
    private readonly List<nint> _blocks = new();
    private readonly Random _rng;
    public RandomTensors(int seed) => _rng = new Random(seed);

    public Random Rng => _rng;

    public float[] Floats(long n, float scale = 1f)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)(_rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    /// <summary>A tensor of the given values stored as <paramref name="dtype"/> (values are rounded to it).</summary>
    public HostTensor Tensor(string name, DType dtype, int[] shape, float[] values)
    {
        long n = values.LongLength;
        var p = (byte*)NativeMemory.AlignedAlloc((nuint)(n * dtype.Size() + 64), 64);
        _blocks.Add((nint)p);
        for (long i = 0; i < n; i++)
        {
            switch (dtype)
            {
                case DType.F32: ((float*)p)[i] = values[i]; break;
                case DType.F16: ((Half*)p)[i] = (Half)values[i]; break;
                case DType.BF16: ((ushort*)p)[i] = DTypes.FloatToBF16(values[i]); break;
                default: throw new ArgumentException($"{dtype}");
            }
        }
        return new HostTensor(name, dtype, shape, p, n * dtype.Size(), "random");
    }

    public HostTensor Tensor(string name, DType dtype, params int[] shape)
    {
        long n = 1; foreach (var d in shape) n *= d;
        return Tensor(name, dtype, shape, Floats(n));
    }

    public HostTensor Matrix(string name, DType dtype, int rows, int cols, float scale = 1f) =>
        Tensor(name, dtype, [rows, cols], Floats((long)rows * cols, scale));

    public HostTensor Vector(string name, int n, float scale = 1f, float offset = 0f)
    {
        var v = Floats(n, scale);
        for (int i = 0; i < n; i++) v[i] += offset;
        return Tensor(name, DType.F32, [n], v);
    }

    public void Dispose() { foreach (var b in _blocks) NativeMemory.AlignedFree((void*)b); }

    public static double RelErr(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = (double)actual[i] - expected[i];
            num += d * d; den += (double)expected[i] * expected[i];
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }
}
