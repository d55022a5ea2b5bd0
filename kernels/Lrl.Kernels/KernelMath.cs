using ILGPU;
using ILGPU.Algorithms;

namespace Lrl.Kernels;

/// <summary>
/// Device-side helpers shared by the kernels: exact f16/bf16 → f32 conversion, and group/warp reductions.
/// Group reductions need a power-of-two group size of at most <see cref="MaxGroup"/> threads.
/// </summary>
public static class KernelMath
{
    /// <summary>
    /// The end of a launch whose last group to finish does one more step: the group publishes its writes (a device-level
    /// fence) and takes ticket <paramref name="index"/>; true, uniformly within the group, in the group that takes the
    /// last of <paramref name="arrivals"/> tickets (after a fence: it sees every other group's writes). That group resets
    /// the ticket when done. Every thread of every group must call it (it holds group barriers).
    /// </summary>
    internal static bool LastToFinish(ArrayView<int> tickets, long index, int arrivals, ArrayView<int> last)
    {
        MemoryFence.DeviceLevel();
        Group.Barrier();
        if (Group.IdxX == 0) last[0] = Atomic.Add(ref tickets[index], 1) == arrivals - 1 ? 1 : 0;
        Group.Barrier();
        if (last[0] == 0) return false;
        MemoryFence.DeviceLevel();
        return true;
    }

    /// <summary>
    /// The output block of a one-row kernel (GEMV) and, in <paramref name="row"/>, its activation row. One row: grid X is
    /// the block. Several rows (<c>IBackend.ExactRows</c>): grid X is the activation row and grid Y the block (at least
    /// two blocks, so Y tells the layouts apart), so the groups that read the same weight rows run side by side and the
    /// weights stream from memory once, not once per activation row.
    /// </summary>
    public static int RowsBlock(out long row)
    {
        if (Grid.DimY > 1) { row = Grid.IdxX; return Grid.IdxY; }
        row = 0;
        return Grid.IdxX;
    }

    /// <summary>Largest group size any kernel here is launched with (sizes its shared scratch).</summary>
    public const int MaxGroup = 256;

    /// <summary>The first float of an 8-byte load of two (activations read as ulong pairs).</summary>
    public static float Lo(ulong v) => Interop.IntAsFloat((uint)v);

    /// <summary>The second float of an 8-byte load of two.</summary>
    public static float Hi(ulong v) => Interop.IntAsFloat((uint)(v >> 32));

    /// <summary>IEEE binary16 bits to float, exactly (subnormals, infinities and NaN included).</summary>
    public static float HalfToFloat(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        uint exp = (uint)(h >> 10) & 0x1Fu;
        uint mant = (uint)h & 0x3FFu;
        if (exp == 0)
        {
            float f = mant * 5.9604644775390625E-8f; // mant · 2^-24, exact
            return sign != 0 ? -f : f;
        }
        if (exp == 31) return Interop.IntAsFloat(sign | 0x7F800000u | (mant << 13));
        return Interop.IntAsFloat(sign | ((exp + 112u) << 23) | (mant << 13));
    }

    /// <summary>bfloat16 bits to float (exact).</summary>
    public static float BF16ToFloat(ushort h) => Interop.IntAsFloat((uint)h << 16);

    /// <summary>Sum over the whole group; every thread gets the result. <paramref name="scratch"/> holds ≥ Group.DimX floats.</summary>
    public static float GroupSum(float v, ArrayView<float> scratch)
    {
        int t = Group.IdxX;
        scratch[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) scratch[t] += scratch[t + s];
            Group.Barrier();
        }
        float r = scratch[0];
        Group.Barrier();
        return r;
    }

    /// <summary>Maximum over the whole group; every thread gets the result.</summary>
    public static float GroupMax(float v, ArrayView<float> scratch)
    {
        int t = Group.IdxX;
        scratch[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) scratch[t] = XMath.Max(scratch[t], scratch[t + s]);
            Group.Barrier();
        }
        float r = scratch[0];
        Group.Barrier();
        return r;
    }

    /// <summary>Maximum over the warp (butterfly); every lane gets the result.</summary>
    public static float WarpMax(float v)
    {
        for (int o = Warp.WarpSize / 2; o > 0; o >>= 1) v = XMath.Max(v, Warp.ShuffleXor(v, o));
        return v;
    }

    /// <summary>Sum over the warp (butterfly); every lane gets the result.</summary>
    public static float WarpSum(float v)
    {
        for (int o = Warp.WarpSize / 2; o > 0; o >>= 1) v += Warp.ShuffleXor(v, o);
        return v;
    }
}

/// <summary>Integer group reduction and float ordering keys.</summary>
public static class KernelMathInt
{
    /// <summary>Sum over the whole group; every thread gets the result.</summary>
    public static int GroupSum(int v, ArrayView<int> scratch)
    {
        int t = Group.IdxX;
        scratch[t] = v;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s) scratch[t] += scratch[t + s];
            Group.Barrier();
        }
        int r = scratch[0];
        Group.Barrier();
        return r;
    }

    /// <summary>Maps a float to a uint whose unsigned order is the float order (−0 &lt; +0; NaN sorts outside).</summary>
    public static uint OrderKey(float f)
    {
        uint b = (uint)Interop.FloatAsInt(f);
        return (b & 0x80000000u) != 0 ? ~b : b | 0x80000000u;
    }
}
