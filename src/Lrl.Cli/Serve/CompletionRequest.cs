namespace Lrl.Cli.Serve;

/// <summary>A validated /v1/completions or /v1/chat/completions request.</summary>
public sealed record CompletionRequest
{
    /// <summary>Completion prompt text (null for chat, or when <see cref="PromptIds"/> is given).</summary>
    public string? Prompt { get; init; }
    /// <summary>Completion prompt as token ids (OpenAI allows an array of integers).</summary>
    public int[]? PromptIds { get; init; }
    /// <summary>Chat messages (null for completions).</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; init; }
    public required GenerationOptions Options { get; init; }
    public bool Stream { get; init; }
    /// <summary>stream_options.include_usage: send a last chunk carrying usage before [DONE].</summary>
    public bool IncludeUsage { get; init; }
    /// <summary>The 'model' field: the base model's id or a LoRA adapter's (null when absent).</summary>
    public string? Model { get; init; }
    public bool IsChat => Messages is not null;
}
