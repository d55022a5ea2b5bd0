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

    /// <summary>
    /// Greedy decoding after <paramref name="prompt"/> and <paramref name="warmup"/> tokens: the bytes this thread
    /// allocates per window of decode steps (see <see cref="PerWindow"/>). Run the model on a one-thread backend, so
    /// every op runs on this thread and its allocation counter sees them all.
    /// </summary>
    public static (long Bytes, string Windows) GreedyDecode(ILanguageModel model, int[] prompt, int warmup = 20)
    {
        var logits = new float[model.VocabSize];
        var one = new int[1];
        model.Forward(prompt, 0, logits);
        int pos = prompt.Length;
        void Step()
        {
            int best = 0;
            for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
            one[0] = best;
            model.Forward(one, pos++, logits);
        }
        for (int i = 0; i < warmup; i++) Step();
        return PerWindow(Step);
    }
}
