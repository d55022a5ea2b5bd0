using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;

namespace Lrl.Fuzz.Tests;

/// <summary>
/// Seeded, structure-aware mutations of a model folder's files: JSON values replaced by other types and extreme
/// numbers, keys deleted or duplicated, text truncated; safetensors header lengths, offsets, shapes, dtypes and names
/// changed, files truncated; binary files (tokenizer.model) with bytes flipped and lengths broken.
/// </summary>
public sealed class Mutator(int seed)
{
    private readonly Random _rng = new(seed);

    private static readonly JsonNode?[] Odd =
    [
        null, JsonValue.Create(-1), JsonValue.Create(0), JsonValue.Create(1.5), JsonValue.Create(int.MaxValue), JsonValue.Create(long.MaxValue),
        JsonValue.Create(1e308), JsonValue.Create(-1e308), JsonValue.Create("8"), JsonValue.Create(""), JsonValue.Create("x\uFFFD"),
        JsonValue.Create(true), new JsonArray(), new JsonObject(), new JsonArray(1, 2, 3), JsonValue.Create(4294967296L), JsonValue.Create(-2147483648),
    ];

    /// <summary>Mutates one file of <paramref name="dir"/> (chosen at random); returns what was done, for the report.</summary>
    public string MutateFolder(string dir)
    {
        var files = Directory.GetFiles(dir).Where(f => new FileInfo(f).Length > 0).OrderBy(f => f, StringComparer.Ordinal).ToArray();
        var file = files[_rng.Next(files.Length)];
        var name = Path.GetFileName(file);
        string what = name.EndsWith(".json", StringComparison.Ordinal) || name.EndsWith(".jinja", StringComparison.Ordinal) ? MutateJson(file)
            : name.EndsWith(".safetensors", StringComparison.Ordinal) ? MutateSafetensors(file)
            : MutateBytes(file);
        return $"{name}: {what}";
    }

    private string MutateJson(string path)
    {
        try { return MutateJsonTree(path); }
        catch (ArgumentException) { return MutateBytes(path); } // a duplicate key from an earlier mutation: JsonNode cannot walk it
    }

    private string MutateJsonTree(string path)
    {
        var text = File.ReadAllText(path);
        int choice = _rng.Next(10);
        if (choice == 0)
        {
            int cut = _rng.Next(text.Length);
            File.WriteAllText(path, text[..cut]);
            return $"truncated at {cut}";
        }
        if (choice == 1)
        {
            File.WriteAllText(path, _rng.Next(3) switch { 0 => "[]", 1 => "\"text\"", _ => "null" });
            return "root replaced";
        }
        JsonNode? root;
        try { root = JsonNode.Parse(text); _ = root?.ToJsonString(); }
        catch (Exception e) when (e is System.Text.Json.JsonException or ArgumentException) { return MutateBytes(path); } // not JSON, or a duplicate key already
        if (root is null) return "null root";
        var nodes = new List<JsonNode>();
        void Walk(JsonNode n, int depth)
        {
            nodes.Add(n);
            if (depth > 6 || nodes.Count > 5000) return;
            if (n is JsonObject o) foreach (var (_, v) in o) { if (v is not null) Walk(v, depth + 1); }
            else if (n is JsonArray a) for (int i = 0; i < Math.Min(a.Count, 50); i++) if (a[i] is not null) Walk(a[i]!, depth + 1);
        }
        Walk(root, 0);
        // Prefer scalar and small nodes: the fields a loader reads.
        var target = nodes[_rng.Next(nodes.Count)];
        var parent = target.Parent;
        if (parent is null) return MutateBytes(path);
        string desc;
        if (choice == 2 && parent is JsonObject po)
        {
            var key = po.First(kv => ReferenceEquals(kv.Value, target)).Key;
            po.Remove(key);
            desc = $"deleted {target.GetPath()}";
        }
        else if (choice == 3 && parent is JsonObject dup)
        {
            var key = dup.First(kv => ReferenceEquals(kv.Value, target)).Key;
            var s = root.ToJsonString();
            // A duplicate key, written as raw text (JsonNode cannot hold one).
            int at = s.IndexOf("\"" + key + "\":", StringComparison.Ordinal);
            if (at < 0) return "no duplicate";
            File.WriteAllText(path, s.Insert(at, $"\"{key}\":{Odd[_rng.Next(Odd.Length)]?.ToJsonString() ?? "null"},"));
            return $"duplicated key {key}";
        }
        else
        {
            var replacement = _rng.Next(4) == 0 && target is JsonValue v && v.TryGetValue<double>(out var d)
                ? JsonValue.Create(_rng.Next(2) == 0 ? -d : d * 1e9)
                : Odd[_rng.Next(Odd.Length)]?.DeepClone();
            desc = $"{target.GetPath()} = {replacement?.ToJsonString() ?? "null"}";
            if (parent is JsonObject o2) o2[o2.First(kv => ReferenceEquals(kv.Value, target)).Key] = replacement;
            else if (parent is JsonArray a2) a2[a2.IndexOf(target)] = replacement;
        }
        File.WriteAllText(path, root.ToJsonString());
        return desc;
    }

