using Lrl.Runtime;

namespace Lrl.Cli.Tests;

/// <summary>
/// Continuous batching (ModelOptions.Parallel &gt; 1): concurrent generations decode together in the model's loop and
/// each one's output equals its output alone — greedy and seeded sampling, with stop strings, EOS and token budgets
/// ending sequences inside shared steps — while readers that leave, cancel or outlive the model break nothing.
/// </summary>
public class BatchingTests
{
    private static readonly string[] Prompts =
    [
        "Once upon a time", "Lily and Ben", "The little dog", "One day, a girl", "Tom had a big red ball",
        "The sun was shining and the birds", "Sara", "Once upon a time, there was a little girl named Lily. She loved to play",
    ];

    private static GenerationOptions Options(int i) => new()
    {
        MaxTokens = 24 + 5 * i,
        IgnoreEos = i % 3 != 0,
        StopStrings = i == 5 ? ["the"] : [],
        Sampling = i % 2 == 0 ? SamplingOptions.Greedy : new SamplingOptions { Temperature = 0.9f, TopK = 40, TopP = 0.95f, Seed = 11 + i },
    };

    private static (int[] Ids, string Text) Collect(IEnumerable<GeneratedToken> tokens)
    {
        var list = tokens.ToList();
        return (list.Where(t => t.Id >= 0).Select(t => t.Id).ToArray(), string.Concat(list.Select(t => t.Text)));
    }

    private static async Task<(int[] Ids, string Text)> CollectAsync(IAsyncEnumerable<GeneratedToken> tokens)
    {
        var list = new List<GeneratedToken>();
        await foreach (var t in tokens) list.Add(t);
        return (list.Where(t => t.Id >= 0).Select(t => t.Id).ToArray(), string.Concat(list.Select(t => t.Text)));
    }

    [Theory]
    [InlineData("stories260k")]
    [InlineData("stories260k-bf16-sharded")]
    [InlineData("rwkv-tiny-7v0-834K")]
    public async Task ConcurrentGenerationsEqualEachAlone(string name)
    {
        var dir = CliRunner.Model(name);
        (int[] Ids, string Text)[] alone;
        using (var serial = LrlModel.Load(dir, new ModelOptions { Threads = 2 }))
            alone = Prompts.Select((p, i) => { using var s = serial.CreateSession(); return Collect(s.Generate(p, Options(i))); }).ToArray();

        using var model = LrlModel.Load(dir, new ModelOptions { Threads = 2, Parallel = 4, StepRows = 8 });
        Assert.Equal(4, model.Parallel);
        // Twice as many generations as slots: half wait, then join while the others decode. Half are read
        // synchronously on threads of their own, half asynchronously.
        var tasks = Prompts.Select((p, i) => i % 2 == 0
            ? Task.Factory.StartNew(() => { using var s = model.CreateSession(); return Collect(s.Generate(p, Options(i))); }, TaskCreationOptions.LongRunning)
            : Task.Run(async () => { using var s = model.CreateSession(); return await CollectAsync(s.GenerateAsync(p, Options(i))); })).ToArray();
        var together = await Task.WhenAll(tasks);
        for (int i = 0; i < Prompts.Length; i++)
        {
            Assert.True(alone[i].Ids.SequenceEqual(together[i].Ids), $"{name} prompt {i}: alone [{string.Join(',', alone[i].Ids)}] batched [{string.Join(',', together[i].Ids)}]");
            Assert.Equal(alone[i].Text, together[i].Text);
        }
        var (steps, rows, most) = model.BatchStatistics;
        Assert.True(most >= 2, $"no step decoded more than one sequence ({steps} steps, {rows} rows)");
        Assert.True(rows > steps, "steps held one row each: nothing was batched");
    }

