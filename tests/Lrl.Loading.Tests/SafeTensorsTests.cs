using System.Text;

namespace Lrl.Loading.Tests;

/// <summary>The safetensors reader's validation (every malformation is a clear error naming file and tensor) and the writer.</summary>
public sealed class SafeTensorsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("lrl-st").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private string Raw(string header, int dataBytes, ulong? headerLenOverride = null, string name = "m.safetensors")
    {
        var h = Encoding.UTF8.GetBytes(header);
        var path = Path.Combine(_dir, name);
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes(headerLenOverride ?? (ulong)h.Length));
        f.Write(h);
        f.Write(new byte[dataBytes]);
        return path;
    }

    private static ModelFormatException Bad(string path)
    {
        var e = Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Contains(Path.GetFileName(path), e.Message);
        return e;
    }

    [Fact]
    public void WriterRoundTripsEveryDType()
    {
        var w = new SafeTensorsWriter().AddMetadata("format", "pt");
        var rng = new Random(1);
        var expected = new Dictionary<string, byte[]>();
        foreach (var dt in Enum.GetValues<DType>())
        {
            var shape = new[] { 3, 5 };
            var bytes = new byte[15 * dt.Size()];
            rng.NextBytes(bytes);
            w.Add("t." + dt, dt, shape, bytes);
            expected["t." + dt] = bytes;
        }
        var path = Path.Combine(_dir, "rt.safetensors");
        w.Write(path);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(expected.Count, f.Tensors.Count);
        foreach (var (name, bytes) in expected)
        {
            var t = f.Get(name);
            Assert.Equal([3, 5], t.Shape);
            Assert.Equal(bytes, t.Bytes.ToArray());
        }
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp")); // the temporary file was renamed
    }

    [Fact]
    public void WriterRejectsWrongByteCounts()
    {
        var w = new SafeTensorsWriter();
        Assert.Throws<ArgumentException>(() => w.Add("x", DType.F32, [2, 2], new byte[15]));
        w.Add("y", DType.F16, [4], s => s.Write(new byte[3]));
        var path = Path.Combine(_dir, "bad.safetensors");
        Assert.Throws<InvalidOperationException>(() => w.Write(path));
        Assert.False(File.Exists(path)); // nothing half-written
        Assert.Empty(Directory.GetFiles(_dir));
    }

    [Fact]
    public void Truncated() => Assert.Contains("truncated", Bad(TruncatedFile()).Message);

    private string TruncatedFile()
    {
        var path = Path.Combine(_dir, "short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);
        return path;
    }

    [Fact]
    public void TruncatedData()
    {
        var e = Bad(Raw("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void HeaderLengthPastTheEnd() =>
        Assert.Contains("past the end", Bad(Raw("""{}""", 0, headerLenOverride: 1_000_000)).Message);

    [Fact]
    public void OverlappingOffsets()
    {
        var e = Bad(Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12));
        Assert.Contains("overlaps", e.Message);
    }

    [Fact]
    public void WrongDTypeSize()
    {
        var e = Bad(Raw("""{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,12]}}""", 12));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("needs 6", e.Message);
    }

    [Fact]
    public void BadJson() => Assert.Contains("JSON", Bad(Raw("""{"w":{"dtype":"F32",""", 0)).Message);

    [Fact]
    public void UnsupportedDType() => Assert.Contains("'F8_E4M3'", Bad(Raw("""{"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}""", 1)).Message);

    [Fact]
    public void NegativeOrOverflowingShape()
    {
        Bad(Raw("""{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", 4));
        Bad(Raw("""{"w":{"dtype":"F32","shape":[2147483647,2147483647,2147483647],"data_offsets":[0,4]}}""", 4));
    }

    [Fact]
    public void MissingTensorNamesFileAndTensor()
    {
        var w = new SafeTensorsWriter();
        w.Add("present", [2], [1f, 2f]);
        var path = Path.Combine(_dir, "model.safetensors");
        w.Write(path);
        using var ck = Checkpoint.Open(_dir);
        var e = Assert.Throws<ModelFormatException>(() => ck.Get("model.norm.weight"));
        Assert.Contains("model.norm.weight", e.Message);
        var s = Assert.Throws<ModelFormatException>(() => ck.Get("present", 3));
        Assert.Contains("expected [3]", s.Message);
    }

    [Fact]
    public void ShardedIndexIsValidated()
    {
        new SafeTensorsWriter().Add("a", [1], [1f]).Write(Path.Combine(_dir, "s1.safetensors"));
        new SafeTensorsWriter().Add("b", [1], [2f]).Write(Path.Combine(_dir, "s2.safetensors"));
        File.WriteAllText(Path.Combine(_dir, "model.safetensors.index.json"), """{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}""");
        using (var ck = Checkpoint.Open(_dir))
        {
            Assert.Equal(2f, ck.Get("b").As<float>()[0]);
            Assert.Equal(2, ck.Files.Count);
        }
        File.WriteAllText(Path.Combine(_dir, "model.safetensors.index.json"), """{"weight_map":{"a":"s2.safetensors"}}""");
        Assert.Contains("does not contain", Assert.Throws<ModelFormatException>(() => Checkpoint.Open(_dir).Dispose()).Message);
        File.WriteAllText(Path.Combine(_dir, "model.safetensors.index.json"), """{"weight_map":{"a":"../s1.safetensors"}}""");
        Assert.Throws<ModelFormatException>(() => Checkpoint.Open(_dir).Dispose());
        File.WriteAllText(Path.Combine(_dir, "model.safetensors.index.json"), "[1,");
        Assert.Contains("JSON", Assert.Throws<ModelFormatException>(() => Checkpoint.Open(_dir).Dispose()).Message);
    }

    [Fact]
    public void RealShardedCheckpointLoadsZeroCopy()
    {
        using var ck = Checkpoint.Open(SharedData.Model("stories260k-bf16-sharded"));
        Assert.Equal(2, ck.Files.Count);
        var t = ck.Get("model.embed_tokens.weight");
        Assert.Equal(DType.BF16, t.DType);
        Assert.Equal(2 * t.ElementCount, t.ByteLength);
    }

    [Fact]
    public void EveryByteOfATruncatedRealFileIsRejectedCleanly()
    {
        var src = Path.Combine(SharedData.Model("stories260k"), "model.safetensors");
        var bytes = File.ReadAllBytes(src);
        var path = Path.Combine(_dir, "cut.safetensors");
        foreach (var len in new[] { 0, 7, 8, 100, bytes.Length / 2, bytes.Length - 1 })
        {
            File.WriteAllBytes(path, bytes[..len]);
            Bad(path);
        }
    }
}
