using Lrl.Runtime;

namespace Lrl.Cli.Tests;

/// <summary>
/// Speculative decoding is lossless: for every method and real model (f32, fp16, bf16, and int8/int4 quantized),
/// greedy output is the plain greedy output token for token, seeded sampling gives the same tokens, and stop strings,
/// EOS and the context limit end it where plain decoding ends; the statistics count what was drafted and accepted.
/// </summary>
public class SpeculativeTests
{
    public static TheoryData<string, SpeculativeMethod> Cases
    {
        get
        {
            var d = new TheoryData<string, SpeculativeMethod>();
            foreach (var m in new[] { "stories260k", "stories260k-fp16", "stories260k-bf16-sharded", "stories260k-q8", "stories260k-q4" })
                foreach (var s in new[] { SpeculativeMethod.Lookup, SpeculativeMethod.EarlyExit, SpeculativeMethod.Draft }) d.Add(m, s);
            d.Add("capp-gpt2-tiny", SpeculativeMethod.Lookup);
            d.Add("capp-gpt2-tiny", SpeculativeMethod.Draft);
            d.Add("rwkv-tiny-7v0-834K", SpeculativeMethod.Lookup); // recurrent: falls back to plain decoding
            return d;
        }
    }

    private static (int[] Ids, string Text, GenerationStats Stats) Run(LrlModel model, string prompt, GenerationOptions o) =>
        Run(model, model.Tokenizer.Encode(prompt, o.AddBos), o);

    private static (int[] Ids, string Text, GenerationStats Stats) Run(LrlModel model, int[] prompt, GenerationOptions o)
    {
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        using var session = model.CreateSession();
        foreach (var t in session.Generate(prompt, o))
        {
            if (t.Id >= 0) ids.Add(t.Id);
            text.Append(t.Text);
        }
        return (ids.ToArray(), text.ToString(), session.LastStats);
    }

    private static int[][] Prompts(LrlModel m, string model) => model.StartsWith("capp", StringComparison.Ordinal)
        ? [.. CliRunner.Reference(model).GetProperty("prompts").EnumerateArray().Select(p => p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray())]
        : [.. (model.StartsWith("stories", StringComparison.Ordinal)
            ? new[] { "Once upon a time", "Lily and Ben went to the park. Lily and Ben", "The cat sat on the mat. The cat" }
            : new[] { "Hello", "abc abc abc" }).Select(t => m.Tokenizer.Encode(t, true))];

