using ILGPU;

namespace Lrl.Kernels;

/// <summary>Rotary position embedding, Hugging Face rotate_half pairing (i, i + rotaryDim/2).</summary>
public static class RopeKernels
{
    /// <summary>
    /// In place on x [rows, heads·headDim]; one thread per (row, head, pair). cos/sin come from tables [position, half]
    /// that the host fills once from the RopeTable's (llama3/yarn-adjusted) inv_freq as (float)cos((double)pos·inv_freq),
    /// exactly as the CPU backend computes them, so no device trigonometry is involved.
    /// </summary>
    public static void Rope(Index1D idx, ArrayView<float> x, ArrayView<float> cos, ArrayView<float> sin,
                            int half, int heads, int headDim, int pos0, int total)
    {
        if (idx >= total) return;
        int i = idx % half;
        int rh = idx / half;
        int r = rh / heads;
        long b = (long)rh * headDim;
        long t = (long)(pos0 + r) * half + i;
        float c = cos[t], s = sin[t];
        float a0 = x[b + i], a1 = x[b + i + half];
        x[b + i] = a0 * c - a1 * s;
        x[b + i + half] = a1 * c + a0 * s;
    }

    /// <summary>
    /// The attention block's whole position step in one launch, for rows row0 .. row0+rows-1 at positions pos0 ..:
    /// Q rotated in place; K rotated straight into its cache row; V copied into its cache row. Threads: first the Q
    /// pairs (rows·heads·half), then every K element (rows·kvDim), then every V element (rows·kvDim). The K rows in
    /// k itself are left unrotated (attention reads the cache).
    /// </summary>
    public static void RopeQkvCache(Index1D idx, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                    ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> cos, ArrayView<float> sin,
                                    RopeCacheShape s)
    {
        if (idx >= Elements(s)) return;
        RopeQkvCacheElement(idx, q, k, v, kCache, vCache, cos, sin, s);
    }

    /// <summary>Threads (elements) of a <see cref="RopeQkvCache"/> launch.</summary>
    public static int Elements(RopeCacheShape s) => s.Rows * s.Heads * s.Half + 2 * s.Rows * s.KvHeads * s.HeadDim;

    /// <summary>Element <paramref name="idx"/> of <see cref="RopeQkvCache"/> (a Q pair, a K element or a V element).</summary>
    internal static void RopeQkvCacheElement(int idx, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                             ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> cos, ArrayView<float> sin,
                                             RopeCacheShape s)
    {
        int qPairs = s.Rows * s.Heads * s.Half, kvDim = s.KvHeads * s.HeadDim, kvAll = s.Rows * kvDim;
        if (idx < qPairs)
        {
            int i = idx % s.Half, rh = idx / s.Half, r = rh / s.Heads;
            RotateQ(q, (long)s.Row0 * s.Heads * s.HeadDim + (long)rh * s.HeadDim, i, (long)(s.Pos0 + r) * s.Half + i, cos, sin, s.Half);
            return;
        }
        int e = idx - qPairs;
        bool isV = e >= kvAll;
        if (isV) e -= kvAll;
        int row = e / kvDim, col = e - row * kvDim;
        CacheKv(isV, k, v, kCache, vCache, cos, sin, (long)(s.Row0 + row) * kvDim + col, (long)(s.Pos0 + row) * kvDim + col, col,
                s.HeadDim, s.Half, s.Pos0 + row);
    }

