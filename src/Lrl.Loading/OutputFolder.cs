namespace Lrl.Loading;

/// <summary>
/// A model folder a verb writes (quantize, synth): checked before any work, written into a temporary sibling and
/// renamed into place, so an interrupted run never leaves half a folder; `--force` replaces an existing folder but never
/// one that holds the input; temporary folders left by interrupted runs are removed on the next run.
/// </summary>
public static class OutputFolder
{
    /// <summary>Checks <paramref name="outDir"/> and removes stale temporaries beside it; returns its full path.</summary>
    /// <param name="outDir">The --out folder.</param>
    /// <param name="force">Whether an existing, non-empty folder may be replaced.</param>
    /// <param name="inputDir">The model folder read, which the output must neither be nor contain.</param>
    public static string Prepare(string outDir, bool force, string? inputDir = null)
    {
        var full = Path.GetFullPath(outDir.TrimEnd('/', '\\'));
        if (File.Exists(full)) throw new LrlException($"--out {full} is a file, not a folder");
        if (inputDir is not null)
        {
            var input = Path.GetFullPath(inputDir.TrimEnd('/', '\\'));
            if (input == full) throw new LrlException($"--out {full} is the input model folder; choose another folder");
            if (input.StartsWith(full + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new LrlException($"--out {full} contains the input model folder {input}; replacing it would delete the input");
        }
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any() && !force)
            throw new LrlException($"--out {full} exists and is not empty; pass --force to replace it");
        var parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        foreach (var stale in Directory.EnumerateDirectories(parent, $".{Path.GetFileName(full)}.tmp-*"))
        {
            // Left by a run that was killed (its process is gone); a live run's temporary is left alone.
            if (!IsLive(stale))
                try { Directory.Delete(stale, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
        return full;
    }

    /// <summary>A new temporary folder beside <paramref name="outDir"/> (named with this process's id).</summary>
    public static string CreateTemporary(string outDir)
    {
        var tmp = Path.Combine(Path.GetDirectoryName(outDir)!, $".{Path.GetFileName(outDir)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        return tmp;
    }

    /// <summary>
    /// Copies a model folder's files other than its weights into <paramref name="tmp"/> (the weights are written anew;
    /// hidden files, such as pull's hash caches and partial downloads, describe the input's own), config.json as
    /// <paramref name="config"/> writes it.
    /// </summary>
    public static void CopyModelFiles(string inDir, string tmp, string configText)
    {
        foreach (var file in Directory.GetFiles(inDir))
        {
            string name = Path.GetFileName(file);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal) || name == "model.safetensors.index.json" || name.StartsWith('.')) continue;
            if (name == "config.json") File.WriteAllText(Path.Combine(tmp, name), configText);
            else File.Copy(file, Path.Combine(tmp, name));
        }
    }

    /// <summary>Moves the finished temporary folder into place, replacing an existing output folder.</summary>
    public static void Commit(string tmp, string outDir)
    {
        if (Directory.Exists(outDir))
        {
            string old = tmp + ".old";
            Directory.Move(outDir, old);
            Directory.Move(tmp, outDir);
            Directory.Delete(old, recursive: true);
        }
        else Directory.Move(tmp, outDir);
    }

    /// <summary>Whether the process that made a temporary folder (its id is in the name) still runs.</summary>
    private static bool IsLive(string tmp)
    {
        var name = Path.GetFileName(tmp);
        int at = name.LastIndexOf(".tmp-", StringComparison.Ordinal);
        var rest = name[(at + 5)..].Split('-');
        if (rest.Length < 2 || !int.TryParse(rest[0], out int pid)) return false;
        if (pid == Environment.ProcessId) return true;
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }
}
