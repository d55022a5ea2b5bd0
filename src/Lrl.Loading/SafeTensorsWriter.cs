using System.Text;
using System.Text.Json;

namespace Lrl.Loading;

/// <summary>
/// Builds a .safetensors file: tensors are queued (from memory or as streaming producers, so multi-GB checkpoints
/// never have to sit in memory), then <see cref="Write"/> lays out the header and data and writes it atomically.
/// The layout follows the format: 8-byte little-endian header length, JSON header padded with spaces to 8 bytes, data.
/// </summary>
public sealed class SafeTensorsWriter
{
    private sealed record Entry(string Name, DType DType, int[] Shape, long Bytes, Action<Stream> Produce);

    private readonly List<Entry> _entries = new();
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);

    /// <summary>Total bytes of tensor data queued so far.</summary>
    public long DataLength { get; private set; }
    public int Count => _entries.Count;
    public IReadOnlyDictionary<string, string> Metadata => _metadata;

    public SafeTensorsWriter AddMetadata(string key, string value)
    {
        _metadata[key] = value;
        return this;
    }

    /// <summary>Queues a tensor whose bytes <paramref name="produce"/> writes when the file is written (exactly shape × dtype size bytes).</summary>
    public SafeTensorsWriter Add(string name, DType dtype, int[] shape, Action<Stream> produce)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved", nameof(name));
        if (!_names.Add(name)) throw new ArgumentException($"tensor '{name}' added twice", nameof(name));
        long count = 1;
        foreach (var d in shape)
        {
            if (d < 0) throw new ArgumentException($"tensor '{name}': negative dimension in shape [{string.Join(", ", shape)}]");
            count = checked(count * d);
        }
        long bytes = checked(count * dtype.Size());
        _entries.Add(new Entry(name, dtype, (int[])shape.Clone(), bytes, produce));
        DataLength += bytes;
        return this;
    }

    /// <summary>Queues a tensor from bytes (copied now).</summary>
    public SafeTensorsWriter Add(string name, DType dtype, int[] shape, ReadOnlySpan<byte> data)
    {
        var copy = data.ToArray();
        Add(name, dtype, shape, s => s.Write(copy, 0, copy.Length));
        var e = _entries[^1];
        if (e.Bytes != copy.Length)
        {
            _entries.RemoveAt(_entries.Count - 1); _names.Remove(name); DataLength -= e.Bytes;
            throw new ArgumentException($"tensor '{name}': {copy.Length} bytes given but shape [{string.Join(", ", shape)}] of {dtype} needs {e.Bytes}");
        }
        return this;
    }

    /// <summary>Queues an f32 tensor.</summary>
    public SafeTensorsWriter Add(string name, int[] shape, ReadOnlySpan<float> data) =>
        Add(name, DType.F32, shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data));

    /// <summary>Queues a copy of an existing tensor (e.g. from a memory-mapped checkpoint; read when written).</summary>
    public unsafe SafeTensorsWriter Add(HostTensor t, string? name = null)
    {
        var tensor = t;
        return Add(name ?? t.Name, t.DType, t.Shape.ToArray(), s =>
        {
            const int Chunk = 1 << 20;
            byte* p = (byte*)tensor.Pointer;
            for (long off = 0; off < tensor.ByteLength; off += Chunk)
                s.Write(new ReadOnlySpan<byte>(p + off, (int)Math.Min(Chunk, tensor.ByteLength - off)));
        });
    }

    /// <summary>The JSON header (without the length prefix and padding).</summary>
    public byte[] BuildHeader()
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (_metadata.Count > 0)
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in _metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long off = 0;
            foreach (var e in _entries)
            {
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", e.DType.SafeTensorsName());
                w.WriteStartArray("shape");
                foreach (var d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(off);
                w.WriteNumberValue(off + e.Bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                off += e.Bytes;
            }
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    /// <summary>Writes the file atomically (temporary file, then rename). A producer writing the wrong byte count is an error.</summary>
    public void Write(string path)
    {
        var header = BuildHeader();
        int padded = (header.Length + 7) / 8 * 8;
        AtomicFile.Write(path, s =>
        {
            Span<byte> len = stackalloc byte[8];
            BitConverter.TryWriteBytes(len, (ulong)padded);
            s.Write(len);
            s.Write(header);
            for (int i = header.Length; i < padded; i++) s.WriteByte((byte)' ');
            foreach (var e in _entries)
            {
                long before = s.Position;
                e.Produce(s);
                long written = s.Position - before;
                if (written != e.Bytes)
                    throw new InvalidOperationException($"tensor '{e.Name}': producer wrote {written} bytes, expected {e.Bytes}");
            }
        });
    }
}
