namespace Lrl.Cpu;

/// <summary>One unit of parallel work: item i of a job, run by participant <c>worker</c> (0 = the caller).</summary>
public interface IParallelJob
{
    void Execute(int item, int worker);
}

/// <summary>
/// A fixed set of worker threads for data-parallel ops, built for many short jobs per token:
/// no allocation per job, workers spin briefly before sleeping, the caller takes part in the work.
/// Items are claimed dynamically with an interlocked counter. Not reentrant: one job at a time.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    private readonly Thread[] _threads;
    // Sleeping workers wait on this monitor for the generation to change. (A semaphore released once per counted
    // sleeper lost wake-ups: a worker done with the new job could spin out, sleep and take the permit meant for one
    // not yet woken, which then slept through the job while the caller waited for it; seen with more threads than
    // cores.)
    private readonly object _sleep = new();
    private IParallelJob? _job;
    private int _items, _next, _finished, _sleepers;
    private long _generation;
    private volatile bool _stop;
    private const int SpinIterations = 40_000; // ~1 ms of polling before sleeping

    public int ThreadCount { get; }

    public WorkerPool(int threads)
    {
        if (threads < 1) throw new LrlException($"thread count must be at least 1, got {threads}");
        ThreadCount = threads;
        _threads = new Thread[threads - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            int id = i + 1;
            _threads[i] = new Thread(() => WorkerLoop(id)) { IsBackground = true, Name = $"lrl-worker-{id}" };
            _threads[i].Start();
        }
    }

    /// <summary>Runs job.Execute(i, worker) for i in [0, items) across all threads and returns when all are done.</summary>
    public void Run(IParallelJob job, int items)
    {
        if (items <= 0) return;
        if (_threads.Length == 0 || items == 1)
        {
            for (int i = 0; i < items; i++) job.Execute(i, 0);
            return;
        }
        _job = job;
        _items = items;
        _next = 0;
        _finished = 0;
        Interlocked.Increment(ref _generation);
        // A worker counts itself a sleeper before its last look at the generation: either it sees the new one, or
        // the count is seen here and the pulse reaches it (it holds the lock until Monitor.Wait releases it).
        if (Volatile.Read(ref _sleepers) > 0)
            lock (_sleep) Monitor.PulseAll(_sleep);
        Work(0);
        // The others finish within microseconds: spin tightly (a yield or sleep would cost more than the wait).
        for (int spins = 0; Volatile.Read(ref _finished) < _threads.Length; spins++)
        {
            if (spins < 200_000) Thread.SpinWait(1);
            else Thread.Yield();
        }
        _job = null;
    }

    private void Work(int worker)
    {
        var job = _job!;
        int items = _items;
        int i;
        while ((i = Interlocked.Increment(ref _next) - 1) < items) job.Execute(i, worker);
    }

    private void WorkerLoop(int id)
    {
        long seen = 0;
        while (true)
        {
            int spins = 0;
            while (Volatile.Read(ref _generation) == seen && !_stop)
            {
                if (++spins < SpinIterations) Thread.SpinWait(1);
                else
                {
                    lock (_sleep)
                    {
                        Interlocked.Increment(ref _sleepers);
                        while (Volatile.Read(ref _generation) == seen && !_stop) Monitor.Wait(_sleep);
                        Interlocked.Decrement(ref _sleepers);
                    }
                    spins = 0;
                }
            }
            if (_stop) return;
            seen = Volatile.Read(ref _generation);
            Work(id);
            Interlocked.Increment(ref _finished);
        }
    }

    public void Dispose()
    {
        _stop = true;
        lock (_sleep) Monitor.PulseAll(_sleep);
        foreach (var t in _threads) t.Join();
    }
}
