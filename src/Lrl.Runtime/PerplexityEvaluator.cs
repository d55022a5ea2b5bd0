namespace Lrl.Runtime;

/// <summary>The outcome of a perplexity run.</summary>
/// <param name="Perplexity">exp(mean NLL per scored token).</param>
/// <param name="BitsPerByte">Total NLL (nats) / ln 2 / UTF-8 bytes of the text; NaN when the byte count is unknown (0).</param>
/// <param name="TotalNll">Σ −ln p(token | context) over scored tokens, in nats.</param>
/// <param name="TokensScored">Every token but the first is scored exactly once.</param>
/// <param name="Windows">Forward passes run.</param>
public sealed record PerplexityResult(double Perplexity, double BitsPerByte, double TotalNll, int TokensScored, int Windows)
{
    public double MeanNll => TotalNll / TokensScored;
}

/// <summary>
/// Sliding-window perplexity as in Hugging Face's guide: windows of at most <c>context</c> tokens end every
/// <c>stride</c> tokens; each window is a fresh sequence and scores only the tokens that no earlier window scored,
/// each predicted from everything before it in its window. For stride &lt; context this is exactly HF's loop; with
/// stride = context each window starts one token early so the token at the boundary is scored too (HF drops it).
/// Every token but the first is scored exactly once.
/// </summary>
public static class PerplexityEvaluator
{
    /// <param name="model">Any model; its state is reset (each window starts at position 0).</param>
    /// <param name="tokens">The tokenized text (at least two tokens).</param>
    /// <param name="textBytes">UTF-8 bytes of the text, for bits per byte (0 if unknown).</param>
    /// <param name="context">Window length N (≤ the model's context; 0 = the model's context).</param>
    /// <param name="stride">Window step S, 1 ≤ S ≤ N (0 = N).</param>
    /// <param name="progress">Reports (windows done, windows total).</param>
    /// <param name="state">The sequence state to run in (e.g. one with LoRA adapters); null = the model's default state.</param>
    public static PerplexityResult Evaluate(ILanguageModel model, ReadOnlySpan<int> tokens, long textBytes,
                                            int context = 0, int stride = 0, IProgress<(int Done, int Total)>? progress = null,
                                            ISequenceState? state = null)
    {
        if (context == 0) context = model.ContextLength;
        if (stride == 0) stride = context;
        if (context < 2 || context > model.ContextLength)
            throw new LrlException($"perplexity context must be between 2 and the model's context ({model.ContextLength}), got {context}");
        if (stride < 1 || stride > context)
            throw new LrlException($"perplexity stride must be between 1 and the context ({context}), got {stride}");
        if (tokens.Length < 2) throw new LrlException($"perplexity needs at least 2 tokens, got {tokens.Length}");
        if (textBytes < 0) throw new LrlException($"text byte count must be ≥ 0, got {textBytes}");

        int vocab = model.VocabSize, n = tokens.Length;
        foreach (var t in tokens)
            if ((uint)t >= (uint)vocab) throw new LrlException($"token id {t} is outside the vocabulary (0..{vocab - 1})");
        int total = 0;
        for (int prevEnd = 0; prevEnd < n; total++) prevEnd = Window(prevEnd, n, context, stride).End;

        var logits = new float[(long)Math.Min(context, n) * vocab];
        double nll = 0;
        int scored = 0, windows = 0;
        for (int prevEnd = 0; prevEnd < n;)
        {
            var (begin, end) = Window(prevEnd, n, context, stride);
            int len = end - begin;
            var rows = logits.AsSpan(0, len * vocab);
            if (state is null) model.Forward(tokens[begin..end], 0, rows);
            else model.Forward(state, tokens[begin..end], 0, rows);
            for (int p = Math.Max(prevEnd, 1); p < end; p++)
            {
                nll += Nll(rows.Slice((p - 1 - begin) * vocab, vocab), tokens[p]);
                scored++;
            }
            prevEnd = end;
            windows++;
            progress?.Report((windows, total));
        }
        return new PerplexityResult(Math.Exp(nll / scored), textBytes > 0 ? nll / Math.Log(2) / textBytes : double.NaN, nll, scored, windows);
    }

    /// <summary>
    /// The window after one that ended at <paramref name="prevEnd"/>: it ends <paramref name="stride"/> tokens later and
    /// reaches back <paramref name="context"/> tokens, but always starts at or before prevEnd − 1 so that the first token
    /// it scores has a predecessor in the window (with stride = context this scores the tokens a disjoint split would skip).
    /// </summary>
    private static (int Begin, int End) Window(int prevEnd, int n, int context, int stride)
    {
        if (prevEnd == 0) return (0, Math.Min(context, n));
        int end = Math.Min(prevEnd + stride, n);
        int begin = Math.Max(0, end - context);
        if (begin > prevEnd - 1) { begin = prevEnd - 1; end = Math.Min(begin + context, n); }
        return (begin, end);
    }

    /// <summary>−ln softmax(logits)[target], computed in double.</summary>
    public static double Nll(ReadOnlySpan<float> logits, int target)
    {
        double max = double.NegativeInfinity;
        foreach (var v in logits) max = Math.Max(max, v);
        double sum = 0;
        foreach (var v in logits) sum += Math.Exp(v - max);
        return Math.Log(sum) + max - logits[target];
    }
}
