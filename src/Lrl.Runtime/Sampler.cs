namespace Lrl.Runtime;

/// <summary>
/// Picks the next token from logits. All scratch is allocated once for the vocabulary size, so sampling a token
/// allocates nothing.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _o;
    private readonly Random _rng;
    private readonly float[] _keys;   // candidate logits (then probabilities), best first after selection
    private readonly int[] _ids;      // candidate token ids, parallel to _keys
    private readonly int _vocab;

    public SamplingOptions Options => _o;

    public Sampler(int vocabSize, SamplingOptions options)
    {
        options.Validate();
        _o = options;
        _vocab = vocabSize;
        _rng = options.Seed is int s ? new Random(s) : new Random();
        _keys = new float[vocabSize];
        _ids = new int[vocabSize];
    }

    /// <summary>
    /// Whether the choice is the plain argmax of the model's logits (greedy, no penalty or bias changes them), so a
    /// backend may take it where the logits are.
    /// </summary>
    public bool IsPlainArgmax => (_o.Temperature == 0 || float.IsInfinity(1f / _o.Temperature)) && Unshaped;

    /// <summary>
    /// Whether the choice is plain top-k / top-p / min-p sampling at a temperature (no penalty or bias) over at most
    /// <paramref name="maxTopK"/> candidates, so a backend may sample where the logits are: call
    /// <see cref="NextUniform"/> for its draw (the one <see cref="Sample"/> would make) and pass <see cref="CandidateCount"/>.
    /// </summary>
    public bool IsPlainTopK(int maxTopK) =>
        maxTopK > 0 && !(_o.Temperature == 0 || float.IsInfinity(1f / _o.Temperature)) && Unshaped && CandidateCount <= maxTopK;

    /// <summary>How many of the most likely tokens the sampler considers (top-k, or the vocabulary).</summary>
    public int CandidateCount => _o.TopK > 0 ? Math.Min(_o.TopK, _vocab) : _vocab;

    /// <summary>The uniform draw in [0, 1) the next <see cref="Sample"/> would make (advances the generator the same way).</summary>
    public double NextUniform() => _rng.NextDouble();

    private bool Unshaped => (_o.RepeatPenalty == 1f || _o.RepeatLastN == 0) &&
        ((_o.FrequencyPenalty == 0 && _o.PresencePenalty == 0) || _o.RepeatLastN == 0) && (_o.LogitBias is null || _o.LogitBias.Count == 0);

    /// <summary>Chooses a token. <paramref name="logits"/> is modified (penalties applied); <paramref name="recent"/> are the tokens seen so far.</summary>
    public int Sample(Span<float> logits, ReadOnlySpan<int> recent)
    {
        if (logits.Length != _vocab) throw new ArgumentException($"expected {_vocab} logits, got {logits.Length}");
        ApplyRepeatPenalty(logits, recent);
        ApplyFrequencyAndPresence(logits, recent);
        if (_o.LogitBias is { } bias)
            foreach (var (id, b) in bias)
                if ((uint)id < (uint)_vocab) logits[id] += b;
        // Greedy at temperature 0, and at temperatures so small that 1/T overflows (the softmax would be NaN).
        if (_o.Temperature == 0 || float.IsInfinity(1f / _o.Temperature)) return ArgMax(logits);

        int n = SelectTopK(logits, _o.TopK > 0 ? Math.Min(_o.TopK, _vocab) : _vocab);
        // Softmax with temperature over the sorted candidates.
        float max = _keys[0], inv = 1f / _o.Temperature;
        double sum = 0;
        for (int i = 0; i < n; i++) { _keys[i] = MathF.Exp((_keys[i] - max) * inv); sum += _keys[i]; }
        for (int i = 0; i < n; i++) _keys[i] = (float)(_keys[i] / sum);
        // Top-p: smallest prefix reaching TopP.
        if (_o.TopP < 1)
        {
            double cum = 0;
            for (int i = 0; i < n; i++)
            {
                cum += _keys[i];
                if (cum >= _o.TopP) { n = i + 1; break; }
            }
        }
        // Min-p: relative to the most likely token.
        if (_o.MinP > 0)
        {
            float floor = _o.MinP * _keys[0];
            int keep = 1;
            while (keep < n && _keys[keep] >= floor) keep++;
            n = keep;
        }
        double total = 0;
        for (int i = 0; i < n; i++) total += _keys[i];
        double r = _rng.NextDouble() * total;
        for (int i = 0; i < n; i++)
        {
            r -= _keys[i];
            if (r < 0) return _ids[i];
        }
        return _ids[n - 1];
    }

    /// <summary>OpenAI's penalties over the recent window: logit -= count·frequency + (count > 0)·presence.</summary>
    private void ApplyFrequencyAndPresence(Span<float> logits, ReadOnlySpan<int> recent)
    {
        if ((_o.FrequencyPenalty == 0 && _o.PresencePenalty == 0) || _o.RepeatLastN == 0) return;
        var window = recent.Length > _o.RepeatLastN ? recent[^_o.RepeatLastN..] : recent;
        // Count occurrences in the _ids scratch (zeroed between uses), then penalize each distinct token once.
        foreach (int t in window) if ((uint)t < (uint)_vocab) _ids[t]++;
        foreach (int t in window)
        {
            if ((uint)t >= (uint)_vocab || _ids[t] == 0) continue;
            logits[t] -= _ids[t] * _o.FrequencyPenalty + _o.PresencePenalty;
            _ids[t] = 0;
        }
    }

    private void ApplyRepeatPenalty(Span<float> logits, ReadOnlySpan<int> recent)
    {
        if (_o.RepeatPenalty == 1f || _o.RepeatLastN == 0) return;
        var window = recent.Length > _o.RepeatLastN ? recent[^_o.RepeatLastN..] : recent;
        // Penalize each distinct token once: mark by negating into _ids scratch.
        foreach (int t in window)
        {
            if ((uint)t >= (uint)_vocab || _ids[t] == -1) continue;
            _ids[t] = -1;
            logits[t] = logits[t] > 0 ? logits[t] / _o.RepeatPenalty : logits[t] * _o.RepeatPenalty;
        }
        foreach (int t in window) if ((uint)t < (uint)_vocab) _ids[t] = 0;
    }

    public static int ArgMax(ReadOnlySpan<float> v) => Logits.ArgMax(v);

    /// <summary>Puts the k largest logits (ties: lower id first) into _keys/_ids sorted descending; returns k.</summary>
    private int SelectTopK(ReadOnlySpan<float> logits, int k)
    {
        if (k == _vocab)
        {
            for (int i = 0; i < _vocab; i++) { _keys[i] = -logits[i]; _ids[i] = i; }
            Array.Sort(_keys, _ids, 0, _vocab);
            for (int i = 0; i < _vocab; i++) _keys[i] = -_keys[i];
            return _vocab;
        }
        // Min-heap of size k on (logit, -id), kept in _keys/_ids [0, k).
        int size = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float v = logits[i];
            if (size < k) { _keys[size] = v; _ids[size] = i; SiftUp(size++); }
            else if (v > _keys[0]) { _keys[0] = v; _ids[0] = i; SiftDown(0, size); }
        }
        // Heap-sort ascending by popping the minimum to the end: result is descending.
        for (int end = size - 1; end > 0; end--)
        {
            (_keys[0], _keys[end]) = (_keys[end], _keys[0]);
            (_ids[0], _ids[end]) = (_ids[end], _ids[0]);
            SiftDown(0, end);
        }
        return size;
    }

    private bool Less(int a, int b) => _keys[a] < _keys[b] || (_keys[a] == _keys[b] && _ids[a] > _ids[b]);

    private void SiftUp(int i)
    {
        while (i > 0)
        {
            int p = (i - 1) / 2;
            if (!Less(i, p)) break;
            Swap(i, p);
            i = p;
        }
    }

    private void SiftDown(int i, int size)
    {
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, m = i;
            if (l < size && Less(l, m)) m = l;
            if (r < size && Less(r, m)) m = r;
            if (m == i) return;
            Swap(i, m);
            i = m;
        }
    }

    private void Swap(int a, int b)
    {
        (_keys[a], _keys[b]) = (_keys[b], _keys[a]);
        (_ids[a], _ids[b]) = (_ids[b], _ids[a]);
    }
}
