namespace Lrl;

/// <summary>
/// Streams a synchronous generation as an IAsyncEnumerable whose every step (tokenization, forward passes) runs on the
/// thread pool, so a caller on a UI or request synchronization context is never blocked by the compute.
/// </summary>
internal static class OffContext
{
    public static async IAsyncEnumerable<GeneratedToken> Stream(Func<IEnumerable<GeneratedToken>> start)
    {
        using var e = await Task.Run(() => start().GetEnumerator()).ConfigureAwait(false);
        while (await Task.Run(e.MoveNext).ConfigureAwait(false))
            yield return e.Current;
    }
}
