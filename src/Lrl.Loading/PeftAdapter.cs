using System.Text.Json;
using System.Text.RegularExpressions;

namespace Lrl.Loading;

/// <summary>
/// A Hugging Face PEFT LoRA adapter folder, memory-mapped: adapter_config.json (r, lora_alpha, target_modules,
/// fan_in_fan_out, use_rslora, rank_pattern, alpha_pattern, modules_to_save) and adapter_model.safetensors with
/// <c>base_model.model.&lt;module&gt;.lora_A.weight</c> [r, in] / <c>lora_B.weight</c> [out, r] per adapted module
/// (<c>lora_embedding_A</c> [r, vocab] / <c>lora_embedding_B</c> [hidden, r] for an adapted embedding), and whole
/// replacement tensors for <c>modules_to_save</c> (<c>base_model.model.&lt;module&gt;.weight</c>, possibly with more
/// rows: new tokens). Structural errors name the file and tensor; whether the modules fit a model is the caller's check.
/// </summary>
public sealed class PeftAdapter : IDisposable
{
    /// <summary>One adapted module: its base-model name (e.g. "model.layers.0.self_attn.q_proj") and its pair.</summary>
    /// <param name="Scaling">lora_alpha / r (or / √r with use_rslora), per module under rank_pattern / alpha_pattern.</param>
    /// <param name="Embedding">An embedding pair: A is [r, vocab] and B [hidden, r]; the update is a lookup of A's columns.</param>
    public sealed record Pair(string Module, HostTensor A, HostTensor B, int Rank, double Scaling, bool Embedding);

    private const string Prefix = "base_model.model.";
    private readonly SafeTensorsFile _file;
    private readonly string? _targetRegex;
    private readonly string[] _targetList = [];

    public string Directory { get; }
    public string ConfigPath { get; }
    public string WeightsPath => _file.Path;
    public int Rank { get; }
    public double Alpha { get; }
    public bool UseRsLora { get; }
    public bool FanInFanOut { get; }
    /// <summary>target_modules as written: a list of names, or one regular expression.</summary>
    public string TargetModulesText { get; }
    public IReadOnlyList<Pair> Pairs { get; }
    /// <summary>Whole tensors that replace the base model's (modules_to_save), by base tensor name.</summary>
    public IReadOnlyDictionary<string, HostTensor> Replacements { get; }

