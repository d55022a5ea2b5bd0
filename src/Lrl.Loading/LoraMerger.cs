using System.Runtime.InteropServices;
using System.Text.Json.Nodes;

namespace Lrl.Loading;

/// <summary>What a merge wrote.</summary>
public sealed record MergeReport(string OutDir, int ModulesMerged, int TensorsReplaced, int VocabSize, long Bytes);

/// <summary>
/// Merges PEFT LoRA adapters into a dense checkpoint: W' = W + s·B·A for every adapted module (transposed for GPT-2's
/// Conv1D [in, out] weights and under fan_in_fan_out), an embedding's update added to its rows, modules_to_save tensors
/// written in place of the base's (a larger embedding or head extends the vocabulary: config.json's vocab_size follows,
/// and the adapter folder's tokenizer files replace the base's). Sums in f32 and rounds once to the base tensor's dtype.
/// The output is written to a temporary folder and renamed into place. Quantize the result afterwards as usual.
/// </summary>
public static class LoraMerger
{
    private static readonly string[] TokenizerFiles = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"];

    /// <param name="adapters">Adapter folders, each with its user scale (applied on top of lora_alpha / r).</param>
    public static MergeReport Merge(string baseDir, IReadOnlyList<(string Dir, float Scale)> adapters, string outDir, bool force = false,
                                    IProgress<string>? progress = null)
    {
        if (adapters.Count == 0) throw new LrlException("merge-lora needs at least one --lora DIR");
        baseDir = Path.GetFullPath(baseDir);
        outDir = OutputFolder.Prepare(outDir, force, baseDir);
        using var ck = Checkpoint.Open(baseDir);
        if (ck.Names.Any(n => n.EndsWith(".qweight", StringComparison.Ordinal)))
            throw new LrlException($"{baseDir}: the base is quantized; merge the adapter into the unquantized checkpoint, then quantize the result");
        var config = JsonFile.ParseNode(Path.Combine(baseDir, "config.json"));
        bool conv1D = (config["model_type"]?.GetValueKind() == System.Text.Json.JsonValueKind.String && (string?)config["model_type"] == "gpt2")
                      || config["architectures"]?.ToJsonString().Contains("GPT2", StringComparison.Ordinal) == true;

        var peft = new List<(PeftAdapter A, float Scale)>();
        try
        {
            foreach (var (dir, scale) in adapters)
            {
                if (!float.IsFinite(scale)) throw new LrlException($"LoRA scale must be a finite number, got {scale}");
                peft.Add((PeftAdapter.Open(dir), scale));
            }
            // Base tensor name of a module: "<module>.weight", with GPT-2's optional "transformer." prefix either way.
            string? BaseTensor(string module, string suffix = ".weight")
            {
                foreach (var n in new[] { module + suffix, "transformer." + module + suffix,
                                          module.StartsWith("transformer.", StringComparison.Ordinal) ? module["transformer.".Length..] + suffix : "" })
                    if (n.Length > 0 && ck.Contains(n)) return n;
                return null;
            }
            var updates = new Dictionary<string, List<(PeftAdapter.Pair P, float Scale, bool FanInFanOut)>>(StringComparer.Ordinal);
            var replaced = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
            foreach (var (a, scale) in peft)
            {
                foreach (var p in a.Pairs)
                {
                    string name = BaseTensor(p.Module) ?? throw new ModelFormatException(a.WeightsPath,
                        $"tensor '{p.Module}.{(p.Embedding ? "lora_embedding_A" : "lora_A.weight")}' adapts '{p.Module}', which the base model {baseDir} does not have");
                    (updates.TryGetValue(name, out var l) ? l : updates[name] = new()).Add((p, scale, a.FanInFanOut || conv1D));
                }
                foreach (var (n, t) in a.Replacements)
                {
                    string name = BaseTensor(n[..n.LastIndexOf('.')], n[n.LastIndexOf('.')..]) ?? n;
                    if (ck.Contains(name))
                    {
                        // Same shape, except that a vocabulary's rows (embedding, head) may grow.
                        var b = ck.Get(name);
                        bool vocabRows = name.EndsWith("embed_tokens.weight", StringComparison.Ordinal) || name.EndsWith("lm_head.weight", StringComparison.Ordinal)
                                         || name.EndsWith("wte.weight", StringComparison.Ordinal);
                        bool fits = b.Rank == t.Rank && Enumerable.Range(0, t.Rank).All(i => t.Shape[i] == b.Shape[i] || i == 0 && vocabRows && t.Shape[0] >= b.Shape[0]);
                        if (!fits)
                            throw new ModelFormatException(a.WeightsPath, $"tensor '{n}' is {t.ShapeString} but the base's '{name}' is {b.ShapeString}");
                    }
                    replaced[name] = t;
                }
            }

            int vocab = config["vocab_size"] is JsonValue v && v.TryGetValue<int>(out int vs) ? vs : -1;
            var writer = new SafeTensorsWriter();
            int merged = 0;
            foreach (var t in ck.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
            {
                if (replaced.ContainsKey(t.Name)) continue;
                if (!updates.TryGetValue(t.Name, out var ups)) { writer.Add(t); continue; }
                if (t.Rank != 2 || !t.DType.IsFloat())
                    throw new ModelFormatException(t.Source, $"tensor '{t.Name}' is {t.DType} {t.ShapeString}; LoRA merges into float matrices");
                foreach (var u in ups) CheckShape(t, u.P, u.FanInFanOut);
                var tensor = t;
                writer.Add(t.Name, t.DType, t.Shape.ToArray(), s => WriteMerged(tensor, ups, s));
                merged++;
                progress?.Report($"{t.Name} {t.ShapeString} + {string.Join(" + ", ups.Select(u => $"{u.Scale * u.P.Scaling:G4}·B·A (r={u.P.Rank})"))}");
            }
            foreach (var (name, t) in replaced.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                if (updates.ContainsKey(name)) throw new ModelFormatException(t.Source, $"'{name}' is both replaced (modules_to_save) and adapted");
                writer.Add(t, name);
                bool vocabRows = name.EndsWith("embed_tokens.weight", StringComparison.Ordinal) || name.EndsWith("lm_head.weight", StringComparison.Ordinal)
                                 || name.EndsWith("wte.weight", StringComparison.Ordinal);
                if (vocabRows && t.Rank == 2) vocab = Math.Max(vocab, t.Shape[0]);
                progress?.Report($"{name} {t.ShapeString} replaced (modules_to_save)");
            }
            writer.AddMetadata("format", "pt");

            if (vocab > 0) config["vocab_size"] = vocab;
            // A head written by the adapter unties it from the embedding.
            if (replaced.Keys.Any(k => k.EndsWith("lm_head.weight", StringComparison.Ordinal)) && !ck.Contains("lm_head.weight") && config["tie_word_embeddings"] is not null)
                config["tie_word_embeddings"] = false;

            string tmp = OutputFolder.CreateTemporary(outDir);
            try
            {
                writer.Write(Path.Combine(tmp, "model.safetensors"));
                OutputFolder.CopyModelFiles(baseDir, tmp, config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
                // An adapter that brings its own tokenizer (new tokens) replaces the base's.
                foreach (var (a, _) in peft)
                    foreach (var f in TokenizerFiles)
                        if (File.Exists(Path.Combine(a.Directory, f))) File.Copy(Path.Combine(a.Directory, f), Path.Combine(tmp, f), overwrite: true);
                OutputFolder.Commit(tmp, outDir);
            }
            catch
            {
                try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
                throw;
            }
            long bytes = new FileInfo(Path.Combine(outDir, "model.safetensors")).Length;
            return new MergeReport(outDir, merged, replaced.Count, vocab, bytes);
        }
        finally
        {
            foreach (var (a, _) in peft) a.Dispose();
        }
    }

    /// <summary>The update's [rows, cols] in the base tensor's layout must be the base tensor's shape.</summary>
    private static void CheckShape(HostTensor w, PeftAdapter.Pair p, bool transposed)
    {
        // Linear: W [out, in], B [out, r], A [r, in]. Conv1D / fan_in_fan_out: W [in, out]. Embedding: W [vocab, hidden],
        // A [r, vocab], B [hidden, r].
        int outF = p.B.Shape[0], inF = p.A.Shape[1];
        (int rows, int cols) = p.Embedding ? (inF, outF) : transposed ? (inF, outF) : (outF, inF);
        if (w.Shape[0] != rows || w.Shape[1] != cols)
            throw new ModelFormatException(p.A.Source,
                $"tensors '{p.Module}' lora_A {p.A.ShapeString} / lora_B {p.B.ShapeString} do not fit the base's '{w.Name}' {w.ShapeString}");
    }

    /// <summary>dst += c·x.</summary>
    private static void Axpy(ReadOnlySpan<float> x, float c, Span<float> dst)
    {
        int i = 0, w = System.Numerics.Vector<float>.Count;
        var cv = new System.Numerics.Vector<float>(c);
        for (; i + w <= x.Length; i += w)
            (new System.Numerics.Vector<float>(dst[i..]) + cv * new System.Numerics.Vector<float>(x[i..])).CopyTo(dst[i..]);
        for (; i < x.Length; i++) dst[i] += c * x[i];
    }

    private static void WriteMerged(HostTensor w, List<(PeftAdapter.Pair P, float Scale, bool FanInFanOut)> ups, Stream s)
    {
        int cols = w.Shape[1];
        var m = w.ToFloatArray();
        foreach (var (p, scale, fanInFanOut) in ups)
        {
            var a = p.A.ToFloatArray();   // [r, in] (embedding: [r, vocab])
            var b = p.B.ToFloatArray();   // [out, r] (embedding: [hidden, r])
            int r = p.Rank, outF = p.B.Shape[0], inF = p.A.Shape[1];
            float k = (float)(scale * p.Scaling);
            bool t = p.Embedding || fanInFanOut; // the base holds [in, out]
            var row = new float[r];
            if (!t)
            {
                // W[o, i] += k·Σ_j B[o, j]·A[j, i]: per output row, an axpy of A's rows.
                for (int o = 0; o < outF; o++)
                {
                    var dst = m.AsSpan(o * cols, cols);
                    for (int j = 0; j < r; j++)
                        Axpy(a.AsSpan(j * inF, inF), k * b[o * r + j], dst);
                }
            }
            else
            {
                // W[i, o] += k·Σ_j A[j, i]·B[o, j]: per input row i, an axpy of Bᵀ's rows.
                var bt = new float[(long)r * outF];
                for (int o = 0; o < outF; o++) for (int j = 0; j < r; j++) bt[j * outF + o] = b[o * r + j];
                for (int i = 0; i < inF; i++)
                {
                    var dst = m.AsSpan(i * cols, cols);
                    for (int j = 0; j < r; j++)
                        Axpy(bt.AsSpan(j * outF, outF), k * a[j * inF + i], dst);
                }
            }
        }
        if (m.Any(x => !float.IsFinite(x))) throw new LrlException($"merging into '{w.Name}' produced NaN or infinite weights");
        switch (w.DType)
        {
            case DType.F32: s.Write(MemoryMarshal.AsBytes(m.AsSpan())); break;
            case DType.F16:
                var h = new Half[m.Length];
                for (int i = 0; i < m.Length; i++) h[i] = (Half)m[i];
                s.Write(MemoryMarshal.AsBytes(h.AsSpan()));
                break;
            default:
                var bf = new ushort[m.Length];
                for (int i = 0; i < m.Length; i++) bf[i] = DTypes.FloatToBF16(m[i]);
                s.Write(MemoryMarshal.AsBytes(bf.AsSpan()));
                break;
        }
    }
}