    [Fact]
    public async Task ModelLevelGenerateAndChatSessionsRunInTheLoop()
    {
        var dir = CliRunner.Model("stories260k");
        string expected;
        using (var serial = LrlModel.Load(dir, new ModelOptions { Threads = 1 }))
            expected = Collect(serial.Generate(Prompts[0], Options(0))).Text;
        using var model = LrlModel.Load(dir, new ModelOptions { Threads = 1, Parallel = 3 });
        var results = await Task.WhenAll(Enumerable.Range(0, 5).Select(_ => Task.Run(() => CollectAsync(model.GenerateAsync(Prompts[0], Options(0))))));
        Assert.All(results, r => Assert.Equal(expected, r.Text));
        Assert.Equal(Collect(model.Generate(Prompts[0], Options(0))).Text, expected);
        Assert.Equal(Options(0).MaxTokens, model.LastStats.GeneratedTokens);
    }

    [Fact]
    public async Task ReadersThatLeaveOrCancel_DoNotDisturbTheOthers()
    {
        var dir = CliRunner.Model("stories260k");
        using var model = LrlModel.Load(dir, new ModelOptions { Threads = 1, Parallel = 4 });
        var long_ = new GenerationOptions { MaxTokens = 200, IgnoreEos = true, Sampling = SamplingOptions.Greedy };
        string expected;
        using (var s = model.CreateSession()) expected = Collect(s.Generate(Prompts[1], long_)).Text;

        using var cts = new CancellationTokenSource();
        using var leaving = model.CreateSession();
        using var cancelled = model.CreateSession();
        using var steady = model.CreateSession();
        var steadyTask = Task.Run(() => CollectAsync(steady.GenerateAsync(Prompts[1], long_)));
        var leaveTask = Task.Run(() => leaving.Generate(Prompts[2], long_).Take(3).Count());
        var cancelTask = Task.Run(async () =>
        {
            int n = 0;
            await foreach (var _ in cancelled.GenerateAsync(Prompts[3], long_, cts.Token)) if (++n == 5) cts.Cancel();
            return n;
        });
        Assert.Equal(3, await leaveTask);
        int got = await cancelTask;
        Assert.InRange(got, 5, 7);
        // The steady reader first: a step that failed would end it with the step's exception (and leave the cancelled
        // generation without a finish reason), which names the cause.
        Assert.Equal(expected, (await steadyTask).Text);
        // Cancelled, unless the loop ran the whole generation before the cancellation came (the loop does not wait for
        // a slow reader: on a loaded machine 200 tokens of this model can be done before the reader's fifth).
        var c = cancelled.LastStats;
        Assert.True(c.FinishReason == FinishReason.Cancelled || c.FinishReason == FinishReason.Length && c.GeneratedTokens == long_.MaxTokens,
                    $"finish reason {c.FinishReason} after {c.GeneratedTokens} tokens");
        // The sessions are free again and give the same output as before.
        var again = Collect(leaving.Generate(Prompts[1], long_)).Text;
        Assert.True(expected == again, $"expected:\n{expected}\nagain:\n{again}\ncached {leaving.LastStats.CachedTokens}");
    }

