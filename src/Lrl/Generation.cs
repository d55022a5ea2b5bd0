using System.Diagnostics;
using System.Runtime.InteropServices;
using Lrl.Runtime;
using Lrl.Tokenization;

namespace Lrl;

/// <summary>
/// What one generation does with each step's logits, whoever runs the forward passes (the session itself, or the
/// model's batched decode loop): sample, stop at EOS / stop strings / the token budget / the context window, and turn
/// tokens into text. It owns the tokens the session's state holds (<see cref="Held"/>): the prompt, then each token
/// fed back.
/// </summary>
internal sealed class Generation
{
    private readonly Sampler _sampler;
    private readonly StreamingDecoder _decoder;
    private readonly StopMatcher _stops;
    private readonly int[] _eos;
    private readonly GenerationOptions _options;
    private readonly int _context;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private bool _prefilled;

    public Generation(LrlModel owner, List<int> held, int[] prompt, GenerationOptions options, CancellationToken ct)
    {
        var model = owner.Model;
        _options = options;
        _context = model.ContextLength;
        _sampler = new Sampler(model.VocabSize, options.Sampling);
        _decoder = owner.Tokenizer.CreateStreamingDecoder();
        _stops = new StopMatcher(options.StopStrings);
        _eos = owner.Tokenizer.EosIds;
        Cancellation = ct;
        Held = held;
        Prompt = prompt;
        Stats = new GenerationStats { PromptTokens = prompt.Length, FinishReason = FinishReason.Length };
        Drafting.ByCost = options.DraftLength == DraftLength.Cost;

        // Reuse the state of the longest common prefix with the previous sequence (chat turns, repeated prompts).
        int reuse = SharedPrefix(held, prompt);
        if (reuse == prompt.Length) reuse--; // at least one token must run to produce logits
        if (reuse < held.Count && !model.CanRewind) reuse = 0;
        Stats.CachedTokens = reuse;
        held.Clear();
        held.AddRange(prompt.AsSpan(0, reuse));
    }

    /// <summary>Tokens at the start of <paramref name="prompt"/> that <paramref name="held"/> starts with too.</summary>
    public static int SharedPrefix(List<int> held, ReadOnlySpan<int> prompt)
    {
        int n = 0;
        while (n < held.Count && n < prompt.Length && held[n] == prompt[n]) n++;
        return n;
    }

    public GenerationStats Stats { get; }

    /// <summary>Speculative decoding's adaptive draft length for this generation (<see cref="SpeculativeRun"/>).</summary>
    internal DraftControl Drafting { get; } = new();
    public CancellationToken Cancellation { get; }
    /// <summary>Tokens the state holds (prompt tokens run so far, then the generated tokens fed back).</summary>
    public List<int> Held { get; }
    public int[] Prompt { get; }
    /// <summary>Most new tokens this generation makes.</summary>
    public int MaxTokens => _options.MaxTokens;
    /// <summary>Prompt tokens still to run before the first sample.</summary>
    public int PromptLeft => Prompt.Length - Math.Min(Held.Count, Prompt.Length);
    /// <summary>The token to feed next (valid after <see cref="Accept"/> returned true).</summary>
    public int Next { get; private set; }
    public bool Done { get; private set; }

    /// <summary>Records that <paramref name="count"/> more prompt tokens ran.</summary>
    public void PromptRan(int count) => Held.AddRange(Prompt.AsSpan(Held.Count, count));

    /// <summary>
    /// Takes the logits after the last token run: samples one token and appends what to emit to
    /// <paramref name="emit"/>. Returns whether generation goes on with <see cref="Next"/> fed at position Held.Count.
    /// </summary>
    public bool Accept(Span<float> logits, List<GeneratedToken> emit)
    {
        if (!Begin(emit)) return false;
        return Take(_sampler.Sample(logits, CollectionsMarshal.AsSpan(Held)), emit); // the context so far
    }

    /// <summary>Whether the sampler's choice is the plain argmax of the logits (<see cref="AcceptArgmax"/> may be used).</summary>
    public bool PlainArgmax => _sampler.IsPlainArgmax;

    /// <summary>As <see cref="Accept"/> with the logits' argmax already taken (on the device) by the model.</summary>
    public bool AcceptArgmax(int token, List<GeneratedToken> emit)
    {
        if (!PlainArgmax) throw new InvalidOperationException("the sampler does not take the plain argmax");
        if (!Begin(emit)) return false;
        return Take(token, emit);
    }

    /// <summary>
    /// Whether the sampler's choice is plain top-k / top-p sampling a backend taking up to <paramref name="maxTopK"/>
    /// candidates can make where the logits are (<see cref="DeviceDraw"/>, <see cref="AcceptSampled"/>).
    /// </summary>
    public bool PlainTopK(int maxTopK) => _sampler.IsPlainTopK(maxTopK);

    /// <summary>The next token's sampling settings and uniform draw (the draw the host sampler would have made).</summary>
    public (float Temperature, int TopK, float TopP, float MinP, float Uniform) DeviceDraw()
    {
        var o = _sampler.Options;
        // float keeps the draw below 1 (a double just under 1 rounds up to 1f).
        float u = Math.Min((float)_sampler.NextUniform(), 0.99999994f);
        return (o.Temperature, _sampler.CandidateCount, o.TopP, o.MinP, u);
    }

    /// <summary>As <see cref="Accept"/> with the token already sampled (on the device) from a <see cref="DeviceDraw"/>.</summary>
    public bool AcceptSampled(int token, List<GeneratedToken> emit)
    {
        if (!Begin(emit)) return false;
        return Take(token, emit);
    }

    private bool Begin(List<GeneratedToken> emit)
    {
        if (!_prefilled)
        {
            _prefilled = true;
            Stats.PrefillTime = _clock.Elapsed;
            _clock.Restart();
        }
        if (Cancellation.IsCancellationRequested) return Finish(FinishReason.Cancelled, emit);
        if (Stats.GeneratedTokens >= _options.MaxTokens) return Finish(FinishReason.Length, emit);
        return true;
    }

    private bool Take(int next, List<GeneratedToken> emit)
    {
        if (!_options.IgnoreEos && _eos.Contains(next)) return Finish(FinishReason.EndOfSequence, emit);
        Stats.GeneratedTokens++;
        var text = _stops.Push(_decoder.Push(next));
        emit.Add(new GeneratedToken(next, text));
        if (_stops.Stopped) return Finish(FinishReason.StopString, emit);
        if (Stats.GeneratedTokens >= _options.MaxTokens) return Finish(FinishReason.Length, emit);
        if (Held.Count + 1 >= _context) return Finish(FinishReason.ContextFull, emit);
        Next = next;
        return true;
    }

    /// <summary>Records that <see cref="Next"/> ran.</summary>
    public void NextRan() => Held.Add(Next);

    /// <summary>Ends the generation for <paramref name="reason"/>, appending the text still held back.</summary>
    public bool Finish(FinishReason reason, List<GeneratedToken> emit)
    {
        if (Done) return false;
        Done = true;
        Stats.FinishReason = reason;
        Stats.DecodeTime = _prefilled ? _clock.Elapsed : TimeSpan.Zero;
        if (!_prefilled) Stats.PrefillTime = _clock.Elapsed;
        if (reason != FinishReason.StopString)
        {
            var rest = _stops.Push(_decoder.Flush()) + _stops.Flush();
            if (rest.Length > 0) emit.Add(new GeneratedToken(-1, rest));
        }
        return false;
    }
}
