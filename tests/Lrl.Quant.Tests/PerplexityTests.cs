using Lrl.Runtime;

namespace Lrl.Quant.Tests;

/// <summary>The sliding-window evaluator on a model whose probabilities are known exactly.</summary>
public class PerplexityTests
{
    /// <summary>Logit of token t at a position is ln(1 + t), so p(t) = (1 + t) / Σ(1 + k); records every window.</summary>
    private sealed class FakeModel(int vocab, int context) : ILanguageModel
    {
        public List<(int Start, int Length)> Calls { get; } = new();
        public string Architecture => "Fake";
        public int VocabSize => vocab;
        public int ContextLength => context;
        public IBackend Backend => null!;
        public long ParameterCount => 0;
        public string WeightFormat => "F32";
        public long WeightBytesPerToken => 0;
        public void Dispose() { }
        public ISequenceState CreateState() => throw new NotSupportedException();
        public void Forward(ISequenceState state, ReadOnlySpan<int> tokens, int startPos, Span<float> logits) => throw new NotSupportedException();

        public void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
        {
            Assert.Equal(tokens.Length * vocab, logits.Length);
            Assert.Equal(0, startPos);
            Calls.Add((startPos, tokens.Length));
            logits.Fill(float.NaN);
            for (int r = 0; r < tokens.Length; r++)
                for (int t = 0; t < vocab; t++) logits[r * vocab + t] = MathF.Log(1 + t);
        }
    }

    [Theory]
    [InlineData(100, 32, 32)]
    [InlineData(100, 32, 8)]
    [InlineData(37, 64, 16)]
    [InlineData(2, 8, 1)]
    [InlineData(65, 16, 15)]
    public void ScoresEveryTokenButTheFirstOnce(int n, int context, int stride)
    {
        int vocab = 10;
        var rng = new Random(n);
        var tokens = Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
        var model = new FakeModel(vocab, 128);
        var r = PerplexityEvaluator.Evaluate(model, tokens, 1000, context, stride);
        // The model's logits are floats: ln(1 + t) rounded to f32.
        double lse = Math.Log(Enumerable.Range(0, vocab).Sum(t => Math.Exp(MathF.Log(1 + t))));
        double expected = tokens.Skip(1).Sum(t => lse - MathF.Log(1 + t));
        Assert.Equal(n - 1, r.TokensScored);
        Assert.Equal(expected, r.TotalNll, 1e-6);
        Assert.Equal(Math.Exp(expected / (n - 1)), r.Perplexity, 1e-9);
        Assert.Equal(expected / Math.Log(2) / 1000, r.BitsPerByte, 1e-9);
        Assert.All(model.Calls, c => Assert.InRange(c.Length, 1, context));
        Assert.Equal(r.Windows, model.Calls.Count);
        // Full windows until one reaches the end.
        for (int i = 0; i < model.Calls.Count - 1; i++) Assert.Equal(Math.Min(context, n), model.Calls[i].Length);
        int expectedWindows = 1;
        for (int end = Math.Min(context, n); end < n; expectedWindows++) end = Math.Min(end + Math.Min(stride, context - 1), n);
        Assert.Equal(expectedWindows, r.Windows);
    }

    [Fact]
    public void UniformModelHasPerplexityOfTheVocabulary()
    {
        var tokens = Enumerable.Range(0, 50).Select(i => i % 7).ToArray();
        var model = new FakeModel(1, 64);
        var r = PerplexityEvaluator.Evaluate(model, new int[] { 0, 0, 0, 0 }, 0, 4, 2);
        Assert.Equal(1, r.Perplexity, 1e-12);
        Assert.True(double.IsNaN(r.BitsPerByte));
    }

    [Fact]
    public void RejectsBadArguments()
    {
        var m = new FakeModel(10, 32);
        int[] t = [1, 2, 3];
        Assert.Throws<LrlException>(() => PerplexityEvaluator.Evaluate(m, t, 3, 64, 8));
        Assert.Throws<LrlException>(() => PerplexityEvaluator.Evaluate(m, t, 3, 16, 17));
        Assert.Throws<LrlException>(() => PerplexityEvaluator.Evaluate(m, [1], 3, 16, 8));
        Assert.Throws<LrlException>(() => PerplexityEvaluator.Evaluate(m, [1, 12], 3, 16, 8));
    }
}