    private static readonly Lazy<string> QuantRoot = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), $"lrl-spec-quant-{Environment.ProcessId}");
        foreach (int bits in new[] { 8, 4 })
            Lrl.Quant.Quantizer.QuantizeModel(CliRunner.Model("stories260k"), Path.Combine(root, $"q{bits}"), bits, "auto", null);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(root, recursive: true); } catch (IOException) { } };
        return root;
    });

    /// <summary>A real model folder, or stories260k quantized to int8/int4 (lrlrun quantize's defaults) for "-q8" / "-q4".</summary>
    private static string Folder(string name) => name switch
    {
        "stories260k-q8" => Path.Combine(QuantRoot.Value, "q8"),
        "stories260k-q4" => Path.Combine(QuantRoot.Value, "q4"),
        _ => CliRunner.Model(name),
    };

    [Theory, MemberData(nameof(Cases))]
    public void GreedyAndSeededSamplingEqualPlainDecoding(string name, SpeculativeMethod method)
    {
        using var model = LrlModel.Load(Folder(name), new ModelOptions { Threads = name.EndsWith("q4", StringComparison.Ordinal) ? 2 : 1 });
        using var draft = method == SpeculativeMethod.Draft ? LrlModel.Load(CliRunner.Model(name == "capp-gpt2-tiny" ? name : "stories260k-fp16"), new ModelOptions { Threads = 1 }) : null;
        foreach (var prompt in Prompts(model, name))
            foreach (var sampling in new[] { SamplingOptions.Greedy, new SamplingOptions { Temperature = 0.9f, TopK = 40, TopP = 0.95f, MinP = 0.02f, Seed = 7 } })
            {
                var plain = new GenerationOptions { MaxTokens = 48, IgnoreEos = true, Sampling = sampling };
                var spec = plain with { Speculative = method, DraftTokens = 5, DraftLayers = 2, DraftModel = draft };
                var a = Run(model, prompt, plain);
                var b = Run(model, prompt, spec);
                Assert.Equal(a.Ids, b.Ids);
                Assert.Equal(a.Text, b.Text);
                Assert.Equal(a.Stats.FinishReason, b.Stats.FinishReason);
                if (model.Model.CanRewind)
                {
                    Assert.True(b.Stats.VerifySteps > 0);
                    Assert.Equal(b.Stats.AcceptedTokens, b.Stats.AcceptedByDepth.Sum());
                    // The prompt's row gives the first token; each verify step its accepted drafts and one token of the
                    // model's; each plain step (the adaptive length backing off) one token.
                    int steps = b.Stats.VerifySteps + b.Stats.PlainSteps;
                    Assert.InRange(b.Ids.Length, steps + b.Stats.AcceptedTokens, 1 + steps + b.Stats.AcceptedTokens);
                }
                else Assert.Equal(0, b.Stats.VerifySteps);
            }
    }

    [Fact]
    public void DraftModelAcceptsMostAndLookupAcceptsRepeatedText()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        using var draft = LrlModel.Load(CliRunner.Model("stories260k-bf16-sharded"), new ModelOptions { Threads = 1 });
        var o = new GenerationOptions { MaxTokens = 60, IgnoreEos = true, Sampling = SamplingOptions.Greedy, Speculative = SpeculativeMethod.Draft, DraftModel = draft, DraftTokens = 6,
                                        DraftLength = DraftLength.Acceptance }; // statistics, not timings
        var s = Run(model, "Once upon a time", o).Stats;
        Assert.True(s.TokensPerStep > 3, $"a bf16 copy of the model as draft: {s.TokensPerStep:F2} tokens per step");
        // A summarization-like prompt that repeats its input: the continuation copies, lookup drafts it.
        string story = "Lily wanted to play with the ball. She asked her mom if she could play outside. Her mom said yes.";
        var l = Run(model, story + " " + story + " " + story[..40], o with { Speculative = SpeculativeMethod.Lookup, DraftModel = null, MaxTokens = 40 }).Stats;
        Assert.True(l.TokensPerStep > 1.2 && l.AcceptedTokens > 5, $"lookup on repeated text: {l.TokensPerStep:F2} tokens per step");
    }

    /// <summary>
    /// The lookup rule: the latest earlier occurrence of the longest matching tail (4 tokens down to 1); a continuation
    /// that reaches the end of the text repeats with its period (a loop drafts a full run, not one token per step).
    /// </summary>
    [Fact]
    public void LookupDraftsTheLatestMatchAndRepeatsALoop()
    {
        using var lookup = new LookupDraft();
        var draft = new int[6];
        // Text: 5 6 7 8 9 | ... 1 2 3 ... | 1 2 3: the latest "1 2 3" is followed by 10 11 12 13 14 15.
        int[] ctx = [5, 6, 7, 8, 9, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 4, 1, 2, 3];
        Assert.Equal(6, lookup.Propose(ctx, draft));
        Assert.Equal([10, 11, 12, 13, 14, 15], draft);
        // A one-token loop: the whole draft is that token (the latest match leaves one token before the end).
        Assert.Equal(6, lookup.Propose([9, 4, 7, 7, 7, 7], draft));
        Assert.Equal([7, 7, 7, 7, 7, 7], draft);
        // A period-3 loop continues in phase.
        Assert.Equal(6, lookup.Propose([1, 2, 3, 1, 2, 3, 1], draft));
        Assert.Equal([2, 3, 1, 2, 3, 1], draft);
        // No earlier occurrence of even the last token: no draft.
        Assert.Equal(0, lookup.Propose([1, 2, 3, 4], draft));
    }

    /// <summary>
    /// The adaptive length: a source that never hits is probed ever more rarely (pauses 16, 32, 64, ... steps), so over
    /// 2,000 steps it drafts in a handful of them; a source that always hits drafts in every step at full depth; a hit
    /// after failures ends the doubling.
    /// </summary>
    [Fact]
    public void DraftControlBacksOffExponentiallyFromASourceThatNeverHits()
    {
        var never = new DraftControl();
        int drafting = 0, drafted = 0;
        for (int step = 0; step < 2000; step++)
        {
            int n = never.Length(6);
            if (n == 0) continue;
            drafting++; drafted += n;
            never.Observe(n, 0);
        }
        Assert.InRange(drafting, 3, 14);
        Assert.True(drafted == drafting, $"{drafted} drafts in {drafting} steps: the first step and every probe after a pause draft one token");
        Assert.Equal(512, never.LastPause);
        var always = new DraftControl();
        for (int step = 0; step < 200; step++)
        {
            int n = always.Length(6);
            Assert.True(n > 0, $"step {step}: a source that always hits was paused");
            always.Observe(n, n);
        }
        Assert.Equal(6, always.Length(6));
        // Two failed rounds, then a hit: the next back-off starts again from 16 steps.
        var mixed = new DraftControl();
        FailUntilPause(mixed);
        FailUntilPause(mixed);
        Assert.Equal(32, mixed.LastPause);
        int k;
        while ((k = mixed.Length(6)) == 0) { }
        mixed.Observe(k, k);
        FailUntilPause(mixed);
        Assert.Equal(16, mixed.LastPause);

        static void FailUntilPause(DraftControl c)
        {
            int n;
            while ((n = c.Length(6)) == 0) { } // through a pause
            do c.Observe(n, 0); while ((n = c.Length(6)) > 0);
        }
    }

    /// <summary>
    /// The cost-aware length: a source whose drafts each hold with probability 0.9 and steps timed by a given cost shape
    /// (drafts run in cheap 4-row tiles, then each further row costs a whole decode step, as a CPU's few-row products do
    /// once arithmetic binds) settles on the length with the most expected tokens per second, not the acceptance cap;
    /// a flat cost (a bandwidth-bound pass) keeps the cap; drafts that cost a step each back off to plain decoding; the
    /// acceptance rule ignores timings.
    /// </summary>
    [Fact]
    public void DraftLengthByCostSettlesOnTheMostTokensPerSecond()
    {
        static double Tiles(int n) => n <= 3 ? 1 + 0.05 * n : 1.15 + (n - 3);
        static double Flat(int n) => 1 + 0.02 * n;
        static int[] Chosen(Func<int, double> cost, bool byCost, double p = 0.9)
        {
            var c = new DraftControl { ByCost = byCost };
            var rng = new Random(3);
            var counts = new int[7];
            for (int step = 0; step < 600; step++)
            {
                int n = c.Length(6);
                int accepted = 0;
                while (accepted < n && rng.NextDouble() < p) accepted++;
                c.Observe(n, accepted);
                c.ObserveCost(n, cost(n) * (0.9 + 0.2 * rng.NextDouble())); // timing noise of ±10 %
                if (step >= 200) counts[n]++;
            }
            return counts;
        }
        // Expected tokens per unit time at r = 0.9: 1 draft 1.82, 2: 2.46, 3: 2.99, 4: 1.91 -> 3 drafts.
        var tiles = Chosen(Tiles, byCost: true);
        Assert.True(tiles[3] >= 250, $"drafts per step chosen over 400 steps: {string.Join(' ', tiles)}");
        Assert.True(tiles[5] + tiles[6] <= 10, $"drafts per step chosen over 400 steps: {string.Join(' ', tiles)}");
        var flat = Chosen(Flat, byCost: true);
        Assert.True(flat[6] >= 250, $"flat cost: {string.Join(' ', flat)}");
        // Drafts that cost a whole step each (a draft model as large as the model) never pay: plain steps.
        var costly = Chosen(n => 1 + n, byCost: true, p: 0.6);
        Assert.True(costly[0] >= 300, $"drafts costing a step each: {string.Join(' ', costly)}");
        var rule = Chosen(Tiles, byCost: false);
        Assert.True(rule[6] >= 280, $"acceptance rule: {string.Join(' ', rule)}");
        // A stall (one step 100x slower) moves a length's average by at most 2x.
        var s = new DraftControl();
        s.ObserveCost(4, 1.0);
        s.ObserveCost(4, 100.0);
        Assert.InRange(s.Estimate(4), 1.0, 1.31);
        // Between measured lengths the time is interpolated, beyond them extrapolated along the nearest slope.
        var e = new DraftControl();
        e.ObserveCost(2, 2.0);
        e.ObserveCost(4, 4.0);
        Assert.Equal(3.0, e.Estimate(3), 6);
        Assert.Equal(6.0, e.Estimate(6), 6);
        Assert.Equal(1.0, e.Estimate(1), 6);
        Assert.Contains("--draft-length", CliRunner.Run("generate", "--model", CliRunner.Model("stories260k"), "--prompt", "Hi",
                                                        "--speculative", "lookup", "--draft-length", "fast").Stderr);
    }

    [Fact]
    public void StopStringsEosAndTheContextEndWhereTheyDoWithoutSpeculation()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1, ContextLength = 40 });
        using var draft = LrlModel.Load(CliRunner.Model("stories260k-fp16"), new ModelOptions { Threads = 1 });
        var cases = new[]
        {
            new GenerationOptions { MaxTokens = 100, Sampling = SamplingOptions.Greedy, StopStrings = ["park"] },
            new GenerationOptions { MaxTokens = 100, Sampling = SamplingOptions.Greedy },                       // EOS inside an accepted run
            new GenerationOptions { MaxTokens = 100, Sampling = SamplingOptions.Greedy, IgnoreEos = true },   // the 40-token context
            new GenerationOptions { MaxTokens = 7, Sampling = SamplingOptions.Greedy, IgnoreEos = true },     // the budget mid-run
        };
        foreach (var plain in cases)
            foreach (var method in new[] { SpeculativeMethod.Lookup, SpeculativeMethod.EarlyExit, SpeculativeMethod.Draft })
            {
                var a = Run(model, "Once upon a time", plain);
                var b = Run(model, "Once upon a time", plain with { Speculative = method, DraftModel = draft, DraftTokens = 8, DraftLayers = 3 });
                Assert.Equal(a.Ids, b.Ids);
                Assert.Equal(a.Text, b.Text);
                Assert.Equal(a.Stats.FinishReason, b.Stats.FinishReason);
            }
    }

    [Fact]
    public void BadSpeculativeSettingsAreClearErrors()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        Assert.Throws<LrlException>(() => model.Generate("Hi", new GenerationOptions { Speculative = SpeculativeMethod.Draft }).ToList());
        Assert.Throws<LrlException>(() => model.Generate("Hi", new GenerationOptions { Speculative = SpeculativeMethod.Lookup, DraftTokens = 0 }).ToList());
        Assert.Throws<LrlException>(() => model.Generate("Hi", new GenerationOptions { Speculative = SpeculativeMethod.EarlyExit, DraftLayers = 5 }).ToList());
        using var gpt2 = LrlModel.Load(CliRunner.Model("capp-gpt2-tiny"), new ModelOptions { Threads = 1 });
        Assert.Throws<LrlException>(() => gpt2.Generate("a", new GenerationOptions { Speculative = SpeculativeMethod.EarlyExit }).ToList());
        Assert.Throws<LrlException>(() => model.Generate("Hi", new GenerationOptions { Speculative = SpeculativeMethod.Draft, DraftModel = gpt2 }).ToList());
        var cli = CliRunner.Run("generate", "--model", CliRunner.Model("stories260k"), "--prompt", "Hi", "--speculative", "magic");
        Assert.NotEqual(0, cli.ExitCode);
        Assert.Contains("--speculative 'magic'", cli.Stderr);
    }

    /// <summary>
    /// In the batched decode loop (serve, Parallel &gt; 1) each speculative sequence's step carries its drafts as rows of
    /// the shared pass: concurrent generations, speculative and plain, each equal their plain output alone.
    /// </summary>
    [Fact]
    public async Task SpeculationInTheBatchedDecodeLoopIsLossless()
    {
        var dir = CliRunner.Model("stories260k");
        using var single = LrlModel.Load(dir, new ModelOptions { Threads = 1 });
        using var batched = LrlModel.Load(dir, new ModelOptions { Threads = 1, Parallel = 4 });
        using var draft = LrlModel.Load(CliRunner.Model("stories260k-fp16"), new ModelOptions { Threads = 1 });
        var prompts = new[] { "Once upon a time", "Lily and Ben", "The cat sat on the mat. The cat", "Tom had a red ball" };
        var methods = new[] { SpeculativeMethod.Draft, SpeculativeMethod.Lookup, SpeculativeMethod.None, SpeculativeMethod.EarlyExit };
        var seeded = new SamplingOptions { Temperature = 0.8f, TopK = 40, Seed = 3 };
        foreach (var sampling in new[] { SamplingOptions.Greedy, seeded })
        {
            var plain = new GenerationOptions { MaxTokens = 40, IgnoreEos = true, Sampling = sampling };
            var expected = prompts.Select(p => Run(single, p, plain).Ids).ToArray();
            var tasks = prompts.Select(async (p, i) =>
            {
                using var session = batched.CreateSession();
                var ids = new List<int>();
                await foreach (var t in session.GenerateAsync(p, plain with { Speculative = methods[i], DraftModel = draft, DraftTokens = 4, DraftLayers = 3 }))
                    if (t.Id >= 0) ids.Add(t.Id);
                return (ids.ToArray(), session.LastStats);
            }).ToArray();
            var results = await Task.WhenAll(tasks);
            for (int i = 0; i < prompts.Length; i++)
            {
                Assert.Equal(expected[i], results[i].Item1);
                Assert.Equal(methods[i] != SpeculativeMethod.None, results[i].LastStats.VerifySteps > 0);
            }
        }
        Assert.True(batched.BatchStatistics.MostSequences > 1, "the generations shared steps");
    }

    /// <summary>
    /// The output distribution, not only seeded equality: plain and speculative sampling with independent seeds
    /// (temperature 1, no truncation, 600 runs each) give the same distribution of the 2nd and 3rd generated tokens
    /// (where drafts are verified) by a chi-square homogeneity test at a false-alarm rate of 0.1 % per token position
    /// (cells with an expected count below 5 pooled; the critical value by the Wilson-Hilferty approximation), and the
    /// deliberately biased acceptance rule fails the same test.
    /// </summary>
    [Fact]
    public void ChiSquareAcceptsTheSpeculativeDistributionAndRejectsABiasedRule()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        using var draft = LrlModel.Load(CliRunner.Model("stories260k-fp16"), new ModelOptions { Threads = 1 });
        const int Runs = 600;
        int[][] Sample(bool speculative, bool biased, int seed0)
        {
            var tokens = new int[Runs][];
            for (int i = 0; i < Runs; i++)
            {
                // Seeds spread by a hash: System.Random's first draws move almost linearly with consecutive seeds, so
                // seeds 1..600 would sample a near-regular grid (too good an agreement for a fair test).
                var plain = new GenerationOptions { MaxTokens = 3, IgnoreEos = true, Sampling = new SamplingOptions { Temperature = 1.0f, TopK = 0, TopP = 1, MinP = 0, Seed = Spread(seed0 + i) } };
                var o = speculative ? plain with { Speculative = SpeculativeMethod.Draft, DraftModel = draft, DraftTokens = 4 } : plain;
                lock (typeof(SpeculativeRun))
                {
                    SpeculativeRun.BiasedRuleForTests = biased;
                    try { tokens[i] = Run(model, "Once upon a time", o).Ids; }
                    finally { SpeculativeRun.BiasedRuleForTests = false; }
                }
            }
            return tokens;
        }
        var plainRuns = Sample(false, false, 1);
        var specRuns = Sample(true, false, 100_001);
        var biasedRuns = Sample(true, true, 200_001);
        foreach (int position in new[] { 1, 2 })
        {
            var (chi, critical) = ChiSquare(plainRuns.Select(t => t[position]), specRuns.Select(t => t[position]));
            Assert.True(chi < critical, $"token {position + 1}: chi-square {chi:F1} ≥ {critical:F1} for the speculative distribution");
        }
        var (chiB, criticalB) = ChiSquare(plainRuns.Select(t => t[1]), biasedRuns.Select(t => t[1]));
        Assert.True(chiB > criticalB, $"the biased rule passed: chi-square {chiB:F1} < {criticalB:F1}");
    }

    private static int Spread(int seed)
    {
        ulong z = (ulong)(uint)seed + 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return (int)((z ^ (z >> 31)) & 0x7FFFFFFF);
    }

    /// <summary>Chi-square homogeneity statistic of two samples and its 99.9 % critical value.</summary>
    private static (double Chi, double Critical) ChiSquare(IEnumerable<int> a, IEnumerable<int> b)
    {
        var ca = a.GroupBy(t => t).ToDictionary(g => g.Key, g => g.Count());
        var cb = b.GroupBy(t => t).ToDictionary(g => g.Key, g => g.Count());
        double na = ca.Values.Sum(), nb = cb.Values.Sum(), n = na + nb;
        // Cells: tokens whose expected counts are ≥ 5 in both samples; the rest pooled into one cell.
        var cells = new List<(double A, double B)>();
        double restA = 0, restB = 0;
        foreach (int t in ca.Keys.Union(cb.Keys))
        {
            double x = ca.GetValueOrDefault(t), y = cb.GetValueOrDefault(t), total = x + y;
            if (total * Math.Min(na, nb) / n >= 5) cells.Add((x, y)); else { restA += x; restB += y; }
        }
        if ((restA + restB) * Math.Min(na, nb) / n >= 5 || cells.Count < 2) cells.Add((restA, restB));
        double chi = 0;
        foreach (var (x, y) in cells)
        {
            double total = x + y, ea = total * na / n, eb = total * nb / n;
            chi += (x - ea) * (x - ea) / ea + (y - eb) * (y - eb) / eb;
        }
        int df = cells.Count - 1;
        const double Z = 3.0902; // the 99.9 % normal quantile
        double h = 2.0 / (9 * df);
        return (chi, df * Math.Pow(1 - h + Z * Math.Sqrt(h), 3));
    }

    /// <summary>
    /// The losslessness check has power: with a deliberately biased acceptance rule (keep a draft the model finds
    /// merely plausible) the seeded outputs differ from plain sampling, so the equality above would fail. Over 40 seeds
    /// the first 24 tokens of plain and correct speculative runs agree every time (a false alarm is impossible: the
    /// rule draws the same random numbers in the same order), while the biased rule changes most runs.
    /// </summary>
    [Fact]
    public void ABiasedAcceptanceRuleIsCaught()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        using var draft = LrlModel.Load(CliRunner.Model("stories260k-fp16"), new ModelOptions { Threads = 1 });
        int differ = 0, differBiased = 0;
        for (int seed = 0; seed < 40; seed++)
        {
            var plain = new GenerationOptions { MaxTokens = 24, IgnoreEos = true, Sampling = new SamplingOptions { Temperature = 1.0f, TopK = 0, TopP = 1, MinP = 0, Seed = seed } };
            var spec = plain with { Speculative = SpeculativeMethod.Draft, DraftModel = draft, DraftTokens = 4 };
            var a = Run(model, "Once upon a time", plain).Ids;
            if (!a.SequenceEqual(Run(model, "Once upon a time", spec).Ids)) differ++;
            lock (typeof(SpeculativeRun))
            {
                SpeculativeRun.BiasedRuleForTests = true;
                try { if (!a.SequenceEqual(Run(model, "Once upon a time", spec).Ids)) differBiased++; }
                finally { SpeculativeRun.BiasedRuleForTests = false; }
            }
        }
        Assert.Equal(0, differ);
        Assert.True(differBiased >= 20, $"the biased rule changed only {differBiased} of 40 seeded runs");
    }
}

