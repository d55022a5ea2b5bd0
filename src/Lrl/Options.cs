using Lrl.Runtime;

namespace Lrl;

/// <summary>Where the model runs.</summary>
public enum Device
{
    /// <summary>CUDA when a GPU is present, else the CPU.</summary>
    Auto,
    Cpu,
    Cuda,
}

/// <summary>How a model is loaded.</summary>
public sealed record ModelOptions
{
    public Device Device { get; init; } = Device.Cpu;
    /// <summary>CPU threads including the caller; 0 = one per physical core.</summary>
    public int Threads { get; init; }
    /// <summary>KV cache positions; 0 = the model's maximum, capped at 4096.</summary>
    public int ContextLength { get; init; }
    /// <summary>
    /// Read weights in place from the memory-mapped checkpoint (zero-copy, the default). False (`--no-mmap`) copies
    /// them into the CPU backend's own huge-page memory: slower to load, faster to decode.
    /// </summary>
    public bool Mmap { get; init; } = true;
    /// <summary>Prompt tokens run per batched pass.</summary>
    public int BatchSize { get; init; } = 256;
    /// <summary>
    /// Most generations decoded together (continuous batching): above 1, every generation of this model runs in one
    /// decode loop whose steps hold a row per running sequence, so concurrent requests share each read of the weights.
    /// 1 runs each generation on its caller's thread, one forward pass at a time.
    /// </summary>
    public int Parallel { get; init; } = 1;
    /// <summary>
    /// With <see cref="Parallel"/> above 1: the most bytes the running generations' KV caches may come to together
    /// (0 = no budget). Each generation is admitted when the most its cache can grow to (its prompt plus its most new
    /// tokens) fits beside the others'; later ones wait, and one that could never fit is refused with an error.
    /// </summary>
    public long KvMemory { get; init; }
    /// <summary>Most rows in one batched step while sequences are decoding (bounds the time between their tokens when
    /// prompts are being admitted); 0 = 64.</summary>
    public int StepRows { get; init; }
    /// <summary>
    /// Batch invariance on float models too (CPU): every product of up to <see cref="StepRows"/> rows runs each row's
    /// one-row arithmetic and the decode loop admits prompts in chunks of at most that many rows, so each generation's
    /// logits are bit for bit the same whatever it is batched with (int8/int4 models are so already). Float models'
    /// prefill and many-row steps lose the faster GEMM (at 64 rows the per-row products run ~0.6-0.7 of its speed).
    /// </summary>
    public bool BatchInvariant { get; init; }
}

/// <summary>How text is generated.</summary>
public sealed record GenerationOptions
{
    /// <summary>Most tokens to generate (generation also ends at the context window).</summary>
    public int MaxTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = new();
    /// <summary>Keep generating past end-of-sequence tokens.</summary>
    public bool IgnoreEos { get; init; }
    /// <summary>Generation ends before the first occurrence of any of these; the stop string is not emitted.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Add the BOS token when the tokenizer asks for it.</summary>
    public bool AddBos { get; init; } = true;
    /// <summary>When the prompt does not fit the context, keep its last tokens instead of failing.</summary>
    public bool TruncatePrompt { get; init; }
    /// <summary>
    /// LoRA adapters (from <see cref="LrlModel.LoadAdapter"/>) this generation runs with; null = the session's
    /// <see cref="InferenceSession.Adapters"/> (none unless set). Empty runs the base model.
    /// </summary>
    public IReadOnlyList<Lrl.Models.LoraAdapter>? Adapters { get; init; }
    /// <summary>
    /// Speculative decoding: draft tokens cheaply, verify them in one batched forward pass of the model, keep the
    /// longest run the model itself would have produced. Lossless: greedy output is token for token the plain output,
    /// and seeded sampling gives the same tokens (each emitted token is the model's own sample).
    /// </summary>
    public SpeculativeMethod Speculative { get; init; }
    /// <summary>Most draft tokens per verification step (1..64).</summary>
    public int DraftTokens { get; init; } = 6;
    /// <summary>
    /// How many of <see cref="DraftTokens"/> a step drafts: <see cref="Lrl.DraftLength.Cost"/> (default) times the
    /// steps and drafts the length with the most expected tokens per second; <see cref="Lrl.DraftLength.Acceptance"/>
    /// follows the acceptance rate alone (steps reproducible, independent of timings). Output is the same either way.
    /// </summary>
    public DraftLength DraftLength { get; init; } = DraftLength.Cost;
    /// <summary>Early exit: layers the draft runs (1 .. layers-1; 0 = half the model's).</summary>
    public int DraftLayers { get; init; }
    /// <summary>Draft model: a smaller model with the same tokenizer (<see cref="SpeculativeMethod.Draft"/>).</summary>
    public LrlModel? DraftModel { get; init; }
    /// <summary>Draft heads trained for the model (<see cref="SpeculativeMethod.Heads"/>, <see cref="Lrl.Models.DraftHeads.Load"/>).</summary>
    public Lrl.Models.DraftHeads? DraftHeads { get; init; }
    /// <summary>
    /// Draft heads: verify a tree of candidates instead of a chain, with this many of head d's top tokens under every
    /// node of depth d − 1 (e.g. [3, 2, 2, 1]: 3 + 6 + 12 + 12 nodes, at most 63); null or empty: a chain.
    /// </summary>
    public int[]? DraftTree { get; init; }