    /// <summary>
    /// A crowd of readers in random order (seeded): whole generations read synchronously and asynchronously, greedy,
    /// sampled and speculative; readers that leave after a few tokens and then reuse their session; cancellations after a
    /// few tokens and before the first; sessions disposed from another thread mid-generation. Every whole generation
    /// equals its output alone, every cancelled one says so, and nothing else throws.
    /// </summary>
    [Fact]
    public async Task ACrowdThatLeavesCancelsAndDisposesNeverDisturbsTheRest()
    {
        var dir = CliRunner.Model("stories260k");
        GenerationOptions Opt(int i) => Options(i) with { Speculative = i % 4 == 2 ? SpeculativeMethod.Lookup : SpeculativeMethod.None };
        string[] alone;
        using (var serial = LrlModel.Load(dir, new ModelOptions { Threads = 1 }))
            alone = Prompts.Select((p, i) => { using var s = serial.CreateSession(); return Collect(s.Generate(p, Opt(i))).Text; }).ToArray();

        using var model = LrlModel.Load(dir, new ModelOptions { Threads = 2, Parallel = 4, StepRows = 8 });
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        async Task Reader(int seed)
        {
            var rng = new Random(seed);
            for (int round = 0; round < 6; round++)
            {
                int i = rng.Next(Prompts.Length), k = 1 + rng.Next(6);
                string p = Prompts[i];
                var o = Opt(i);
                using var s = model.CreateSession();
                switch (rng.Next(6))
                {
                    case 0: // whole, synchronous
                        Check(i, Collect(s.Generate(p, o)).Text, "sync");
                        break;
                    case 1: // whole, asynchronous
                        Check(i, (await CollectAsync(s.GenerateAsync(p, o))).Text, "async");
                        break;
                    case 2: // leaves after k tokens, then the session runs the whole generation
                        _ = s.Generate(p, o).Take(k).Count();
                        Check(i, Collect(s.Generate(p, o)).Text, $"after leaving at {k}");
                        break;
                    case 3: // cancels after k tokens
                    {
                        using var cts = new CancellationTokenSource();
                        int n = 0;
                        await foreach (var _ in s.GenerateAsync(p, o with { MaxTokens = 200, IgnoreEos = true, StopStrings = [] }, cts.Token)) if (++n == k) cts.Cancel();
                        // Cancelled, unless the loop (which does not wait for a slow reader) had run all 200 tokens.
                        var c = s.LastStats;
                        if (c.FinishReason != FinishReason.Cancelled && !(c.FinishReason == FinishReason.Length && c.GeneratedTokens == 200))
                            failures.Enqueue($"prompt {i}: cancelled after {k} tokens, finish reason {c.FinishReason} after {c.GeneratedTokens} tokens");
                        break;
                    }
                    case 4: // cancelled before the first token
                    {
                        using var cts = new CancellationTokenSource();
                        cts.Cancel();
                        var got = await CollectAsync(s.GenerateAsync(p, o, cts.Token));
                        if (got.Ids.Length > 0 || s.LastStats.FinishReason != FinishReason.Cancelled)
                            failures.Enqueue($"prompt {i}: cancelled before starting, {got.Ids.Length} tokens, {s.LastStats.FinishReason}");
                        break;
                    }
                    default: // disposed from another thread after k tokens
                    {
                        var started = new TaskCompletionSource();
                        var read = Task.Run(async () =>
                        {
                            int n = 0;
                            await foreach (var _ in s.GenerateAsync(p, o with { MaxTokens = 200, IgnoreEos = true })) if (++n == k) started.TrySetResult();
                        });
                        await Task.WhenAny(started.Task, read);
                        s.Dispose();
                        try { await read; }
                        catch (ObjectDisposedException) { } // the documented end of a generation whose session is disposed
                        break;
                    }
                }
            }
        }
        void Check(int i, string text, string how)
        {
            if (text != alone[i]) failures.Enqueue($"prompt {i} ({how}): expected\n{alone[i]}\ngot\n{text}");
        }
        var readers = Enumerable.Range(0, 8).Select(seed => Task.Run(() => Reader(100 + seed))).ToArray();
        try { await Task.WhenAll(readers).WaitAsync(TimeSpan.FromMinutes(3)); }
        catch (Exception e) when (e is not TimeoutException) { failures.Enqueue(e.ToString()); }
        Assert.True(failures.IsEmpty, string.Join("\n---\n", failures));
        // The loop is still sound afterwards.
        using var after = model.CreateSession();
        Assert.Equal(alone[0], Collect(after.Generate(Prompts[0], Opt(0))).Text);
    }

