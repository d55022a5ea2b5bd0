using Lrl.Runtime;

namespace Lrl.Cli.Tests;

/// <summary>The in-process API: load, stream with IAsyncEnumerable, cancel.</summary>
public class ApiTests
{
    [Fact]
    public async Task GenerateAsyncStreamsTheGreedyContinuation()
    {
        var reference = CliRunner.Reference("stories260k").GetProperty("prompts")[0];
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        var expected = reference.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var options = new GenerationOptions { MaxTokens = expected.Length, IgnoreEos = true, Sampling = SamplingOptions.Greedy };
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        await foreach (var t in model.GenerateAsync(reference.GetProperty("text").GetString()!, options, TestContext.Current.CancellationToken))
        {
            if (t.Id >= 0) ids.Add(t.Id);
            text.Append(t.Text);
        }
        Assert.Equal(expected, ids);
        Assert.Equal(reference.GetProperty("greedy_text").GetString(), text.ToString());
        Assert.Equal(expected.Length, model.LastStats.GeneratedTokens);
        Assert.Equal(FinishReason.Length, model.LastStats.FinishReason);
    }

    [Fact]
    public async Task CancellationStopsTheStream()
    {
        using var model = LrlModel.Load(CliRunner.Model("stories260k"), new ModelOptions { Threads = 1 });
        using var cts = new CancellationTokenSource();
        int count = 0;
        await foreach (var _ in model.GenerateAsync("Once upon a time", new GenerationOptions { MaxTokens = 100, IgnoreEos = true }, cts.Token))
            if (++count == 5) cts.Cancel();
        Assert.Equal(5, count);
        Assert.Equal(FinishReason.Cancelled, model.LastStats.FinishReason);
    }
}
