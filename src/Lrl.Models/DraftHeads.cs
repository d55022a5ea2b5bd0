using System.Text.Json;
using System.Text.Json.Nodes;
using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// Medusa-1 draft heads: K heads on the model's final hidden state h (after the final norm); head k (1-based) predicts
/// the token k + 1 positions after h's own position. Each head is a stack of residual blocks h ← h + SiLU(W h + b)
/// followed by an output projection: its own [vocab, hidden] matrix (Medusa's published layout) or the model's own
/// output projection (lrlrun's layout for small models, where a vocabulary-sized matrix per head would rival the
/// model: no <c>{i}.{L}.weight</c> tensor, <c>"lrlrun_shared_head": true</c> in config.json).
///
/// <para>Files: <c>config.json</c> (<c>medusa_num_heads</c>, <c>medusa_num_layers</c>, <c>hidden_size</c>,
/// <c>vocab_size</c>) and <c>medusa_lm_head.safetensors</c> with, per head i and layer l, <c>{i}.{l}.linear.weight</c>
/// [hidden, hidden] and <c>{i}.{l}.linear.bias</c> [hidden], then <c>{i}.{L}.weight</c> [vocab, hidden] unless shared.
/// Weights are held as f32 on the host (the trainer updates them in place) and loaded into a backend on first use.</para>
/// </summary>
public sealed unsafe class DraftHeads : IDisposable
{
    public const string WeightsFile = "medusa_lm_head.safetensors";

    public int Count { get; }
    public int Layers { get; }
    public int Hidden { get; }
    public int Vocab { get; }
    public bool SharedHead => Output is null;

    /// <summary>[head · Layers + layer]: W as [hidden (out), hidden (in)] row-major, pinned.</summary>
    public float[][] W { get; }
    /// <summary>[head · Layers + layer]: the block's bias.</summary>
    public float[][] B { get; }
    /// <summary>[head]: its own output projection [vocab, hidden], or null (the model's is shared).</summary>
    public float[][]? Output { get; }

    private DraftHeads(int count, int layers, int hidden, int vocab, bool shared)
    {
        if (count is < 1 or > 64) throw new LrlException($"draft heads: medusa_num_heads must be in 1..64, got {count}");
        if (layers is < 1 or > 16) throw new LrlException($"draft heads: medusa_num_layers must be in 1..16, got {layers}");
        if (hidden < 1 || vocab < 1) throw new LrlException($"draft heads: hidden_size {hidden} and vocab_size {vocab} must be positive");
        Count = count; Layers = layers; Hidden = hidden; Vocab = vocab;
        W = new float[count * layers][];
        B = new float[count * layers][];
        for (int i = 0; i < W.Length; i++)
        {
            W[i] = GC.AllocateArray<float>(hidden * hidden, pinned: true);
            B[i] = GC.AllocateArray<float>(hidden, pinned: true);
        }
        if (!shared)
        {
            Output = new float[count][];
            for (int i = 0; i < count; i++) Output[i] = GC.AllocateArray<float>(checked(vocab * hidden), pinned: true);
        }
    }

    /// <summary>
    /// New heads sharing the model's output projection, every block's W and b zero: each head starts as the identity
    /// (h + SiLU(0) = h), that is as the model's own next-token prediction (Medusa's initialization).
    /// </summary>
    public static DraftHeads Create(int count, int layers, int hidden, int vocab) => new(count, layers, hidden, vocab, shared: true);