    private PeftAdapter(string dir)
    {
        Directory = dir;
        ConfigPath = Path.Combine(dir, "adapter_config.json");
        if (!File.Exists(ConfigPath)) throw new LrlException($"{dir} is not a PEFT adapter folder: adapter_config.json is missing");
        string weights = Path.Combine(dir, "adapter_model.safetensors");
        if (!File.Exists(weights))
            throw new LrlException(File.Exists(Path.Combine(dir, "adapter_model.bin"))
                ? $"{dir}: adapter_model.bin is a PyTorch pickle, which lrlrun does not read; save the adapter with safe_serialization=True (adapter_model.safetensors)"
                : $"{dir}: adapter_model.safetensors is missing");

        Dictionary<string, int> rankPattern = new(), alphaPatternInt = new();
        Dictionary<string, double> alphaPattern = new();
        string[] toSave = [];
        using (var doc = JsonFile.ParseObject(ConfigPath))
        {
            var root = doc.RootElement;
            ModelFormatException Err(string field, string why) => new(ConfigPath, $"'{field}' {why}");
            if (root.TryGetProperty("peft_type", out var pt) && pt.ValueKind == JsonValueKind.String && pt.GetString() is { } type && type != "LORA")
                throw Err("peft_type", $"is {type}; lrlrun loads LORA adapters");
            if (root.TryGetProperty("use_dora", out var dora) && dora.ValueKind == JsonValueKind.True)
                throw Err("use_dora", "is true; DoRA adapters are not supported (plain LoRA only)");
            Rank = root.TryGetProperty("r", out var r) && r.ValueKind == JsonValueKind.Number && r.TryGetInt32(out int ri) && ri is >= 1 and <= 65536
                ? ri : throw Err("r", "must be a whole number from 1 to 65536");
            Alpha = root.TryGetProperty("lora_alpha", out var a) && a.ValueKind == JsonValueKind.Number && a.GetDouble() is var ad && double.IsFinite(ad)
                ? ad : throw Err("lora_alpha", "must be a number");
            UseRsLora = root.TryGetProperty("use_rslora", out var rs) && rs.ValueKind == JsonValueKind.True;
            FanInFanOut = root.TryGetProperty("fan_in_fan_out", out var ff) && ff.ValueKind == JsonValueKind.True;
            if (!root.TryGetProperty("target_modules", out var tm)) throw Err("target_modules", "is missing");
            switch (tm.ValueKind)
            {
                case JsonValueKind.String:
                    _targetRegex = tm.GetString()!;
                    TargetModulesText = _targetRegex;
                    try { _ = new Regex(_targetRegex, RegexOptions.CultureInvariant); }
                    catch (ArgumentException e) { throw Err("target_modules", $"is not a valid regular expression: {e.Message}"); }
                    break;
                case JsonValueKind.Array:
                    _targetList = tm.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Err("target_modules", "must hold module names")).ToArray();
                    TargetModulesText = string.Join(", ", _targetList);
                    break;
                default:
                    throw Err("target_modules", "must be a list of module names or a regular expression");
            }
            if (root.TryGetProperty("bias", out var bias) && bias.ValueKind == JsonValueKind.String && bias.GetString() is { } bs && bs != "none")
                throw Err("bias", $"is '{bs}'; adapters that train biases are not supported (bias must be 'none')");
            if (root.TryGetProperty("modules_to_save", out var ms) && ms.ValueKind == JsonValueKind.Array)
                toSave = ms.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Err("modules_to_save", "must hold module names")).ToArray();
            foreach (var (field, into) in new[] { ("rank_pattern", 0), ("alpha_pattern", 1) })
            {
                if (!root.TryGetProperty(field, out var pat) || pat.ValueKind != JsonValueKind.Object) continue;
                foreach (var p in pat.EnumerateObject())
                {
                    if (p.Value.ValueKind != JsonValueKind.Number) throw Err(field, $"['{p.Name}'] must be a number");
                    if (into == 0) rankPattern[p.Name] = p.Value.TryGetInt32(out int v) && v >= 1 ? v : throw Err(field, $"['{p.Name}'] must be a whole number ≥ 1");
                    else alphaPattern[p.Name] = p.Value.GetDouble();
                }
            }
        }

        _file = SafeTensorsFile.Open(weights);
        try
        {
            var pairs = new List<Pair>();
            var replaced = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
            var seenB = new HashSet<string>(StringComparer.Ordinal);
            foreach (var t in _file.Tensors)
            {
                string name = StripAdapterName(t.Name);
                if (!name.StartsWith(Prefix, StringComparison.Ordinal))
                    throw new ModelFormatException(_file.Path, $"tensor '{t.Name}' does not start with '{Prefix}' (not a PEFT LoRA state dict)");
                name = name[Prefix.Length..];
                if (TrySplit(name, out string module, out bool isA, out bool embedding))
                {
                    if (!isA) { seenB.Add(module + (embedding ? "#e" : "")); continue; }
                    string bName = t.Name.Replace(embedding ? "lora_embedding_A" : "lora_A", embedding ? "lora_embedding_B" : "lora_B");
                    if (!_file.TryGet(bName, out var b))
                        throw new ModelFormatException(_file.Path, $"tensor '{t.Name}' has no matching '{bName}'");
                    if (t.Rank != 2 || b.Rank != 2)
                        throw new ModelFormatException(_file.Path, $"tensors '{t.Name}' {t.ShapeString} and '{bName}' {b.ShapeString} must be matrices");
                    int rank = t.Shape[0];
                    if (b.Shape[1] != rank)
                        throw new ModelFormatException(_file.Path, $"rank mismatch: '{t.Name}' is {t.ShapeString} (rank {rank}) but '{bName}' is {b.ShapeString} (rank {b.Shape[1]})");
                    int expected = Match(rankPattern, module) ?? Rank;
                    if (rank != expected)
                        throw new ModelFormatException(_file.Path, $"rank mismatch: '{t.Name}' has rank {rank} but adapter_config.json says r = {expected}");
                    if (!t.DType.IsFloat() || !b.DType.IsFloat())
                        throw new ModelFormatException(_file.Path, $"tensor '{t.Name}' is {t.DType}; LoRA matrices must be F32, F16 or BF16");
                    if (!Targets(module))
                        throw new ModelFormatException(_file.Path, $"tensor '{t.Name}' adapts '{module}', which target_modules ({TargetModulesText}) does not name");
                    double alpha = MatchDouble(alphaPattern, module) ?? Alpha;
                    double scaling = UseRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;
                    pairs.Add(new Pair(module, t, b, rank, scaling, embedding));
                }
                else if (name.EndsWith(".weight", StringComparison.Ordinal) || name.EndsWith(".bias", StringComparison.Ordinal))
                {
                    string module0 = name[..name.LastIndexOf('.')];
                    if (!toSave.Any(m => module0 == m || module0.EndsWith("." + m, StringComparison.Ordinal)))
                        throw new ModelFormatException(_file.Path, $"tensor '{t.Name}' is neither a LoRA matrix nor in modules_to_save ({string.Join(", ", toSave)})");
                    replaced[name] = t;
                }
                else throw new ModelFormatException(_file.Path, $"tensor '{t.Name}' is not a LoRA tensor this loader knows");
            }
            foreach (var m in seenB)
            {
                bool emb = m.EndsWith("#e", StringComparison.Ordinal);
                string mod = emb ? m[..^2] : m;
                if (!pairs.Any(p => p.Module == mod && p.Embedding == emb))
                    throw new ModelFormatException(_file.Path, $"module '{mod}' has {(emb ? "lora_embedding_B" : "lora_B")} but no {(emb ? "lora_embedding_A" : "lora_A")}");
            }
            if (pairs.Count == 0 && replaced.Count == 0)
                throw new ModelFormatException(_file.Path, "holds no LoRA tensors");
            Pairs = pairs;
            Replacements = replaced;
        }
        catch { _file.Dispose(); throw; }
    }

    /// <summary>Opens an adapter folder (memory-mapped; dispose to unmap).</summary>
    public static PeftAdapter Open(string directory)
    {
        var dir = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(dir)) throw new LrlException($"adapter folder not found: {dir}");
        return new PeftAdapter(dir);
    }

    /// <summary>Whether target_modules names <paramref name="module"/> (PEFT's rule: a regex matches the whole name; a list entry matches the name or its last parts).</summary>
    public bool Targets(string module) => _targetRegex is not null
        ? Regex.IsMatch(module, "^(?:" + _targetRegex + ")$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1))
        : _targetList.Any(k => module == k || module.EndsWith("." + k, StringComparison.Ordinal));

    /// <summary>Entries of a list-form target_modules that match none of <paramref name="modules"/> (empty for a regex).</summary>
    public IEnumerable<string> UnmatchedTargets(IReadOnlyCollection<string> modules) =>
        _targetList.Where(k => !modules.Any(m => m == k || m.EndsWith("." + k, StringComparison.Ordinal)));

    // "x.lora_A.default.weight" (saved with the adapter's name) -> "x.lora_A.weight"
    private static string StripAdapterName(string name)
    {
        foreach (var part in new[] { ".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B." })
        {
            int at = name.IndexOf(part, StringComparison.Ordinal);
            if (at >= 0)
            {
                string rest = name[(at + part.Length)..];
                if (part.Contains("embedding")) return name[..(at + part.Length - 1)];
                return rest.Contains('.') ? name[..(at + part.Length)] + rest[(rest.LastIndexOf('.') + 1)..] : name;
            }
        }
        return name;
    }

    private static bool TrySplit(string name, out string module, out bool isA, out bool embedding)
    {
        foreach (var (suffix, a, e) in new[] { (".lora_A.weight", true, false), (".lora_B.weight", false, false),
                                               (".lora_embedding_A", true, true), (".lora_embedding_B", false, true) })
        {
            if (name.EndsWith(suffix, StringComparison.Ordinal))
            {
                module = name[..^suffix.Length]; isA = a; embedding = e;
                return true;
            }
        }
        module = ""; isA = embedding = false;
        return false;
    }

    // PEFT's pattern rule: the key matches the module name's tail at a dot boundary.
    private static int? Match(Dictionary<string, int> pattern, string module)
    {
        foreach (var (k, v) in pattern)
            if (Regex.IsMatch(module, "^(?:.*\\.)?" + k + "$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1))) return v;
        return null;
    }

    private static double? MatchDouble(Dictionary<string, double> pattern, string module)
    {
        foreach (var (k, v) in pattern)
            if (Regex.IsMatch(module, "^(?:.*\\.)?" + k + "$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1))) return v;
        return null;
    }

    public void Dispose() => _file.Dispose();
}
