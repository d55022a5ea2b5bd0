using Microsoft.Extensions.AI;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Lrl.Cli.Tests;

/// <summary>The library's Microsoft.Extensions.AI IChatClient, used only through the abstraction.</summary>
public class ChatClientTests
{
    private static (LrlModel Model, IChatClient Client) Load()
    {
        var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        return (model, new LrlChatClient(model));
    }

    private static readonly AiChatMessage[] Conversation = [new(ChatRole.System, "You tell stories."), new(ChatRole.User, "Tell me about a cat.")];

    [Fact]
    public async Task ResponseIsTheGreedyContinuationOfTheTemplatedPrompt_WithUsageAndFinishReason()
    {
        var (model, client) = Load();
        using var _ = model;
        using var __ = client;
        var response = await client.GetResponseAsync(Conversation, new ChatOptions { Temperature = 0, MaxOutputTokens = 24 }, TestContext.Current.CancellationToken);
        var prompt = ChatTemplate.Load(model.Directory).Format([new("system", "You tell stories."), new("user", "Tell me about a cat.")]);
        using var session = model.CreateSession();
        var expected = string.Concat(session.Generate(prompt, new GenerationOptions
        {
            MaxTokens = 24, Sampling = Lrl.Runtime.SamplingOptions.Greedy, StopStrings = ChatTemplate.Load(model.Directory).StopStrings,
        }).Select(t => t.Text));
        Assert.Equal(expected, response.Text);
        Assert.Equal(ChatRole.Assistant, response.Messages.Single().Role);
        Assert.Equal(session.LastStats.PromptTokens, response.Usage!.InputTokenCount);
        Assert.Equal(session.LastStats.GeneratedTokens, response.Usage.OutputTokenCount);
        Assert.Equal(session.LastStats.FinishReason == Lrl.FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop, response.FinishReason);
    }

    [Fact]
    public async Task StreamingEqualsTheResponse_AndEndsWithUsage()
    {
        var (model, client) = Load();
        using var _ = model;
        using var __ = client;
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 30 };
        var full = await client.GetResponseAsync(Conversation, options, TestContext.Current.CancellationToken);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(Conversation, options, TestContext.Current.CancellationToken)) updates.Add(u);
        Assert.Equal(full.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.NotNull(updates[^1].FinishReason);
        Assert.Single(updates[^1].Contents.OfType<UsageContent>());
        Assert.NotNull(client.GetService<ChatClientMetadata>());
        Assert.Same(model, client.GetService<LrlModel>());
    }

    [Fact]
    public async Task OptionsMapToSampling_SeedStopSequencesMaxTokens()
    {
        var (model, client) = Load();
        using var _ = model;
        using var __ = client;
        var ct = TestContext.Current.CancellationToken;
        var seeded = new ChatOptions { Temperature = 0.9f, TopP = 0.9f, TopK = 20, Seed = 1234, MaxOutputTokens = 30 };
        var a = await client.GetResponseAsync(Conversation, seeded, ct);
        var b = await client.GetResponseAsync(Conversation, seeded, ct);
        Assert.Equal(a.Text, b.Text);
        var c = await client.GetResponseAsync(Conversation, new ChatOptions { Temperature = 0.9f, Seed = 99, MaxOutputTokens = 30 }, ct);
        Assert.NotEqual(a.Text, c.Text);
        var greedy = await client.GetResponseAsync(Conversation, new ChatOptions { Temperature = 0, MaxOutputTokens = 40 }, ct);
        var word = greedy.Text.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2];
        var stopped = await client.GetResponseAsync(Conversation, new ChatOptions { Temperature = 0, MaxOutputTokens = 40, StopSequences = [word] }, ct);
        Assert.Equal(greedy.Text[..greedy.Text.IndexOf(word, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        var shortOne = await client.GetResponseAsync(Conversation, new ChatOptions { Temperature = 0, MaxOutputTokens = 3 }, ct);
        Assert.Equal(3, shortOne.Usage!.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, shortOne.FinishReason);
    }

    [Fact]
    public async Task ConcurrentCallsGiveTheirSequentialAnswers()
    {
        var (model, client) = Load();
        using var _ = model;
        using var __ = client;
        var ct = TestContext.Current.CancellationToken;
        var questions = new[] { "Tell me about a cat.", "Tell me about a dog.", "What is the sun?", "Sing a song." };
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 20 };
        var sequential = new List<string>();
        foreach (var q in questions) sequential.Add((await client.GetResponseAsync([new AiChatMessage(ChatRole.User, q)], options, ct)).Text);
        var parallel = await Task.WhenAll(questions.Select(q => Task.Run(() => client.GetResponseAsync([new AiChatMessage(ChatRole.User, q)], options, ct), ct)));
        Assert.Equal(sequential, parallel.Select(r => r.Text));
    }
}
