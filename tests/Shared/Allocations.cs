namespace Lrl.Tests;

/// <summary>Counting what a decode step allocates.</summary>
public static class Allocations
{
    /// <summary>
    /// Bytes this thread allocates over <paramref name="steps"/> calls of <paramref name="step"/>, in up to
    /// <paramref name="windows"/> consecutive windows: the first window that allocates nothing, or the smallest count.
    /// A per-call allocation shows in every window; the runtime's own one-off work (tiered JIT promotion under a loaded
    /// machine) does not repeat, so a single clean window proves the steady state allocates nothing.
    /// </summary>
    public static (long Bytes, string Windows) PerWindow(Action step, int steps = 50, int windows = 5)
    {
        var seen = new List<long>();
        for (int w = 0; w < windows; w++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < steps; i++) step();
            long bytes = GC.GetAllocatedBytesForCurrentThread() - before;
            seen.Add(bytes);
            if (bytes == 0) break;
        }
        return (seen.Min(), string.Join(", ", seen));
    }
}
