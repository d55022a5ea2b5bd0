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

public class DefaultThreadTests
{
    [Fact]
    public void CpuListsParse()
    {
        Assert.Equal(new[] { 0, 1, 2, 3, 8, 10, 11 }, CpuBackend.ParseCpuList("0-3,8,10-11\n").ToArray());
        Assert.Equal(new[] { 5 }, CpuBackend.ParseCpuList(" 5 ").ToArray());
        Assert.Throws<FormatException>(() => CpuBackend.ParseCpuList("3-1").ToArray());
        Assert.Throws<FormatException>(() => CpuBackend.ParseCpuList("x").ToArray());
    }

    /// <summary>Hyperthread siblings count once: 4 logical CPUs on 2 cores (lists written either way) are 2 cores.</summary>
    [Fact]
    public void SiblingsCountAsOneCore()
    {
        Assert.Equal(2, CpuBackend.CountCores(["0,2", "1,3", "0,2", "1,3"]));
        Assert.Equal(1, CpuBackend.CountCores(["0-1", "0,1"]));
        Assert.Equal(3, CpuBackend.CountCores(["0", "1", "2"]));
        Assert.InRange(CpuBackend.DefaultThreads, 1, Environment.ProcessorCount);
    }
}
