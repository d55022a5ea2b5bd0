using System.Text.Json.Nodes;
using Lrl.Cpu;
using Lrl.Loading;
using Lrl.Models;

namespace Lrl.Quant.Tests;

/// <summary>Malformed quantized checkpoints fail with a ModelFormatException naming the file and the tensor.</summary>
public class ErrorTests : IDisposable
{
    private const string Q = "model.layers.0.self_attn.q_proj";
    private readonly List<string> _dirs = new();
    private readonly string _good;

    public ErrorTests()
    {
        _good = Path.Combine(Track(CheckpointWriters.TempDir("good")), "m");
        Quantizer.QuantizeModel(SharedData.Model("stories260k"), _good, 4, "32", null);
    }

    private string Track(string d) { _dirs.Add(d); return d; }

    public void Dispose() { foreach (var d in _dirs) if (Directory.Exists(d)) Directory.Delete(d, true); }

    private static ModelFormatException LoadFails(string dir, params string[] mentions)
    {
        using var cpu = new CpuBackend(1);
        var e = Assert.Throws<ModelFormatException>(() => ModelRegistry.Load(dir, cpu).Dispose());
        foreach (var m in mentions) Assert.Contains(m, e.Message);
        return e;
    }

    [Fact]
    public void GoodFolderLoads()
    {
        using var cpu = new CpuBackend(1);
        using var m = ModelRegistry.Load(_good, cpu);
        Assert.Equal("Q4_G32", m.WeightFormat);
    }

    [Fact]
    public void WrongPackedSize()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (t, w) =>
        {
            if (t.Name != Q + ".qweight") return true;
            w.Add(t.Name, DType.U8, [t.Shape[0], t.Shape[1] - 2], t.Bytes[..(t.Shape[0] * (t.Shape[1] - 2))]);
            return false;
        }));
        LoadFails(dir, "model.safetensors", Q + ".qweight", "[64, 30]");
    }

    [Fact]
    public void WrongCodeDType()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (t, w) =>
        {
            if (t.Name != Q + ".qweight") return true;
            w.Add(t.Name, DType.I8, t.Shape, t.Bytes);
            return false;
        }));
        LoadFails(dir, "model.safetensors", Q + ".qweight", "I8");
    }

    [Fact]
    public void MissingScales()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (t, _) => t.Name != Q + ".scales"));
        LoadFails(dir, "model.safetensors", Q + ".scales");
    }

    [Fact]
    public void ScalesOfWrongShape()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (t, w) =>
        {
            if (t.Name != Q + ".scales") return true;
            w.Add(t.Name, DType.F16, [t.Shape[0] * t.Shape[1]], t.Bytes);
            return false;
        }));
        LoadFails(dir, "model.safetensors", Q + ".scales");
    }

    [Fact]
    public void ZerosOfWrongShape()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (t, w) =>
        {
            if (t.Name == Q + ".scales") w.Add(Q + ".zeros", DType.U8, [t.Shape[0], t.Shape[1] + 1], new byte[t.Shape[0] * (t.Shape[1] + 1)]);
            return true;
        }));
        LoadFails(dir, "model.safetensors", Q + ".zeros");
    }

    [Fact]
    public void GroupSizeNotDividingTheRow()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (_, _) => true, meta =>
        {
            var j = JsonNode.Parse(meta[QuantMetadata.Key])!.AsObject();
            j["tensors"]![Q]!["group"] = 48;
            meta[QuantMetadata.Key] = j.ToJsonString();
        }));
        LoadFails(dir, "model.safetensors", Q, "group size 48");
    }

    [Theory]
    [InlineData("{not json")]
    [InlineData("{\"version\": 99, \"bits\": 4, \"group\": \"auto\", \"tensors\": {}}")]
    [InlineData("{\"version\": 1, \"bits\": 4, \"group\": \"auto\"}")]
    [InlineData("{\"version\": 1, \"bits\": 4, \"group\": \"auto\", \"tensors\": {\"model.layers.0.self_attn.q_proj\": {\"bits\": 3, \"group\": 32}}}")]
    [InlineData("{\"version\": \"one\", \"bits\": 4, \"tensors\": {}}")]
    public void BadMetadata(string json)
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (_, _) => true, meta => meta[QuantMetadata.Key] = json));
        LoadFails(dir, "model.safetensors", QuantMetadata.Key);
    }

    [Fact]
    public void TensorMissingFromMetadata()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (_, _) => true, meta =>
        {
            var j = JsonNode.Parse(meta[QuantMetadata.Key])!.AsObject();
            j["tensors"]!.AsObject().Remove(Q);
            meta[QuantMetadata.Key] = j.ToJsonString();
        }));
        LoadFails(dir, "model.safetensors", Q + ".qweight");
    }

    [Fact]
    public void MetadataMissingEntirely()
    {
        var dir = Track(CheckpointWriters.Rewrite(_good, (_, _) => true, meta => meta.Remove(QuantMetadata.Key),
            config: c => c.Remove("quantization_config")));
        LoadFails(dir, "model.safetensors", ".qweight", QuantMetadata.Key); // the first quantized tensor loaded (the embedding table)
    }

    [Fact]
    public void GptqWrongZerosShapeAndGroup()
    {
        var (qDir, dDir) = CheckpointWriters.Write(SharedData.Model("stories260k"), "gptq", 32, false);
        Track(qDir); Track(dDir);
        var dir = Track(CheckpointWriters.Rewrite(qDir, (t, w) =>
        {
            if (t.Name != Q + ".qzeros") return true;
            w.Add(t.Name, DType.I32, [t.Shape[0] * t.Shape[1]], t.Bytes);
            return false;
        }));
        LoadFails(dir, "model.safetensors", Q + ".qzeros");

        var dir2 = Track(CheckpointWriters.Rewrite(qDir, (t, _) => true, config: c => c["quantization_config"]!["group_size"] = 48));
        LoadFails(dir2, "model.safetensors", "group size 48");

        var dir3 = Track(CheckpointWriters.Rewrite(qDir, (t, _) => t.Name != Q + ".scales"));
        LoadFails(dir3, "model.safetensors", Q + ".scales");

        var dir4 = Track(CheckpointWriters.Rewrite(qDir, (t, _) => true, config: c => c["quantization_config"]!["bits"] = 3));
        LoadFails(dir4, "config.json", "3 bits");

        var dir5 = Track(CheckpointWriters.Rewrite(qDir, (t, w) =>
        {
            if (t.Name != Q + ".g_idx") return true;
            var g = t.As<int>().ToArray(); g[5] = 99;
            w.Add(t.Name, DType.I32, t.Shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(g.AsSpan()));
            return false;
        }));
        LoadFails(dir5, "model.safetensors", Q + ".g_idx");
    }

    [Fact]
    public void AwqWrongPackedSize()
    {
        var (qDir, dDir) = CheckpointWriters.Write(SharedData.Model("stories260k"), "awq", 32, false);
        Track(qDir); Track(dDir);
        var dir = Track(CheckpointWriters.Rewrite(qDir, (t, w) =>
        {
            if (t.Name != Q + ".qweight") return true;
            w.Add(t.Name, DType.I32, [t.Shape[1], t.Shape[0]], t.Bytes);
            return false;
        }));
        LoadFails(dir, "model.safetensors", Q + ".qweight");
    }
}
