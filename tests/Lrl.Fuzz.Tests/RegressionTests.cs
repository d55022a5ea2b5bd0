using System.Text;
using Lrl.Loading;
using Lrl.Tokenization;

namespace Lrl.Fuzz.Tests;

/// <summary>One test per crash class the fuzzer found (each was a .NET exception and stack trace before): now an
/// <see cref="ModelFormatException"/> naming the file and the field.</summary>
public sealed class RegressionTests
{
    private static string Copy(string model)
    {
        if (SharedData.Root is null) Assert.Skip("shared/ not found (set LRL_SHARED)");
        var src = Path.Combine(SharedData.Root!, "models", model);
        var dir = Directory.CreateTempSubdirectory("lrl-regress").FullName;
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }

    private static void Edit(string dir, string file, Func<string, string> change) =>
        File.WriteAllText(Path.Combine(dir, file), change(File.ReadAllText(Path.Combine(dir, file))));

    private static ModelFormatException Refused(string dir, string file, params string[] words)
    {
        var e = Assert.ThrowsAny<LrlException>(() =>
        {
            using var m = LrlModel.Load(dir, new ModelOptions { Threads = 1, ContextLength = 32 });
        });
        var mf = Assert.IsType<ModelFormatException>(e);
        Assert.EndsWith(file, mf.File);
        foreach (var w in words) Assert.Contains(w, mf.Message);
        Assert.DoesNotContain('\n', mf.Message);
        return mf;
    }

    [Fact]
    public void DuplicateKeyInConfig() // ArgumentException at ModelConfig.get_Architecture
    {
        var dir = Copy("stories260k");
        Edit(dir, "config.json", s => s.Replace("{", "{\"vocab_size\": 1, ", StringComparison.Ordinal));
        Refused(dir, "config.json", "Duplicate property", "vocab_size");
    }

    [Theory]
    [InlineData("\"architectures\": [7]", "architectures")]
    [InlineData("\"architectures\": true", "architectures")]
    [InlineData("\"model_type\": -1", "model_type")]
    public void WrongTypesInConfig(string field, string name) // InvalidOperationException at ModelConfig.get_Architecture / ModelType
    {
        var dir = Copy("rwkv-tiny-7v0-834K");
        var key = field.Split(':')[0];
        Edit(dir, "config.json", s =>
        {
            var node = System.Text.Json.Nodes.JsonNode.Parse(s)!.AsObject();
            node.Remove(key.Trim('"'));
            return node.ToJsonString().Insert(1, field + ",");
        });
        Refused(dir, "config.json", name);
    }

    [Theory]
    [InlineData("generation_config.json", "null", "null")]
    [InlineData("config.json", "[]", "array")]
    public void JsonFileThatIsNotAnObject(string file, string content, string word) // InvalidOperationException at SpecialTokenConfig.Load
    {
        var dir = Copy("stories260k");
        File.WriteAllText(Path.Combine(dir, file), content);
        Refused(dir, file, word);
    }

    [Fact]
    public void TokenIdOutOfRange() // FormatException at SpecialTokenConfig.Load
    {
        var dir = Copy("stories260k");
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), "{\"bos_token_id\": 9223372036854775807}");
        Refused(dir, "generation_config.json", "bos_token_id");
    }

    [Fact]
    public void BosTokenOfTheWrongType() // InvalidOperationException at SpecialTokenConfig.TokenString
    {
        var dir = Copy("stories260k");
        Edit(dir, "tokenizer_config.json", s => s.Replace("\"bos_token\": \"<s>\"", "\"bos_token\": [1]", StringComparison.Ordinal));
        Refused(dir, "tokenizer_config.json", "bos_token");
    }

    [Fact]
    public void VocabEntryThatIsNotANumber() // InvalidOperationException at HfTokenizer.ReadVocab
    {
        var dir = Copy("stories260k");
        Edit(dir, "tokenizer.json", s => s.Replace("\"<0x66>\": ", "\"<0x66>\": \"x\", \"<0x66_>\": ", StringComparison.Ordinal));
        var e = Assert.Throws<ModelFormatException>(() => LrlTokenizer.Load(dir));
        Assert.Contains("model.vocab", e.Message);
    }

    [Fact]
    public void HugeLayerCount() // OutOfMemoryException at Llama..ctor
    {
        var dir = Copy("stories260k");
        Edit(dir, "config.json", s => System.Text.RegularExpressions.Regex.Replace(s, "\"num_hidden_layers\": *\\d+", "\"num_hidden_layers\": 2147483647"));
        Refused(dir, "config.json", "num_hidden_layers", "2147483647");
    }

    [Fact]
    public void InvalidUtf8InConfig() // InvalidOperationException at ModelConfig.get_Architecture (transcoding)
    {
        var dir = Copy("stories260k");
        var bytes = File.ReadAllBytes(Path.Combine(dir, "config.json")).ToList();
        int at = Encoding.UTF8.GetString(bytes.ToArray()).IndexOf("Llama", StringComparison.Ordinal);
        bytes[at] = 0xC3; // a lead byte followed by an ASCII letter
        File.WriteAllBytes(Path.Combine(dir, "config.json"), bytes.ToArray());
        Refused(dir, "config.json", "UTF-8");
    }

    [Theory]
    [InlineData("rms_norm_eps", "-1e-5")]
    [InlineData("rope_theta", "-10000")]
    public void NonPositiveNumerics(string field, string value)
    {
        var dir = Copy("stories260k");
        Edit(dir, "config.json", s => System.Text.RegularExpressions.Regex.Replace(s, $"\"{field}\": *[-0-9.eE+]+", $"\"{field}\": {value}"));
        Refused(dir, "config.json", field);
    }
}