    /// <summary>Loads heads from a folder (config.json and <see cref="WeightsFile"/>); errors name the file and field.</summary>
    public static DraftHeads Load(string dir)
    {
        if (!Directory.Exists(dir)) throw new LrlException($"draft heads folder not found: {dir}");
        string configPath = Path.Combine(dir, "config.json"), weightsPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(configPath)) throw new LrlException($"{configPath}: missing (draft heads need medusa_num_heads, medusa_num_layers, hidden_size)");
        if (!File.Exists(weightsPath)) throw new LrlException($"{weightsPath}: missing");
        JsonNode? config;
        try { config = JsonNode.Parse(File.ReadAllText(configPath)); }
        catch (JsonException e) { throw new LrlException($"{configPath}: not valid JSON ({e.Message})"); }
        int Field(string name, int? fallback = null)
        {
            var node = config?[name];
            if (node is null) return fallback ?? throw new LrlException($"{configPath}: field '{name}' is missing");
            try { return node.GetValue<int>(); }
            catch (Exception e) when (e is FormatException or InvalidOperationException) { throw new LrlException($"{configPath}: field '{name}' must be an integer"); }
        }
        int count = Field("medusa_num_heads"), layers = Field("medusa_num_layers", 1);
        using var file = SafeTensorsFile.Open(weightsPath);
        // Medusa's config names its base model, not the sizes: take them from the first head's tensors.
        if (!file.TryGet("0.0.linear.weight", out var first) || first.Rank != 2)
            throw new LrlException($"{weightsPath}: tensor '0.0.linear.weight' [hidden, hidden] is missing");
        int hidden = Field("hidden_size", first.Shape[1]);
        bool shared = !file.TryGet($"0.{layers}.weight", out var out0);
        int vocab = shared ? Field("vocab_size", 0) : out0.Shape[0];
        if (shared && vocab == 0) throw new LrlException($"{configPath}: field 'vocab_size' is missing (heads sharing the model's output projection)");
        var heads = new DraftHeads(count, layers, hidden, vocab, shared);
        for (int i = 0; i < count; i++)
        {
            for (int l = 0; l < layers; l++)
            {
                Read(file, weightsPath, $"{i}.{l}.linear.weight", [hidden, hidden], heads.W[i * layers + l]);
                Read(file, weightsPath, $"{i}.{l}.linear.bias", [hidden], heads.B[i * layers + l]);
            }
            if (!shared) Read(file, weightsPath, $"{i}.{layers}.weight", [vocab, hidden], heads.Output![i]);
            else if (file.TryGet($"{i}.{layers}.weight", out _)) throw new LrlException($"{weightsPath}: head {i} has its own output projection but head 0 has none");
        }
        return heads;
    }

    private static void Read(SafeTensorsFile file, string path, string name, int[] shape, float[] into)
    {
        if (!file.TryGet(name, out var t)) throw new LrlException($"{path}: tensor '{name}' is missing");
        if (!t.Shape.SequenceEqual(shape))
            throw new LrlException($"{path}: tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{string.Join(", ", shape)}]");
        if (t.DType is not (DType.F32 or DType.F16 or DType.BF16))
            throw new LrlException($"{path}: tensor '{name}' is {t.DType}; draft heads are read as F32, F16 or BF16");
        for (long k = 0; k < into.Length; k++) into[k] = t.GetFloat(k);
        foreach (var v in into)
            if (!float.IsFinite(v)) throw new LrlException($"{path}: tensor '{name}' holds a non-finite value");
    }

    /// <summary>Writes the heads (config.json and <see cref="WeightsFile"/>, each atomically) into <paramref name="dir"/>.</summary>
    public void Save(string dir, string? baseModel = null)
    {
        Directory.CreateDirectory(dir);
        var w = new SafeTensorsWriter();
        w.AddMetadata("format", "pt");
        for (int i = 0; i < Count; i++)
        {
            for (int l = 0; l < Layers; l++)
            {
                w.Add($"{i}.{l}.linear.weight", [Hidden, Hidden], W[i * Layers + l]);
                w.Add($"{i}.{l}.linear.bias", [Hidden], B[i * Layers + l]);
            }
            if (Output is not null) w.Add($"{i}.{Layers}.weight", [Vocab, Hidden], Output[i]);
        }
        w.Write(Path.Combine(dir, WeightsFile));
        var config = new JsonObject
        {
            ["medusa_num_heads"] = Count,
            ["medusa_num_layers"] = Layers,
            ["hidden_size"] = Hidden,
            ["vocab_size"] = Vocab,
            ["lrlrun_shared_head"] = SharedHead,
        };
        if (baseModel is not null) config["base_model_name_or_path"] = baseModel;
        AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    // ---------------------------------------------------------------- on a backend

    private IBackend? _backend;
    private Weight[] _w = [], _b = [], _out = [];
    private DeviceBuffer? _h, _cur, _z, _ones, _logits;
    private long _version = -1;

    /// <summary>Bumped by whoever changes the host weights (the trainer), so a backend copy is reloaded.</summary>
    public long Version { get; set; }

    /// <summary>
    /// How the matrices go to the backend: 0 as f32 (as trained), 8 or 4 quantized per output channel through the
    /// engine's own int8/int4 formats (Q8_GC / Q4_GC, the quantized GEMV kernels) — a quarter or an eighth of the bytes
    /// a draft step reads. The host copy stays f32; changing it reloads the backend copy.
    /// </summary>
    public int Bits
    {
        get => _bits;
        set => _bits = value is 0 or 8 or 4 ? value : throw new LrlException($"draft heads: bits must be 0 (f32), 8 or 4, got {value}");
    }
    private int _bits, _loadedBits = -1;
    private readonly List<object> _pinned = new(); // quantized codes and scales the backend reads in place

    /// <summary>Bytes of the heads' matrices as loaded on the backend (0 before first use).</summary>
    public long LoadedBytes => _w.Concat(_out).Sum(w => w.ByteSize);

    /// <summary>
    /// Every head's logits for one hidden row into <paramref name="logits"/> (Count rows of Vocab); called by
    /// <see cref="ModelBase.RunDraftHeads"/> under the model's lock.
    /// </summary>
    internal void Run(IBackend b, LogitsHead head, ReadOnlySpan<float> hidden, Span<float> logits)
    {
        if (hidden.Length != Hidden) throw new ArgumentException($"the hidden row has {hidden.Length} values, the heads {Hidden}");
        if (logits.Length != Count * Vocab) throw new ArgumentException($"logits must hold {Count} × {Vocab} values");
        if (SharedHead && Count > head.Capacity) throw new LrlException($"{Count} draft heads exceed the model's batch of {head.Capacity} rows");
        Ensure(b);
        b.Upload(hidden, _h!);
        var fused = b as IDraftHeadOps;
        for (int i = 0; i < Count; i++)
        {
            // A backend with the fused block (the GPU: one launch per block) ping-pongs between two rows and starts
            // from h itself; otherwise the product, the activation and the add run apart on a copy of h.
            DeviceBuffer cur = _h!;
            for (int l = 0; l < Layers; l++)
            {
                var (w, bias) = (_w[i * Layers + l], _b[i * Layers + l]);
                var next = ReferenceEquals(cur, _cur) ? _z! : _cur!;
                if (fused is not null && fused.TryResidualSilu(cur, w, bias, next)) { cur = next; continue; }
                if (ReferenceEquals(cur, _h)) { b.Copy(_h!, 0, _cur!, 0, Hidden); cur = _cur!; }
                var z = ReferenceEquals(cur, _z) ? _cur! : _z!;
                b.MatMul(cur, w, z, 1, bias);
                b.SwiGlu(z, _ones!, z, Hidden); // SiLU(z) · 1
                b.Add(cur, z, Hidden);          // h + SiLU(W h + b)
            }
            if (ReferenceEquals(cur, _h)) { b.Copy(_h!, 0, _cur!, 0, Hidden); cur = _cur!; }
            if (SharedHead) head.Gather(cur, 0, 1);
            else
            {
                b.MatMul(cur, _out[i], _logits!, 1);
                b.Download(_logits!, 0, logits.Slice(i * Vocab, Vocab));
            }
        }
        if (SharedHead) head.Flush(logits);
    }

    private void Ensure(IBackend b)
    {
        if (_backend == b && _version == Version && _loadedBits == _bits) return;
        FreeBackend();
        _backend = b;
        _version = Version;
        _loadedBits = _bits;
        _w = new Weight[W.Length];
        _b = new Weight[B.Length];
        for (int i = 0; i < W.Length; i++)
        {
            _w[i] = Matrix(b, $"draft.{i}.weight", Hidden, Hidden, W[i]);
            _b[i] = b.LoadWeight(Tensor($"draft.{i}.bias", [Hidden], B[i]));
        }
        if (Output is not null)
        {
            _out = new Weight[Count];
            for (int i = 0; i < Count; i++) _out[i] = Matrix(b, $"draft.{i}.out", Vocab, Hidden, Output[i]);
            _logits = b.Allocate(Vocab);
        }
        _h = b.Allocate(Hidden);
        _cur = b.Allocate(Hidden);
        _z = b.Allocate(Hidden);
        _ones = b.Allocate(Hidden);
        var ones = new float[Hidden];
        Array.Fill(ones, 1f);
        b.Upload(ones, _ones);
    }

    /// <summary>A [rows, cols] matrix as f32, or quantized per output channel when <see cref="Bits"/> says so.</summary>
    private Weight Matrix(IBackend b, string name, int rows, int cols, float[] data)
    {
        if (_bits == 0 || (_bits == 4 && cols % 2 != 0)) return b.LoadWeight(Tensor(name, [rows, cols], data));
        var qb = b as IQuantizedBackend ?? throw new LrlException($"the {b.Name} backend cannot run quantized draft heads");
        var m = Lrl.Quant.GroupQuantizer.Quantize(data, rows, cols, _bits, cols);
        var codes = GC.AllocateArray<byte>(m.Codes.Length, pinned: true);
        m.Codes.CopyTo(codes, 0);
        var scales = GC.AllocateArray<Half>(m.Scales.Length, pinned: true);
        m.Scales.CopyTo(scales, 0);
        _pinned.Add(codes); _pinned.Add(scales);
        fixed (byte* c = codes) fixed (Half* sc = scales) // pinned: the addresses stay valid while the heads hold them
        {
            var q = new QuantizedTensor { Name = name, Source = "draft heads", Bits = _bits, GroupSize = cols, Rows = rows, Cols = cols, Codes = c, Scales = sc };
            q.Validate();
            return qb.LoadQuantized(q);
        }
    }

    private static HostTensor Tensor(string name, int[] shape, float[] data)
    {
        fixed (float* p = data) // pinned arrays: the pointer stays valid while the heads live
            return new HostTensor(name, DType.F32, shape, (byte*)p, (long)data.Length * 4, "draft heads");
    }

    private void FreeBackend()
    {
        foreach (var w in _w) (w as IDisposable)?.Dispose();
        foreach (var w in _b) (w as IDisposable)?.Dispose();
        foreach (var w in _out) (w as IDisposable)?.Dispose();
        _h?.Dispose(); _cur?.Dispose(); _z?.Dispose(); _ones?.Dispose(); _logits?.Dispose();
        _w = []; _b = []; _out = [];
        _pinned.Clear();
        _h = _cur = _z = _ones = _logits = null;
        _backend = null;
    }

    public void Dispose() => FreeBackend();
}
