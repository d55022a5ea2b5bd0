using System.Diagnostics;
using System.IO.Compression;
using System.Xml.Linq;

namespace Lrl.Cli.Tests;

/// <summary>
/// `dotnet pack` of the solution gives a coherent package set: a fresh console app restores Lrl from a local feed
/// and generates (without ILGPU), and `dotnet tool install` of lrlrun from that feed gives a working command.
/// </summary>
public class PackagingTests
{
    private static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Engine.sln"))) return d.FullName;
        Assert.Skip("Engine.sln not found above the test binaries");
        return "";
    }

    private static (int Code, string Output) Dotnet(string workDir, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(600_000)) { p.Kill(true); throw new TimeoutException($"dotnet {string.Join(' ', args)} hung"); }
        return (p.ExitCode, output + err.Result);
    }

    [Fact]
    public void PackagesInstallIntoAFreshAppAndAsATool()
    {
        var model = CliRunner.Model("stories260k");
        var root = RepoRoot();
        var work = Directory.CreateTempSubdirectory("lrl-pack").FullName;
        var feed = Path.Combine(work, "feed");
        // The test run has built the solution in Release: pack those outputs.
        var pack = Dotnet(root, "pack", "Engine.sln", "-c", "Release", "--no-build", "-o", feed);
        Assert.True(pack.Code == 0, pack.Output);
        var packages = Directory.GetFiles(feed, "*.nupkg").Select(Path.GetFileName).ToList();
        foreach (var id in new[] { "Lrl", "Lrl.Core", "Lrl.Cpu", "Lrl.Gpu", "Lrl.Tokenization", "lrlrun" })
            Assert.Contains($"{id}.0.1.0.nupkg", packages);
        Assert.DoesNotContain(packages, p => p!.Contains("Tests") || p.Contains("Bench"));

        // Metadata, readme, and no ILGPU for CPU-only users.
        using (var zip = ZipFile.OpenRead(Path.Combine(feed, "Lrl.0.1.0.nupkg")))
        {
            Assert.NotNull(zip.GetEntry("README.md"));
            var nuspec = XDocument.Load(zip.GetEntry("Lrl.nuspec")!.Open());
            XNamespace ns = nuspec.Root!.Name.Namespace;
            var meta = nuspec.Root.Element(ns + "metadata")!;
            Assert.Equal("MIT", meta.Element(ns + "license")!.Value);
            Assert.False(string.IsNullOrWhiteSpace(meta.Element(ns + "description")!.Value));
            Assert.NotNull(meta.Element(ns + "repository"));
            var deps = meta.Descendants(ns + "dependency").Select(d => d.Attribute("id")!.Value).ToList();
            Assert.Contains("Lrl.Cpu", deps);
            Assert.DoesNotContain("Lrl.Gpu", deps);
            Assert.DoesNotContain(deps, d => d.StartsWith("ILGPU", StringComparison.Ordinal));
        }

        // A fresh app restores Lrl from the local feed (other packages from the configured sources) and generates.
        File.WriteAllText(Path.Combine(work, "nuget.config"),
            $"""<?xml version="1.0" encoding="utf-8"?><configuration><packageSources><add key="lrlrun-local" value="{feed}" /></packageSources></configuration>""");
        var app = Path.Combine(work, "app");
        Directory.CreateDirectory(app);
        File.WriteAllText(Path.Combine(app, "app.csproj"), """
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><ImplicitUsings>enable</ImplicitUsings></PropertyGroup>
              <ItemGroup><PackageReference Include="Lrl" Version="0.1.0" /></ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using Lrl;
            using var model = LrlModel.Load(args[0]);
            using var session = model.CreateSession();
            foreach (var t in session.Generate("Once upon a time", new GenerationOptions { MaxTokens = 12, Sampling = Lrl.Runtime.SamplingOptions.Greedy }))
                Console.Write(t.Text);
            Console.WriteLine();
            Console.WriteLine(AppDomain.CurrentDomain.GetAssemblies().Any(a => a.GetName().Name == "ILGPU") ? "ILGPU loaded" : "no ILGPU");
            """);
        var run = Dotnet(app, "run", "-c", "Release", "--", model);
        Assert.True(run.Code == 0, run.Output);
        Assert.Contains(", there was a little girl", run.Output);
        Assert.Contains("no ILGPU", run.Output);
        Assert.False(File.Exists(Path.Combine(app, "bin", "Release", "net10.0", "ILGPU.dll")), "a CPU-only app should not carry ILGPU");

        // The tool.
        var tools = Path.Combine(work, "tools");
        var install = Dotnet(work, "tool", "install", "--tool-path", tools, "--add-source", feed, "lrlrun", "--version", "0.1.0");
        Assert.True(install.Code == 0, install.Output);
        var psi = new ProcessStartInfo(Path.Combine(tools, "lrlrun")) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in (string[])["generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "8", "--temperature", "0"]) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        Assert.StartsWith(", there was a little", stdout);
    }
}