/// <summary>Weights behind links and special files, numeric hazards, and option values past what can be allocated.</summary>
public sealed class FileAndNumericRegressionTests
{
    private static string CopyWithoutWeights(out string weights)
    {
        if (SharedData.Root is null) Assert.Skip("shared/ not found (set LRL_SHARED)");
        var src = Path.Combine(SharedData.Root!, "models", "stories260k");
        var dir = Directory.CreateTempSubdirectory("lrl-links").FullName;
        foreach (var f in Directory.GetFiles(src).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal)))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        weights = Path.Combine(src, "model.safetensors");
        return dir;
    }

    [Fact]
    public void WeightsThatAreSymlinksLoad_AsInTheHubCache()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("symbolic links");
        var dir = CopyWithoutWeights(out var weights);
        var blobs = Directory.CreateTempSubdirectory("lrl-blobs").FullName;
        File.Copy(weights, Path.Combine(blobs, "0123abcd"));
        File.CreateSymbolicLink(Path.Combine(dir, "model.safetensors"), Path.Combine("..", Path.GetFileName(blobs), "0123abcd"));
        using var model = LrlModel.Load(dir, new ModelOptions { Threads = 1 });
        Assert.NotEmpty(model.Generate("Once", new GenerationOptions { MaxTokens = 2 }).ToList());
    }

    [Theory]
    [InlineData("/dev/zero", "not a regular file")]
    [InlineData("/proc/self/status", "not a regular file")]
    [InlineData("loop", "cannot be followed")]
    [InlineData("missing-target", "does not exist")]
    public void SpecialFilesAndBrokenLinksAreRefused(string target, string message)
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("symbolic links and /dev");
        var dir = CopyWithoutWeights(out _);
        var link = Path.Combine(dir, "model.safetensors");
        if (target == "loop")
        {
            File.CreateSymbolicLink(link, "loop2");
            File.CreateSymbolicLink(Path.Combine(dir, "loop2"), "model.safetensors");
        }
        else File.CreateSymbolicLink(link, target);
        var e = Assert.Throws<ModelFormatException>(() => LrlModel.Load(dir, new ModelOptions { Threads = 1 }));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void NaNWeightsAreFoundByTheCheckAndRefusedByQuantize()
    {
        var dir = CopyWithoutWeights(out var weights);
        var bytes = File.ReadAllBytes(weights);
        ulong headerLen = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using (var header = System.Text.Json.JsonDocument.Parse(bytes.AsMemory(8, (int)headerLen)))
        {
            var t = header.RootElement.EnumerateObject().First(p => p.Name == "model.norm.weight");
            long begin = t.Value.GetProperty("data_offsets")[0].GetInt64();
            BitConverter.GetBytes(float.NaN).CopyTo(bytes, 8 + (int)headerLen + (int)begin);
        }
        File.WriteAllBytes(Path.Combine(dir, "model.safetensors"), bytes);
        using (var ck = Checkpoint.Open(dir))
        {
            var findings = TensorCheck.Scan(ck);
            var f = Assert.Single(findings);
            Assert.Equal("model.norm.weight", f.Tensor);
            Assert.Contains("1 NaN", f.Problem);
        }
        var e = Assert.Throws<ModelFormatException>(() => Lrl.Quant.Quantizer.QuantizeModel(dir, dir + "-q8", 8, "auto", null));
        Assert.Contains("model.norm.weight", e.Message);
        Assert.False(Directory.Exists(dir + "-q8"));
    }

    [Fact]
    public void TemperatureSoSmallThat1OverTOverflowsIsGreedy()
    {
        if (SharedData.Root is null) Assert.Skip("shared/ not found");
        using var model = LrlModel.Load(Path.Combine(SharedData.Root!, "models", "stories260k"), new ModelOptions { Threads = 1 });
        var greedy = model.Generate("Once upon", new GenerationOptions { MaxTokens = 8, Sampling = Lrl.Runtime.SamplingOptions.Greedy }).Select(t => t.Id).ToList();
        var tiny = model.Generate("Once upon", new GenerationOptions { MaxTokens = 8, Sampling = new() { Temperature = 1e-45f, Seed = 3 } }).Select(t => t.Id).ToList();
        Assert.Equal(greedy, tiny);
    }

    [Fact]
    public void ContextPastWhatCanBeAllocatedIsAnError()
    {
        if (SharedData.Root is null) Assert.Skip("shared/ not found");
        var e = Assert.Throws<LrlException>(() => LrlModel.Load(Path.Combine(SharedData.Root!, "models", "rwkv-tiny-7v0-834K"), new ModelOptions { ContextLength = 100_000_000 }));
        Assert.Contains("100000000", e.Message);
        var l = Assert.Throws<LrlException>(() => LrlModel.Load(Path.Combine(SharedData.Root!, "models", "stories260k"), new ModelOptions { ContextLength = 100_000_000 }));
        Assert.Contains("max_position_embeddings", l.Message);
    }
}

/// <summary>A tokenizer with no vocabulary cannot serve a model.</summary>
public sealed class EmptyVocabularyTests
{
    [Fact]
    public void AnEmptyVocabularyIsAClearErrorAtLoad()
    {
        if (SharedData.Root is null) Assert.Skip("shared/ not found");
        var src = Path.Combine(SharedData.Root!, "models", "stories260k");
        var dir = Directory.CreateTempSubdirectory("lrl-empty").FullName;
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), """{"model": {"type": "WordLevel", "vocab": {}, "unk_token": "<unk>"}}""");
        var e = Assert.Throws<ModelFormatException>(() => LrlModel.Load(dir, new ModelOptions { Threads = 1 }));
        Assert.Contains("vocabulary is empty", e.Message);
    }
}
