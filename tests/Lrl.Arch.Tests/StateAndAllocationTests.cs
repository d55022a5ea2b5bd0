using Lrl.Cpu;

namespace Lrl.Arch.Tests;

[CollectionDefinition("serial", DisableParallelization = true)]
public sealed class SerialCollection;

/// <summary>
/// Runs alone: no allocation per decoded token, constant RWKV state. The backend runs single-threaded so every op runs
/// on the test thread, and allocations are counted for that thread (the runtime's own background work, such as tiered
/// JIT recompilation, allocates on other threads and is not the model's doing).
/// </summary>
[Collection("serial")]
public class StateAndAllocationTests
{
    private static long DecodeAllocations(ILanguageModel model, ref int pos, int steps, float[] logits, int[] one)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < steps; i++) { one[0] = Gpt2ReferenceTests.ArgMax(logits); model.Forward(one, pos++, logits); }
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }

    [Theory]
    [InlineData("capp-gpt2-tiny")]
    [InlineData("rwkv-tiny-5v2-730K")]
    [InlineData("rwkv-tiny-7v0-834K")]
    public void DecodingAllocatesNothing(string name)
    {
        var dir = SharedData.Model(name);
        using var backend = new CpuBackend(1);
        using var model = ModelRegistry.Load(dir, backend);
        var logits = new float[model.VocabSize];
        var one = new int[1];
        model.Forward([1, 2, 3, 4], 0, logits);
        int pos = 4;
        DecodeAllocations(model, ref pos, 60, logits, one); // warm-up (JIT tiering, first-call scratch)
        long allocated = DecodeAllocations(model, ref pos, 40, logits, one);
        Assert.True(allocated == 0, $"{name}: 40 decode steps allocated {allocated} bytes");
    }

    [Fact]
    public void TransNormerDecodingAllocatesNothingAndKeepsItsStateSize()
    {
        using var m = new TransNormerTests.TinyModel(new TransNormerTests.Spec(16, 16, 2, 4, 24, 29, false, false, true, [1, 0]), 3);
        using var backend = new CpuBackend(1);
        using var model = (TransNormer)ModelRegistry.Load(m.Dir, backend);
        Assert.False(model.CanRewind);
        var logits = new float[model.VocabSize];
        var one = new int[1];
        model.Forward([1, 2, 3, 4], 0, logits);
        int pos = 4;
        DecodeAllocations(model, ref pos, 60, logits, one);
        long state = model.StateFloats;
        // A busy machine can delay the JIT's tier-up into a measured window (a one-off allocation on this thread): a
        // decode step that allocated would allocate in every window, so the first clean window of three counts.
        long allocated = 0;
        for (int window = 0; window < 3; window++)
            if ((allocated = DecodeAllocations(model, ref pos, 100, logits, one)) == 0) break;
        Assert.True(allocated == 0, $"100 decode steps allocated {allocated} bytes (in each of three windows)");
        Assert.Equal(state, model.StateFloats);
        // Layer 0 uses LRPE (keys twice as wide): 4 heads · 8 · 4 + 4 heads · 4 · 4.
        Assert.Equal(4 * 8 * 4 + 4 * 4 * 4, state);
    }

    [Theory]
    [InlineData("rwkv-tiny-5v2-730K")]
    [InlineData("rwkv-tiny-7v0-834K")]
    public void RwkvStateDoesNotGrowWithSequenceLength(string name)
    {
        var dir = SharedData.Model(name);
        using var backend = new CpuBackend(1);
        using var model = (RwkvBase)ModelRegistry.Load(dir, backend);
        var logits = new float[model.VocabSize];
        var one = new int[1];
        int pos = 0;
        // Warm up (JIT tiering compiles in the background and allocates), then start a fresh sequence.
        model.Forward([34], pos++, logits);
        DecodeAllocations(model, ref pos, 60, logits, one);
        pos = 0;
        model.Forward([34], pos++, logits);
        long alloc10 = DecodeAllocations(model, ref pos, 9, logits, one);
        long stateAt10 = model.StateFloats;
        long alloc200 = DecodeAllocations(model, ref pos, 190, logits, one);
        long stateAt200 = model.StateFloats;
        Assert.Equal(200, pos);
        Assert.Throws<LrlException>(() => model.Forward([34], 199, logits)); // the state holds 200 tokens: no rewind
        Assert.Equal(stateAt10, stateAt200);
        Assert.True(alloc10 == 0 && alloc200 == 0, $"allocated {alloc10} bytes over tokens 1..10 and {alloc200} over 10..200");
        // The state is per layer: two token-shift vectors and one [H, S, S] matrix.
        var cfg = model.Config;
        long perLayer = 2L * cfg.HiddenSize + (long)cfg.HiddenSize * (cfg.HiddenSize / (model is Rwkv5 r5 ? r5.Heads : ((Rwkv7)model).Heads));
        Assert.Equal(cfg.NumLayers * perLayer, stateAt200);
        Assert.Equal(ModelLoadOptions.RecurrentContextCap, model.ContextLength);
        Assert.False(model.CanRewind);
        Assert.True(float.IsFinite(logits.Sum()));
    }
}

