using Lrl.Cpu;
using Lrl.Kernels.Reference;
using Lrl.Models;
using Lrl.Runtime;
using Lrl.Tokenization;

namespace Lrl.Quant.Tests;

/// <summary>Quantized stories260k end to end: quantize, load like any model, perplexity against f32; GPTQ/AWQ loading.</summary>
public class ModelTests(ITestOutputHelper output)
{
    private const string Model = "stories260k";
    private const int Context = 256, Stride = 128;
    private static readonly int[] Prompt = [1, 403, 407, 261, 378, 500, 285, 306, 411, 345, 267, 402, 362, 281, 269];

    private static readonly Lazy<(int[] Tokens, long Bytes)> Heldout = new(() =>
    {
        var text = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "data", "heldout.txt"));
        var tok = LrlTokenizer.Load(SharedData.Model(Model));
        return (tok.Encode(text, addSpecial: true), System.Text.Encoding.UTF8.GetByteCount(text));
    });

    private static readonly Lazy<PerplexityResult> F32 = new(() => Perplexity(SharedData.Model(Model)));

    private static PerplexityResult Perplexity(string dir)
    {
        using var cpu = new CpuBackend(2);
        using var m = ModelRegistry.Load(dir, cpu);
        var (tokens, bytes) = Heldout.Value;
        return PerplexityEvaluator.Evaluate(m, tokens, bytes, Context, Stride);
    }

    private static float[] AllLogits(string dir, IBackend backend, int[] tokens)
    {
        using var m = ModelRegistry.Load(dir, backend);
        var logits = new float[tokens.Length * m.VocabSize];
        m.Forward(tokens, 0, logits);
        return logits;
    }

    /// <summary>Token by token (the decode GEMV path), last-token logits of each step.</summary>
    private static float[] DecodeLogits(string dir, IBackend backend, int[] tokens)
    {
        using var m = ModelRegistry.Load(dir, backend);
        var logits = new float[tokens.Length * m.VocabSize];
        for (int i = 0; i < tokens.Length; i++) m.Forward(tokens.AsSpan(i, 1), i, logits.AsSpan(i * m.VocabSize, m.VocabSize));
        return logits;
    }

    /// <summary>
    /// int8 must stay within 0.5 % of f32. Pure int4 round-to-nearest costs this 260K-parameter model ≈ 11 % at every
    /// group size (its rows are Gaussian-like: no outliers for finer groups to isolate), so pure int4 is held to 15 %;
    /// "auto" keeps the 172-wide down_proj rows (no group of 32 divides them) at int8 (+7.5 %, held to 10 %); zero
    /// points at group 32 and the int8 fallback threshold bring it closer. GPTQ takes auto int4 to +4 % (ChatTests).
    /// </summary>
    [Theory]
    [InlineData(8, "auto", false, null, 0.005)]
    [InlineData(8, "channel", false, null, 0.005)]
    [InlineData(8, "32", false, null, 0.005)]
    [InlineData(8, "64", false, null, 0.005)]
    [InlineData(4, "auto", false, null, 0.10)]
    [InlineData(4, "auto", false, 0.085, 0.05)]
    [InlineData(4, "channel", false, null, 0.15)]
    [InlineData(4, "32", false, null, 0.15)]
    [InlineData(4, "64", false, null, 0.15)]
    [InlineData(4, "128", false, null, 0.15)]
    [InlineData(4, "32", true, null, 0.10)]
    [InlineData(4, "auto", true, null, 0.15)]
    public void QuantizedPerplexityIsCloseToF32(int bits, string group, bool asymmetric, double? fallback, double maxRelative)
    {
        string src = SharedData.Model(Model);
        string dir = Path.Combine(CheckpointWriters.TempDir("q"), "out");
        try
        {
            var log = new List<string>();
            var options = new QuantizeOptions { Bits = bits, Group = group, Asymmetric = asymmetric, Int8FallbackThreshold = fallback };
            var report = Quantizer.QuantizeModel(src, dir, options, new Progress<string>(log.Add));
            Assert.True(File.Exists(Path.Combine(dir, "tokenizer.json")));
            Assert.True(report.OutputBytes < report.InputBytes);
            var f32 = F32.Value;
            var q = Perplexity(dir);
            double rel = q.Perplexity / f32.Perplexity - 1;
            var groups = string.Join(",", report.Metadata.Tensors.Values.GroupBy(v => $"Q{v.Bits}/{v.Group}").OrderBy(g => g.Key).Select(g => $"{g.Key}×{g.Count()}"));
            output.WriteLine($"Q{bits} group={group} asym={asymmetric} fallback={fallback}: ppl {q.Perplexity:F4} vs f32 {f32.Perplexity:F4} ({rel:+0.00%;-0.00%}), bpb {q.BitsPerByte:F4} vs {f32.BitsPerByte:F4}, {report.OutputBytes} bytes vs {report.InputBytes}, matrices {groups}");
            Assert.Equal(Heldout.Value.Tokens.Length - 1, q.TokensScored);
            Assert.True(Math.Abs(rel) <= maxRelative, $"perplexity {q.Perplexity:F4} vs f32 {f32.Perplexity:F4}: {rel:P2}");
            // Fixed groups keep every matrix at int4; auto moves only the ungroupable 172-wide rows (down_proj) to int8.
            if (bits == 4 && fallback is null)
                foreach (var (name, v) in report.Metadata.Tensors)
                    Assert.True(v.Bits == (name.Contains("embed_tokens") || group == "auto" && name.Contains("down_proj") ? 8 : 4), $"{name}: Q{v.Bits}");
            if (fallback is not null) Assert.Contains(report.Metadata.Tensors.Values, v => v.Bits == 4);
        }
        finally { Directory.Delete(Path.GetDirectoryName(dir)!, recursive: true); }
    }

    /// <summary>
    /// The token embedding table (stories260k ties it as the LM head) quantized by default at int8, or at int4, against
    /// keeping it: the held-out perplexity each gives (printed) and a bound on what int8 costs.
    /// </summary>
    [Theory]
    [InlineData(8)]
    [InlineData(4)]
    public void QuantizedEmbeddingAndTiedHeadCostLittlePerplexity(int bits)
    {
        string src = SharedData.Model(Model);
        var ppl = new Dictionary<int, double>();
        foreach (int eb in new[] { 0, 8, 4 })
        {
            string dir = Path.Combine(CheckpointWriters.TempDir("qe"), "out");
            try
            {
                var report = Quantizer.QuantizeModel(src, dir, new QuantizeOptions { Bits = bits, EmbeddingBits = eb });
                var embed = report.Metadata.Tensors.Where(kv => kv.Key.Contains("embed_tokens")).Select(kv => kv.Value.Bits).ToArray();
                Assert.Equal(eb == 0 ? [] : new[] { eb }, embed);
                ppl[eb] = Perplexity(dir).Perplexity;
                output.WriteLine($"Q{bits} body, embeddings/tied head {(eb == 0 ? "kept (F32)" : $"Q{eb}")}: ppl {ppl[eb]:F4}, {report.OutputBytes} bytes");
            }
            finally { Directory.Delete(Path.GetDirectoryName(dir)!, recursive: true); }
        }
        double cost8 = ppl[8] / ppl[0] - 1;
        Assert.True(Math.Abs(cost8) < 0.01, $"an int8 embedding/head moved perplexity by {cost8:P2}");
    }

    [Theory]
    [InlineData(8, "auto", false)]
    [InlineData(4, "auto", false)]
    [InlineData(4, "32", true)]
    [InlineData(4, "64", false, true)]
    public void QuantizedModelMatchesDequantizedReference(int bits, string group, bool embeddings, bool asymmetric = false)
    {
        string src = SharedData.Model(Model);
        string dir = Path.Combine(CheckpointWriters.TempDir("q"), "out");
        try
        {
            Quantizer.QuantizeModel(src, dir, new QuantizeOptions { Bits = bits, Group = group, QuantizeEmbeddings = embeddings, Asymmetric = asymmetric });
            using (var cpu0 = new CpuBackend(1))
            using (var m = ModelRegistry.Load(dir, cpu0))
            {
                Assert.StartsWith($"Q{bits}_G", m.WeightFormat);
                Assert.True(m.ParameterCount > 250_000 && m.ParameterCount < 300_000, $"parameters {m.ParameterCount}");
            }
            var expected = AllLogits(dir, new ReferenceBackend(), Prompt);
            using var cpu = new CpuBackend(2);
            var prefill = AllLogits(dir, cpu, Prompt);
            double e1 = TestUtil.RelErr(prefill, expected);
            var decode = DecodeLogits(dir, cpu, Prompt);
            double e2 = TestUtil.RelErr(decode, expected);
            output.WriteLine($"Q{bits} {group}: prefill rel err {e1:E2}, decode rel err {e2:E2}");
            // Up to 32 prompt rows run through the integer decode kernels (int8 activations, as decode).
            Assert.True(e1 < (Prompt.Length <= 32 ? 2e-2 : 1e-4), $"prefill logits relative error {e1:E2}");
            Assert.True(e2 < 2e-2, $"decode logits relative error {e2:E2}");
        }
        finally { Directory.Delete(Path.GetDirectoryName(dir)!, recursive: true); }
    }

    [Theory]
    [InlineData("gptq", 32, false)]
    [InlineData("gptq", 32, true)]
    [InlineData("gptq", -1, false)]
    [InlineData("awq", 32, false)]
    [InlineData("awq", 64, false)]
    public void GptqAndAwqMatchDequantizedWeights(string format, int groupSize, bool actOrder)
    {
        var (qDir, dDir) = CheckpointWriters.Write(SharedData.Model(Model), format, groupSize, actOrder);
        try
        {
            var expected = AllLogits(dDir, new ReferenceBackend(), Prompt);
            var refQuant = AllLogits(qDir, new ReferenceBackend(), Prompt);
            using var cpu = new CpuBackend(2);
            var prefill = AllLogits(qDir, cpu, Prompt);
            var decode = DecodeLogits(qDir, cpu, Prompt);
            double e0 = TestUtil.RelErr(refQuant, expected), e1 = TestUtil.RelErr(prefill, expected), e2 = TestUtil.RelErr(decode, expected);
            output.WriteLine($"{format} g{groupSize} act-order={actOrder}: reference {e0:E2}, cpu prefill {e1:E2}, cpu decode {e2:E2}");
            Assert.True(e0 < 1e-6, $"reference backend: {e0:E2}");
            // Up to 32 prompt rows run through the integer decode kernels (int8 activations, as decode); longer
            // prompts through f32 tiles of the dequantized weights.
            Assert.True(e1 < (Prompt.Length <= 32 ? 2e-2 : 1e-4), $"cpu prefill: {e1:E2}");
            Assert.True(e2 < 2e-2, $"cpu decode: {e2:E2}");
            using var m = ModelRegistry.Load(qDir, cpu);
            Assert.StartsWith("Q4_G", m.WeightFormat);
        }
        finally { Directory.Delete(qDir, true); Directory.Delete(dDir, true); }
    }

    [Fact]
    public void AllPositionLogitsMatchLastTokenLogits()
    {
        string src = SharedData.Model(Model);
        using var cpu = new CpuBackend(2);
        using var m = ModelRegistry.Load(src, cpu);
        var all = new float[Prompt.Length * m.VocabSize];
        m.Forward(Prompt, 0, all);
        for (int n = 1; n <= Prompt.Length; n += 4)
        {
            var last = new float[m.VocabSize];
            m.Forward(Prompt.AsSpan(0, n), 0, last);
            Assert.True(TestUtil.RelErr(last, all.AsSpan((n - 1) * m.VocabSize, m.VocabSize)) < 1e-5);
        }
    }

    [Fact]
    public void QuantizerRefusesExistingOutputAndBadOptions()
    {
        string src = SharedData.Model(Model);
        string dir = CheckpointWriters.TempDir("exists");
        try
        {
            File.WriteAllText(Path.Combine(dir, "x"), "x");
            Assert.Throws<LrlException>(() => Quantizer.QuantizeModel(src, dir, 8, "auto", null));
            Assert.Throws<LrlException>(() => Quantizer.QuantizeModel(src, dir + "2", 3, "auto", null));
            Assert.Throws<LrlException>(() => Quantizer.QuantizeModel(src, dir + "2", 4, "48", null));
            Assert.False(Directory.Exists(dir + "2"));
            var r = Quantizer.QuantizeModel(src, dir, new QuantizeOptions { Bits = 8, Overwrite = true });
            Assert.False(File.Exists(Path.Combine(dir, "x")));
            Assert.Empty(Directory.GetDirectories(Path.GetDirectoryName(dir)!, "." + Path.GetFileName(dir) + ".tmp*"));
            Assert.Throws<LrlException>(() => Quantizer.QuantizeModel(dir, dir + "3", 8, "auto", null)); // already quantized
        }
        finally { Directory.Delete(dir, true); }
    }
}
