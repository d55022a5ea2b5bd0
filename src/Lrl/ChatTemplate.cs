using System.Text;
using System.Text.Json;

namespace Lrl;

/// <summary>One message of a conversation: role is "system", "user" or "assistant".</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>
/// Formats a conversation into the prompt a chat model was trained on. The template family is recognised from the
/// model's tokenizer_config.json "chat_template" (ChatML as in Qwen2/SmolLM2, Llama-3, Llama-2/Mistral [INST],
/// Gemma, Phi-3/Zephyr); models without one get a plain "User:/Assistant:" transcript.
/// </summary>
public sealed class ChatTemplate
{
    private readonly Func<IReadOnlyList<ChatMessage>, bool, string> _format;

    /// <summary>The recognised family, e.g. "chatml".</summary>
    public string Name { get; }
    /// <summary>Strings that end an assistant turn (besides the model's EOS tokens).</summary>
    public IReadOnlyList<string> StopStrings { get; }
    /// <summary>Set when the model declares a chat template lrlrun does not recognise (and this one is used instead).</summary>
    public string? Warning { get; private init; }

    private ChatTemplate(string name, string[] stops, Func<IReadOnlyList<ChatMessage>, bool, string> format)
    {
        Name = name; StopStrings = stops; _format = format;
    }

    /// <summary>The template families by name, as --template takes them.</summary>
    public static IReadOnlyDictionary<string, ChatTemplate> Families => new Dictionary<string, ChatTemplate>
    {
        ["chatml"] = ChatMl, ["llama3"] = Llama3, ["inst"] = Inst, ["gemma"] = Gemma, ["phi"] = Phi, ["plain"] = Plain,
    };

    /// <summary>The family named <paramref name="name"/> (case-insensitive), or an error listing the families.</summary>
    public static ChatTemplate ByName(string name) =>
        Families.TryGetValue(name.ToLowerInvariant(), out var t) ? t
        : throw new LrlException($"--template '{name}' is not one of {string.Join(", ", Families.Keys)}");

    /// <summary>Formats the messages; with <paramref name="addGenerationPrompt"/> the text ends where the assistant's reply begins.</summary>
    public string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        foreach (var m in messages)
            if (m.Role is not ("system" or "user" or "assistant"))
                throw new LrlException($"chat message role '{m.Role}' is not one of system, user, assistant");
        return _format(messages, addGenerationPrompt);
    }

    public static ChatTemplate Load(string modelDir)
    {
        var path = Path.Combine(modelDir, "tokenizer_config.json");
        string? template = null;
        if (File.Exists(path))
        {
            using var doc = JsonFile.ParseObject(path);
            if (doc.RootElement.TryGetProperty("chat_template", out var t))
                template = t.ValueKind == JsonValueKind.String ? t.GetString()
                         : t.ValueKind == JsonValueKind.Array ? t.EnumerateArray()
                             .Select(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("template", out var x) && x.ValueKind == JsonValueKind.String ? x.GetString() : null)
                             .FirstOrDefault(s => s != null)
                         : null;
        }
        // Newer repositories keep the template in its own file.
        var jinja = Path.Combine(modelDir, "chat_template.jinja");
        if (template is null && File.Exists(jinja)) template = File.ReadAllText(jinja);
        return FromTemplateText(template);
    }

    /// <summary>Recognises the family of a Jinja chat template (null: the plain transcript).</summary>
    public static ChatTemplate FromTemplateText(string? t)
    {
        if (t is null) return Plain;
        if (t.Contains("<|im_start|>")) return ChatMl;
        if (t.Contains("<|start_header_id|>")) return Llama3;
        if (t.Contains("<start_of_turn>")) return Gemma;
        if (t.Contains("[INST]")) return Inst;
        if (t.Contains("<|user|>")) return Phi;
        return new ChatTemplate(Plain.Name, [.. Plain.StopStrings], Plain._format)
        {
            Warning = "the model's chat_template is not one lrlrun recognises (ChatML, Llama-3, [INST], Gemma, Phi-3); " +
                      "using the plain User:/Assistant: transcript. Pass --template to choose one.",
        };
    }

    public static ChatTemplate ChatMl { get; } = new("chatml", ["<|im_end|>"], (ms, gen) =>
    {
        var sb = new StringBuilder();
        foreach (var m in ms) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        if (gen) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    });

    public static ChatTemplate Llama3 { get; } = new("llama3", ["<|eot_id|>"], (ms, gen) =>
    {
        var sb = new StringBuilder();
        foreach (var m in ms) sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(m.Content.Trim()).Append("<|eot_id|>");
        if (gen) sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        return sb.ToString();
    });

    public static ChatTemplate Inst { get; } = new("inst", ["</s>", "[INST]"], (ms, gen) =>
    {
        var sb = new StringBuilder();
        string? system = ms.FirstOrDefault(m => m.Role == "system")?.Content;
        foreach (var m in ms)
        {
            if (m.Role == "user")
            {
                var content = system is null ? m.Content : system + "\n\n" + m.Content;
                system = null;
                sb.Append("[INST] ").Append(content.Trim()).Append(" [/INST]");
            }
            else if (m.Role == "assistant") sb.Append(' ').Append(m.Content.Trim()).Append("</s>");
        }
        return sb.ToString();
    });

    public static ChatTemplate Gemma { get; } = new("gemma", ["<end_of_turn>"], (ms, gen) =>
    {
        var sb = new StringBuilder();
        string? system = ms.FirstOrDefault(m => m.Role == "system")?.Content;
        foreach (var m in ms.Where(m => m.Role != "system"))
        {
            var content = m.Role == "user" && system is not null ? system + "\n\n" + m.Content : m.Content;
            if (m.Role == "user") system = null;
            sb.Append("<start_of_turn>").Append(m.Role == "assistant" ? "model" : "user").Append('\n').Append(content.Trim()).Append("<end_of_turn>\n");
        }
        if (gen) sb.Append("<start_of_turn>model\n");
        return sb.ToString();
    });

    public static ChatTemplate Phi { get; } = new("phi", ["<|end|>", "<|endoftext|>"], (ms, gen) =>
    {
        var sb = new StringBuilder();
        foreach (var m in ms) sb.Append("<|").Append(m.Role).Append("|>\n").Append(m.Content).Append("<|end|>\n");
        if (gen) sb.Append("<|assistant|>\n");
        return sb.ToString();
    });

    /// <summary>For base models: a plain transcript the model continues after "Assistant:".</summary>
    public static ChatTemplate Plain { get; } = new("plain", ["\nUser:"], (ms, gen) =>
    {
        var sb = new StringBuilder();
        foreach (var m in ms)
        {
            if (m.Role == "system") sb.Append(m.Content.Trim()).Append("\n\n");
            else sb.Append(m.Role == "user" ? "User: " : "Assistant: ").Append(m.Content.Trim()).Append('\n');
        }
        if (gen) sb.Append("Assistant:");
        return sb.ToString();
    });
}
