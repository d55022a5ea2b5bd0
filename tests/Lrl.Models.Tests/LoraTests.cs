using Lrl.Cpu;
using Lrl.Kernels.Reference;
using Lrl.Loading;

namespace Lrl.Models.Tests;

/// <summary>
/// LoRA adapters on the real models: random PEFT adapters (several ranks, target sets, alpha and rsLoRA scaling, adapter
/// dtypes) applied unmerged give the logits of the merged checkpoint and of the float64 reference backend; adapters are
/// per sequence inside one batched step; malformed adapters are one-line errors naming the tensor.
/// </summary>
public class LoraTests
{
    private static readonly string[] AllLlama = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    private static readonly string[] AllGpt2 = ["c_attn", "c_proj", "c_fc"];

    public static TheoryData<string, string, int, bool, DType> Cases => new()
    {
        { "stories260k", "all", 16, false, DType.F32 },
        { "stories260k", "attn", 1, false, DType.F32 },
        { "stories260k", "mlp", 4, true, DType.BF16 },
        { "stories260k-fp16", "all", 8, false, DType.F16 },
        { "stories260k-bf16-sharded", "qv", 4, true, DType.F32 },
        { "capp-gpt2-tiny", "all", 8, false, DType.F32 },
        { "capp-gpt2-tiny", "c_attn", 2, true, DType.F32 },
    };

    private static string[] Targets(string model, string set) => set switch
    {
        "all" => model.Contains("gpt2") ? AllGpt2 : AllLlama,
        "attn" => ["q_proj", "k_proj", "v_proj", "o_proj"],
        "mlp" => ["gate_proj", "up_proj", "down_proj"],
        "qv" => ["q_proj", "v_proj"],
        _ => [set],
    };

