// TEMPORARY: stands in for src/Lrl/ChatTemplate.cs until main has it; delete on merge.
namespace Lrl;

public sealed record ChatMessage(string Role, string Content);

public sealed class ChatTemplate
{
    public static ChatTemplate Load(string modelDir) => new();
    public string Name => "fallback";
    public string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var m in messages) sb.Append(m.Role).Append(": ").Append(m.Content).Append('\n');
        if (addGenerationPrompt) sb.Append("assistant:");
        return sb.ToString();
    }
    public IReadOnlyList<string> StopStrings => ["\nuser:"];
}
