using System.Text.Json;

namespace Lrl.Tests;

/// <summary>Finds ../shared (real checkpoints and float64 references); tests skip cleanly without it.</summary>
public static class SharedData
{
    public static string? Root { get; } = Find();

    private static string? Find()
    {
        var env = Environment.GetEnvironmentVariable("LRL_SHARED");
        if (!string.IsNullOrEmpty(env) && Directory.Exists(Path.Combine(env, "models"))) return env;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, "shared");
            if (Directory.Exists(Path.Combine(candidate, "models")) && Directory.Exists(Path.Combine(candidate, "reference")))
                return candidate;
        }
        return null;
    }

    public static string Model(string name)
    {
        if (Root is null) Assert.Skip("shared/models not found (set LRL_SHARED)");
        var dir = Path.Combine(Root!, "models", name);
        if (!Directory.Exists(dir)) Assert.Skip($"model {name} not present");
        return dir;
    }

    public static JsonElement Reference(string name)
    {
        if (Root is null) Assert.Skip("shared/reference not found (set LRL_SHARED)");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Root!, "reference", name + ".json")));
        return doc.RootElement.Clone();
    }

    public static double RelativeL2(ReadOnlySpan<float> actual, IReadOnlyList<double> expected)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Count; i++)
        {
            double d = actual[i] - expected[i];
            num += d * d;
            den += expected[i] * expected[i];
        }
        return Math.Sqrt(num / den);
    }
}
