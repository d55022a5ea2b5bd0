using Lrl.Loading;

namespace Lrl.Models;

/// <summary>
/// A LoRA adapter loaded onto one model's backend, applied unmerged: after each adapted product,
/// y += s·(x·Aᵀ)·Bᵀ with s = user scale · lora_alpha / r (or / √r with rsLoRA). Attach it to sequence states
/// (<see cref="ModelBase.SetAdapters"/>) so one shared base runs each sequence with its own adapters, in the same
/// batched step. Read-only once loaded; dispose it (or the model) to free its weights.
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    // Per adaptable slot of the owner (see ModelBase.AdaptableModule): the pair and its scale, or null.
    internal readonly LoraWeights?[] Slots;
    internal readonly float[] Scales;
    /// <summary>modules_to_save: a whole output projection [vocab, hidden] for this adapter's sequences, or null.</summary>
    internal Weight? Head { get; init; }
    /// <summary>modules_to_save: a whole token embedding [vocab, hidden] for this adapter's sequences, or null.</summary>
    internal Weight? Embedding { get; init; }
    internal OwnedTensors? Owned { get; init; }

    /// <summary>The adapter's name (its folder's name unless given).</summary>
    public string Name { get; }
    public string Directory { get; }
    /// <summary>The user's multiplier (--lora DIR:scale), on top of lora_alpha / r.</summary>
    public float Scale { get; }
    /// <summary>r from adapter_config.json.</summary>
    public int Rank { get; }
    /// <summary>Base-model modules it adapts.</summary>
    public IReadOnlyList<string> Modules { get; }
    /// <summary>Bytes of its matrices on the backend (what one row of a step reads extra, at most).</summary>
    public long ByteSize => Slots.Sum(s => s?.ByteSize ?? 0) + (Head?.ByteSize ?? 0) + (Embedding?.ByteSize ?? 0);
    public bool IsDisposed { get; private set; }
    /// <summary>The model it was loaded onto (the only one it runs with).</summary>
    public ILanguageModel Model => Owner;
    internal ModelBase Owner { get; }

    internal LoraAdapter(ModelBase owner, string name, string directory, float scale, int rank, LoraWeights?[] slots, float[] scales, IReadOnlyList<string> modules)
    {
        Owner = owner; Name = name; Directory = directory; Scale = scale; Rank = rank; Slots = slots; Scales = scales; Modules = modules;
    }

    /// <summary>Frees the adapter's weights (waiting for a forward pass in progress); states that hold it then fail to run.</summary>
    public void Dispose() => Owner.Release(this);

    internal void Free()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        foreach (var w in Slots) w?.Dispose();
        Head?.Dispose();
        Embedding?.Dispose();
        Owned?.Dispose();
    }

    public override string ToString() => $"{Name} (r={Rank}, {Modules.Count} modules, scale {Scale})";
}

/// <summary>How an adapter's matrices are held on the backend.</summary>
public enum AdapterPrecision
{
    /// <summary>int8 over int8/int4 bases (where an adapter's bf16 bytes would be a tenth of the base's), else as stored.</summary>
    Auto,
    /// <summary>As the adapter file stores them: bf16 files as bf16, f32 and f16 as f32.</summary>
    AsStored,
    /// <summary>int8 codes with one scale per row of A and per column of B (<see cref="LoraInt8"/>).</summary>
    Int8,
}

/// <summary>Binds a PEFT adapter folder to a model's adaptable modules and loads its pairs onto the backend.</summary>
internal static class LoraBinder
{
    /// <summary>An adaptable module slot: the product it follows takes B's rows [Row0, Row0 + Rows) of the module.</summary>
    internal readonly record struct Target(int Slot, int OutFeatures, int InFeatures, int Row0, int Rows);