    /// <summary>
    /// <see cref="RopeQkvCache"/> for the rows of up to <see cref="SequenceCaches.Max"/> sequences at once, each at its own
    /// positions and into its own caches (<paramref name="s"/>.Rows: all their rows; Row0 and Pos0 unused): per launch row
    /// its Q pairs, then its K and V elements, each the same operations as <see cref="RopeQkvCache"/>'s (the same bits).
    /// With Heads = 0 and Half = 0 (and HeadDim the row width) it is the plain cache writes of a model without RoPE.
    /// </summary>
    public static void RopeQkvCacheSequences(Index1D idx, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                             ArrayView<float> cos, ArrayView<float> sin, RopeCacheShape s, SequenceCaches c)
    {
        if (idx >= Elements(s)) return;
        int qPairs = s.Heads * s.Half, kvDim = s.KvHeads * s.HeadDim, per = qPairs + 2 * kvDim;
        int r = idx / per, e = idx - r * per;
        c.Locate(r, out int seq, out int rr);
        int row = c.Row(seq) + rr, pos = c.Pos(seq) + rr;
        if (e < qPairs)
        {
            int h = e / s.Half, i = e - h * s.Half;
            RotateQ(q, ((long)row * s.Heads + h) * s.HeadDim, i, (long)pos * s.Half + i, cos, sin, s.Half);
            return;
        }
        e -= qPairs;
        bool isV = e >= kvDim;
        if (isV) e -= kvDim;
        CacheKv(isV, k, v, c.K(seq), c.V(seq), cos, sin, (long)row * kvDim + e, (long)pos * kvDim + e, e, s.HeadDim, s.Half, pos);
    }

    /// <summary>Rotates pair (i, i + half) of the head at q[b ..] by table entry t.</summary>
    private static void RotateQ(ArrayView<float> q, long b, int i, long t, ArrayView<float> cos, ArrayView<float> sin, int half)
    {
        float c = cos[t], sn = sin[t];
        float a0 = q[b + i], a1 = q[b + i + half];
        q[b + i] = a0 * c - a1 * sn;
        q[b + i + half] = a1 * c + a0 * sn;
    }

    /// <summary>
    /// Element col of a K row (rotated, at position pos) or V row (copied) from src into its cache at dst.
    /// </summary>
    private static void CacheKv(bool isV, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache,
                                ArrayView<float> cos, ArrayView<float> sin, long src, long dst, int col, int headDim, int half, int pos)
    {
        if (isV) { vCache[dst] = v[src]; return; }
        int d = col % headDim;
        float val = k[src];
        if (d < 2 * half)
        {
            int i = d < half ? d : d - half;
            long t = (long)pos * half + i;
            float c = cos[t], sn = sin[t];
            val = d < half ? val * c - k[src + half] * sn : val * c + k[src - half] * sn;
        }
        kCache[dst] = val;
    }

    /// <summary>
    /// The end of a Q/K/V launch that also rotates and caches (<see cref="RopeArgs"/>): every group publishes its rows
    /// (a device-level fence) and takes a ticket; the group that takes the launch's last one runs every element of
    /// <see cref="RopeQkvCache"/> (the same operations: the same bits) and resets the ticket. Every thread of every group
    /// must call it (it holds group barriers); nothing happens when <paramref name="a"/> has no tickets.
    /// </summary>
    internal static void RopeQkvCacheByLastGroup(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, RopeArgs a, ArrayView<int> last)
    {
        if (a.Tickets.Length == 0) return; // uniform: a plain Q/K/V launch
        if (!KernelMath.LastToFinish(a.Tickets, 0, Grid.DimX * Grid.DimY, last)) return; // uniform per group
        int n = Elements(a.Shape);
        for (int idx = Group.IdxX; idx < n; idx += Group.DimX)
            RopeQkvCacheElement(idx, q, k, v, a.KCache, a.VCache, a.Cos, a.Sin, a.Shape);
        if (Group.IdxX == 0) a.Tickets[0] = 0;
    }
}

/// <summary>
/// RoPE and the K/V cache writes fused at the end of a Q/K/V launch (<see cref="RopeKernels.RopeQkvCacheByLastGroup"/>);
/// Tickets: one int, zero between launches (empty: no rotation, a plain Q/K/V launch).
/// </summary>
public struct RopeArgs
{
    public ArrayView<float> KCache, VCache, Cos, Sin;
    public ArrayView<int> Tickets;
    public RopeCacheShape Shape;
}

/// <summary>Shape of a <see cref="RopeKernels.RopeQkvCache"/> launch.</summary>
public struct RopeCacheShape
{
    public int Row0, Rows, Heads, KvHeads, HeadDim, Half, Pos0;
}
