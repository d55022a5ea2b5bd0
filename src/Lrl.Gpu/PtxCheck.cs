using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Lrl.Kernels;

namespace Lrl.Gpu;

/// <summary>
/// The CUDA path proven without a GPU: every kernel entry point in kernels/Lrl.Kernels (each generic kernel for every
/// weight reader or LoRA storage its constraints admit) compiled by ILGPU's PTX backend for a given architecture, and optionally assembled by NVIDIA's
/// ptxas, whose resource report (registers, shared memory, spills) is parsed. No CUDA driver or device is needed.
/// </summary>
public static partial class PtxCheck
{
    /// <summary>A kernel entry point: its display name, the (closed) method, and whether it is implicitly grouped (Index1D first).</summary>
    public sealed record Kernel(string Name, MethodInfo Method, bool Implicit);

    /// <summary>ptxas's report for one kernel and architecture.</summary>
    public sealed record Assembled(string Kernel, string Arch, int Registers, int SharedBytes, int SpillStoreBytes, int SpillLoadBytes, int StackBytes, string? Error);

    /// <summary>Every entry point the backend can launch: public static void methods of the *Kernels classes, generics closed over every reader.</summary>
    public static IReadOnlyList<Kernel> EntryPoints()
    {
        var asm = typeof(GemvKernels).Assembly;
        var readers = asm.GetTypes().Where(t => t.IsValueType && (typeof(IWeightReader).IsAssignableFrom(t) || typeof(ILoraMatrix).IsAssignableFrom(t)))
                         .OrderBy(t => t.Name, StringComparer.Ordinal).ToArray();
        var list = new List<Kernel>();
        foreach (var type in asm.GetTypes().Where(t => t.IsClass && t.IsAbstract && t.IsSealed && t.IsPublic && t.Name.EndsWith("Kernels", StringComparison.Ordinal))
                                  .OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            foreach (var m in type.GetMethods(BindingFlags.Public | BindingFlags.Static).Where(m => m.ReturnType == typeof(void)).OrderBy(m => m.Name, StringComparer.Ordinal))
            {
                bool implicitGroup = m.GetParameters() is [var first, ..] && first.ParameterType == typeof(Index1D);
                if (!m.IsGenericMethodDefinition)
                {
                    list.Add(new Kernel($"{type.Name}.{m.Name}", m, implicitGroup));
                    continue;
                }
                foreach (var r in readers)
                {
                    MethodInfo closed;
                    try { closed = m.MakeGenericMethod(r); }
                    catch (ArgumentException) { continue; } // a constraint the reader does not meet
                    list.Add(new Kernel($"{type.Name}.{m.Name}<{r.Name}>", closed, implicitGroup));
                }
            }
        }
        return list;
    }

    /// <summary>
    /// Compiles every entry point to PTX for <paramref name="arch"/> (e.g. SM_80, SM_90) at PTX ISA 7.8 (CUDA 11.8's), at
    /// <paramref name="level"/> (default: the CUDA backend's, <see cref="GpuBackend.CudaOptimization"/>).
    /// </summary>
    public static IEnumerable<(Kernel Kernel, string Ptx)> Compile(CudaArchitecture arch, CudaInstructionSet? isa = null, OptimizationLevel? level = null)
    {
        var opt = level ?? GpuBackend.CudaOptimization;
        using var context = Context.Create(b => b.Default().EnableAlgorithms().Optimize(opt));
        using var backend = new PTXBackend(context, new CudaCapabilityContext(arch), arch, isa ?? CudaInstructionSet.ISA_78, nvvmAPI: null);
        foreach (var k in EntryPoints())
        {
            var entry = k.Implicit ? EntryPointDescription.FromImplicitlyGroupedKernel(k.Method) : EntryPointDescription.FromExplicitlyGroupedKernel(k.Method);
            var compiled = (PTXCompiledKernel)backend.Compile(entry, KernelSpecialization.Empty);
            yield return (k, compiled.PTXAssembly);
        }
    }

    /// <summary>
    /// Assembles one PTX text with <paramref name="ptxas"/> for <paramref name="smArch"/> ("sm_80") and parses its
    /// verbose report; a failure is reported in <see cref="Assembled.Error"/>.
    /// </summary>
    public static Assembled Assemble(string ptxas, string kernel, string ptx, string smArch)
    {
        string dir = Path.Combine(Path.GetTempPath(), "lrl-ptx-" + Environment.ProcessId);
        Directory.CreateDirectory(dir);
        string file = Path.Combine(dir, Regex.Replace(kernel, "[^A-Za-z0-9_.]", "_") + "." + smArch + ".ptx");
        File.WriteAllText(file, ptx);
        var psi = new ProcessStartInfo(ptxas) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "-arch=" + smArch, "-v", "-o", OperatingSystem.IsWindows() ? "NUL" : "/dev/null", file }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new LrlException($"could not start {ptxas}");
        string output = p.StandardError.ReadToEnd() + p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(120_000)) { p.Kill(); return new Assembled(kernel, smArch, 0, 0, 0, 0, 0, "ptxas timed out"); }
        File.Delete(file);
        if (p.ExitCode != 0) return new Assembled(kernel, smArch, 0, 0, 0, 0, 0, output.Trim().Split('\n').FirstOrDefault(l => l.Contains("error", StringComparison.OrdinalIgnoreCase)) ?? output.Trim());
        int Get(Regex r) => r.Match(output) is { Success: true } m ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
        return new Assembled(kernel, smArch, Get(Registers()), Get(Shared()), Get(SpillStores()), Get(SpillLoads()), Get(Stack()), null);
    }

    /// <summary>ptxas from $LRL_PTXAS, the cache bench/fetch-ptxas.sh fills (~/.cache/lrlrun/ptxas/ptxas), or PATH; null if none.</summary>
    public static string? FindPtxas()
    {
        var env = Environment.GetEnvironmentVariable("LRL_PTXAS");
        if (!string.IsNullOrEmpty(env) && File.Exists(env)) return env;
        var root = Environment.GetEnvironmentVariable("LRL_CACHE")
                   ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "lrlrun");
        var cached = Path.Combine(root, "ptxas", "ptxas");
        if (File.Exists(cached)) return cached;
        foreach (var d in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
            if (File.Exists(Path.Combine(d, "ptxas"))) return Path.Combine(d, "ptxas");
        return null;
    }

    [GeneratedRegex(@"Used (\d+) registers")] private static partial Regex Registers();
    [GeneratedRegex(@"(\d+) bytes smem")] private static partial Regex Shared();
    [GeneratedRegex(@"(\d+) bytes spill stores")] private static partial Regex SpillStores();
    [GeneratedRegex(@"(\d+) bytes spill loads")] private static partial Regex SpillLoads();
    [GeneratedRegex(@"(\d+) bytes stack frame")] private static partial Regex Stack();
}