    public static LoraAdapter Load(ModelBase model, IReadOnlyDictionary<string, List<Target>> modules, string directory, float scale, string? name,
                                   AdapterPrecision precision)
    {
        bool int8 = precision == AdapterPrecision.Int8 || precision == AdapterPrecision.Auto && model.WeightFormat.StartsWith('Q');
        if (!float.IsFinite(scale)) throw new LrlException($"LoRA scale must be a finite number, got {scale}");
        var ops = model.Backend as ILoraOps ?? throw new LrlException($"the {model.Backend.Name} backend cannot run LoRA adapters");
        using var peft = PeftAdapter.Open(directory);
        if (modules.Count == 0)
            throw new LrlException($"{peft.Directory}: LoRA adapters are supported for the Llama family and GPT-2, not {model.Architecture}");
        var unmatched = peft.UnmatchedTargets(modules.Keys.ToList()).ToList();
        if (unmatched.Count > 0)
            throw new ModelFormatException(peft.ConfigPath, $"target module '{unmatched[0]}' matches no linear module of {model.Architecture}");
        int slotCount = modules.Values.SelectMany(v => v).Select(t => t.Slot).DefaultIfEmpty(-1).Max() + 1;
        var slots = new LoraWeights?[slotCount];
        var scales = new float[slotCount];
        var adapted = new List<string>();
        Weight? head = null, embedding = null;
        var owned = new OwnedTensors();
        try
        {
            // modules_to_save: whole tensors that replace the base's for this adapter's sequences. Unmerged, the token
            // embedding and the output projection of the same vocabulary (a larger one needs the adapter's tokenizer:
            // merge-lora writes both).
            foreach (var (n, t) in peft.Replacements.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                int dot = n.LastIndexOf('.');
                string module = dot < 0 ? n : n[..dot];
                bool isHead = module == "lm_head", isEmbedding = model.EmbeddingModules.Contains(module);
                string merge = $"run it merged: lrlrun merge-lora MODEL --lora {peft.Directory} --out DIR";
                if (!n.EndsWith(".weight", StringComparison.Ordinal) || !(isHead || isEmbedding))
                    throw new ModelFormatException(peft.WeightsPath,
                        $"tensor '{n}' replaces '{module}' (modules_to_save); unmerged, an adapter may replace only the token embedding and lm_head; {merge}");
                int vocab = model.VocabSize, hidden = model.HiddenSize;
                if (t.Rank != 2 || t.Shape[1] != hidden || !t.DType.IsFloat())
                    throw new ModelFormatException(peft.WeightsPath, $"tensor '{n}' is {t.DType} {t.ShapeString}; {module} of {model.Architecture} must be float [{vocab}, {hidden}]");
                if (t.Shape[0] != vocab)
                    throw new ModelFormatException(peft.WeightsPath,
                        $"tensor '{n}' is {t.ShapeString}: it {(t.Shape[0] > vocab ? "extends" : "shrinks")} the vocabulary of {vocab} tokens, which needs the adapter's tokenizer; {merge}");
                if (isEmbedding && peft.Pairs.Any(p => p.Module == module))
                    throw new ModelFormatException(peft.WeightsPath, $"'{module}' is both replaced (modules_to_save) and adapted");
                if (isHead ? head is not null : embedding is not null)
                    throw new ModelFormatException(peft.WeightsPath, $"tensor '{n}' replaces '{module}' a second time");
                var w = model.Backend.LoadWeight(owned.Copy(t, $"{peft.Directory}:{n}"));
                if (isHead) head = w; else embedding = w;
                adapted.Add($"{module} (replaced)");
            }
            foreach (var p in peft.Pairs)
            {
                string aName = p.Module + (p.Embedding ? ".lora_embedding_A" : ".lora_A.weight");
                string bName = p.Module + (p.Embedding ? ".lora_embedding_B" : ".lora_B.weight");
                bool isEmbedding = model.EmbeddingModules.Contains(p.Module);
                if (!modules.TryGetValue(p.Module, out var targets) || p.Embedding && !isEmbedding)
                    throw new ModelFormatException(peft.WeightsPath, $"tensor '{aName}' adapts '{p.Module}', which is not {(p.Embedding ? "the token embedding" : "a linear module")} of {model.Architecture}");
                if (!p.Embedding && isEmbedding)
                    throw new ModelFormatException(peft.WeightsPath, $"tensor '{aName}' adapts the token embedding '{p.Module}' as a linear module; PEFT saves an embedding's pair as lora_embedding_A / lora_embedding_B");
                var t0 = targets[0];
                int fullOut = t0.OutFeatures, inF = t0.InFeatures;
                if (p.A.Shape[1] != inF)
                    throw new ModelFormatException(peft.WeightsPath, $"tensor '{aName}' is {p.A.ShapeString}; {p.Module} takes {inF} {(p.Embedding ? "token ids" : "inputs")}, so it must be [{p.Rank}, {inF}]");
                if (p.B.Shape[0] != fullOut)
                    throw new ModelFormatException(peft.WeightsPath, $"tensor '{bName}' is {p.B.ShapeString}; {p.Module} has {fullOut} outputs, so it must be [{fullOut}, {p.Rank}]");
                var a = p.A.ToFloatArray();
                var b = p.B.ToFloatArray();
                if (int8) LoraInt8.RoundA(a, p.Rank, inF);
                foreach (var t in targets)
                {
                    if (slots[t.Slot] is not null)
                        throw new ModelFormatException(peft.WeightsPath, $"module '{p.Module}' is adapted twice");
                    var stored = int8 ? DType.I8 : p.A.DType == DType.BF16 && p.B.DType == DType.BF16 ? DType.BF16 : DType.F32;
                    var bt = b.AsSpan(t.Row0 * p.Rank, t.Rows * p.Rank);
                    if (int8)
                    {
                        // Each product's own columns of B on their own grid (GPT-2's c_attn is three products).
                        var part = bt.ToArray();
                        LoraInt8.RoundB(part, t.Rows, p.Rank);
                        bt = part;
                    }
                    slots[t.Slot] = ops.LoadLora($"{p.Module}[{t.Row0}:{t.Row0 + t.Rows}]", a, bt, p.Rank, inF, t.Rows, stored);
                    scales[t.Slot] = (float)(scale * p.Scaling);
                }
                adapted.Add(p.Module);
            }
        }
        catch
        {
            foreach (var w in slots) w?.Dispose();
            head?.Dispose();
            embedding?.Dispose();
            owned.Dispose();
            throw;
        }
        return new LoraAdapter(model, name ?? Path.GetFileName(peft.Directory.TrimEnd(Path.DirectorySeparatorChar)), peft.Directory, scale, peft.Rank, slots, scales, adapted)
        {
            Head = head, Embedding = embedding, Owned = owned,
        };
    }
}