    public void Validate()
    {
        if (MaxTokens < 0) throw new LrlException($"--max-tokens must be ≥ 0, got {MaxTokens}");
        if (Speculative is < SpeculativeMethod.None or > SpeculativeMethod.Heads) throw new LrlException($"unknown speculative method {Speculative}");
        if (Speculative != SpeculativeMethod.None && DraftTokens is < 1 or > 64) throw new LrlException($"--draft-tokens must be in 1..64, got {DraftTokens}");
        if (DraftLength is not (DraftLength.Cost or DraftLength.Acceptance)) throw new LrlException($"unknown draft length rule {DraftLength}");
        if (DraftLayers < 0) throw new LrlException($"--draft-layers must be ≥ 0, got {DraftLayers}");
        if (Speculative == SpeculativeMethod.Draft && DraftModel is null) throw new LrlException("--speculative draft needs --draft-model DIR");
        if (Speculative == SpeculativeMethod.Heads && DraftHeads is null) throw new LrlException("--speculative heads needs --heads DIR");
        if (DraftTree is { Length: > 0 } tree)
        {
            if (Speculative != SpeculativeMethod.Heads) throw new LrlException("--tree is for --speculative heads");
            if (tree.Length > 16 || tree.Any(b => b is < 1 or > 16)) throw new LrlException($"--tree takes 1-16 branch counts of 1..16 each, got {string.Join(',', tree)}");
        }
        Sampling.Validate();
    }
}

/// <summary>How a speculative step chooses how many tokens to draft (at most <see cref="GenerationOptions.DraftTokens"/>).</summary>
public enum DraftLength
{
    /// <summary>
    /// The length with the most expected tokens per second: each step is timed by the drafts it carried, and the
    /// expected tokens of n drafts (1 + r + ... + rⁿ at the acceptance rate r) are weighed against the measured (or
    /// interpolated) time of such a step, up to the acceptance cap. Verify passes cost nearly one decode step while the
    /// model is bandwidth-bound and grow with every row once the CPU's arithmetic binds, so the best length depends on
    /// the machine, the model and the thread count.
    /// </summary>
    Cost,
    /// <summary>As deep as the acceptance rate makes a run through every draft about 10 % likely.</summary>
    Acceptance,
}

/// <summary>How <see cref="GenerationOptions.Speculative"/> drafts tokens.</summary>
public enum SpeculativeMethod
{
    /// <summary>Plain decoding.</summary>
    None,
    /// <summary>Prompt lookup: the continuation of the latest earlier occurrence of the last tokens (n-gram), no extra weights.</summary>
    Lookup,
    /// <summary>Self-speculation: the model's first <see cref="GenerationOptions.DraftLayers"/> layers with its final norm and head.</summary>
    EarlyExit,
    /// <summary>A smaller model with the same tokenizer (<see cref="GenerationOptions.DraftModel"/>).</summary>
    Draft,
    /// <summary>Medusa-style draft heads on the model's last hidden state (<see cref="GenerationOptions.DraftHeads"/>).</summary>
    Heads,
}

/// <summary>Why generation ended.</summary>
public enum FinishReason { Length, EndOfSequence, StopString, ContextFull, Cancelled }

/// <summary>One generated token and the text it completed (possibly empty while a UTF-8 character is incomplete).</summary>
public readonly record struct GeneratedToken(int Id, string Text);

/// <summary>Counts and timings of one generation.</summary>
public sealed class GenerationStats
{
    public int PromptTokens { get; internal set; }
    /// <summary>Prompt tokens whose state was reused from the previous generation (not recomputed).</summary>
    public int CachedTokens { get; internal set; }
    public int GeneratedTokens { get; internal set; }
    public TimeSpan PrefillTime { get; internal set; }
    public TimeSpan DecodeTime { get; internal set; }
    public FinishReason FinishReason { get; internal set; }
    public double PrefillTokensPerSecond => (PromptTokens - CachedTokens) / Math.Max(PrefillTime.TotalSeconds, 1e-9);
    /// <summary>Decode speed over the tokens after the first (the first comes from the prefill's logits).</summary>
    public double DecodeTokensPerSecond => Math.Max(GeneratedTokens - 1, 0) / Math.Max(DecodeTime.TotalSeconds, 1e-9);
    /// <summary>Speculative decoding: verification passes, draft tokens proposed and draft tokens accepted.</summary>
    public int VerifySteps { get; internal set; }
    /// <summary>Speculative decoding: steps that drafted nothing (the adaptive length backing off, or no room left).</summary>
    public int PlainSteps { get; internal set; }
    public int DraftedTokens { get; internal set; }
    public int AcceptedTokens { get; internal set; }
    /// <summary>Accepted draft tokens per verification step by depth (index 0: the first draft token).</summary>
    public int[] AcceptedByDepth { get; internal set; } = [];
    /// <summary>Tokens each verification pass produced on average (accepted drafts plus the model's own next token).</summary>
    public double TokensPerStep => VerifySteps == 0 ? 0 : (AcceptedTokens + VerifySteps) / (double)VerifySteps;
}
