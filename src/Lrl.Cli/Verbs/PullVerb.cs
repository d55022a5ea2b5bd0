using CommandLine;
using Lrl.Cli.Pull;

namespace Lrl.Cli;

[Verb("pull", HelpText = "Download a Hugging Face model repo's config, tokenizer and safetensors weights; prints the folder.")]
public sealed class PullVerb
{
    /// <summary>Shown under the options by `lrlrun pull --help`.</summary>
    public static string[] Examples =>
    [
        "lrlrun pull HuggingFaceTB/SmolLM2-135M",
        "lrlrun pull Qwen/Qwen2.5-0.5B-Instruct --revision main --out models/qwen2.5-0.5b-instruct",
    ];

    [Value(0, MetaName = "REPO_ID", Required = true, HelpText = "Hub repo id, e.g. HuggingFaceTB/SmolLM2-135M.")]
    public string Repo { get; set; } = "";

    [Option("revision", Default = "main", HelpText = "Branch, tag or commit.")]
    public string Revision { get; set; } = "main";

    [Option('o', "out", HelpText = "Target folder (default: ~/.cache/lrlrun/models/OWNER--NAME, or under $LRL_CACHE).")]
    public string? Out { get; set; }

    [Option("endpoint", HelpText = "Hub address (default: $HF_ENDPOINT or https://huggingface.co).")]
    public string? Endpoint { get; set; }

    [Option("token", HelpText = "Access token for private or gated repos (default: $HF_TOKEN).")]
    public string? Token { get; set; }

    public int Run()
    {
        HubClient.CheckRepo(Repo);
        if (string.IsNullOrWhiteSpace(Revision)) throw new LrlException("--revision must not be empty");
        var dir = Path.GetFullPath(string.IsNullOrWhiteSpace(Out) ? HubClient.DefaultDirectory(Repo) : Out);
        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        using var hub = new HubClient(Endpoint, Token, Console.Error);
        var r = hub.PullAsync(Repo, Revision, dir, cts.Token).GetAwaiter().GetResult();
        Console.Error.WriteLine($"lrlrun: {r.Downloaded.Count} downloaded ({HubClient.Size(r.BytesDownloaded)}), {r.UpToDate.Count} already up to date");
        Console.Out.WriteLine(dir);
        return 0;
    }
}