/// <summary>`serve --speculative draft`: the server's generations speculate (usage.speculative) and answer what plain decoding answers.</summary>
public sealed class SpeculativeServerProcess : ServerProcess
{
    protected override string[] ExtraArgs => ["--speculative", "draft", "--draft-model", CliRunner.Model("stories260k-fp16"), "--draft-tokens", "4"];
}

public sealed class SpeculativeServeTests(SpeculativeServerProcess server) : IClassFixture<SpeculativeServerProcess>
{
    [Fact]
    public async Task CompletionsSpeculateAndMatchPlainGreedy()
    {
        server.Start();
        var ct = TestContext.Current.CancellationToken;
        using var response = await server.Http.PostAsync("/v1/completions", new StringContent(
            """{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "ignore_eos": true}""", System.Text.Encoding.UTF8, "application/json"), ct);
        using var doc = System.Text.Json.JsonDocument.Parse(await response.Content.ReadAsStringAsync(ct));
        var root = doc.RootElement;
        Assert.Equal(System.Net.HttpStatusCode.OK, response.StatusCode);
        var plain = CliRunner.Run("generate", "--model", CliRunner.Model("stories260k"), "--prompt", "Once upon a time", "-n", "40", "--temperature", "0", "--ignore-eos");
        Assert.Equal(plain.Stdout.TrimEnd('\n'), root.GetProperty("choices")[0].GetProperty("text").GetString());
        var spec = root.GetProperty("usage").GetProperty("speculative");
        Assert.True(spec.GetProperty("verify_steps").GetInt32() < 40);
        Assert.True(spec.GetProperty("accepted_tokens").GetInt32() > 0);
    }
}