    /// <summary>
    /// <see cref="ModelOptions.BatchInvariant"/> on the float models: a decode row in a 41-row step beside another
    /// sequence's prompt gets exactly its lone row's logits (without the option its products take the GEMM and the bits
    /// differ), prompts are admitted in chunks of at most the step's rows, and concurrent generations equal each alone.
    /// </summary>
    [Theory]
    [InlineData("stories260k")]
    [InlineData("stories260k-bf16-sharded")]
    public async Task BatchInvariantFloatModelsGiveEveryRowItsLoneBits(string name)
    {
        var dir = CliRunner.Model(name);
        float[] RowInStep(LrlModel m, bool lone)
        {
            var mb = (Lrl.Models.ModelBase)m.Model;
            int v = mb.VocabSize;
            using var a = mb.CreateState();
            using var b = mb.CreateState();
            mb.Forward(a, [1, 403, 407, 261], 0, new float[v]);
            var batch = new StepBatch();
            int at = batch.Add(a, [300], 4);
            if (!lone) batch.Add(b, Enumerable.Range(0, 40).Select(i => 1 + i * 13 % (v - 1)).ToArray(), 0, LogitsWanted.None);
            var logits = new float[batch.LogitsRows * v];
            mb.Forward(batch, logits);
            return logits.AsSpan(at * v, v).ToArray();
        }
        using (var plain = LrlModel.Load(dir, new ModelOptions { Threads = 2 }))
            Assert.False(RowInStep(plain, lone: true).SequenceEqual(RowInStep(plain, lone: false)), "without the option a 41-row float step should round differently");
        using var model = LrlModel.Load(dir, new ModelOptions { Threads = 2, Parallel = 4, StepRows = 48, BatchInvariant = true });
        Assert.True(RowInStep(model, lone: true).SequenceEqual(RowInStep(model, lone: false)), $"{name}: the row's logits depend on its step");
        Assert.Equal(48, model.Loop!.PrefillRows);
        // A backend without per-row products says so instead of quietly batching as before.
        Assert.Contains("--batch-invariant", Assert.Throws<LrlException>(() =>
            LrlModel.Load(dir, new ModelOptions { BatchInvariant = true }, new Lrl.Kernels.Reference.ReferenceBackend())).Message);

        string[] alone;
        using (var serial = LrlModel.Load(dir, new ModelOptions { Threads = 2, Parallel = 4, StepRows = 48, BatchInvariant = true }))
            alone = Prompts.Select((p, i) => { using var s = serial.CreateSession(); return Collect(s.Generate(p, Options(i))).Text; }).ToArray();
        var together = await Task.WhenAll(Prompts.Select((p, i) => Task.Run(async () =>
        {
            using var s = model.CreateSession();
            return (await CollectAsync(s.GenerateAsync(p, Options(i)))).Text;
        })));
        Assert.Equal(alone, together);
    }

