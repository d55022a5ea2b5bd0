using Lrl.Models;

namespace Lrl.Gpu.Tests;

/// <summary>stories260k (f32, f16, bf16 sharded) on the GPU backend against float64 PyTorch: last logits and greedy ids.</summary>
[Collection("gpu")]
public class ModelTests
{
    private static readonly string[] AllLlamaModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    public static TheoryData<string, string> Cases
    {
        get
        {
            var d = new TheoryData<string, string>();
            foreach (var k in new[] { "cpu-accelerator", "cuda" })
                foreach (var m in new[] { "stories260k", "stories260k-fp16", "stories260k-bf16-sharded" }) d.Add(k, m);
            return d;
        }
    }

    [Theory, MemberData(nameof(Cases))]
    public void LastLogitsAndGreedyIdsMatchFloat64Reference(string kind, string name)
    {
        var dir = SharedData.Model(name);
        var reference = SharedData.Reference(name);
        var backend = Backends.Get(kind);
        using var model = ModelRegistry.Load(dir, backend);
        var logits = new float[model.VocabSize];
        foreach (var p in reference.GetProperty("prompts").EnumerateArray())
        {
            var ids = p.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var expectedLogits = p.GetProperty("last_logits").EnumerateArray().Select(e => e.GetDouble()).ToList();
            var expectedIds = p.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            model.Forward(ids, 0, logits);
            double err = SharedData.RelativeL2(logits, expectedLogits);
            Assert.True(err < 1e-4, $"{name} on {kind}: last logits relative L2 error {err:E2}");
            // The CPU accelerator pays milliseconds per kernel launch: check a prefix of the greedy continuation there.
            int steps = kind == "cuda" ? expectedIds.Length : name == "stories260k" ? 16 : 6;
            expectedIds = expectedIds[..steps];
            int pos = ids.Length;
            var got = new List<int>();
            for (int i = 0; i < steps; i++)
            {
                int next = ArgMax(logits);
                got.Add(next);
                model.Forward([next], pos++, logits);
            }
            Assert.Equal(expectedIds, got);
        }
    }

    /// <summary>
    /// A bf16 or f16 model's prompt long enough for the tensor-core products (NVIDIA-like CPU accelerator: emulated;
    /// CUDA sm_80+) gives the CPU backend's last logits within f32 tolerance and the same next token.
    /// </summary>
    [Theory]
    [InlineData("cpu-accelerator-nvidia", "stories260k-bf16-sharded")]
    [InlineData("cpu-accelerator-nvidia", "stories260k-fp16")]
    [InlineData("cuda", "stories260k-bf16-sharded")]
    [InlineData("cuda", "stories260k-fp16")]
    public void TensorCorePrefillMatchesTheCpuBackend(string kind, string name)
    {
        var backend = Backends.Get(kind);
        const int promptRows = GpuBackend.MmaMinRows; // one row tile: each emulated launch pays per simulated warp exchange
        Assert.SkipUnless(backend.UsesTensorCores(promptRows), $"{kind}: no tensor-core path");
        var dir = SharedData.Model(name);
        using var model = ModelRegistry.Load(dir, backend);
        using var cpuBackend = new Lrl.Cpu.CpuBackend(1);
        using var cpuModel = ModelRegistry.Load(dir, cpuBackend);
        var rng = new Random(11);
        var ids = Enumerable.Range(0, promptRows).Select(_ => rng.Next(3, model.VocabSize)).ToArray();
        var got = new float[model.VocabSize]; var want = new float[model.VocabSize];
        model.Forward(ids, 0, got);
        cpuModel.Forward(ids, 0, want);
        double err = SharedData.RelativeL2(got, want.Select(v => (double)v).ToList());
        Assert.True(err < 1e-4, $"last logits relative L2 error {err:E2}");
        Assert.Equal(ArgMax(want), ArgMax(got));
    }

    [Theory, MemberData(nameof(Backends.Kinds), MemberType = typeof(Backends))]
    public void DeviceArgmaxPicksTheSameTokenAsTheHost(string kind)
    {
        var dir = SharedData.Model("stories260k");
        var backend = Backends.Get(kind);
        using var model = ModelRegistry.Load(dir, backend);
        using var arena = new RandomTensors(5);
        var logits = new float[model.VocabSize];
        model.Forward([1, 403, 407, 261, 378], 0, logits);
        using var buf = Check.Buffer(backend, logits);
        Assert.Equal(ArgMax(logits), backend.Argmax(buf, logits.Length));
    }

