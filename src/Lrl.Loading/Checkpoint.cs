using System.Text.Json;

namespace Lrl.Loading;

/// <summary>
/// The weights of a Hugging Face model folder: model.safetensors, or shards listed in
/// model.safetensors.index.json, all memory-mapped. Tensors are looked up by their HF names.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    private readonly List<SafeTensorsFile> _files = new();
    private readonly Dictionary<string, SafeTensorsFile> _byName = new(StringComparer.Ordinal);

    public string Directory { get; }
    public IReadOnlyList<SafeTensorsFile> Files => _files;

    private Checkpoint(string dir)
    {
        Directory = dir;
        try { OpenFiles(); }
        catch { Dispose(); throw; }
    }

    /// <summary>Opens a model folder's safetensors weights (single file or sharded).</summary>
    public static Checkpoint Open(string directory)
    {
        var dir = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(dir)) throw new LrlException($"model folder not found: {dir}");
        return new Checkpoint(dir);
    }

    private void OpenFiles()
    {
        string index = Path.Combine(Directory, "model.safetensors.index.json");
        if (File.Exists(index))
        {
            Dictionary<string, string> weightMap;
            using (var doc = JsonFile.ParseObject(index))
            {
                if (!doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                    throw new ModelFormatException(index, "missing 'weight_map' object");
                weightMap = wm.EnumerateObject().ToDictionary(p => p.Name,
                    p => p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : throw new ModelFormatException(index, $"weight_map['{p.Name}'] is not a file name"));
            }

            var shards = new Dictionary<string, SafeTensorsFile>();
            foreach (var shardName in weightMap.Values.Distinct().Order(StringComparer.Ordinal))
            {
                if (shardName.Contains('/') || shardName.Contains('\\') || shardName.Contains(".."))
                    throw new ModelFormatException(index, $"shard name '{shardName}' must be a plain file name");
                var f = SafeTensorsFile.Open(Path.Combine(Directory, shardName));
                _files.Add(f);
                shards[shardName] = f;
            }
            foreach (var (name, shard) in weightMap)
            {
                var f = shards[shard];
                if (!f.TryGet(name, out _))
                    throw new ModelFormatException(index, $"tensor '{name}' is mapped to {shard}, which does not contain it");
                _byName[name] = f;
            }
            return;
        }

        var files = System.IO.Directory.GetFiles(Directory, "*.safetensors").Order(StringComparer.Ordinal).ToList();
        if (files.Count == 0)
            throw new LrlException($"{Directory}: no model.safetensors or model.safetensors.index.json found");
        foreach (var path in files)
        {
            var f = SafeTensorsFile.Open(path);
            _files.Add(f);
            foreach (var t in f.Tensors)
            {
                if (_byName.TryGetValue(t.Name, out var other))
                    throw new ModelFormatException(path, $"tensor '{t.Name}' also appears in {other.Path}");
                _byName[t.Name] = f;
            }
        }
    }

    public IEnumerable<string> Names => _byName.Keys;

    public IEnumerable<HostTensor> Tensors => _byName.Select(kv => kv.Value.Get(kv.Key));

    public bool Contains(string name) => _byName.ContainsKey(name);

    public bool TryGet(string name, out HostTensor tensor)
    {
        if (_byName.TryGetValue(name, out var f)) return f.TryGet(name, out tensor);
        tensor = default;
        return false;
    }

    /// <summary>A tensor by name; a missing one is an error naming the tensor and the folder.</summary>
    public HostTensor Get(string name) => TryGet(name, out var t) ? t
        : throw new ModelFormatException(Directory, $"missing tensor '{name}'");

    /// <summary>A tensor that must have the given shape; a mismatch names the tensor, its shape and the expected one.</summary>
    public HostTensor Get(string name, params int[] shape)
    {
        var t = Get(name);
        if (!t.Shape.AsSpan().SequenceEqual(shape))
            throw new ModelFormatException(t.Source, $"tensor '{name}' has shape {t.ShapeString}, expected [{string.Join(", ", shape)}]");
        return t;
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
