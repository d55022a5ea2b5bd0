using System.Diagnostics;
using System.Text;
using System.Text.Json;

namespace Lrl.Cli.Tests;

/// <summary>Runs the built lrlrun as a separate process, as a user would.</summary>
public static class CliRunner
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Result Run(params string[] args) => RunWith(null, args);

    /// <summary>Runs with extra environment variables.</summary>
    public static Result RunWith(IReadOnlyDictionary<string, string>? env, params string[] args) => Start(env, null, args);

    /// <summary>Runs with <paramref name="stdin"/> piped to the process.</summary>
    public static Result RunWithInput(string stdin, params string[] args) => Start(null, stdin, args);

    private static Result Start(IReadOnlyDictionary<string, string>? env, string? stdin, string[] args)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "lrlrun.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin != null,
            StandardOutputEncoding = Encoding.UTF8, StandardErrorEncoding = Encoding.UTF8 };
        psi.ArgumentList.Add(dll);
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        if (stdin != null) { p.StandardInput.Write(stdin); p.StandardInput.Close(); }
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException($"lrlrun {string.Join(' ', args)} hung"); }
        return new Result(p.ExitCode, output, err.Result);
    }

    public static string? SharedRoot { get; } = FindShared();

    private static string? FindShared()
    {
        var env = Environment.GetEnvironmentVariable("LRL_SHARED");
        if (!string.IsNullOrEmpty(env) && Directory.Exists(Path.Combine(env, "models"))) return env;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            var c = Path.Combine(d.FullName, "shared");
            if (Directory.Exists(Path.Combine(c, "models")) && Directory.Exists(Path.Combine(c, "reference"))) return c;
        }
        return null;
    }

    public static string Model(string name)
    {
        if (SharedRoot is null) Assert.Skip("shared/models not found (set LRL_SHARED)");
        return Path.Combine(SharedRoot!, "models", name);
    }

    public static JsonElement Reference(string name)
    {
        if (SharedRoot is null) Assert.Skip("shared/reference not found (set LRL_SHARED)");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(SharedRoot!, "reference", name + ".json")));
        return doc.RootElement.Clone();
    }
}