    [Theory, MemberData(nameof(Backends.Kinds), MemberType = typeof(Backends))]
    public void BatchedStepEqualsEachSequenceAlone(string kind) => BatchedStepMatchesAlone(kind, "stories260k");

    /// <summary>GPT-2's batched step (its unrotated cache writes of all sequences in one launch) on the emulated device.</summary>
    [Fact]
    public void Gpt2BatchedStepEqualsEachSequenceAlone() => BatchedStepMatchesAlone("cpu-accelerator", "capp-gpt2-tiny");

    private static void BatchedStepMatchesAlone(string kind, string name)
    {
        var dir = SharedData.Model(name);
        var backend = Backends.Get(kind);
        // Chunks of 4 rows: the runs of one step straddle chunk boundaries.
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 32, BatchSize = 4 });
        int[][] prompts = [[1, 403, 407, 261, 378], [1, 300], [1, 378, 432, 260, 300, 261]];
        // The NVIDIA-like emulation (256-thread groups: most of its time switching threads at barriers) takes the first
        // two sequences (~55 s instead of ~95 s); its kernels have tests of their own at that shape.
        if (kind.EndsWith("nvidia", StringComparison.Ordinal)) prompts = prompts[..2];
        int v = model.VocabSize;
        prompts = prompts.Select(p => p.Select(t => t % v).ToArray()).ToArray(); // within a small vocabulary
        var alone = new List<float>();
        foreach (var p in prompts)
        {
            using var s = model.CreateState();
            var l = new float[v];
            model.Forward(s, p, 0, l);
            alone.AddRange(l);
            model.Forward(s, [ArgMax(l)], p.Length, l);
            alone.AddRange(l);
        }
        var states = prompts.Select(_ => model.CreateState()).ToArray();
        var batch = new StepBatch();
        foreach (var (p, s) in prompts.Zip(states)) batch.Add(s, p, 0);
        var first = new float[prompts.Length * v];
        model.Forward(batch, first);
        batch.Clear();
        for (int i = 0; i < prompts.Length; i++) batch.Add(states[i], [ArgMax(first.AsSpan(i * v, v))], prompts[i].Length);
        var second = new float[prompts.Length * v];
        model.Forward(batch, second);
        var together = new List<float>();
        for (int i = 0; i < prompts.Length; i++) { together.AddRange(first.AsSpan(i * v, v).ToArray()); together.AddRange(second.AsSpan(i * v, v).ToArray()); }
        double err = SharedData.RelativeL2(together.ToArray(), alone.Select(x => (double)x).ToList());
        Assert.True(err < 1e-5, $"{kind}: batched step vs alone, relative L2 error {err:E2}");
        foreach (var s in states) s.Dispose();
    }

    /// <summary>
    /// Speculative verification on the device backend: a tree of candidates (tree-masked attention, per-node RoPE
    /// positions), the kept path's cache entries and draft heads give the CPU backend's logits.
    /// </summary>
    [Theory, MemberData(nameof(Backends.Kinds), MemberType = typeof(Backends))]
    public void TreeVerificationAndDraftHeadsMatchTheCpuBackend(string kind)
    {
        var dir = SharedData.Model("stories260k");
        using var gpu = ModelRegistry.Load(dir, Backends.Get(kind), new ModelLoadOptions { ContextLength = 64 });
        using var cpuBackend = new Lrl.Cpu.CpuBackend(1);
        using var cpu = ModelRegistry.Load(dir, cpuBackend, new ModelLoadOptions { ContextLength = 64 });
        int v = cpu.VocabSize;
        int[] prompt = [1, 403, 407, 261, 378];
        int[] nodes = [300, 261, 378, 432, 260, 300, 407];
        int[] parents = [-1, 0, 0, 1, 1, 2, 3];
        var outputs = new List<float[]>();
        foreach (var m in new[] { (Lrl.Models.ModelBase)cpu, (Lrl.Models.ModelBase)gpu })
        {
            using var s = m.CreateState();
            var last = new float[v];
            m.Forward(s, prompt, 0, last);
            var tree = new float[nodes.Length * v];
            m.ForwardTree(s, nodes, parents, prompt.Length, tree);
            m.KeepTreePath(s, prompt.Length, [0, 1, 3, 6]);
            var next = new float[v];
            m.Forward(s, [ArgMax(tree.AsSpan(6 * v, v))], prompt.Length + 4, next);
            // Two heads of two residual blocks each (the GPU runs each block as one fused launch, ping-ponging rows).
            using var heads = Lrl.Models.DraftHeads.Create(2, 2, m.HiddenSize, v);
            var rng = new Random(4);
            foreach (var w in heads.W) for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 0.2 - 0.1);
            foreach (var b in heads.B) for (int i = 0; i < b.Length; i++) b[i] = (float)(rng.NextDouble() * 0.2 - 0.1);
            var headLogits = new float[2 * v];
            var hidden = new float[m.HiddenSize];
            for (int i = 0; i < hidden.Length; i++) hidden[i] = (float)Math.Sin(i);
            m.RunDraftHeads(heads, hidden, headLogits);
            if (m == gpu)
            {
                var gb = (GpuBackend)m.Backend;
                var before = gb.Counters;
                m.RunDraftHeads(heads, hidden, headLogits);
                // One launch per block and the shared head's product over both heads' rows.
                Assert.Equal(2 * 2 + 1, (gb.Counters - before).Launches);
            }
            outputs.Add([.. tree, .. next, .. headLogits]);
        }
        double err = SharedData.RelativeL2(outputs[1], outputs[0].Select(x => (double)x).ToList());
        Assert.True(err < 1e-5, $"{kind}: tree pass, kept path and draft heads vs the CPU backend, relative L2 error {err:E2}");
    }

    /// <summary>
    /// A speculative verification pass on the device backend (a chain of drafts, or a tree of candidates; every row's
    /// logits) gives each row bit for bit the logits of decoding it (its path) alone: the products run the one-row
    /// kernels per row and attention splits each row as its decode step does (<see cref="GpuBackend.ExactRows"/>), on
    /// float and quantized models, so greedy speculation picks plain decoding's tokens. Without the exact rows the
    /// tiled kernels' other rounding shows.
    /// </summary>
    [Theory]
    [InlineData("cpu-accelerator", "stories260k", 0, "3,9")]
    [InlineData("cpu-accelerator", "stories260k-fp16", 0, "3,9")]
    [InlineData("cpu-accelerator", "stories260k-bf16-sharded", 0, "9")]
    [InlineData("cpu-accelerator", "stories260k", 8, "2,9")]
    [InlineData("cpu-accelerator", "stories260k", 4, "3,9")]
    [InlineData("cpu-accelerator-nvidia", "stories260k", 0, "2")] // warps of 32: ~7 s a pass on the CPU accelerator
    [InlineData("cuda", "stories260k", 0, "2,3,9")]
    [InlineData("cuda", "stories260k", 4, "2,3,9")]
    public void VerifyRowsEqualDecodingAloneBitForBit(string kind, string name, int bits, string rowCounts)
    {
        var backend = Backends.Get(kind);
        var dir = SharedData.Model(name);
        string? tmp = null;
        if (bits != 0)
        {
            tmp = Path.Combine(Path.GetTempPath(), $"lrl-gpu-verify-{Guid.NewGuid():N}");
            dir = Lrl.Quant.Quantizer.QuantizeModel(dir, tmp, bits, "auto", null).OutputDirectory;
        }
        try
        {
            lock (Backends.Lock)
            {
                using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 64 });
                var mb = (Lrl.Models.ModelBase)model;
                int v = model.VocabSize;
                int[] prompt = [1, 403, 407, 261, 300, 378];
                int[] drafts = [300, 261, 378, 432, 260, 300, 407, 403, 261];
                foreach (int rows in rowCounts.Split(',').Select(int.Parse))
                {
                    var chain = new float[rows * v];
                    using (var s = model.CreateState())
                    {
                        model.Forward(s, prompt, 0, new float[v]);
                        mb.ForwardVerify(s, drafts.AsSpan(0, rows), prompt.Length, chain);
                    }
                    using var lone = model.CreateState();
                    model.Forward(lone, prompt, 0, new float[v]);
                    var row = new float[v];
                    for (int j = 0; j < rows; j++)
                    {
                        model.Forward(lone, drafts.AsSpan(j, 1), prompt.Length + j, row);
                        Assert.True(chain.AsSpan(j * v, v).SequenceEqual(row), $"{kind} {name} q{bits}: verify row {j} of {rows} differs from decoding alone");
                    }
                    Assert.Equal(0, backend.ExactRows); // restored after the pass
                }
                // ~7 s a pass on the NVIDIA-like shape: the tree runs on the default shape, over the f32 and quantized models.
                if (kind == "cpu-accelerator-nvidia" || name != "stories260k") return;
                // A tree of candidates: every node equals its path decoded alone.
                int[] nodes = [300, 261, 378, 432, 260, 300, 407];
                int[] parents = [-1, 0, 0, 1, 1, 2, 4];
                var tree = new float[nodes.Length * v];
                using (var s = model.CreateState())
                {
                    model.Forward(s, prompt, 0, new float[v]);
                    mb.ForwardTree(s, nodes, parents, prompt.Length, tree);
                }
                var lone1 = new float[v];
                for (int j = 0; j < nodes.Length; j++)
                {
                    var path = new List<int>();
                    for (int a = j; a >= 0; a = parents[a]) path.Insert(0, nodes[a]);
                    using var s = model.CreateState();
                    model.Forward(s, prompt, 0, new float[v]);
                    for (int d = 0; d < path.Count; d++) model.Forward(s, [path[d]], prompt.Length + d, lone1);
                    Assert.True(tree.AsSpan(j * v, v).SequenceEqual(lone1), $"{kind} {name} q{bits}: tree node {j} (depth {path.Count - 1}) differs from its path decoded alone");
                }
            }
        }
        finally
        {
            if (tmp is not null) Directory.Delete(tmp, true);
        }
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    /// <summary>
    /// An unmerged adapter on the GPU backend gives the CPU backend's logits (Llama and GPT-2), and decode rows too;
    /// it also replaces the head and the token embedding (modules_to_save). Held as stored (f32) or as int8 codes
    /// (<see cref="AdapterPrecision.Int8"/>: the GPU's int8 kernels, against the CPU's integer ones over the same codes).
    /// </summary>
    [Theory]
    [InlineData("cpu-accelerator", "stories260k", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", AdapterPrecision.Auto)]
    [InlineData("cpu-accelerator", "stories260k", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", AdapterPrecision.Int8)]
    [InlineData("cpu-accelerator-nvidia", "capp-gpt2-tiny", "c_attn,c_proj,c_fc", AdapterPrecision.Auto)]
    [InlineData("cuda", "stories260k", "q_proj,v_proj,down_proj", AdapterPrecision.Auto)]
    [InlineData("cuda", "stories260k", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", AdapterPrecision.Int8)]
    public void LoraAdapterMatchesTheCpuBackend(string kind, string name, string targets, AdapterPrecision precision)
    {
        var dir = SharedData.Model(name);
        var backend = Backends.Get(kind);
        using var tmp = new LoraFiles.TempDir();
        bool gpt2 = name.Contains("gpt2");
        using var ck = Lrl.Loading.Checkpoint.Open(dir);
        var e = ck.Get(gpt2 ? (ck.Contains("transformer.wte.weight") ? "transformer.wte.weight" : "wte.weight") : "model.embed_tokens.weight");
        int vocab = e.Shape[0], hidden = e.Shape[1];
        var rng = new Random(8);
        string adapter = LoraFiles.Write(tmp.Sub("a"), dir, targets.Split(','), 8, 16, seed: 4,
            editConfig: c => c["modules_to_save"] = new System.Text.Json.Nodes.JsonArray("lm_head", gpt2 ? "wte" : "embed_tokens"),
            extraTensors: (w, _) =>
            {
                w.Add("base_model.model.lm_head.weight", [vocab, hidden], LoraFiles.Random(rng, vocab * hidden, 0.5f));
                w.Add($"base_model.model.{(gpt2 ? "transformer.wte" : "model.embed_tokens")}.weight", [vocab, hidden], LoraFiles.Random(rng, vocab * hidden, 0.5f));
            });
        // int8 adapters against the reference backend over the same rounded values (the CPU backend's integer kernels
        // quantize the activations too: ~3e-3 from these, which would hide a wrong scale of a few per cent).
        using IBackend cpu = precision == AdapterPrecision.Int8 ? new Lrl.Kernels.Reference.ReferenceBackend() : new Lrl.Cpu.CpuBackend();
        using var model = ModelRegistry.Load(dir, backend);
        using var cpuModel = ModelRegistry.Load(dir, cpu);
        var ids = Enumerable.Range(0, 12).Select(i => 3 + (i * 7) % (model.VocabSize - 3)).ToArray();
        float[] Run(ILanguageModel m)
        {
            var mb = (ModelBase)m;
            using var state = m.CreateState();
            mb.SetAdapters(state, [mb.LoadAdapter(adapter, 0.5f, precision: precision)]);
            var all = new float[(ids.Length + 1) * m.VocabSize];
            m.Forward(state, ids, 0, all.AsSpan(0, ids.Length * m.VocabSize));
            m.Forward(state, [5], ids.Length, all.AsSpan(ids.Length * m.VocabSize)); // a decode row
            return all;
        }
        var got = Run(model);
        var want = Run(cpuModel);
        double err = Check.RelativeL2(got, want);
        Assert.True(err < 1e-4, $"{name} on {kind} with a LoRA adapter ({precision}): relative L2 {err:E2}");
    }

    /// <summary>
    /// An update a pass staged and never applied (it stopped between staging and the product) is dropped before the
    /// next pass: that pass gives the same logits as without it, and nothing stays staged.
    /// </summary>
    [Fact]
    public void UpdatesLeftStagedByAStoppedPassNeverLandOnTheNext()
    {
        var backend = Backends.Get("cpu-accelerator");
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string adapter = LoraFiles.Write(tmp.Sub("a"), dir, AllLlamaModules, 4, 8, seed: 7);
        using var model = ModelRegistry.Load(dir, backend);
        var mb = (ModelBase)model;
        var a = mb.LoadAdapter(adapter);
        var ids = new[] { 1, 403, 407, 261, 300 };
        float[] Run()
        {
            using var state = model.CreateState();
            mb.SetAdapters(state, [a]);
            var logits = new float[ids.Length * model.VocabSize];
            model.Forward(state, ids, 0, logits);
            return logits;
        }
        var want = Run();
        var ops = (ILoraOps)backend;
        var rng = new Random(4);
        using var stale = ops.LoadLora("stale", Enumerable.Range(0, 64).Select(_ => (float)rng.NextDouble()).ToArray(),
                                       Enumerable.Range(0, 64).Select(_ => (float)rng.NextDouble()).ToArray(), 4, 16, 16);
        using var x = backend.Allocate(16);
        using var y = backend.Allocate(16);
        ops.StageLora(x, 0, 1, stale, 1f, y);
        Assert.Equal(1, ops.PendingLora);
        Assert.Equal(want, Run());
        Assert.Equal(0, ops.PendingLora);
    }

    /// <summary>
    /// A CUDA context is current per thread: a model used from a thread that did not create the backend (a server's
    /// thread pool, a decode loop) must bind it first. Every forward pass, state creation and release does.
    /// </summary>
    [Theory]
    [InlineData("cpu-accelerator")]
    [InlineData("cuda")]
    public void ForwardPassesFromOtherThreadsBindTheAccelerator(string kind)
    {
        var backend = Backends.Get(kind);
        using var model = ModelRegistry.Load(SharedData.Model("stories260k"), backend);
        var want = new float[model.VocabSize];
        model.Forward([1, 403, 407], 0, want);
        var results = new (bool BoundBefore, bool BoundAfter, float[] Logits)[4];
        var threads = Enumerable.Range(0, results.Length).Select(i => new Thread(() =>
        {
            bool before = backend.IsBoundToCurrentThread;
            using var state = model.CreateState();
            var logits = new float[model.VocabSize];
            model.Forward(state, [1, 403, 407], 0, logits);
            results[i] = (before, backend.IsBoundToCurrentThread, logits);
        })).ToArray();
        foreach (var t in threads) { t.Start(); t.Join(); }
        foreach (var r in results)
        {
            Assert.False(r.BoundBefore); // a new thread starts unbound...
            Assert.True(r.BoundAfter);   // ...and the model bound it
            Assert.True(Check.RelativeL2(r.Logits, want) < 1e-6);
        }
    }

    /// <summary>
    /// The launch budget of a decoded token on the Llama path (a small model on a GPU is launch-bound): per token one
    /// host wait (the logits download), no upload (the token id is a kernel argument), no device allocation, and a fixed
    /// count of launches and device copies per layer, stated here so a change that adds any shows up.
    /// </summary>
    [Fact]
    public void DecodeLaunchBudgetPerToken()
    {
        var backend = Backends.Get("cpu-accelerator");
        var dir = SharedData.Model("stories260k");
        using var model = ModelRegistry.Load(dir, backend);
        int layers = ((Llama)model).Config.NumLayers;
        var logits = new float[model.VocabSize];
        using var state = model.CreateState();
        model.Forward(state, [1, 403, 407, 261], 0, logits);
        model.Forward(state, [300], 4, logits); // first decode step: lazily made scratch and kernels
        var before = backend.Counters;
        const int tokens = 8;
        for (int i = 0; i < tokens; i++) model.Forward(state, [300 + i], 5 + i, logits);
        var d = backend.Counters - before;
        TestContext.Current.SendDiagnosticMessage($"stories260k ({layers} layers), per token: {d.Launches / (double)tokens} launches, " +
            $"{d.DeviceCopies / (double)tokens} device copies, {d.Uploads / (double)tokens} uploads, {d.HostWaits / (double)tokens} host waits");
        Assert.Equal(tokens, d.HostWaits);          // one wait per token: the logits download
        Assert.Equal(0, d.Syncs);
        Assert.Equal(0, d.Uploads);                 // the token id goes as a kernel argument
        Assert.Equal(0, d.Allocations);             // nothing allocated per token
        // Per layer: Q/K/V with RoPE of Q and K and the K/V cache writes by its last group (1), split-K attention merged
        // by its last split (1), O with the residual add + MLP norm (1), gate/up+SwiGLU (1 fused GEMV), down with the
        // residual add + next norm (1) = 5 (12 launches and 2 copies before the fusions, 9 with separate RoPE, combine
        // and add+rmsnorms); per token: embed, first rmsnorm, LM head = 3.
        Assert.Equal((long)tokens * (3 + 5 * layers), d.Launches);
        // No device copies: the cache rows are written by the RoPE launch, a single decode row feeds the head in place.
        Assert.Equal(0, d.DeviceCopies);

        // Greedy decoding takes the argmax on the device: one more launch, and one id (4 bytes) back per token instead
        // of the vocabulary's logits; the same tokens as the host's argmax of the downloaded logits.
        using var greedyState = model.CreateState();
        using var hostState = model.CreateState();
        int token = ((ModelBase)model).ForwardArgmax(greedyState, [1, 403, 407, 261], 0);
        model.Forward(hostState, [1, 403, 407, 261], 0, logits);
        Assert.Equal(ArgMax(logits), token);
        token = ((ModelBase)model).ForwardArgmax(greedyState, [token], 4);
        before = backend.Counters;
        var ids = new List<int>();
        for (int i = 0; i < tokens; i++) { ids.Add(token); token = ((ModelBase)model).ForwardArgmax(greedyState, [token], 5 + i); }
        d = backend.Counters - before;
        TestContext.Current.SendDiagnosticMessage($"greedy on the device, per token: {d.Launches / (double)tokens} launches, {d.DownloadBytes / (double)tokens} bytes back");
        Assert.Equal((long)tokens * (3 + 5 * layers + 1), d.Launches);
        Assert.Equal(tokens, d.HostWaits);
        Assert.Equal(4L * tokens, d.DownloadBytes);
        Assert.Equal(0, d.Uploads);
        Assert.Equal(0, d.Allocations);
        model.Forward(hostState, [ArgMax(logits)], 4, logits);
        for (int i = 0; i < tokens; i++)
        {
            Assert.Equal(ArgMax(logits), ids[i]);
            model.Forward(hostState, [ids[i]], 5 + i, logits);
        }

        // Sampling at a temperature (top-k/top-p/min-p) on the device: the same budget, and the host rule's token
        // (Logits.SampleTopK on the downloaded logits) for the same draw.
        using var sampleState = model.CreateState();
        using var checkState = model.CreateState();
        var rng = new Random(5);
        model.Forward(sampleState, [1, 403, 407, 261], 0, logits);
        model.Forward(checkState, [1, 403, 407, 261], 0, logits);
        token = 300;
        long launches = 0, bytes = 0;
        for (int i = 0; i < tokens; i++)
        {
            float u = (float)rng.NextDouble();
            before = backend.Counters;
            int got = ((ModelBase)model).ForwardSample(sampleState, [token], 4 + i, 0.9f, 40, 0.95f, 0.05f, u);
            d = backend.Counters - before;
            launches += d.Launches; bytes += d.DownloadBytes;
            model.Forward(checkState, [token], 4 + i, logits);
            Assert.Equal(Logits.SampleTopK(logits, 0.9f, 40, 0.95f, u, 0.05f), got);
            token = got;
        }
        Assert.Equal((long)tokens * (3 + 5 * layers + 1), launches);
        Assert.Equal(4L * tokens, bytes);
    }

    /// <summary>
    /// A decode step with an adapter on every linear module: one launch for each product's staged updates
    /// (LoraKernels.FusedTerms for Q/K/V and for gate/up; LoraKernels.FusedAddRmsNorm for O and down, in the launch of
    /// the add+norm that follows them), the gate and up products apart from their SwiGLU (the updates land before the
    /// activation), nothing else added.
    /// </summary>
    [Fact]
    public void DecodeLaunchBudgetWithAnAdapter()
    {
        var backend = Backends.Get("cpu-accelerator");
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string adapter = LoraFiles.Write(tmp.Sub("a"), dir, AllLlamaModules, 8, 16, seed: 6);
        using var model = ModelRegistry.Load(dir, backend);
        var mb = (ModelBase)model;
        int layers = ((Llama)model).Config.NumLayers;
        var logits = new float[model.VocabSize];
        using var state = model.CreateState();
        mb.SetAdapters(state, [mb.LoadAdapter(adapter)]);
        model.Forward(state, [1, 403, 407, 261], 0, logits);
        model.Forward(state, [300], 4, logits);
        var before = backend.Counters;
        const int tokens = 4;
        for (int i = 0; i < tokens; i++) model.Forward(state, [300 + i], 5 + i, logits);
        var d = backend.Counters - before;
        // Per layer, 10: Q/K/V, their updates with RoPE + cache writes (one launch); attention; O, its update with the
        // add+norm; gate, up, their updates with SwiGLU (one launch); down, its update with the add+norm. (12 when RoPE
        // and SwiGLU took launches of their own, 17 when each update took one after its product and O and down kept a
        // separate add+norm.)
        Assert.Equal((long)tokens * (3 + 10 * layers), d.Launches);
        Assert.Equal(tokens, d.HostWaits);
        Assert.Equal(0, d.Uploads);
        Assert.Equal(0, d.Allocations);
    }
    /// <summary>
    /// A batched decode step launches each op once for up to eight sequences (RoPE + cache writes and attention included:
    /// one launch each per layer where they took one per sequence), so a step of 8 launches what a step of 2 does.
    /// </summary>
    [Fact]
    public void BatchedDecodeStepLaunchesEachOpOnceForUpToEightSequences()
    {
        var backend = Backends.Get("cpu-accelerator");
        var dir = SharedData.Model("stories260k");
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 32, BatchSize = 8 });
        int layers = ((Llama)model).Config.NumLayers, v = model.VocabSize;
        long Step(int sequences)
        {
            var states = Enumerable.Range(0, sequences).Select(_ => model.CreateState()).ToArray();
            try
            {
                var batch = new StepBatch();
                var logits = new float[sequences * v];
                for (int i = 0; i < sequences; i++) batch.Add(states[i], [1, 300 + i], 0);
                model.Forward(batch, logits);
                batch.Clear();
                for (int i = 0; i < sequences; i++) batch.Add(states[i], [400 + i], 2);
                model.Forward(batch, logits); // lazily made scratch and kernels
                batch.Clear();
                for (int i = 0; i < sequences; i++) batch.Add(states[i], [410 + i], 3);
                var before = backend.Counters;
                model.Forward(batch, logits);
                return (backend.Counters - before).Launches;
            }
            finally { foreach (var s in states) s.Dispose(); }
        }
        long two = Step(2), eight = Step(8);
        TestContext.Current.SendDiagnosticMessage($"stories260k ({layers} layers), one decode step: {two} launches for 2 sequences, {eight} for 8");
        Assert.Equal(two, eight);
        // Per layer, 12: the Q, K and V products (many-row GEMMs, one launch each), RoPE + cache writes (1), attention (1),
        // O (1) and add+norm (1), gate and up (2) and SwiGLU (1), down (1) and add+norm (1); per step: embed, first norm,
        // LM head. (One RoPE and one attention launch per sequence before: 26 per layer for 8 sequences.)
        Assert.Equal(3 + 12L * layers, eight);
    }
}
