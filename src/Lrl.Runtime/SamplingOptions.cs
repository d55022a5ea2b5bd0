namespace Lrl.Runtime;

/// <summary>How the next token is chosen from the logits (llama.cpp's order: penalties, top-k, temperature, top-p, min-p).</summary>
public sealed record SamplingOptions
{
    /// <summary>0 = greedy (argmax); otherwise logits are divided by this.</summary>
    public float Temperature { get; init; } = 0.8f;
    /// <summary>Keep the k most likely tokens; 0 = all.</summary>
    public int TopK { get; init; } = 40;
    /// <summary>Keep the smallest set whose probability reaches p; 1 = off.</summary>
    public float TopP { get; init; } = 0.95f;
    /// <summary>Drop tokens whose probability is below minP × the top probability; 0 = off.</summary>
    public float MinP { get; init; } = 0.05f;
    /// <summary>Divides positive (multiplies negative) logits of recently seen tokens; 1 = off.</summary>
    public float RepeatPenalty { get; init; } = 1.0f;
    /// <summary>How many recent tokens the repetition penalty looks at.</summary>
    public int RepeatLastN { get; init; } = 64;
    /// <summary>Random seed; null = nondeterministic.</summary>
    public int? Seed { get; init; }
    /// <summary>Subtracted from a token's logit once per occurrence in the recent window (OpenAI's frequency_penalty); 0 = off.</summary>
    public float FrequencyPenalty { get; init; }
    /// <summary>Subtracted from the logit of every token present in the recent window (OpenAI's presence_penalty); 0 = off.</summary>
    public float PresencePenalty { get; init; }
    /// <summary>Added to the logits of the given token ids (OpenAI's logit_bias: -100 bans, 100 forces); null = none.</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Checks every value, naming the option that is out of range.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new LrlException($"--temperature must be ≥ 0, got {Temperature}");
        if (TopK < 0) throw new LrlException($"--top-k must be ≥ 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new LrlException($"--top-p must be in (0, 1], got {TopP}");
        if (!(MinP >= 0 && MinP <= 1)) throw new LrlException($"--min-p must be in [0, 1], got {MinP}");
        if (!(RepeatPenalty > 0) || float.IsInfinity(RepeatPenalty)) throw new LrlException($"--repeat-penalty must be > 0, got {RepeatPenalty}");
        if (RepeatLastN < 0) throw new LrlException($"--repeat-last-n must be ≥ 0, got {RepeatLastN}");
        if (!(FrequencyPenalty >= -2 && FrequencyPenalty <= 2)) throw new LrlException($"--frequency-penalty must be in [-2, 2], got {FrequencyPenalty}");
        if (!(PresencePenalty >= -2 && PresencePenalty <= 2)) throw new LrlException($"--presence-penalty must be in [-2, 2], got {PresencePenalty}");
        if (LogitBias is not null)
            foreach (var (id, bias) in LogitBias)
                if (id < 0 || !(bias >= -100 && bias <= 100)) throw new LrlException($"logit bias {id}: {bias} must be a token id ≥ 0 with a bias in [-100, 100]");
    }
}