    [Fact]
    public async Task DisposingTheModelEndsRunningGenerationsWithAClearError()
    {
        var dir = CliRunner.Model("stories260k");
        var model = LrlModel.Load(dir, new ModelOptions { Threads = 1, Parallel = 2 });
        var session = model.CreateSession();
        var started = new TaskCompletionSource();
        var run = Task.Run(async () =>
        {
            while (true) // generations back to back, so disposal always meets one
                await foreach (var _ in session.GenerateAsync(Prompts[0], new GenerationOptions { MaxTokens = 100_000, IgnoreEos = true }))
                    started.TrySetResult();
        });
        await started.Task;
        model.Dispose();
        await Assert.ThrowsAnyAsync<ObjectDisposedException>(() => run.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Throws<ObjectDisposedException>(() => model.CreateSession());
    }

    [Fact]
    public void BadParallelOptionsAreClearErrors()
    {
        var dir = CliRunner.Model("stories260k");
        Assert.Contains("--parallel", Assert.Throws<LrlException>(() => LrlModel.Load(dir, new ModelOptions { Parallel = 0 })).Message);
        Assert.Contains("--step-rows", Assert.Throws<LrlException>(() => LrlModel.Load(dir, new ModelOptions { StepRows = -1 })).Message);
        Assert.Contains("--kv-memory", Assert.Throws<LrlException>(() => LrlModel.Load(dir, new ModelOptions { Parallel = 2, KvMemory = -1 })).Message);
        Assert.Contains("--parallel", Assert.Throws<LrlException>(() => LrlModel.Load(dir, new ModelOptions { KvMemory = 1 << 20 })).Message);
    }

    /// <summary>
    /// A KV cache budget (ModelOptions.KvMemory, `serve --kv-memory`): generations run together only as far as what
    /// their caches can grow to fits it (here two of four at a time, though four slots are free), each still gives its
    /// output alone, the reservations return when they end, and a generation that could never fit is refused up front
    /// with an error naming the budget.
    /// </summary>
    [Fact]
    public async Task AKvMemoryBudgetAdmitsWhatFitsAndRefusesWhatNeverCould()
    {
        var dir = CliRunner.Model("stories260k");
        var options = new GenerationOptions { MaxTokens = 40, IgnoreEos = true, Sampling = SamplingOptions.Greedy };
        string[] prompts = [.. Prompts.Take(4)];
        string[] alone;
        long each;
        using (var serial = LrlModel.Load(dir, new ModelOptions { Threads = 1 }))
        {
            alone = prompts.Select(p => Collect(serial.Generate(p, options, TestContext.Current.CancellationToken)).Text).ToArray();
            var mb = (Lrl.Models.ModelBase)serial.Model;
            // Short prompts and 40 tokens: every state stays at its first capacity, one size for all four.
            each = mb.StateBytes(serial.Tokenizer.Encode(prompts.MaxBy(p => p.Length)!, true).Length + options.MaxTokens + 1);
            Assert.Equal(mb.StateBytes(1), each);
            Assert.True(mb.StateBytes(mb.ContextLength) > each, "a whole window's state is larger than the first capacity");
        }
        long budget = 2 * each + each / 2;
        using var model = LrlModel.Load(dir, new ModelOptions { Threads = 1, Parallel = 4, KvMemory = budget });
        var together = await Task.WhenAll(prompts.Select(p => Task.Run(async () =>
        {
            using var s = model.CreateSession();
            return (await CollectAsync(s.GenerateAsync(p, options, TestContext.Current.CancellationToken))).Text;
        })));
        Assert.Equal(alone, together);
        var (b, reserved, most) = model.KvBudget;
        Assert.Equal(budget, b);
        Assert.Equal(0, reserved);
        Assert.True(most <= budget && most >= each, $"reserved at most {most} bytes against a budget of {budget}");
        Assert.True(model.BatchStatistics.MostSequences <= 2, $"{model.BatchStatistics.MostSequences} generations ran at once within a budget for two");

        // Sessions kept idle for prefix reuse (a server's pool) count in the budget too: admitting a generation
        // releases the least recently used idle ones as far as it needs.
        using (var pool = new SessionPool(model, 8))
        {
            var pooled = await Task.WhenAll(prompts.Select(p => Task.Run(async () =>
            {
                using var lease = pool.Acquire(model.Tokenizer.Encode(p, true));
                return (await CollectAsync(lease.Session.GenerateAsync(p, options, TestContext.Current.CancellationToken))).Text;
            })));
            Assert.Equal(alone, pooled);
            Assert.True(pool.IdleCount < prompts.Length, $"all {pool.IdleCount} sessions were kept idle beside the budget");
            Assert.True(pool.IdleBytes + model.KvBudget.Reserved <= budget, $"{pool.IdleBytes} idle bytes against a budget of {budget}");
            Assert.True(model.BatchStatistics.MostSequences <= 2);

            // Two sessions returned idle side by side, then a generation on a session of its own: two idle states and
            // a running one would pass 2.5, so its admission releases one idle state, and only one (as far as it needs).
            var leases = new[] { pool.Acquire([]), pool.Acquire([]) };
            foreach (var l in leases) Collect(l.Session.Generate(prompts[0], options, TestContext.Current.CancellationToken));
            foreach (var l in leases) l.Dispose();
            Assert.Equal(2, pool.IdleCount);
            using (var own = model.CreateSession())
                Assert.Equal(alone[1], (await CollectAsync(own.GenerateAsync(prompts[1], options, TestContext.Current.CancellationToken))).Text);
            Assert.Equal(1, pool.IdleCount);
        }

        // Within a budget for one first-size state, one that could grow to the whole window (max_tokens past it, a
        // doubled state) is refused up front, named; a short one still runs.
        using var tight = LrlModel.Load(dir, new ModelOptions { Threads = 1, Parallel = 2, KvMemory = each + each / 2 });
        using var session = tight.CreateSession();
        var tooLong = options with { MaxTokens = 100_000 };
        var e = Assert.Throws<LrlException>(() => session.Generate(prompts[0], tooLong, TestContext.Current.CancellationToken));
        Assert.Contains("--kv-memory", e.Message);
        Assert.Throws<LrlException>(() => session.GenerateAsync(prompts[0], tooLong, TestContext.Current.CancellationToken));
        Assert.Equal(alone[0], Collect(session.Generate(prompts[0], options, TestContext.Current.CancellationToken)).Text);
    }
}
