using Lrl.Runtime;

namespace Lrl.Cli.Tests;

/// <summary>Sessions: one loaded model, many concurrent generations with correct output; disposal and threading rules.</summary>
public class SessionTests
{
    private static readonly string[] Prompts = ["Once upon a time", "Lily and Ben", "The little dog", "One day, a girl"];

    private static GenerationOptions Options(int i) => new()
    {
        MaxTokens = 40, IgnoreEos = true,
        Sampling = i % 2 == 0 ? SamplingOptions.Greedy : new SamplingOptions { Temperature = 0.8f, TopK = 40, Seed = 7 + i },
    };

    private static int[] Ids(IEnumerable<GeneratedToken> tokens) => tokens.Where(t => t.Id >= 0).Select(t => t.Id).ToArray();

    [Theory]
    [InlineData("stories260k")]
    [InlineData("rwkv-tiny-7v0-834K")]
    public void ManyThreadsEachWithASession_EqualTheirSingleThreadedRuns(string name)
    {
        using var model = LrlModel.Load(CliRunner.Model(name), new ModelOptions { Threads = 1 });
        var expected = Prompts.Select((p, i) => { using var s = model.CreateSession(); return Ids(s.Generate(p, Options(i))); }).ToArray();
        var results = new int[Prompts.Length][][];
        var threads = Enumerable.Range(0, Prompts.Length).Select(i => new Thread(() =>
        {
            using var session = model.CreateSession();
            results[i] = Enumerable.Range(0, 3).Select(_ => Ids(session.Generate(Prompts[i], Options(i)))).ToArray();
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        for (int i = 0; i < Prompts.Length; i++)
            foreach (var r in results[i]) Assert.Equal(expected[i], r);
    }

    [Fact]
    public void ModelGenerateFromManyThreads_IsCorrect()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        var expected = Prompts.Select((p, i) => Ids(model.Generate(p, Options(i)))).ToArray();
        var results = new int[Prompts.Length][];
        Parallel.For(0, Prompts.Length * 3, new ParallelOptions { MaxDegreeOfParallelism = 4 }, k =>
        {
            int i = k % Prompts.Length;
            var ids = Ids(model.Generate(Prompts[i], Options(i)));
            Assert.Equal(expected[i], ids);
            results[i] = ids;
        });
        Assert.All(results, Assert.NotNull);
    }

    [Fact]
    public void PromptExtendingTheLastReusesTheSessionState()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        using var session = model.CreateSession();
        var first = Ids(session.Generate("Once upon a time", Options(0)));
        var text = "Once upon a time" + model.Tokenizer.Decode(first);
        var second = Ids(session.Generate(model.Tokenizer.Encode(text), Options(0)));
        Assert.True(session.LastStats.CachedTokens > 20, $"cached {session.LastStats.CachedTokens}");
        using var fresh = model.CreateSession();
        Assert.Equal(Ids(fresh.Generate(model.Tokenizer.Encode(text), Options(0))), second);
        Assert.Equal(0, fresh.LastStats.CachedTokens);
    }

    [Fact]
    public void DisposedModelOrSession_IsAnObjectDisposedException()
    {
        var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        var session = model.CreateSession();
        var other = model.CreateSession();
        session.Dispose();
        Assert.Throws<ObjectDisposedException>(() => session.Generate("Hi").ToList());
        Assert.Single(other.Generate("Hi", new GenerationOptions { MaxTokens = 1 }).Where(t => t.Id >= 0));
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => model.Generate("Hi").ToList());
        Assert.Throws<ObjectDisposedException>(() => other.Generate("Hi").ToList());
        Assert.Throws<ObjectDisposedException>(() => model.CreateSession());
        Assert.Throws<ObjectDisposedException>(() => model.Model.Forward([1], 0, new float[model.Model.VocabSize]));
        other.Dispose();
        model.Dispose();
    }

    [Fact]
    public void DisposingTheModelDuringAGenerationStopsItCleanly()
    {
        var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1, ContextLength = 512 });
        using var started = new ManualResetEventSlim();
        Exception? error = null;
        int generated = 0;
        var worker = new Thread(() =>
        {
            try
            {
                using var session = model.CreateSession();
                foreach (var _ in session.Generate("Once upon a time", new GenerationOptions { MaxTokens = 400, IgnoreEos = true }))
                    if (++generated == 5) started.Set();
            }
            catch (Exception e) { error = e; }
            finally { started.Set(); }
        });
        worker.Start();
        started.Wait(TestContext.Current.CancellationToken);
        model.Dispose();
        worker.Join();
        Assert.True(generated < 400, "the generation should have been stopped by the disposal");
        Assert.IsType<ObjectDisposedException>(error);
    }

    [Fact]
    public void ASessionRunsOneGenerationAtATime()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        using var session = model.CreateSession();
        using var first = session.Generate("Once upon a time", new GenerationOptions { MaxTokens = 10 }).GetEnumerator();
        Assert.True(first.MoveNext());
        var e = Assert.Throws<InvalidOperationException>(() => session.Generate("Lily").ToList());
        Assert.Contains("one generation at a time", e.Message);
        while (first.MoveNext()) { }
        Assert.NotEmpty(session.Generate("Lily", new GenerationOptions { MaxTokens = 3 }).ToList());
    }

    [Fact]
    public async Task GenerateAsyncComputesOffTheCallersSynchronizationContext()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        using var session = model.CreateSession();
        using var context = new SingleThreadContext();
        var (contextThread, texts) = await context.Run(async () =>
        {
            var parts = new List<string>();
            await foreach (var t in session.GenerateAsync("Once upon a time", new GenerationOptions { MaxTokens = 20 }))
            {
                Assert.Equal(context.ThreadId, Environment.CurrentManagedThreadId); // the consumer stays on its context
                parts.Add(t.Text);
            }
            return (Environment.CurrentManagedThreadId, parts);
        });
        Assert.Equal(context.ThreadId, contextThread);
        Assert.NotEqual(context.ThreadId, session.LastComputeThread);
        Assert.NotEmpty(string.Concat(texts));
    }

    /// <summary>A UI-thread-like synchronization context: one thread runs every posted callback.</summary>
    private sealed class SingleThreadContext : SynchronizationContext, IDisposable
    {
        private readonly System.Collections.Concurrent.BlockingCollection<(SendOrPostCallback, object?)> _queue = new();
        private readonly Thread _thread;
        public int ThreadId => _thread.ManagedThreadId;

        public SingleThreadContext()
        {
            _thread = new Thread(() =>
            {
                SetSynchronizationContext(this);
                foreach (var (cb, state) in _queue.GetConsumingEnumerable()) cb(state);
            }) { IsBackground = true };
            _thread.Start();
        }

        public override void Post(SendOrPostCallback d, object? state) => _queue.Add((d, state));

        public Task<T> Run<T>(Func<Task<T>> body)
        {
            var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
            Post(async _ =>
            {
                try { tcs.SetResult(await body()); }
                catch (Exception e) { tcs.SetException(e); }
            }, null);
            return tcs.Task;
        }

        public void Dispose() => _queue.CompleteAdding();
    }
}