/// <summary>Bad input gets a clear error naming what was wrong.</summary>
public class ArchErrorTests
{
    [Theory]
    [InlineData("rwkv-tiny-5v2-730K")]
    [InlineData("rwkv-tiny-7v0-834K")]
    public void RwkvStateCannotRewindButStartPosZeroResets(string name)
    {
        var dir = SharedData.Model(name);
        using var backend = new CpuBackend(1);
        using var model = ModelRegistry.Load(dir, backend);
        var a = new float[model.VocabSize]; var b = new float[model.VocabSize];
        model.Forward([34, 105], 0, a);
        var e = Assert.Throws<LrlException>(() => model.Forward([110], 1, b));
        Assert.Contains("holds 2 tokens", e.Message);
        model.Forward([110], 2, b);
        model.Forward([34, 105], 0, b);
        Assert.Equal(a, b);
    }

    [Fact]
    public void UnknownRwkvVersionIsAClearError()
    {
        var dir = Directory.CreateTempSubdirectory("lrl-rwkv").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"),
                """{"architectures": ["RwkvCppTiny"], "model_type": "rwkv6", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 4}""");
            new SafeTensorsWriterShim().WriteEmpty(Path.Combine(dir, "model.safetensors"));
            using var backend = new CpuBackend(1);
            var e = Assert.Throws<ModelFormatException>(() => ModelRegistry.Load(dir, backend));
            Assert.Contains("rwkv6", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Gpt2WithWrongConv1DShapeNamesTheTensor()
    {
        var src = SharedData.Model("capp-gpt2-tiny");
        var dir = Directory.CreateTempSubdirectory("lrl-gpt2").FullName;
        try
        {
            var cfg = File.ReadAllText(Path.Combine(src, "config.json")).Replace("\"n_embd\": 64", "\"n_embd\": 32").Replace("\"n_head\": 4", "\"n_head\": 2");
            File.WriteAllText(Path.Combine(dir, "config.json"), cfg);
            File.Copy(Path.Combine(src, "model.safetensors"), Path.Combine(dir, "model.safetensors"));
            using var backend = new CpuBackend(1);
            var e = Assert.Throws<ModelFormatException>(() => ModelRegistry.Load(dir, backend));
            Assert.Contains("wte.weight", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void RegistryListsTheNewArchitectures()
    {
        Assert.Contains("GPT2LMHeadModel", ModelRegistry.SupportedArchitectures);
        Assert.Contains("RwkvCppTiny", ModelRegistry.SupportedArchitectures);
        Assert.Contains("TransnormerForCausalLM", ModelRegistry.SupportedArchitectures);
    }

    private sealed class SafeTensorsWriterShim
    {
        public void WriteEmpty(string path) => new Lrl.Loading.SafeTensorsWriter().Add("x", [1], [0f]).Write(path);
    }
}

/// <summary>Recurrent models honour ModelLoadOptions.ContextLength as a position cap.</summary>
public class RecurrentContextTests
{
    [Fact]
    public void PositionsPastTheCapAreAClearError()
    {
        var dir = SharedData.Model("rwkv-tiny-7v0-834K");
        using var backend = new CpuBackend(1);
        using var model = ModelRegistry.Load(dir, backend, new ModelLoadOptions { ContextLength = 8 });
        Assert.Equal(8, model.ContextLength);
        var logits = new float[model.VocabSize];
        model.Forward(new int[8], 0, logits);
        var e = Assert.Throws<LrlException>(() => model.Forward([5], 8, logits));
        Assert.Contains("context window of 8", e.Message);
    }
}
