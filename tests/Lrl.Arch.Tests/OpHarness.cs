using Lrl.Cpu;
using Lrl.Kernels.Reference;

namespace Lrl.Arch.Tests;

/// <summary>Uploads test inputs to one backend, poisons outputs with NaN, downloads results.</summary>
public sealed class OpEnv : IDisposable
{
    private readonly OwnedTensors _owned = new();
    private readonly List<IDisposable> _items = new();
    public IBackend B { get; }
    public ILinearAttentionOps L => (ILinearAttentionOps)B;

    public OpEnv(IBackend b) => B = b;

    public DeviceBuffer Buf(float[] data)
    {
        var x = B.Allocate(data.Length);
        B.Upload(data, x);
        _items.Add(x);
        return x;
    }

    /// <summary>An output buffer filled with NaN, so an element the op forgets to write fails the comparison.</summary>
    public DeviceBuffer Poison(long n) => Buf(Enumerable.Repeat(float.NaN, checked((int)n)).ToArray());

    public Weight Vec(float[] data)
    {
        var w = B.LoadWeight(_owned.Floats("test", data, "test"));
        _items.Add(w);
        return w;
    }

    public float[] Get(DeviceBuffer x, long n = -1)
    {
        var r = new float[n < 0 ? x.Length : n];
        B.Synchronize();
        B.Download(x, 0, r);
        return r;
    }

    public void Dispose()
    {
        foreach (var i in _items) i.Dispose();
        _owned.Dispose();
    }
}

public static class Rand
{
    public static float[] Uniform(Random rng, int n, float lo = -1, float hi = 1) =>
        Enumerable.Range(0, n).Select(_ => lo + (hi - lo) * rng.NextSingle()).ToArray();

    public static double RelErr(float[] actual, double[] expected)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (!float.IsFinite(actual[i])) return double.PositiveInfinity;
            double d = actual[i] - expected[i];
            num += d * d;
            den += expected[i] * expected[i];
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }

    public static double RelErr(float[] actual, float[] expected) => RelErr(actual, expected.Select(v => (double)v).ToArray());

    /// <summary>Runs the same op on the CPU backend and on the float64 reference, returning each backend's outputs.</summary>
    public static (float[][] Cpu, float[][] Ref) OnBoth(Func<OpEnv, float[][]> op)
    {
        using var cpu = new CpuBackend(2);
        return OnBoth(cpu, op);
    }

    /// <summary>Runs the same op on <paramref name="backend"/> and on the float64 reference.</summary>
    public static (float[][] Actual, float[][] Ref) OnBoth(IBackend backend, Func<OpEnv, float[][]> op)
    {
        using var rb = new ReferenceBackend();
        using var ea = new OpEnv(backend);
        using var er = new OpEnv(rb);
        return (op(ea), op(er));
    }

    public static void AssertClose(float[][] actual, float[][] expected, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(expected[i].All(float.IsFinite), $"{what}: reference output {i} has non-finite values");
            double e = RelErr(actual[i], expected[i]);
            Assert.True(e < tol, $"{what}: output {i} relative error {e:E2} ≥ {tol:E0}");
        }
    }
}
