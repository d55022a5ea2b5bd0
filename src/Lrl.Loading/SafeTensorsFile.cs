using System.IO.MemoryMappedFiles;
using System.Text.Json;

namespace Lrl.Loading;

/// <summary>
/// One memory-mapped .safetensors file: an 8-byte little-endian header length, a JSON header
/// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}, then the data block.
/// Everything in the header is validated before any tensor is handed out, so no view can read out of bounds.
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    /// <summary>Headers larger than this are refused (the format's own reference limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _base;
    private readonly Dictionary<string, HostTensor> _tensors = new(StringComparer.Ordinal);

    public string Path { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>Tensors in file order.</summary>
    public IReadOnlyList<HostTensor> Tensors { get; }

    private SafeTensorsFile(string path)
    {
        Path = path;
        var target = ResolveRegularFile(path);
        FileLength = target.Length;
        if (FileLength < 8) throw new ModelFormatException(path, $"truncated: {FileLength} bytes, a safetensors file has at least an 8-byte header length");
        try
        {
            _map = MemoryMappedFile.CreateFromFile(target.FullName, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + _view.PointerOffset;
            (Metadata, Tensors) = Parse();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// The file a path names, following symbolic links (the Hugging Face cache links snapshots to blobs); a missing
    /// target, a link loop, or something that is not a regular file (a device, /proc, a pipe) is refused.
    /// </summary>
    internal static FileInfo ResolveRegularFile(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists && info.LinkTarget is null) throw new ModelFormatException(path, "file not found");
        if (info.LinkTarget is not null)
        {
            FileSystemInfo? final;
            try { final = info.ResolveLinkTarget(returnFinalTarget: true); }
            catch (IOException e) { throw new ModelFormatException(path, $"symbolic link cannot be followed ({e.Message})"); }
            if (final is not FileInfo f || !f.Exists) throw new ModelFormatException(path, $"symbolic link to {final?.FullName ?? info.LinkTarget}, which does not exist");
            info = f;
        }
        var full = info.FullName;
        if (full.StartsWith("/dev/", StringComparison.Ordinal) || full.StartsWith("/proc/", StringComparison.Ordinal) || full.StartsWith("/sys/", StringComparison.Ordinal))
            throw new ModelFormatException(path, $"{full} is not a regular file");
        return info;
    }

    /// <summary>Opens and validates a safetensors file; a malformed file raises <see cref="ModelFormatException"/>.</summary>
    public static SafeTensorsFile Open(string path) => new(System.IO.Path.GetFullPath(path));

    public bool TryGet(string name, out HostTensor tensor) => _tensors.TryGetValue(name, out tensor);

    public HostTensor Get(string name) =>
        _tensors.TryGetValue(name, out var t) ? t : throw new ModelFormatException(Path, $"missing tensor '{name}'");

    private (IReadOnlyDictionary<string, string>, IReadOnlyList<HostTensor>) Parse()
    {
        ulong headerLen = *(ulong*)_base;
        if (headerLen > (ulong)(FileLength - 8))
            throw new ModelFormatException(Path, $"header length {headerLen} runs past the end of the file ({FileLength} bytes)");
        if (headerLen > MaxHeaderBytes)
            throw new ModelFormatException(Path, $"header length {headerLen} exceeds the {MaxHeaderBytes}-byte limit");
        long dataStart = 8 + (long)headerLen;
        long dataLen = FileLength - dataStart;
        var headerBytes = new ReadOnlySpan<byte>(_base + 8, (int)headerLen);

        JsonDocument doc;
        try { doc = JsonDocument.Parse(headerBytes.ToArray(), new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 64 }); }
        catch (JsonException e) { throw new ModelFormatException(Path, $"header is not valid JSON: {JsonFile.Reason(e)}"); }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(Path, "header JSON is not an object");
            var metadata = new Dictionary<string, string>();
            var list = new List<(HostTensor t, long begin, long end)>();
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                        throw new ModelFormatException(Path, "__metadata__ is not an object");
                    foreach (var m in prop.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                list.Add(ParseEntry(prop.Name, prop.Value, dataStart, dataLen));
            }

            // Offsets must not overlap (aliasing tensors would make a writer's layout ambiguous).
            var sorted = list.OrderBy(e => e.begin).ThenBy(e => e.end).ToList();
            for (int i = 1; i < sorted.Count; i++)
                if (sorted[i].begin < sorted[i - 1].end)
                    throw new ModelFormatException(Path,
                        $"tensor '{sorted[i].t.Name}' data [{sorted[i].begin}, {sorted[i].end}) overlaps tensor '{sorted[i - 1].t.Name}' [{sorted[i - 1].begin}, {sorted[i - 1].end})");

            foreach (var e in list) _tensors[e.t.Name] = e.t;
            return (metadata, list.Select(e => e.t).ToList());
        }
    }

    private (HostTensor, long, long) ParseEntry(string name, JsonElement e, long dataStart, long dataLen)
    {
        string Where(string msg) => $"tensor '{name}': {msg}";
        if (e.ValueKind != JsonValueKind.Object) throw new ModelFormatException(Path, Where("entry is not an object"));
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw new ModelFormatException(Path, Where("missing 'dtype'"));
        var dtype = DTypes.TryParseSafeTensors(dt.GetString()!)
            ?? throw new ModelFormatException(Path, Where($"unsupported dtype '{dt.GetString()}' (supported: F32, F16, BF16, I8, U8, I32, I64)"));
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw new ModelFormatException(Path, Where("missing 'shape'"));
        var shape = new int[sh.GetArrayLength()];
        long count = 1;
        int k = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0 || v > int.MaxValue)
                throw new ModelFormatException(Path, Where($"bad shape {sh.GetRawText()}"));
            shape[k++] = (int)v;
            count = v == 0 ? 0 : (count > long.MaxValue / v ? throw new ModelFormatException(Path, Where($"shape {sh.GetRawText()} overflows")) : count * v);
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new ModelFormatException(Path, Where("missing 'data_offsets' [begin, end]"));
        if (!off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw new ModelFormatException(Path, Where($"bad data_offsets {off.GetRawText()}"));
        if (end > dataLen)
            throw new ModelFormatException(Path, Where($"data_offsets {off.GetRawText()} run past the end of the data ({dataLen} bytes): file truncated?"));
        long expected = count * dtype.Size();
        if (end - begin != expected)
            throw new ModelFormatException(Path, Where($"holds {end - begin} bytes but shape {sh.GetRawText()} of {dtype} needs {expected}"));
        return (new HostTensor(name, dtype, shape, _base + dataStart + begin, end - begin, Path), begin, end);
    }

    public void Dispose()
    {
        if (_base != null) { _view!.SafeMemoryMappedViewHandle.ReleasePointer(); _base = null; }
        _view?.Dispose();
        _map?.Dispose();
    }
}