    private static int[] Prompt(ILanguageModel m, int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(3, m.VocabSize)).ToArray();
    }

    /// <summary>Every position's logits of <paramref name="tokens"/> from a fresh state with the given adapters.</summary>
    private static float[] Logits(ILanguageModel model, int[] tokens, params LoraAdapter[] adapters)
    {
        using var state = model.CreateState();
        ((ModelBase)model).SetAdapters(state, adapters);
        var logits = new float[tokens.Length * model.VocabSize];
        model.Forward(state, tokens, 0, logits);
        return logits;
    }

    private static double Rel(float[] a, float[] b)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { double d = a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
        return Math.Sqrt(num / den);
    }

    [Theory, MemberData(nameof(Cases))]
    public void UnmergedEqualsMergedAndFloat64Reference(string name, string set, int rank, bool rsLora, DType dtype)
    {
        var dir = SharedData.Model(name);
        using var tmp = new LoraFiles.TempDir();
        string adapter = LoraFiles.Write(tmp.Sub("adapter"), dir, Targets(name, set), rank, alpha: 2.0 * rank, seed: rank * 31 + set.Length, rsLora: rsLora, dtype: dtype);
        var merged = LoraMerger.Merge(dir, [(adapter, 0.8f)], tmp.Sub("merged")).OutDir;

        using var cpu = new CpuBackend();
        using var reference = new ReferenceBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        using var refModel = ModelRegistry.Load(dir, reference);
        using var mergedModel = ModelRegistry.Load(merged, cpu);
        var a = ((ModelBase)model).LoadAdapter(adapter, 0.8f);
        var aRef = ((ModelBase)refModel).LoadAdapter(adapter, 0.8f);
        Assert.Equal(rank, a.Rank);

        var tokens = Prompt(model, 40, rank);
        var baseLogits = Logits(model, tokens);
        var unmerged = Logits(model, tokens, a);
        var mergedLogits = Logits(mergedModel, tokens);
        var refUnmerged = Logits(refModel, tokens, aRef);

        // The adapter matters (so the comparisons below can fail)...
        Assert.True(Rel(unmerged, baseLogits) > 1e-2, $"the adapter changed the logits by only {Rel(unmerged, baseLogits):E2}");
        // ...and the unmerged pass is the float64 reference's...
        double toRef = Rel(unmerged, refUnmerged);
        Assert.True(toRef < 1e-4, $"unmerged CPU vs float64 reference: {toRef:E2}");
        // ...and the merged checkpoint's (rounded to the base's dtype once).
        double tolMerged = name.Contains("bf16") ? 3e-2 : name.Contains("fp16") ? 3e-3 : 1e-4;
        double toMerged = Rel(unmerged, mergedLogits);
        Assert.True(toMerged < tolMerged, $"unmerged vs merged: {toMerged:E2} (tolerance {tolMerged:E0})");
    }

    [Fact]
    public void StackedAdaptersAddUpAndScaleZeroIsTheBase()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string a1 = LoraFiles.Write(tmp.Sub("a1"), dir, AllLlama, 4, 8, seed: 1);
        string a2 = LoraFiles.Write(tmp.Sub("a2"), dir, ["q_proj", "v_proj", "down_proj"], 2, 2, seed: 2);
        var merged = LoraMerger.Merge(dir, [(a1, 1f), (a2, -0.5f)], tmp.Sub("merged")).OutDir;
        using var cpu = new CpuBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        using var mergedModel = ModelRegistry.Load(merged, cpu);
        var m = (ModelBase)model;
        var x1 = m.LoadAdapter(a1, 1f);
        var x2 = m.LoadAdapter(a2, -0.5f);
        var zero = m.LoadAdapter(a1, 0f);
        var tokens = Prompt(model, 24, 5);
        Assert.True(Rel(Logits(model, tokens, x1, x2), Logits(mergedModel, tokens)) < 1e-4);
        Assert.True(Rel(Logits(model, tokens, zero), Logits(model, tokens)) < 1e-6); // the unfused gate/up path rounds differently
    }

    /// <summary>
    /// An update a pass staged and never applied (it stopped at an exception between staging and the product) is dropped
    /// before the next pass: that pass's logits are the same bits as without it, and nothing is left staged.
    /// </summary>
    [Fact]
    public void UpdatesLeftStagedByAStoppedPassNeverLandOnTheNext()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string a1 = LoraFiles.Write(tmp.Sub("a1"), dir, AllLlama, 4, 8, seed: 3);
        using var cpu = new CpuBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        var m = (ModelBase)model;
        var adapter = m.LoadAdapter(a1, 1f);
        var tokens = Prompt(model, 9, 6);
        var want = Logits(model, tokens, adapter);
        var ops = (ILoraOps)cpu;
        Assert.True(ops.FusesLora);
        var rng = new Random(4);
        var (a, b) = (Enumerable.Range(0, 8 * 16).Select(_ => (float)rng.NextDouble()).ToArray(), Enumerable.Range(0, 16 * 8).Select(_ => (float)rng.NextDouble()).ToArray());
        using var stale = ops.LoadLora("stale", a, b, 8, 16, 16);
        using var x = cpu.Allocate(16);
        using var y = cpu.Allocate(16);
        ops.StageLora(x, 0, 1, stale, 1f, y);
        Assert.Equal(1, ops.PendingLora);
        Assert.Equal(want, Logits(model, tokens, adapter));
        Assert.Equal(0, ops.PendingLora);
    }

    /// <summary>PEFT's scaling, checked independently of the merge: rsLoRA divides alpha by √r instead of r, and the user scale multiplies it.</summary>
    [Fact]
    public void ScalingFollowsAlphaRankRsLoraAndUserScale()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        // Same matrices (same seed): plain α=8, r=4 → 2; rsLoRA α=4, r=4 → 4/√4 = 2; plain α=4 at user scale 2 → 2.
        string plain = LoraFiles.Write(tmp.Sub("plain"), dir, AllLlama, 4, 8, seed: 5);
        string rs = LoraFiles.Write(tmp.Sub("rs"), dir, AllLlama, 4, 4, seed: 5, rsLora: true);
        string half = LoraFiles.Write(tmp.Sub("half"), dir, AllLlama, 4, 4, seed: 5);
        using var cpu = new CpuBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        var m = (ModelBase)model;
        var tokens = Prompt(model, 20, 8);
        var want = Logits(model, tokens, m.LoadAdapter(plain));
        Assert.True(Rel(Logits(model, tokens, m.LoadAdapter(rs)), want) < 1e-6);
        Assert.True(Rel(Logits(model, tokens, m.LoadAdapter(half, 2f)), want) < 1e-6);
        Assert.True(Rel(Logits(model, tokens, m.LoadAdapter(half)), want) > 1e-3);
    }

    /// <summary>
    /// An int8-held adapter on a float base runs the int8 grid's values: equal to the reference given them (with AVX2 the
    /// adapter's products take int8 activations and an int8 t, ~0.2 % of these logits, as the int8 base kernels do; still
    /// twenty times closer to the reference than the logits without the adapter are).
    /// </summary>
    [Fact]
    public void Int8AdapterOnAFloatBaseEqualsTheReferenceOnItsGrid()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string adapter = LoraFiles.Write(tmp.Sub("adapter"), dir, AllLlama, 8, 16, seed: 5);
        using var cpu = new CpuBackend();
        using var reference = new ReferenceBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        using var refModel = ModelRegistry.Load(dir, reference);
        var tokens = Prompt(model, 24, 3);
        var got = Logits(model, tokens, ((ModelBase)model).LoadAdapter(adapter, precision: AdapterPrecision.Int8));
        var want = Logits(refModel, tokens, ((ModelBase)refModel).LoadAdapter(adapter, precision: AdapterPrecision.Int8));
        double tol = System.Runtime.Intrinsics.X86.Avx2.IsSupported ? 1e-2 : 1e-5;
        Assert.True(Rel(got, want) < tol, $"{Rel(got, want):E2}");
        Assert.True(Rel(Logits(model, tokens), want) > 20 * Rel(got, want));
        // Auto keeps a float base's adapter as stored (f32 here): not the int8 values.
        var auto = Logits(model, tokens, ((ModelBase)model).LoadAdapter(adapter));
        Assert.True(Rel(auto, got) > 1e-6);
    }

    [Fact]
    public void QuantizedBasesTakeAdaptersAsTheReferenceDoes()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string adapter = LoraFiles.Write(tmp.Sub("adapter"), dir, AllLlama, 16, 16, seed: 7);
        foreach (int bits in new[] { 8, 4 })
        {
            var q = Lrl.Quant.Quantizer.QuantizeModel(dir, tmp.Sub($"q{bits}"), bits, "auto", null).OutputDirectory;
            using var cpu = new CpuBackend();
            using var reference = new ReferenceBackend();
            using var model = ModelRegistry.Load(q, cpu);
            using var refModel = ModelRegistry.Load(q, reference);
            var tokens = Prompt(model, 32, bits);
            var int8 = ((ModelBase)model).LoadAdapter(adapter);
            var got = Logits(model, tokens, int8);
            var want = Logits(refModel, tokens, ((ModelBase)refModel).LoadAdapter(adapter));
            var plain = Logits(model, tokens);
            Assert.True(Rel(got, plain) > 1e-2);
            // int8 activations in the CPU's quantized products (≤ 32 rows) cost up to ~2e-2 (as without adapters).
            Assert.True(Rel(got, want) < 3e-2, $"q{bits}: {Rel(got, want):E2}");
            // Over an int8/int4 base the adapter is held as int8 (a quarter of f32's bytes: per-row scales, padded
            // panels), and its rounding moves the logits by a fraction of what the adapter itself does (on this tiny model
            // a random adapter's update rivals the hidden state, so that fraction is ~10 %, 9e-3 of the logits: the
            // order of the int8 base's own rounding).
            var f32 = ((ModelBase)model).LoadAdapter(adapter, precision: AdapterPrecision.AsStored);
            Assert.InRange(int8.ByteSize, f32.ByteSize / 4, f32.ByteSize / 4 + f32.ByteSize / 8);
            var exact = Logits(model, tokens, f32);
            Assert.True(Rel(got, exact) < Math.Min(2e-2, 0.2 * Rel(exact, plain)), $"q{bits}: int8 adapter {Rel(got, exact):E2} from f32, adapter effect {Rel(exact, plain):E2}");
        }
    }

    /// <summary>
    /// An int8 adapter over a quantized base (the default pairing): a prompt's rows, the same tokens decoded one at a
    /// time, and the sequence inside a batched step beside another give bit-identical logits (an adapter never makes a
    /// sequence's output depend on how its rows were grouped, which greedy speculative and batched decoding rest on).
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(8)]
    public void Int8AdapterOverAQuantizedBaseGivesEachRowTheSameBits(int bits)
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string adapterDir = LoraFiles.Write(tmp.Sub("adapter"), dir, AllLlama, 16, 16, seed: 21);
        var q = Lrl.Quant.Quantizer.QuantizeModel(dir, tmp.Sub($"q{bits}"), bits, "auto", null).OutputDirectory;
        using var cpu = new CpuBackend(2);
        using var model = ModelRegistry.Load(q, cpu);
        var m = (ModelBase)model;
        var adapter = m.LoadAdapter(adapterDir);
        int v = model.VocabSize;
        var tokens = Prompt(model, 30, 5);
        var prompt = Logits(model, tokens, adapter);
        Assert.True(Rel(prompt, Logits(model, tokens)) > 1e-2, "the adapter changes nothing");
        using (var state = model.CreateState())
        {
            m.SetAdapters(state, [adapter]);
            var one = new float[v];
            for (int i = 0; i < tokens.Length; i++)
            {
                model.Forward(state, tokens.AsSpan(i, 1), i, one);
                Assert.True(one.AsSpan().SequenceEqual(prompt.AsSpan(i * v, v)), $"q{bits}: position {i} decoded alone differs from the prompt's row");
            }
        }
        var other = Prompt(model, 17, 6);
        var states = new[] { model.CreateState(), model.CreateState() };
        try
        {
            m.SetAdapters(states[0], [adapter]);
            var batch = new StepBatch();
            batch.Add(states[1], other, 0, LogitsWanted.All);
            batch.Add(states[0], tokens, 0, LogitsWanted.All);
            var logits = new float[batch.LogitsRows * v];
            model.Forward(batch, logits);
            Assert.True(logits.AsSpan(other.Length * v, tokens.Length * v).SequenceEqual(prompt), $"q{bits}: the adapted sequence differs inside a batched step");
        }
        finally { foreach (var st in states) st.Dispose(); }
    }

    [Fact]
    public void EachSequenceOfABatchedStepRunsItsOwnAdapters()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        using var cpu = new CpuBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        var m = (ModelBase)model;
        var a = m.LoadAdapter(LoraFiles.Write(tmp.Sub("a"), dir, AllLlama, 8, 16, seed: 11));
        var b = m.LoadAdapter(LoraFiles.Write(tmp.Sub("b"), dir, ["q_proj", "up_proj"], 3, 3, seed: 12));
        LoraAdapter[][] sets = [[a], [], [b], [a, b]];
        var prompts = sets.Select((_, i) => Prompt(model, 5 + 7 * i, 20 + i)).ToArray();
        int v = model.VocabSize;
        var alone = prompts.Select((p, i) => Logits(model, p, sets[i])).ToArray();

        var states = sets.Select(s => { var st = model.CreateState(); m.SetAdapters(st, s); return st; }).ToArray();
        try
        {
            var batch = new StepBatch();
            for (int i = 0; i < states.Length; i++) batch.Add(states[i], prompts[i], 0, LogitsWanted.All);
            var logits = new float[batch.LogitsRows * v];
            model.Forward(batch, logits);
            int row = 0;
            for (int i = 0; i < states.Length; i++)
            {
                var got = logits.AsSpan(row * v, prompts[i].Length * v).ToArray();
                row += prompts[i].Length;
                Assert.True(Rel(got, alone[i]) < 1e-5, $"sequence {i}: {Rel(got, alone[i]):E2}");
            }
        }
        finally { foreach (var s in states) s.Dispose(); }
    }

    [Fact]
    public void DisposedAdapterIsAClearErrorAndOtherModelsAdaptersAreRefused()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        using var cpu = new CpuBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        using var other = ModelRegistry.Load(dir, cpu);
        var path = LoraFiles.Write(tmp.Sub("a"), dir, ["q_proj"], 2, 2, seed: 3);
        var a = ((ModelBase)model).LoadAdapter(path);
        using var state = model.CreateState();
        Assert.Throws<LrlException>(() => ((ModelBase)other).SetAdapters(state, [a]));
        using var otherState = other.CreateState();
        Assert.Throws<LrlException>(() => ((ModelBase)other).SetAdapters(otherState, [a]));
        ((ModelBase)model).SetAdapters(state, [a]);
        a.Dispose();
        Assert.Throws<ObjectDisposedException>(() => model.Forward(state, [1, 2], 0, new float[model.VocabSize]));
    }

    public static TheoryData<string, string> Malformed => new()
    {
        { "wrong-in", "lora_A.weight" },
        { "wrong-out", "lora_B.weight" },
        { "rank-mismatch", "rank mismatch" },
        { "config-rank", "rank mismatch" },
        { "unknown-module", "self_attn.qkv_proj" },
        { "unknown-target", "qkv_proj" },
        { "missing-b", "no matching" },
        { "modules-to-save", "replaces 'model.norm' (modules_to_save); unmerged, an adapter may replace only the token embedding and lm_head; run it merged: lrlrun merge-lora" },
        { "modules-to-save-vocab", "'lm_head.weight' is [515, 64]: it extends the vocabulary of 512 tokens" },
        { "modules-to-save-shape", "'model.embed_tokens.weight' is F32 [512, 32]" },
        { "not-targeted", "does not name" },
        { "bad-json", "adapter_config.json" },
        { "dora", "DoRA" },
        { "embedding-as-linear", "lora_embedding_A" },
        { "embedding-vocab", "model.embed_tokens.lora_embedding_A' is [2, 500]" },
        { "int-tensor", "F32, F16 or BF16" },
        { "bin-only", "safe_serialization" },
    };

    [Theory, MemberData(nameof(Malformed))]
    public void MalformedAdapterIsAOneLineErrorNamingTheTensor(string kind, string expected)
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        string ad = tmp.Sub("bad");
        string L0(string m) => $"base_model.model.model.layers.0.{m}";
        switch (kind)
        {
            case "wrong-in":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj"),
                    extraTensors: (w, r) => { w.Add(L0("self_attn.q_proj.lora_A.weight"), [2, 63], new float[126]); w.Add(L0("self_attn.q_proj.lora_B.weight"), [64, 2], new float[128]); });
                break;
            case "wrong-out":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("k_proj"),
                    extraTensors: (w, r) => { w.Add(L0("self_attn.k_proj.lora_A.weight"), [2, 64], new float[128]); w.Add(L0("self_attn.k_proj.lora_B.weight"), [64, 2], new float[128]); });
                break;
            case "rank-mismatch":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj"),
                    extraTensors: (w, r) => { w.Add(L0("self_attn.q_proj.lora_A.weight"), [2, 64], new float[128]); w.Add(L0("self_attn.q_proj.lora_B.weight"), [64, 3], new float[192]); });
                break;
            case "config-rank": LoraFiles.Write(ad, dir, ["q_proj"], 4, 4, 1, editConfig: c => c["r"] = 8); break;
            case "unknown-module":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = ".*_proj",
                    extraTensors: (w, r) => { w.Add(L0("self_attn.qkv_proj.lora_A.weight"), [2, 64], new float[128]); w.Add(L0("self_attn.qkv_proj.lora_B.weight"), [192, 2], new float[384]); });
                break;
            case "unknown-target": LoraFiles.Write(ad, dir, ["q_proj"], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj", "qkv_proj")); break;
            case "missing-b":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj"),
                    extraTensors: (w, r) => w.Add(L0("self_attn.q_proj.lora_A.weight"), [2, 64], new float[128]));
                break;
            case "modules-to-save":
                LoraFiles.Write(ad, dir, ["q_proj"], 2, 2, 1, editConfig: c => c["modules_to_save"] = new System.Text.Json.Nodes.JsonArray("norm"),
                    extraTensors: (w, r) => w.Add("base_model.model.model.norm.weight", [64], new float[64]));
                break;
            case "modules-to-save-vocab":
                LoraFiles.Write(ad, dir, ["q_proj"], 2, 2, 1, editConfig: c => c["modules_to_save"] = new System.Text.Json.Nodes.JsonArray("lm_head"),
                    extraTensors: (w, r) => w.Add("base_model.model.lm_head.weight", [515, 64], new float[515 * 64]));
                break;
            case "modules-to-save-shape":
                LoraFiles.Write(ad, dir, ["q_proj"], 2, 2, 1, editConfig: c => c["modules_to_save"] = new System.Text.Json.Nodes.JsonArray("embed_tokens"),
                    extraTensors: (w, r) => w.Add("base_model.model.model.embed_tokens.weight", [512, 32], new float[512 * 32]));
                break;
            case "not-targeted": LoraFiles.Write(ad, dir, ["q_proj", "k_proj"], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj")); break;
            case "bad-json":
                LoraFiles.Write(ad, dir, ["q_proj"], 2, 2, 1);
                File.WriteAllText(Path.Combine(ad, "adapter_config.json"), "{\"r\": 2, \"lora_alpha\": ");
                break;
            case "dora": LoraFiles.Write(ad, dir, ["q_proj"], 2, 2, 1, editConfig: c => c["use_dora"] = true); break;
            case "embedding-as-linear":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("embed_tokens"),
                    extraTensors: (w, r) => { w.Add("base_model.model.model.embed_tokens.lora_A.weight", [2, 512], new float[1024]); w.Add("base_model.model.model.embed_tokens.lora_B.weight", [64, 2], new float[128]); });
                break;
            case "embedding-vocab":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("embed_tokens"),
                    extraTensors: (w, r) => { w.Add("base_model.model.model.embed_tokens.lora_embedding_A", [2, 500], new float[1000]); w.Add("base_model.model.model.embed_tokens.lora_embedding_B", [64, 2], new float[128]); });
                break;
            case "int-tensor":
                LoraFiles.Write(ad, dir, [], 2, 2, 1, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj"),
                    extraTensors: (w, r) => { w.Add(L0("self_attn.q_proj.lora_A.weight"), DType.I32, [2, 64], new byte[512]); w.Add(L0("self_attn.q_proj.lora_B.weight"), DType.I32, [64, 2], new byte[512]); });
                break;
            case "bin-only":
                LoraFiles.Write(ad, dir, ["q_proj"], 2, 2, 1);
                File.Move(Path.Combine(ad, "adapter_model.safetensors"), Path.Combine(ad, "adapter_model.bin"));
                break;
        }
        using var cpu = new CpuBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        var e = Assert.ThrowsAny<LrlException>(() => ((ModelBase)model).LoadAdapter(ad));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        // The merge path reports the same problems (except the ones only an unmerged run has).
        if (kind is not ("modules-to-save" or "modules-to-save-vocab" or "unknown-target" or "embedding-as-linear"))
            Assert.ThrowsAny<LrlException>(() => LoraMerger.Merge(dir, [(ad, 1f)], tmp.Sub("out")));
        Assert.False(Directory.Exists(tmp.Sub("out")));
    }

    /// <summary>
    /// An adapted token embedding (PEFT's lora_embedding_A [r, vocab] / lora_embedding_B [hidden, r]) applied unmerged:
    /// each token's row gains s·B·A[:, token] and the head stays the base's (PEFT's forward; the models here tie the
    /// head to the embedding, so the oracle is a copy of the base with the adapted table and the old table as an untied
    /// head). With a q/c_attn pair beside it, on the CPU and the float64 reference, in a batched step beside the base.
    /// </summary>
    /// <summary>The checkpoint's tensor for an embedding module (GPT-2 checkpoints may drop the "transformer." prefix).</summary>
    private static string EmbeddingName(Checkpoint ck, string module) =>
        ck.Contains(module + ".weight") ? module + ".weight" : module.Split('.')[^1] + ".weight";

    /// <summary>
    /// A copy of the checkpoint in <paramref name="dir"/> (f32) with <paramref name="table"/> as its token embedding and
    /// <paramref name="head"/> as an untied lm_head: the oracle for adapted or replaced embeddings and heads.
    /// </summary>
    private static string WriteOracle(string oracle, string dir, Checkpoint baseCk, string embedName, float[] table, float[] head)
    {
        Directory.CreateDirectory(oracle);
        foreach (var f in Directory.GetFiles(dir).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal) && !f.EndsWith(".index.json", StringComparison.Ordinal)))
            File.Copy(f, Path.Combine(oracle, Path.GetFileName(f)));
        var e = baseCk.Get(embedName);
        var writer = new SafeTensorsWriter();
        foreach (var t in baseCk.Tensors.Where(t => t.Name != "lm_head.weight"))
            writer.Add(t.Name, t.Shape, t.Name == embedName ? table : t.ToFloatArray());
        writer.Add("lm_head.weight", [e.Shape[0], e.Shape[1]], head);
        writer.Write(Path.Combine(oracle, "model.safetensors"));
        return oracle;
    }

    [Theory]
    [InlineData("stories260k", "model.embed_tokens", "embed_tokens", "q_proj", 4, false)]
    [InlineData("stories260k", "model.embed_tokens", "embed_tokens", "q_proj", 8, true)]
    [InlineData("capp-gpt2-tiny", "transformer.wte", "wte", "c_attn", 3, false)]
    public void UnmergedEmbeddingLoraIsALookupOfTheAdaptedTable(string name, string module, string target, string linear, int rank, bool rsLora)
    {
        var dir = SharedData.Model(name);
        using var tmp = new LoraFiles.TempDir();
        using var baseCk = Checkpoint.Open(dir);
        string embedName = EmbeddingName(baseCk, module);
        var e = baseCk.Get(embedName);
        int vocab = e.Shape[0], hidden = e.Shape[1];
        var rng = new Random(rank);
        var a = LoraFiles.Random(rng, rank * vocab, 0.8f);
        var b = LoraFiles.Random(rng, hidden * rank, 0.8f);
        double alpha = 6, s = rsLora ? alpha / Math.Sqrt(rank) : alpha / rank;
        string ad = LoraFiles.Write(tmp.Sub("a"), dir, [target, linear], rank, alpha, seed: 2, rsLora: rsLora, extraTensors: (w, _) =>
        {
            w.Add($"base_model.model.{module}.lora_embedding_A", [rank, vocab], a);
            w.Add($"base_model.model.{module}.lora_embedding_B", [hidden, rank], b);
        });
        // The oracle: E + s·(B·A)ᵀ as the table, E as an untied head.
        var table = e.ToFloatArray();
        var adapted = (float[])table.Clone();
        for (int t = 0; t < vocab; t++)
            for (int h = 0; h < hidden; h++)
            {
                double d = 0;
                for (int j = 0; j < rank; j++) d += (double)b[h * rank + j] * a[j * vocab + t];
                adapted[t * hidden + h] += (float)(s * d);
            }
        string oracle = WriteOracle(tmp.Sub("oracle"), dir, baseCk, embedName, adapted, table);

        using var cpu = new CpuBackend();
        using var reference = new ReferenceBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        using var refModel = ModelRegistry.Load(dir, reference);
        using var oracleModel = ModelRegistry.Load(oracle, cpu);
        var tokens = Prompt(model, 20, 4);
        var m = (ModelBase)model;
        var adapter = m.LoadAdapter(ad);
        Assert.Contains(module, adapter.Modules);
        Assert.Contains(adapter.Modules, x => x.EndsWith(linear, StringComparison.Ordinal));
        var got = Logits(model, tokens, adapter);
        Assert.True(Rel(got, Logits(model, tokens)) > 1e-2, "the embedding adapter changes nothing");
        var want = Logits(refModel, tokens, ((ModelBase)refModel).LoadAdapter(ad));
        Assert.True(Rel(got, want) < 1e-5, $"against the float64 reference: {Rel(got, want):E2}");
        // The oracle has no q/c_attn pair: compare an embedding-only adapter with it.
        string embOnly = LoraFiles.Write(tmp.Sub("e"), dir, [target], rank, alpha, seed: 2, rsLora: rsLora, extraTensors: (w, _) =>
        {
            w.Add($"base_model.model.{module}.lora_embedding_A", [rank, vocab], a);
            w.Add($"base_model.model.{module}.lora_embedding_B", [hidden, rank], b);
        });
        var onlyEmbedding = Logits(model, tokens, m.LoadAdapter(embOnly));
        var oracleLogits = Logits(oracleModel, tokens);
        Assert.True(Rel(onlyEmbedding, oracleLogits) < 1e-5, $"against the adapted table: {Rel(onlyEmbedding, oracleLogits):E2}");
        // In one batched step beside a base sequence: each its own.
        using var s1 = model.CreateState(); using var s2 = model.CreateState();
        m.SetAdapters(s1, [adapter]);
        var batch = new StepBatch();
        batch.Add(s1, tokens, 0, LogitsWanted.All);
        batch.Add(s2, tokens, 0, LogitsWanted.All);
        var both = new float[batch.LogitsRows * model.VocabSize];
        model.Forward(batch, both);
        int n = tokens.Length * model.VocabSize;
        Assert.True(Rel(both.AsSpan(0, n).ToArray(), got) < 1e-5);
        Assert.True(Rel(both.AsSpan(n, n).ToArray(), Logits(model, tokens)) < 1e-5);
    }

    /// <summary>
    /// modules_to_save applied unmerged: an adapter's whole lm_head and/or token embedding (same vocabulary) serve its
    /// sequences only. Oracle: a copy of the base with the replaced tables (the base's table as an untied head where
    /// only the embedding is replaced: PEFT's forward keeps the tied head); with a q/c_attn pair beside them against
    /// merge-lora; in a batched step beside a base sequence, on the float64 reference, and through the argmax path.
    /// </summary>
    [Theory]
    [InlineData("stories260k", "model.embed_tokens", "embed_tokens", "q_proj", true, true)]
    [InlineData("stories260k", "model.embed_tokens", "embed_tokens", "q_proj", false, true)]
    [InlineData("stories260k-bf16-sharded", "model.embed_tokens", "embed_tokens", "q_proj", true, false)]
    [InlineData("capp-gpt2-tiny", "transformer.wte", "wte", "c_attn", true, true)]
    public void UnmergedModulesToSaveReplaceTheHeadAndEmbeddingPerSequence(string name, string module, string target, string linear, bool replaceHead, bool replaceEmbedding)
    {
        var dir = SharedData.Model(name);
        using var tmp = new LoraFiles.TempDir();
        using var baseCk = Checkpoint.Open(dir);
        string embedName = EmbeddingName(baseCk, module);
        var e = baseCk.Get(embedName);
        int vocab = e.Shape[0], hidden = e.Shape[1];
        var rng = new Random(vocab + (replaceHead ? 1 : 0));
        var table = e.ToFloatArray();
        var newHead = LoraFiles.Random(rng, vocab * hidden, 0.5f);
        var newEmbed = LoraFiles.Random(rng, vocab * hidden, 0.5f);
        var saved = new List<string>();
        if (replaceHead) saved.Add("lm_head");
        if (replaceEmbedding) saved.Add(target);
        void Replacements(SafeTensorsWriter w)
        {
            if (replaceHead) w.Add("base_model.model.lm_head.weight", [vocab, hidden], newHead);
            if (replaceEmbedding) w.Add($"base_model.model.{module}.weight", [vocab, hidden], newEmbed);
        }
        var toSave = () => new System.Text.Json.Nodes.JsonArray(saved.Select(x => (System.Text.Json.Nodes.JsonNode)System.Text.Json.Nodes.JsonValue.Create(x)!).ToArray());
        string only = LoraFiles.Write(tmp.Sub("only"), dir, [], 2, 2, 1, editConfig: c => { c["modules_to_save"] = toSave(); c["target_modules"] = new System.Text.Json.Nodes.JsonArray(linear); },
                                      extraTensors: (w, _) => Replacements(w));
        string withPair = LoraFiles.Write(tmp.Sub("pair"), dir, [linear], 4, 8, 5, editConfig: c => c["modules_to_save"] = toSave(),
                                          extraTensors: (w, _) => Replacements(w));
        var baseHead = baseCk.Contains("lm_head.weight") ? baseCk.Get("lm_head.weight").ToFloatArray() : table;
        string oracle = WriteOracle(tmp.Sub("oracle"), dir, baseCk, embedName, replaceEmbedding ? newEmbed : table, replaceHead ? newHead : baseHead);

        using var cpu = new CpuBackend();
        using var reference = new ReferenceBackend();
        using var model = ModelRegistry.Load(dir, cpu);
        using var refModel = ModelRegistry.Load(dir, reference);
        using var oracleModel = ModelRegistry.Load(oracle, cpu);
        var m = (ModelBase)model;
        var tokens = Prompt(model, 20, 6);
        var adapter = m.LoadAdapter(only);
        Assert.All(saved, x => Assert.Contains(adapter.Modules, y => y.StartsWith(x == "lm_head" ? "lm_head" : module, StringComparison.Ordinal) && y.EndsWith("(replaced)", StringComparison.Ordinal)));
        Assert.Equal((long)vocab * hidden * 4 * saved.Count, adapter.ByteSize);
        var got = Logits(model, tokens, adapter);
        var want = Logits(oracleModel, tokens);
        Assert.True(Rel(got, want) < 1e-5, $"against the replaced tables: {Rel(got, want):E2}");
        Assert.True(Rel(got, Logits(model, tokens)) > 1e-2, "the replacement changes nothing");
        Assert.True(Rel(got, Logits(refModel, tokens, ((ModelBase)refModel).LoadAdapter(only))) < 1e-5, "against the float64 reference");
        // With a LoRA pair beside it: merge-lora's checkpoint where it means the same (a replaced head, or an untied base).
        var pair = m.LoadAdapter(withPair);
        var withBoth = Logits(model, tokens, pair);
        if (replaceHead || baseCk.Contains("lm_head.weight"))
        {
            using var merged = ModelRegistry.Load(LoraMerger.Merge(dir, [(withPair, 1f)], tmp.Sub("merged")).OutDir, cpu);
            var mergedLogits = Logits(merged, tokens);
            double tol = e.DType == DType.BF16 ? 5e-3 : 1e-4; // the merged q_proj rounded to the base's bf16
            Assert.True(Rel(withBoth, mergedLogits) < tol, $"against merge-lora: {Rel(withBoth, mergedLogits):E2}");
        }
        // In one batched step beside a base sequence and a pair-adapted one: each its own head and table.
        using var s1 = model.CreateState(); using var s2 = model.CreateState(); using var s3 = model.CreateState();
        m.SetAdapters(s1, [adapter]);
        m.SetAdapters(s3, [pair]);
        var batch = new StepBatch();
        batch.Add(s2, tokens, 0, LogitsWanted.All);
        batch.Add(s1, tokens, 0, LogitsWanted.All);
        batch.Add(s3, tokens, 0, LogitsWanted.Last);
        var rows = new float[batch.LogitsRows * vocab];
        model.Forward(batch, rows);
        int n = tokens.Length * vocab;
        Assert.True(Rel(rows.AsSpan(0, n).ToArray(), Logits(model, tokens)) < 1e-5, "the base sequence");
        Assert.True(Rel(rows.AsSpan(n, n).ToArray(), got) < 1e-5, "the replaced sequence");
        Assert.True(Rel(rows.AsSpan(2 * n, vocab).ToArray(), withBoth.AsSpan(n - vocab, vocab).ToArray()) < 1e-5, "the pair sequence's last row");
        // The argmax path (greedy decoding's) takes the sequence's head too.
        using var s4 = model.CreateState();
        m.SetAdapters(s4, [adapter]);
        Assert.Equal(Lrl.Logits.ArgMax(got.AsSpan(n - vocab, vocab)), m.ForwardArgmax(s4, tokens, 0));
        // Two adapters replacing the same module cannot share a sequence.
        var again = m.LoadAdapter(only, name: "again");
        Assert.Contains("both replace", Assert.Throws<LrlException>(() => m.SetAdapters(s4, [adapter, again])).Message);
    }

    [Fact]
    public void MergeWithModulesToSaveExtendsTheVocabulary()
    {
        var dir = SharedData.Model("stories260k");
        using var tmp = new LoraFiles.TempDir();
        using var baseCk = Checkpoint.Open(dir);
        var embed = baseCk.Get("model.embed_tokens.weight").ToFloatArray(); // [512, 64]
        var rng = new Random(9);
        var extended = embed.Concat(LoraFiles.Random(rng, 3 * 64, 0.5f)).ToArray();
        string ad = LoraFiles.Write(tmp.Sub("ext"), dir, ["q_proj"], 2, 2, 1,
            editConfig: c => c["modules_to_save"] = new System.Text.Json.Nodes.JsonArray("embed_tokens"),
            extraTensors: (w, r) => w.Add("base_model.model.model.embed_tokens.weight", [515, 64], extended));
        var report = LoraMerger.Merge(dir, [(ad, 1f)], tmp.Sub("merged"));
        Assert.Equal(515, report.VocabSize);
        Assert.Equal(1, report.TensorsReplaced);
        using var cpu = new CpuBackend();
        using var merged = ModelRegistry.Load(report.OutDir, cpu);
        using var model = ModelRegistry.Load(dir, cpu);
        Assert.Equal(515, merged.VocabSize);
        // The old tokens' logits are the q_proj-adapted model's; the new tokens run and get logits.
        var m = (ModelBase)model;
        var tokens = Prompt(model, 16, 3);
        // The same seed writes the same q_proj pair without the replaced embedding.
        var want = Logits(model, tokens, m.LoadAdapter(LoraFiles.Write(tmp.Sub("qonly"), dir, ["q_proj"], 2, 2, 1)));
        var got = new float[16 * 515];
        using (var s = merged.CreateState()) merged.Forward(s, tokens, 0, got);
        for (int t = 0; t < 16; t++)
            Assert.True(Rel(got.AsSpan(t * 515, 512).ToArray(), want.AsSpan(t * 512, 512).ToArray()) < 1e-4);
        var logits = new float[515];
        using (var s = merged.CreateState()) merged.Forward(s, [1, 513, 514], 0, logits);
        Assert.All(logits, x => Assert.True(float.IsFinite(x)));
    }
}
