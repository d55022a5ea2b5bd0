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

    /// <summary>
    /// Back-to-back jobs of varying sizes on an oversubscribed machine (busy threads compete with the pool): workers
    /// that wake late must never run an item of a later job with an earlier job's state, and every item of every job
    /// runs exactly once (the caller does not wait for a worker that has nothing to do).
    /// </summary>
    [Fact]
    public void BackToBackJobsUnderCompetingLoadRunEachItemOnce()
    {
        using var stop = new CancellationTokenSource();
        var load = Enumerable.Range(0, Environment.ProcessorCount).Select(_ => Task.Factory.StartNew(() =>
        {
            double x = 1;
            while (!stop.IsCancellationRequested) x = x * 1.0000001 + 1e-9;
            return x;
        }, TaskCreationOptions.LongRunning)).ToArray();
        try
        {
            var run = Task.Run(() =>
            {
                using var pool = new WorkerPool(4);
                var rng = new Random(5);
                var jobs = Enumerable.Range(0, 8).Select(i => new CountingJob(64)).ToArray();
                for (int j = 0; j < 20_000; j++)
                {
                    var job = jobs[j % jobs.Length];
                    int items = 1 + rng.Next(64);
                    Array.Clear(job.Hits);
                    pool.Run(job, items);
                    for (int i = 0; i < 64; i++)
                        if (job.Hits[i] != (i < items ? 1 : 0)) Assert.Fail($"job {j}: item {i} of {items} ran {job.Hits[i]} times");
                }
            });
            Assert.True(run.Wait(TimeSpan.FromSeconds(120)), "the pool hung under load");
            run.GetAwaiter().GetResult();
        }
        finally
        {
            stop.Cancel();
            Task.WaitAll(load);
        }
    }

    /// <summary>Items a worker runs slowly (as if descheduled) whenever a worker, not the caller, has them.</summary>
    private sealed class StallingJob(int items, int sleepMs) : IParallelJob
    {
        public volatile int SleepMs = sleepMs;
        public readonly int[] Hits = new int[items];
        public void Execute(int item, int worker)
        {
            Interlocked.Increment(ref Hits[item]);
            if (worker != 0 && SleepMs > 0) { Thread.Sleep(SleepMs); return; }
            // Every item takes ~10 µs, so the workers wake in time to take some (the caller alone would do them all).
            long end = System.Diagnostics.Stopwatch.GetTimestamp() + System.Diagnostics.Stopwatch.Frequency / 100_000;
            while (System.Diagnostics.Stopwatch.GetTimestamp() < end) Thread.SpinWait(1);
        }
    }

    /// <summary>
    /// When workers keep stalling the caller (their items take far longer than its own, as on a busy machine), the pool
    /// leaves them out one by one until the caller runs alone; once jobs run smoothly again, it takes them back.
    /// </summary>
    [Fact]
    public void StallingWorkersAreLeftOutAndTakenBackWhenCalm()
    {
        var run = Task.Run(() =>
        {
            using var pool = new WorkerPool(2); // as many threads as CI has cores: one worker beside the caller
            Assert.Equal(1, pool.Participants);
            var job = new StallingJob(16, 2);
            for (int j = 0; j < 4000 && pool.Participants > 0; j++)
            {
                Array.Clear(job.Hits);
                pool.Run(job, 16);
                Assert.All(job.Hits, h => Assert.Equal(1, h));
            }
            Assert.Equal(0, pool.Participants);
            Assert.True(pool.BlockedWaits > 0);
            job.SleepMs = 0;
            for (int j = 0; j < 60_000 && pool.Participants < 1; j++)
            {
                Array.Clear(job.Hits);
                pool.Run(job, 16);
                Assert.All(job.Hits, h => Assert.Equal(1, h));
            }
            Assert.Equal(1, pool.Participants);
        });
        Assert.True(run.Wait(TimeSpan.FromSeconds(120)), "the pool hung");
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
