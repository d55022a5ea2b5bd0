namespace Lrl.Cli.Tests;

/// <summary>Verbs that write a model folder: checked before any work, never half-written, never deleting their input.</summary>
public class OutputFolderTests
{
    private static string CopyModel(string parent)
    {
        var dir = Path.Combine(parent, "m");
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(CliRunner.Model("stories260k"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }

    [Fact]
    public void ForceNeverDeletesAFolderHoldingTheInput()
    {
        var parent = Directory.CreateTempSubdirectory("lrl-out").FullName;
        var model = CopyModel(parent);
        var r = CliRunner.Run("quantize", "--model", model, "--bits", "8", "--out", parent, "--force");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("contains the input model folder", r.Stderr);
        Assert.True(File.Exists(Path.Combine(model, "config.json")));
        var same = CliRunner.Run("quantize", "--model", model, "--bits", "8", "--out", model, "--force");
        Assert.Equal(2, same.ExitCode);
        Assert.Contains("is the input model folder", same.Stderr);
    }

    [Fact]
    public void ExistingOutputNeedsForce_AFileIsRefused_StaleTemporariesAreRemoved()
    {
        var parent = Directory.CreateTempSubdirectory("lrl-out").FullName;
        var model = CopyModel(parent);
        var file = Path.Combine(parent, "a-file");
        File.WriteAllText(file, "x");
        var r = CliRunner.Run("quantize", "--model", model, "--bits", "8", "--out", file);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("is a file", r.Stderr);

        var output = Path.Combine(parent, "out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "x");
        // A temporary folder of a run that was killed (process 2^31-2 does not exist).
        var stale = Path.Combine(parent, ".out.tmp-2147483646-deadbeef");
        Directory.CreateDirectory(stale);
        File.WriteAllText(Path.Combine(stale, "model.safetensors"), "partial");
        var refused = CliRunner.Run("quantize", "--model", model, "--bits", "8", "--out", output);
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("--force", refused.Stderr);
        Assert.True(File.Exists(Path.Combine(output, "keep.txt")));
        var forced = CliRunner.Run("quantize", "--model", model, "--bits", "8", "--out", output, "--force");
        Assert.True(forced.ExitCode == 0, forced.Stderr);
        Assert.False(File.Exists(Path.Combine(output, "keep.txt")));
        Assert.True(File.Exists(Path.Combine(output, "model.safetensors")));
        Assert.False(Directory.Exists(stale), "the stale temporary folder should be removed");
        Assert.Empty(Directory.GetDirectories(parent, ".out.tmp-*"));
    }

    [Fact]
    public void SynthRefusesAnExistingFolderOrAFileBeforeWriting()
    {
        var parent = Directory.CreateTempSubdirectory("lrl-out").FullName;
        var output = Path.Combine(parent, "out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "x");
        var r = CliRunner.Run("synth", "--preset", "SmolLM2-135M", "--out", output);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--force", r.Stderr);
        Assert.Equal(["keep.txt"], Directory.GetFileSystemEntries(output).Select(f => Path.GetFileName(f)!).ToArray());
        var file = Path.Combine(parent, "f");
        File.WriteAllText(file, "x");
        var f = CliRunner.Run("synth", "--preset", "SmolLM2-135M", "--out", file);
        Assert.Equal(2, f.ExitCode);
        Assert.Contains("is a file", f.Stderr);
        Assert.Empty(Directory.GetDirectories(parent, ".*tmp-*"));
    }
}
