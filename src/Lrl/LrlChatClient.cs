using System.Runtime.CompilerServices;
using Lrl.Runtime;
using Microsoft.Extensions.AI;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Lrl;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over a loaded model: messages are formatted with the model's
/// chat template, generated in an <see cref="InferenceSession"/> (the client's own when free, so a conversation that
/// grows turn by turn reuses its state; a session of the call's own when calls overlap), with
/// <see cref="ChatOptions"/> mapped to lrlrun's sampling (temperature, top-p, top-k, max output tokens, stop sequences,
/// seed). Responses carry usage and the finish reason. Safe to call from many threads.
/// </summary>
public sealed class LrlChatClient : IChatClient
{
    private readonly LrlModel _model;
    private readonly ChatTemplate _template;
    private readonly SharedSession _session;
    private readonly GenerationOptions _defaults;
    private bool _disposed;

    /// <param name="model">The loaded model (not disposed with the client).</param>
    /// <param name="template">The chat template; default: the one the model's tokenizer_config.json declares.</param>
    /// <param name="defaults">Generation settings for what a request's <see cref="ChatOptions"/> leaves out.</param>
    public LrlChatClient(LrlModel model, ChatTemplate? template = null, GenerationOptions? defaults = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _template = template ?? ChatTemplate.Load(model.Directory);
        _defaults = defaults ?? new GenerationOptions();
        _session = new SharedSession(model);
        Metadata = new ChatClientMetadata("lrlrun", null, Path.GetFileName(model.Directory));
    }

    public ChatClientMetadata Metadata { get; }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var text = new System.Text.StringBuilder();
        ChatResponseUpdate? last = null;
        await foreach (var u in GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false))
        {
            text.Append(u.Text);
            last = u;
        }
        var usage = last?.Contents.OfType<UsageContent>().FirstOrDefault()?.Details;
        return new ChatResponse(new AiChatMessage(ChatRole.Assistant, text.ToString()))
        {
            FinishReason = last?.FinishReason,
            Usage = usage,
            ModelId = Metadata.DefaultModelId,
            CreatedAt = DateTimeOffset.UtcNow,
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ObjectDisposedException.ThrowIf(_disposed, this);
        var prompt = _template.Format(messages.Select(ToLrl).ToList());
        var generation = Map(options);
        using var lease = _session.Acquire();
        var session = lease.Session;
        string responseId = Guid.NewGuid().ToString("N");
        await foreach (var t in session.GenerateAsync(prompt, generation, cancellationToken).ConfigureAwait(false))
            if (t.Text.Length > 0)
                yield return new ChatResponseUpdate(ChatRole.Assistant, t.Text) { ResponseId = responseId, ModelId = Metadata.DefaultModelId };
        var s = session.LastStats;
        yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(new UsageDetails
        {
            InputTokenCount = s.PromptTokens, OutputTokenCount = s.GeneratedTokens, TotalTokenCount = s.PromptTokens + s.GeneratedTokens,
        })])
        {
            ResponseId = responseId,
            ModelId = Metadata.DefaultModelId,
            FinishReason = s.FinishReason is FinishReason.Length or FinishReason.ContextFull ? ChatFinishReason.Length : ChatFinishReason.Stop,
        };
    }

    private static ChatMessage ToLrl(AiChatMessage m)
    {
        string role = m.Role == ChatRole.System ? "system" : m.Role == ChatRole.User ? "user" : m.Role == ChatRole.Assistant ? "assistant"
            : throw new LrlException($"chat role '{m.Role}' is not supported (system, user, assistant)");
        return new ChatMessage(role, m.Text);
    }

    /// <summary>The request's options over the client's defaults; the template's turn-end strings always stop.</summary>
    private GenerationOptions Map(ChatOptions? o)
    {
        var s = _defaults.Sampling;
        if (o is not null)
        {
            s = s with
            {
                Temperature = o.Temperature ?? s.Temperature,
                TopP = o.TopP ?? s.TopP,
                TopK = o.TopK ?? s.TopK,
                Seed = o.Seed is long seed ? unchecked((int)seed) : s.Seed,
            };
        }
        var stops = _defaults.StopStrings.Concat(_template.StopStrings).Concat(o?.StopSequences ?? []).Distinct().ToList();
        var g = _defaults with { Sampling = s, StopStrings = stops, MaxTokens = o?.MaxOutputTokens ?? _defaults.MaxTokens };
        g.Validate();
        return g;
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? Metadata
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType == typeof(LrlModel) ? _model
        : null;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _session.Dispose();
    }
}
