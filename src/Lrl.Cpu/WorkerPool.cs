namespace Lrl.Cpu;

/// <summary>One unit of parallel work: item i of a job, run by participant <c>worker</c> (0 = the caller).</summary>
public interface IParallelJob
{
    void Execute(int item, int worker);
}

/// <summary>
/// A fixed set of worker threads for data-parallel ops, built for many short jobs per token and for machines where
/// other work competes for the cores (a laptop, a shared server):
/// <list type="bullet">
/// <item>Items are claimed one at a time by whoever is running (the caller takes part), so a worker the OS has
/// descheduled holds at most the item it is in; the others take the rest of its share.</item>
/// <item>A job ends when its items are done, not when every worker has checked in: a worker that wakes late finds
/// nothing left and the caller does not wait for it. Claims carry the job's generation, so a late worker can never
/// take an item of a later job with the earlier one's state.</item>
/// <item>Waiting is bounded spinning, then blocking: the caller spins about as long as a job's tail normally takes,
/// then sleeps until the last item's worker wakes it; idle workers spin about a millisecond, then sleep.</item>
/// <item>The number of workers taking part follows the machine: when the caller often waits for a job's last items
/// longer than its own share took (workers descheduled by other processes), one worker fewer takes part (down to the caller alone, which is
/// then as fast as one thread); every few thousand jobs without such stalls, one more is tried again.</item>
/// </list>
/// No allocation per job. Not reentrant: one job at a time.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    private const int Closed = int.MaxValue;   // the claim index while a job is being set up or none runs
    private const int WorkerSpins = 40_000;    // ~1 ms of polling for the next job before sleeping
    private const int CallerSpins = 2_000;     // ~50-100 µs of polling for the job's last items before blocking

    private readonly Thread[] _threads;
    // Sleeping workers wait on this monitor for the generation to change.
    private readonly object _sleep = new();
    // The caller, when it stops spinning, waits on this monitor for the last item.
    private readonly object _doneGate = new();
    private IParallelJob? _job;
    private int _items, _done, _sleepers;
    private volatile bool _callerWaiting;
    private long _generation;
    // (generation << 32) | next item index; the index is Closed while the job's fields are being written.
    private long _claim = Closed;
    private volatile bool _stop;
    // Adaptive participation: workers 1.._participants claim items; the others sleep.
    private volatile int _participants;
    private int _windowJobs, _windowStalls, _calmJobs;
    private const int Window = 256;          // jobs per decision
    private const int StallsToShrink = 16;   // blocked waits in a window (6 %) that drop one worker
    private const int CalmJobsToGrow = 8192; // jobs since the last stall before one more worker is tried
    private static readonly long StallTicks = System.Diagnostics.Stopwatch.Frequency / 5000; // 200 µs

    public int ThreadCount { get; }

    /// <summary>Workers (besides the caller) taking part now; lower than ThreadCount − 1 while the machine is busy.</summary>
    public int Participants => _participants;

    /// <summary>Jobs that ended with the caller blocked (not spinning) for their last items: a sign of a busy machine.</summary>
    public long BlockedWaits { get; private set; }

    public WorkerPool(int threads)
    {
        if (threads < 1) throw new LrlException($"thread count must be at least 1, got {threads}");
        ThreadCount = threads;
        _threads = new Thread[threads - 1];
        _participants = threads - 1;
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
        if (_participants == 0 || items == 1)
        {
            for (int i = 0; i < items; i++) job.Execute(i, 0);
            if (_threads.Length > 0 && items > 1) Adapt(stalled: false);
            return;
        }
        long gen = (_generation + 1) & 0x7FFFFFFF;
        // Close claims, set the job up, then open claims under the new generation: a claim that succeeds saw this
        // job's fields (they change only while claims are closed, and a closed or newer claim word fails its CAS).
        // Workers learn of the job from the generation, published last, so they find its claims open.
        Volatile.Write(ref _claim, (gen << 32) | Closed);
        _job = job;
        _items = items;
        Volatile.Write(ref _done, 0);
        Volatile.Write(ref _claim, gen << 32);
        Volatile.Write(ref _generation, gen);
        // A worker counts itself a sleeper before its last look at the generation: either it sees the new one, or
        // the count is seen here and the pulse reaches it (it holds the lock until Monitor.Wait releases it).
        if (Volatile.Read(ref _sleepers) > 0)
            lock (_sleep) Monitor.PulseAll(_sleep);
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        Work(0);
        bool stalled = false;
        if (Volatile.Read(ref _done) < items)
        {
            long t1 = System.Diagnostics.Stopwatch.GetTimestamp();
            WaitForItems(items);
            // A stall: the wait for the others outlasted the caller's own share of the job (and 200 µs). An uneven
            // split of a long job makes shorter waits; a worker the OS has descheduled, longer ones.
            long waited = System.Diagnostics.Stopwatch.GetTimestamp() - t1;
            stalled = waited > Math.Max(t1 - t0, StallTicks);
        }
        Volatile.Write(ref _claim, (gen << 32) | Closed);
        _job = null;
        Adapt(stalled);
    }

    /// <summary>Counts the job toward the participation decision (see the class remarks).</summary>
    private static readonly bool Adaptive = Environment.GetEnvironmentVariable("LRL_POOL_ADAPT") != "0";

    private void Adapt(bool stalled)
    {
        if (!Adaptive) return;
        if (stalled) { _windowStalls++; _calmJobs = 0; }
        else _calmJobs++;
        if (++_windowJobs < Window) return;
        int p = _participants;
        if (_windowStalls >= StallsToShrink && p > 0) _participants = p - 1;
        else if (_calmJobs >= CalmJobsToGrow && p < _threads.Length)
        {
            _calmJobs = 0;
            lock (_sleep) { _participants = p + 1; Monitor.PulseAll(_sleep); }
        }
        _windowJobs = _windowStalls = 0;
    }

    /// <summary>Waits for the job's last items, spinning briefly, then blocking.</summary>
    private void WaitForItems(int items)
    {
        for (int spins = 0; spins < CallerSpins; spins++)
        {
            if (Volatile.Read(ref _done) >= items) return;
            Thread.SpinWait(1);
        }
        // The rest of the job is in the hands of a worker that is slow to finish (descheduled by a competing load):
        // sleep instead of taking the core from it.
        lock (_doneGate)
        {
            _callerWaiting = true;
            Interlocked.MemoryBarrier(); // the flag is visible before the count is read again (see Work)
            while (Volatile.Read(ref _done) < items) Monitor.Wait(_doneGate);
            _callerWaiting = false;
        }
        BlockedWaits++;
    }

    private void Work(int worker)
    {
        while (worker <= _participants)
        {
            long c = Volatile.Read(ref _claim);
            int index = (int)(c & 0xFFFFFFFF);
            if (index == Closed) return;
            var job = _job;
            int items = _items;
            if (job is null || index >= items) return;
            if (Interlocked.CompareExchange(ref _claim, c + 1, c) != c) continue; // another took it, or the job changed
            job.Execute(index, worker);
            if (Interlocked.Increment(ref _done) == items && _callerWaiting)
                lock (_doneGate) Monitor.Pulse(_doneGate);
        }
    }

    private void WorkerLoop(int id)
    {
        long seen = 0;
        while (true)
        {
            if (id > _participants)
            {
                // Left out while the machine is busy: sleep until taken back (no spinning for jobs it may not take).
                lock (_sleep)
                    while (id > _participants && !_stop) Monitor.Wait(_sleep);
                seen = Volatile.Read(ref _generation);
            }
            int spins = 0;
            while (Volatile.Read(ref _generation) == seen && !_stop)
            {
                if (++spins < WorkerSpins) Thread.SpinWait(1);
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
        }
    }

    public void Dispose()
    {
        _stop = true;
        lock (_sleep) Monitor.PulseAll(_sleep);
        foreach (var t in _threads) t.Join();
    }
}
