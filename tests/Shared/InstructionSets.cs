using System.Diagnostics;
using System.Reflection;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text;
using System.Text.RegularExpressions;

namespace Lrl.Tests;

/// <summary>
/// Every dispatch path of the SIMD kernels, tested whatever the machine has: re-runs test classes of the calling test
/// assembly (an xunit.v3 executable) in a child process with instruction sets switched off through the runtime's
/// <c>DOTNET_Enable*</c> switches, so that AVX2 with and without VNNI, the portable Vector128 code and the scalar code
/// run the same comparisons with their references as the machine's best path does.
/// </summary>
public static class InstructionSets
{
    /// <summary>Set in a child run to its level's name.</summary>
    public const string ChildVariable = "LRL_ISA_LEVEL";

    public static string? Child => Environment.GetEnvironmentVariable(ChildVariable);

    public static TheoryData<string> Levels => ["avx2", "avx2-novnni", "vector128", "scalar"];

    private static (string Name, string Value)[] Switches(string level) => level switch
    {
        "avx2" => [("DOTNET_EnableAVX512", "0")],
        "avx2-novnni" => [("DOTNET_EnableAVX512", "0"), ("DOTNET_EnableAVXVNNI", "0")],
        "vector128" => [("DOTNET_EnableAVX", "0")],
        "scalar" => [("DOTNET_EnableHWIntrinsic", "0")],
        _ => throw new ArgumentException($"unknown instruction-set level '{level}'"),
    };

    /// <summary>
    /// Runs the named test classes of <paramref name="testAssembly"/> at <paramref name="level"/> and fails with the
    /// child's output unless every test there passed (and at least one ran).
    /// </summary>
    public static void RunClasses(Assembly testAssembly, string level, params Type[] classes)
    {
        if (Child != null) Assert.Skip($"a child run at level {Child}");
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var psi = new ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(testAssembly.Location);
        foreach (var c in classes) { psi.ArgumentList.Add("-class"); psi.ArgumentList.Add(c.FullName!); }
        psi.Environment[ChildVariable] = level;
        foreach (var (name, value) in Switches(level)) psi.Environment[name] = value;
        var output = new StringBuilder();
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(TimeSpan.FromMinutes(10)))
        {
            p.Kill(entireProcessTree: true);
            lock (output) Assert.Fail($"the {level} run did not finish in 10 minutes:\n{Tail(output.ToString())}");
        }
        p.WaitForExit();
        string text;
        lock (output) text = output.ToString();
        var total = Regex.Match(text, @"Total:\s*(\d+)");
        Assert.True(p.ExitCode == 0 && total.Success && int.Parse(total.Groups[1].Value) > 0,
            $"the {level} run ({string.Join(' ', Switches(level).Select(s => $"{s.Name}={s.Value}"))}) exited {p.ExitCode}:\n{Tail(text)}");
    }

    /// <summary>In a child run: the runtime reports its level's instruction sets off (on any machine).</summary>
    public static void AssertChildLevel()
    {
        if (Child is null) Assert.Skip($"runs only in the child processes that {nameof(RunClasses)} starts");
        switch (Child)
        {
            case "avx2":
                Assert.False(Avx512F.IsSupported || Vector512.IsHardwareAccelerated, "AVX-512 should be off");
                break;
            case "avx2-novnni":
                Assert.False(Avx512F.IsSupported || AvxVnni.IsSupported, "AVX-512 and AVX-VNNI should be off");
                break;
            case "vector128":
                Assert.False(Avx.IsSupported || Avx2.IsSupported || Vector256.IsHardwareAccelerated, "AVX should be off");
                break;
            case "scalar":
                Assert.False(Vector128.IsHardwareAccelerated || Sse.IsSupported, "SIMD intrinsics should be off");
                break;
            default:
                Assert.Fail($"unknown level {Child}");
                break;
        }
    }

    private static string Tail(string s) => s.Length <= 6000 ? s : "...\n" + s[^6000..];
}
