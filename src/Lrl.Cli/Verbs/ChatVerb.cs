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

    [Option("ignore-eos", HelpText = "Keep generating past end-of-sequence tokens (a reply then ends at --max-tokens or a stop string).")]
    public bool IgnoreEos { get; set; }

    public int Run()
    {
        var sampling = Sampling();
        sampling.Validate();
        if (MaxTokens < 1) throw new LrlException($"--max-tokens must be ≥ 1, got {MaxTokens}");
        var template = Template is null ? null : ChatTemplate.ByName(Template);
        using var model = LoadModel();
        template ??= ChatTemplate.Load(model.Directory);
        if (template.Warning is { } warning) Console.Error.WriteLine($"lrlrun: warning: {warning}");
        using var session = model.CreateSession();
        session.Adapters = LoadAdapters(model);
        var messages = new List<ChatMessage>();
        if (!string.IsNullOrWhiteSpace(System)) messages.Add(new ChatMessage("system", System));
        bool interactive = !Console.IsInputRedirected;
        var editor = interactive ? new LineEditor() : null;
        if (interactive && session.Adapters.Count > 0) Console.Error.WriteLine($"lrlrun: LoRA {string.Join(", ", session.Adapters)}");
        if (interactive) Console.Error.WriteLine($"lrlrun chat ({template.Name} template). /reset clears the conversation, /exit or Ctrl-D quits; Ctrl-C stops a reply.");

        // Ctrl-C stops the reply being written and returns to the prompt; at the prompt (or pressed twice) it exits.
        CancellationTokenSource? reply = null;
        Console.CancelKeyPress += (_, e) =>
        {
            var r = reply;
            if (r is not null && !r.IsCancellationRequested) { e.Cancel = true; r.Cancel(); }
        };
        var options = WithSpeculation(new GenerationOptions
        {
            MaxTokens = MaxTokens, Sampling = sampling, StopStrings = template.StopStrings, IgnoreEos = IgnoreEos,
            AddBos = true, TruncatePrompt = false,
        }, out var draftModel);
        using var draftOwner = draftModel;
        int ctx = model.Model.ContextLength;
        while (true)
        {
            var line = editor is not null ? editor.ReadLine("> ") : Console.In.ReadLine();
            if (line is null || line.Trim() == "/exit") break;
            if (line.Trim().Length == 0) continue;
            if (line.Trim() == "/reset")
            {
                messages.RemoveAll(m => m.Role != "system");
                session.Reset();
                continue;
            }
            messages.Add(new ChatMessage("user", line));
            var prompt = FitToContext(model, template, messages, Math.Min(MaxTokens, ctx / 4), ctx);
            if (prompt is null)
            {
                Console.Error.WriteLine($"lrlrun: this message alone is longer than the context window ({ctx} tokens); it was not sent. Raise --context or shorten it.");
                messages.RemoveAt(messages.Count - 1);
                continue;
            }
            var text = new System.Text.StringBuilder();
            reply = new CancellationTokenSource();
            try
            {
                foreach (var t in session.Generate(prompt, options, reply.Token))
                {
                    Console.Out.Write(t.Text);
                    Console.Out.Flush();
                    text.Append(t.Text);
                }
            }
            finally { reply.Dispose(); reply = null; }
            Console.Out.WriteLine();
            messages.Add(new ChatMessage("assistant", text.ToString().Trim()));
            var s = session.LastStats;
            Console.Error.WriteLine($"[{s.PromptTokens} prompt tokens ({s.CachedTokens} cached), {s.GeneratedTokens} generated, {s.DecodeTokensPerSecond:F1} tok/s, {s.FinishReason}]");
            if (SpeculationLine(s) is { Length: > 0 } spec) Console.Error.WriteLine($"[{spec}]");
        }
        return 0;
    }

    /// <summary>
    /// The prompt for the conversation, dropping its oldest turns (never the system prompt) until it leaves
    /// <paramref name="room"/> tokens for the reply; null when even the last message alone does not fit.
    /// </summary>
    internal static int[]? FitToContext(LrlModel model, ChatTemplate template, List<ChatMessage> messages, int room, int ctx)
    {
        int dropped = 0;
        while (true)
        {
            var ids = model.Tokenizer.Encode(template.Format(messages), addSpecial: true);
            if (ids.Length + room <= ctx || (ids.Length < ctx && messages.Count(m => m.Role != "system") <= 1))
            {
                if (dropped > 0) Console.Error.WriteLine($"[context full: dropped the {dropped} oldest message{(dropped == 1 ? "" : "s")} to fit {ctx} tokens]");
                return ids;
            }
            int oldest = messages.FindIndex(m => m.Role != "system");
            if (oldest < 0 || oldest == messages.Count - 1) return null;
            messages.RemoveAt(oldest);
            dropped++;
        }
    }
}
