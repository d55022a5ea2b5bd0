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