    private string MutateSafetensors(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8) return MutateBytes(path);
        ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        int choice = _rng.Next(6);
        if (choice == 0 || headerLen > (ulong)bytes.Length - 8)
        {
            ulong[] lens = [0, 1, 2, headerLen - 1, headerLen + 1, (ulong)bytes.Length, ulong.MaxValue, 1UL << 40, (ulong)_rng.Next()];
            var v = lens[_rng.Next(lens.Length)];
            BinaryPrimitives.WriteUInt64LittleEndian(bytes, v);
            File.WriteAllBytes(path, bytes);
            return $"header length {v}";
        }
        if (choice == 1)
        {
            int cut = _rng.Next(bytes.Length);
            File.WriteAllBytes(path, bytes[..cut]);
            return $"truncated at {cut}";
        }
        var header = Encoding.UTF8.GetString(bytes, 8, (int)headerLen);
        JsonObject root;
        try { root = JsonNode.Parse(header)!.AsObject(); } catch (Exception) { return MutateBytes(path); }
        var tensors = root.Where(kv => kv.Key != "__metadata__").Select(kv => kv.Key).ToList();
        if (tensors.Count == 0) return MutateBytes(path);
        var name = tensors[_rng.Next(tensors.Count)];
        var t = root[name]!.AsObject();
        string desc;
        switch (choice)
        {
            case 2:
            {
                var shape = t["shape"]!.AsArray();
                JsonNode?[] shapes = [new JsonArray(), new JsonArray(-1), new JsonArray(4611686018427387904L, 2), new JsonArray(int.MaxValue, int.MaxValue, int.MaxValue),
                    new JsonArray(0), JsonValue.Create("x"), new JsonArray(1.5), new JsonArray(shape.Count > 0 ? shape[0]!.GetValue<long>() + 1 : 1)];
                t["shape"] = shapes[_rng.Next(shapes.Length)]?.DeepClone();
                desc = $"{name}.shape = {t["shape"]?.ToJsonString()}";
                break;
            }
            case 3:
            {
                JsonNode?[] offsets = [new JsonArray(0, 0), new JsonArray(5, 1), new JsonArray(0, long.MaxValue), new JsonArray(-8, 8), JsonValue.Create("0,8"), new JsonArray(0), new JsonArray(1, 2, 3), new JsonArray(0.5, 4)];
                t["data_offsets"] = offsets[_rng.Next(offsets.Length)]?.DeepClone();
                desc = $"{name}.data_offsets = {t["data_offsets"]?.ToJsonString()}";
                break;
            }
            case 4:
            {
                string[] dtypes = ["F32", "F16", "BF16", "I8", "U8", "I64", "F64", "BOOL", "X9", "", "f32"];
                t["dtype"] = dtypes[_rng.Next(dtypes.Length)];
                desc = $"{name}.dtype = {t["dtype"]}";
                break;
            }
            default:
            {
                root.Remove(name);
                string[] names = ["", "\uD800x", name + "\u0000", new string('a', 300), name.ToUpperInvariant()];
                var nn = names[_rng.Next(names.Length)];
                root[nn] = t;
                desc = $"renamed {name}";
                break;
            }
        }
        var newHeader = Encoding.UTF8.GetBytes(root.ToJsonString());
        var output = new byte[8 + newHeader.Length + bytes.Length - 8 - (int)headerLen];
        BinaryPrimitives.WriteUInt64LittleEndian(output, (ulong)newHeader.Length);
        newHeader.CopyTo(output, 8);
        bytes.AsSpan(8 + (int)headerLen).CopyTo(output.AsSpan(8 + newHeader.Length));
        File.WriteAllBytes(path, output);
        return desc;
    }

    private string MutateBytes(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length == 0) return "empty";
        int choice = _rng.Next(3);
        if (choice == 0)
        {
            int cut = _rng.Next(bytes.Length);
            File.WriteAllBytes(path, bytes[..cut]);
            return $"truncated at {cut}";
        }
        int n = 1 + _rng.Next(8);
        for (int i = 0; i < n; i++)
        {
            int at = choice == 1 ? _rng.Next(Math.Min(bytes.Length, 64)) : _rng.Next(bytes.Length);
            bytes[at] = (byte)(_rng.Next(3) == 0 ? 0xFF : _rng.Next(256));
        }
        File.WriteAllBytes(path, bytes);
        return $"{n} bytes changed";
    }
}
