using Lrl.Cpu;

namespace Lrl.Cpu.Tests;

public class WorkerPoolTests
{
    private sealed class CountingJob(int items) : IParallelJob
    {
        public readonly int[] Hits = new int[items];
        public void Execute(int item, int worker)
        {
            Interlocked.Increment(ref Hits[item]);
            if (item % 3 == 0) Thread.Sleep(0); // give an oversubscribed machine's scheduler a chance to reorder
        }
    }

    /// <summary>
    /// More threads than cores, jobs separated by pauses long enough for the workers to spin out and sleep: every job
    /// must complete with each item run once. (The semaphore-based sleep lost wake-ups here and hung.)
    /// </summary>
    [Theory]
    [InlineData(3)]
    [InlineData(7)]
    public void ManyJobsWithSleepingWorkersAllComplete(int threads)
    {
        var run = Task.Run(() =>
        {
            using var pool = new WorkerPool(threads);
            for (int j = 0; j < 300; j++)
            {
                var job = new CountingJob(threads * 2);
                pool.Run(job, job.Hits.Length);
                Assert.All(job.Hits, h => Assert.Equal(1, h));
                if (j % 10 == 0) Thread.Sleep(3); // workers spin out (~1 ms) and sleep
            }
        });
        Assert.True(run.Wait(TimeSpan.FromSeconds(60)), $"a pool of {threads} threads hung");
        run.GetAwaiter().GetResult();
    }
}
