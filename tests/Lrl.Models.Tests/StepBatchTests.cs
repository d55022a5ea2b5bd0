using Lrl.Cpu;
using Lrl.Kernels.Reference;

namespace Lrl.Models.Tests;

/// <summary>
/// The batched step (<see cref="StepBatch"/>): rows of several sequences in one forward pass give each sequence what
/// it gets alone — the same logits within rounding and the same greedy tokens — on every real model, with prefill and
/// decode rows mixed, runs straddling the model's chunk size, and sequences joining and leaving between steps.
/// </summary>
public class StepBatchTests
{
    public static TheoryData<string> AllModels => new()
    {
        "stories260k", "stories260k-fp16", "stories260k-bf16-sharded", "capp-gpt2-tiny", "rwkv-tiny-5v2-730K", "rwkv-tiny-7v0-834K",
    };

    private static int[][] Prompts(string name)
    {
        var r = SharedData.Reference(name);
        if (r.TryGetProperty("prompts", out var prompts))
            return prompts.EnumerateArray()
                .Select(p => p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray())
                .Where(p => p.Length > 0).ToArray();
        // One recorded prompt (the RWKV files): its prefixes and a rotation of it make several.
        var ids = r.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        return [ids, ids[..(ids.Length / 2 + 1)], [.. ids[(ids.Length / 2)..], .. ids[..(ids.Length / 2)]], ids[..1]];
    }

    /// <summary>Each prompt alone: its greedy continuation and the logits of every step.</summary>
    private static (int[] Tokens, float[][] Logits) Alone(ILanguageModel model, int[] prompt, int steps)
    {
        using var state = model.CreateState();
        var logits = new float[model.VocabSize];
        model.Forward(state, prompt, 0, logits);
        var tokens = new int[steps];
        var all = new float[steps][];
        int pos = prompt.Length;
        for (int i = 0; i < steps; i++)
        {
            all[i] = (float[])logits.Clone();
            tokens[i] = LlamaReferenceTests.ArgMax(logits);
            if (i + 1 < steps) model.Forward(state, [tokens[i]], pos++, logits);
        }
        return (tokens, all);
    }

    /// <summary>
    /// All prompts together: sequence i joins at step <c>i * stagger</c> (its prompt prefilled in the same step as the
    /// others' decode rows), prompts longer than <paramref name="prefillChunk"/> split over several steps.
    /// </summary>
    private static (int[][] Tokens, float[][][] Logits) Together(ILanguageModel model, int[][] prompts, int steps, int stagger, int prefillChunk)
    {
        int n = prompts.Length, v = model.VocabSize;
        var states = prompts.Select(_ => model.CreateState()).ToArray();
        try
        {
            var fed = new int[n];            // prompt tokens already run
            var tokens = prompts.Select(_ => new List<int>()).ToArray();
            var logits = prompts.Select(_ => new List<float[]>()).ToArray();
            var batch = new StepBatch(4);
            var rowOf = new int[n];
            var output = new float[64 * v];
            for (int step = 0; tokens.Any(t => t.Count < steps); step++)
            {
                batch.Clear();
                for (int i = 0; i < n; i++)
                {
                    rowOf[i] = -1;
                    if (step < i * stagger || tokens[i].Count >= steps) continue;
                    if (fed[i] < prompts[i].Length)
                    {
                        int take = Math.Min(prefillChunk, prompts[i].Length - fed[i]);
                        bool last = fed[i] + take == prompts[i].Length;
                        rowOf[i] = batch.Add(states[i], prompts[i].AsSpan(fed[i], take), fed[i], last ? LogitsWanted.Last : LogitsWanted.None);
                        fed[i] += take;
                    }
                    else rowOf[i] = batch.Add(states[i], [tokens[i][^1]], prompts[i].Length + tokens[i].Count - 1);
                }
                if (batch.RowCount == 0) continue;
                if (output.Length < batch.LogitsRows * v) output = new float[batch.LogitsRows * v];
                model.Forward(batch, output);
                for (int i = 0; i < n; i++)
                {
                    if (rowOf[i] < 0) continue;
                    var row = output.AsSpan(rowOf[i] * v, v).ToArray();
                    logits[i].Add(row);
                    tokens[i].Add(LlamaReferenceTests.ArgMax(row));
                }
            }
            return (tokens.Select(t => t.ToArray()).ToArray(), logits.Select(l => l.ToArray()).ToArray());
        }
        finally
        {
            foreach (var s in states) s.Dispose();
        }
    }

