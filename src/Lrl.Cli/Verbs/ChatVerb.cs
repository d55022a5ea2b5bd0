using CommandLine;

namespace Lrl.Cli;

[Verb("chat", HelpText = "Interactive chat in the model's chat template; one user message per line (stdin), replies on stdout.")]
public sealed class ChatVerb : SamplingVerbBase
{
    /// <summary>Shown under the options by `lrlrun chat --help`.</summary>
    public static string[] Examples =>
    [
        "printf 'Tell me a story.\\nWhat happened next?\\n' | lrlrun chat --model ../shared/models/stories260k --temperature 0 --max-tokens 40",
        "lrlrun chat --model ../shared/models/stories260k --system \"You tell short stories.\" --temperature 0.7",
    ];

    [Option('n', "max-tokens", Default = 512, HelpText = "Most tokens per reply.")]
    public int MaxTokens { get; set; }

    [Option("system", HelpText = "System prompt.")]
    public string? System { get; set; }

    [Option("template", HelpText = "Override the chat template family: chatml, llama3, inst, gemma, phi, plain.")]
    public string? Template { get; set; }

    public int Run()
    {
        var sampling = Sampling();
        sampling.Validate();
        using var model = LoadModel();
        var template = Template is null ? ChatTemplate.Load(model.Directory) : Template.ToLowerInvariant() switch
        {
            "chatml" => ChatTemplate.ChatMl, "llama3" => ChatTemplate.Llama3, "inst" => ChatTemplate.Inst,
            "gemma" => ChatTemplate.Gemma, "phi" => ChatTemplate.Phi, "plain" => ChatTemplate.Plain,
            _ => throw new LrlException($"--template '{Template}' is not one of chatml, llama3, inst, gemma, phi, plain"),
        };
        var messages = new List<ChatMessage>();
        if (!string.IsNullOrWhiteSpace(System)) messages.Add(new ChatMessage("system", System));
        bool interactive = !Console.IsInputRedirected;
        if (interactive) Console.Error.WriteLine($"lrlrun chat ({template.Name} template). /reset clears the conversation, /exit or Ctrl-D quits.");

        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        while (true)
        {
            if (interactive) Console.Error.Write("> ");
            var line = Console.In.ReadLine();
            if (line is null || line.Trim() == "/exit") break;
            if (line.Trim().Length == 0) continue;
            if (line.Trim() == "/reset")
            {
                messages.RemoveAll(m => m.Role != "system");
                model.ResetState();
                continue;
            }
            messages.Add(new ChatMessage("user", line));
            var options = new GenerationOptions
            {
                MaxTokens = MaxTokens, Sampling = sampling, StopStrings = template.StopStrings,
                AddBos = true, TruncatePrompt = false,
            };
            var reply = new System.Text.StringBuilder();
            foreach (var t in model.Generate(template.Format(messages), options, cts.Token))
            {
                Console.Out.Write(t.Text);
                Console.Out.Flush();
                reply.Append(t.Text);
            }
            Console.Out.WriteLine();
            messages.Add(new ChatMessage("assistant", reply.ToString().Trim()));
            var s = model.LastStats;
            Console.Error.WriteLine($"[{s.PromptTokens} prompt tokens ({s.CachedTokens} cached), {s.GeneratedTokens} generated, {s.DecodeTokensPerSecond:F1} tok/s, {s.FinishReason}]");
            if (cts.IsCancellationRequested) break;
        }
        return 0;
    }
}