    [Theory, MemberData(nameof(AllModels))]
    public void BatchedStepsEqualEachSequenceAlone(string name)
    {
        var dir = SharedData.Model(name);
        var prompts = Prompts(name);
        // Repeat the prompts (a sequence twice in one step) and add a long one that crosses chunk boundaries.
        prompts = [.. prompts, .. prompts.Take(2), Enumerable.Range(0, 40).Select(i => prompts[0][i % prompts[0].Length]).ToArray()];
        using var backend = new CpuBackend(threads: 2);
        // A chunk of 7 rows: runs straddle chunk boundaries inside one step.
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 128, BatchSize = 7 });
        const int steps = 12;
        var alone = prompts.Select(p => Alone(model, p, steps)).ToArray();
        foreach (var (stagger, chunk) in new[] { (0, 1000), (1, 5), (3, 16) })
        {
            var (tokens, logits) = Together(model, prompts, steps, stagger, chunk);
            for (int i = 0; i < prompts.Length; i++)
            {
                Assert.True(alone[i].Tokens.SequenceEqual(tokens[i]),
                    $"{name} prompt {i} (stagger {stagger}, chunk {chunk}): alone [{string.Join(',', alone[i].Tokens)}] batched [{string.Join(',', tokens[i])}]");
                for (int s = 0; s < steps; s++)
                {
                    double err = SharedData.RelativeL2(logits[i][s], alone[i].Logits[s].Select(x => (double)x).ToList());
                    Assert.True(err < 2e-5, $"{name} prompt {i} step {s}: relative error {err:E2}");
                }
            }
        }
    }

    [Fact]
    public void BatchedStepMatchesScalarReferenceBackend()
    {
        var dir = SharedData.Model("stories260k");
        using var cpu = new CpuBackend();
        using var reference = new ReferenceBackend();
        using var a = ModelRegistry.Load(dir, cpu, new ModelLoadOptions { ContextLength = 64, BatchSize = 5 });
        using var b = ModelRegistry.Load(dir, reference, new ModelLoadOptions { ContextLength = 64 });
        int[][] prompts = [[1, 403, 407, 261], [1, 300], [1, 378, 432, 260, 300, 261, 403, 407, 261, 378]];
        int v = a.VocabSize;
        var sa = prompts.Select(_ => a.CreateState()).ToArray();
        var batch = new StepBatch();
        for (int i = 0; i < prompts.Length; i++) batch.Add(sa[i], prompts[i], 0, i == 1 ? LogitsWanted.All : LogitsWanted.Last);
        var got = new float[batch.LogitsRows * v];
        a.Forward(batch, got);
        var want = new List<double>();
        for (int i = 0; i < prompts.Length; i++)
        {
            using var s = b.CreateState();
            var l = new float[(i == 1 ? prompts[i].Length : 1) * v];
            b.Forward(s, prompts[i], 0, l);
            want.AddRange(l.Select(x => (double)x));
        }
        double err = SharedData.RelativeL2(got, want);
        Assert.True(err < 1e-5, $"relative L2 error {err:E2}");
        foreach (var s in sa) s.Dispose();
    }

    [Theory]
    [InlineData("stories260k")]
    [InlineData("capp-gpt2-tiny")]
    public void KvCachesGrowWithTheSequenceAndKeepWhatTheyHeld(string name)
    {
        var dir = SharedData.Model(name);
        using var backend = new CpuBackend(threads: 2);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 512 });
        int n = Math.Min(model.ContextLength, 300); // past the 256 positions a state starts with
        var ids = Enumerable.Range(0, n).Select(i => 1 + i * 7 % (model.VocabSize - 1)).ToArray();
        using var whole = model.CreateState();
        using var stepwise = model.CreateState();
        long small = stepwise.Floats;
        var a = new float[model.VocabSize];
        var b = new float[model.VocabSize];
        model.Forward(whole, ids, 0, a);
        model.Forward(stepwise, ids.AsSpan(0, 200), 0, b);
        for (int i = 200; i < n; i++) model.Forward(stepwise, ids.AsSpan(i, 1), i, b);
        Assert.True(stepwise.Floats > small, "the state did not grow");
        double err = SharedData.RelativeL2(b, a.Select(x => (double)x).ToList());
        Assert.True(err < 1e-5, $"{name}: logits after growth differ from one pass, relative error {err:E2}");
    }

    [Fact]
    public void MisuseIsAClearError()
    {
        var dir = SharedData.Model("stories260k");
        using var backend = new CpuBackend(threads: 1);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 16 });
        using var other = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 16 });
        using var s = model.CreateState();
        var batch = new StepBatch();
        batch.Add(s, [1, 2], 0);
        Assert.Throws<ArgumentException>(() => batch.Add(s, [3], 2));          // a state twice in one step
        Assert.Throws<ArgumentException>(() => model.Forward(batch, new float[3])); // logits too small
        var foreign = other.CreateState();
        batch.Add(foreign, [1], 0);
        Assert.Throws<LrlException>(() => model.Forward(batch, new float[2 * model.VocabSize]));
        batch.Clear();
        batch.Add(s, [1, 2], 15);
        Assert.Contains("context window", Assert.Throws<LrlException>(() => model.Forward(batch, new float[model.VocabSize])).Message);
        batch.Clear();
        var dead = model.CreateState();
        dead.Dispose();
        batch.Add(dead, [1], 0);
        Assert.Throws<ObjectDisposedException>(() => model.Forward(batch, new float[model.VocabSize]));
        foreign.Dispose();
    }

    /// <summary>
    /// A tree run in a batched step (speculative verification beside other sequences) gives the logits of the same tree
    /// run alone, and is never split across the model's chunks: with 7-row chunks, a 5-node tree after 4 rows of another
    /// sequence starts a new chunk instead of straddling.
    /// </summary>
    [Fact]
    public void TreeRunsInABatchedStepEqualTheTreeAlone()
    {
        var dir = SharedData.Model("stories260k");
        using var backend = new CpuBackend(threads: 2);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 64, BatchSize = 7 });
        var mb = (ModelBase)model;
        int v = model.VocabSize;
        int[] prompt = [1, 403, 407, 261], other = [1, 300, 378, 432];
        int[] nodes = [300, 261, 378, 432, 260];
        int[] parents = [-1, 0, 0, 1, 1];
        var alone = new float[nodes.Length * v];
        using (var s = model.CreateState())
        {
            model.Forward(s, prompt, 0, new float[v]);
            mb.ForwardTree(s, nodes, parents, prompt.Length, alone);
        }
        using var a = model.CreateState();
        using var b = model.CreateState();
        model.Forward(a, prompt, 0, new float[v]);
        var batch = new StepBatch();
        batch.Add(b, other, 0);                                   // rows 0-3 of the first chunk
        int at = batch.AddTree(a, nodes, parents, prompt.Length); // 5 rows: would straddle rows 4-8
        var logits = new float[batch.LogitsRows * v];
        model.Forward(batch, logits);
        double err = SharedData.RelativeL2(logits.AsSpan(at * v, nodes.Length * v).ToArray(), alone.Select(x => (double)x).ToList());
        Assert.True(err < 1e-5, $"tree run in a batched step vs alone: relative L2 error {err:E2}");
        Assert.Throws<ArgumentException>(() => batch.AddTree(b, [1, 2], [0, 0], 4));
    }

    /// <summary>
    /// Speculative verification is exact: every node of a tree of up to 64 nodes (and every row of a 40-row chain) gets,
    /// bit for bit, the logits of decoding its own path alone, on the float models (f32, f16, bf16) as on the quantized
    /// ones, so greedy speculation can never pick another token than plain decoding.
    /// </summary>
    [Theory]
    [InlineData("stories260k", 40)]
    [InlineData("stories260k-fp16", 40)]
    [InlineData("stories260k-bf16-sharded", 40)]
    [InlineData("stories260k-bf16-sharded", 64)]
    [InlineData("stories260k", 17)]
    [InlineData("stories260k", 16)]
    public void VerifyRowsEqualTheirPathDecodedAloneBitForBit(string name, int nodes)
    {
        var dir = SharedData.Model(name);
        using var backend = new CpuBackend(threads: 2);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 128, BatchSize = 64 });
        var mb = (ModelBase)model;
        int v = model.VocabSize;
        var rng = new Random(nodes);
        int[] prompt = [1, 403, 407, 261, 300, 378];
        var tokens = Enumerable.Range(0, nodes).Select(_ => 1 + rng.Next(v - 1)).ToArray();
        var parents = Enumerable.Range(0, nodes).Select(j => j == 0 ? -1 : rng.Next(j)).ToArray();
        var tree = new float[nodes * v];
        using (var s = model.CreateState())
        {
            model.Forward(s, prompt, 0, new float[v]);
            mb.ForwardTree(s, tokens, parents, prompt.Length, tree);
        }
        var chain = new float[nodes * v];
        using (var s = model.CreateState())
        {
            model.Forward(s, prompt, 0, new float[v]);
            mb.ForwardVerify(s, tokens, prompt.Length, chain); // a chain of drafts
        }
        // The same tree in a batched step after another sequence's prompt rows: the same bits.
        using (var s = model.CreateState())
        using (var other = model.CreateState())
        {
            model.Forward(s, prompt, 0, new float[v]);
            var batch = new StepBatch();
            batch.Add(other, [1, 300, 378, 432, 260, 261], 0);
            int at = batch.AddTree(s, tokens, parents, prompt.Length);
            var stepLogits = new float[batch.LogitsRows * v];
            model.Forward(batch, stepLogits);
            Assert.True(stepLogits.AsSpan(at * v, nodes * v).SequenceEqual(tree), $"{name}: the tree in a batched step differs from the tree alone");
        }
        var lone = new float[v];
        for (int j = 0; j < nodes; j++)
        {
            var path = new List<int>();
            for (int a = j; a >= 0; a = parents[a]) path.Insert(0, tokens[a]);
            using var s = model.CreateState();
            model.Forward(s, prompt, 0, new float[v]);
            for (int k = 0; k < path.Count; k++) model.Forward(s, [path[k]], prompt.Length + k, lone);
            Assert.True(tree.AsSpan(j * v, v).SequenceEqual(lone), $"{name}: tree node {j} of {nodes} (depth {path.Count}) differs from its path decoded alone");
        }
        for (int j = 0; j < nodes; j++)
        {
            using var s = model.CreateState();
            model.Forward(s, prompt, 0, new float[v]);
            for (int k = 0; k <= j; k++) model.Forward(s, [tokens[k]], prompt.Length + k, lone);
            Assert.True(chain.AsSpan(j * v, v).SequenceEqual(lone), $"{name}: chain row {j} of {nodes} differs from decoding alone");
        }
    }
}
