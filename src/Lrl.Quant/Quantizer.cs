using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Lrl.Loading;

namespace Lrl.Quant;

/// <summary>Options of <see cref="Quantizer.QuantizeModel(string, string, QuantizeOptions, IProgress{string}?)"/>.</summary>
public sealed record QuantizeOptions
{
    /// <summary>4 or 8.</summary>
    public int Bits { get; init; } = 8;
    /// <summary>"auto" (FineQuant adaptive), "32", "64", "128", ... (a multiple of 32), or "channel".</summary>
    public string Group { get; init; } = "auto";
    /// <summary>Quantize every embedding table (token and positional) at <see cref="Bits"/> (overrides <see cref="EmbeddingBits"/>).</summary>
    public bool QuantizeEmbeddings { get; init; }
    /// <summary>
    /// Bits of the token embedding table, and with it a tied LM head: 8 (the default: in a small model the table is a
    /// large share of the weights, and as a tied head it is read in full for every decoded token), 4, or 0 to keep it
    /// as stored. Rows are dequantized on lookup.
    /// </summary>
    public int EmbeddingBits { get; init; } = 8;
    /// <summary>Adaptive grouping: halve while the mean relative row error exceeds this (null = 1% for int8, 9% for int4).</summary>
    public double? ErrorThreshold { get; init; }
    /// <summary>
    /// "auto" grouping at 4 bits: a matrix whose best 4-bit group still leaves a mean relative row error above this is
    /// kept at 8 bits instead (null = never, the default; FineQuant's coarse-to-fine idea carried one step further, to
    /// the precision). Gaussian-like rows have ≈ 8–10 % int4 error at any group size, so thresholds near 0.085 turn
    /// most matrices of such a model back to int8.
    /// </summary>
    public double? Int8FallbackThreshold { get; init; }

    /// <summary>4-bit only: a zero point per group (X.zeros, U8 [out, in/group]) instead of the symmetric zero 8.</summary>
    public bool Asymmetric { get; init; }
    /// <summary>Per-weight override of <see cref="Bits"/>: 4 or 8, 0 to keep the weight dense, or null for the default.</summary>
    public Func<string, int?>? BitsFor { get; init; }
    /// <summary>
    /// Calibration statistics for GPTQ: Σ x xᵀ of each Linear weight's inputs [cols, cols], by tensor name (see
    /// Lrl.Calibration). Matrices with one are quantized by <see cref="Gptq"/>; the others by rounding to nearest.
    /// </summary>
    public IReadOnlyDictionary<string, double[]>? Hessians { get; init; }
    /// <summary>Replace an existing output folder (otherwise an existing non-empty folder is an error).</summary>
    public bool Overwrite { get; init; }
    /// <summary>Called before each tensor with (tensors done, tensors in all, its name) and once at the end, on the quantizing thread.</summary>
    public Action<int, int, string>? OnTensor { get; init; }

    public double ThresholdFor(int bits) => ErrorThreshold ?? (bits == 8 ? 0.01 : 0.09);
}

/// <summary>A finished quantization: what each matrix became.</summary>
public sealed record QuantizeReport(string OutputDirectory, QuantMetadata Metadata, long InputBytes, long OutputBytes);

/// <summary>
/// Writes lrlrun's quantized model folder: every Linear weight X.weight becomes X.qweight (int8: I8 [out, in]; int4: U8
/// [out, in/2], see <see cref="QuantizedTensor"/> for the nibble order) and X.scales (F16 [out, in/group]); norms,
/// biases and (by default) embeddings are copied as they are. Choices go into the "lrlrun.quant" metadata
/// (<see cref="QuantMetadata"/>) and config.json gains a quantization_config with quant_method "lrlrun".
/// </summary>
public static class Quantizer
{
    /// <summary>Quantizes <paramref name="inDir"/> into <paramref name="outDir"/> (written to a temporary folder, then renamed).</summary>
    public static QuantizeReport QuantizeModel(string inDir, string outDir, int bits, string group, IProgress<string>? progress) =>
        QuantizeModel(inDir, outDir, new QuantizeOptions { Bits = bits, Group = group }, progress);

    public static QuantizeReport QuantizeModel(string inDir, string outDir, QuantizeOptions options, IProgress<string>? progress = null)
    {
        if (options.Bits is not (4 or 8)) throw new LrlException($"--bits must be 4 or 8, got {options.Bits}");
        if (options.EmbeddingBits is not (0 or 4 or 8)) throw new LrlException($"--embedding-bits must be 8, 4 or 0 (keep), got {options.EmbeddingBits}");
        int? fixedGroup = ParseGroup(options.Group);
        inDir = Path.GetFullPath(inDir);
        outDir = OutputFolder.Prepare(outDir, options.Overwrite, inDir);

        using var ck = Checkpoint.Open(inDir);
        if (ck.Names.Any(n => n.EndsWith(".qweight", StringComparison.Ordinal)))
            throw new LrlException($"{inDir}: the model is already quantized");
        TensorCheck.ThrowIfAny(ck); // NaN/Inf weights would quantize to garbage silently

        var meta = new QuantMetadata { Bits = options.Bits, Group = options.Group };
        var writer = new SafeTensorsWriter();
        long inBytes = 0;
        var ordered = ck.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        int tensorsDone = 0;
        foreach (var t in ordered)
        {
            options.OnTensor?.Invoke(tensorsDone++, ordered.Count, t.Name);
            inBytes += t.ByteLength;
            if (!ShouldQuantize(t, options))
            {
                writer.Add(t);
                continue;
            }
            int rows = t.Shape[0], cols = t.Shape[1];
            string b = QuantizedWeights.BaseName(t.Name);
            int bits = BitsOf(t.Name, options);
            if (bits == 0 || (bits == 4 && cols % 2 != 0)) { writer.Add(t); continue; }
            if (bits is not (4 or 8)) throw new LrlException($"{t.Name}: bits must be 4 or 8, got {bits}");
            var w = t.ToFloatArray();
            int g = 0;
            if (fixedGroup is int fg)
            {
                g = fg == 0 ? cols : fg;
                if (!GroupQuantizer.IsValidGroup(cols, g))
                {
                    // The requested group does not divide this row: a group at least the row is per-channel; otherwise
                    // the coarsest candidate below the request (per-channel when there is none).
                    int requested = g;
                    g = requested >= cols ? cols
                        : GroupQuantizer.Candidates(cols, bits).Where(c => c != cols && c < requested).DefaultIfEmpty(cols).First();
                    progress?.Report($"{t.Name}: group {requested} does not divide {cols} columns; using {(g == cols ? "channel" : g)}");
                }
            }
            bool asym = options.Asymmetric && bits == 4;
            if (fixedGroup is null)
            {
                double err;
                (g, err) = GroupQuantizer.ChooseGroup(w, rows, cols, bits, options.ThresholdFor(bits), asymmetric: asym);
                // Rows that no group of 32 divides can only be quantized per channel: with no finer group to isolate
                // their error, a matrix still above the int4 threshold keeps 8 bits (as llama.cpp's Q4_K_M keeps
                // some ffn_down at 6 bits). Rows of real models (multiples of 32) never take this branch.
                bool ungroupable = GroupQuantizer.Candidates(cols, bits).Count == 1;
                if (bits == 4 && (err > options.Int8FallbackThreshold || (ungroupable && err > options.ThresholdFor(4))))
                {
                    bits = 8; asym = false;
                    g = GroupQuantizer.ChooseGroup(w, rows, cols, bits, options.ThresholdFor(bits)).Group;
                }
            }
            var q = options.Hessians is not null && options.Hessians.TryGetValue(t.Name, out var hessian)
                ? Gptq.Quantize(w, rows, cols, bits, g, asym, hessian)
                : GroupQuantizer.Quantize(w, rows, cols, bits, g, asym);
            meta.Tensors[b] = (bits, g);
            writer.Add(b + ".qweight", bits == 8 ? DType.I8 : DType.U8, bits == 8 ? [rows, cols] : [rows, cols / 2], q.Codes);
            writer.Add(b + ".scales", DType.F16, [rows, cols / g], MemoryMarshal.AsBytes(q.Scales.AsSpan()));
            if (q.Zeros != null) writer.Add(b + ".zeros", DType.U8, [rows, cols / g], q.Zeros);
            progress?.Report(string.Create(CultureInfo.InvariantCulture,
                $"{t.Name} [{rows}, {cols}] → {QuantLayout.FormatName(bits, g, cols, asym)}, relative error {q.RelativeError:P2}"));
        }
        options.OnTensor?.Invoke(ordered.Count, ordered.Count, "");
        writer.AddMetadata(QuantMetadata.Key, meta.ToJson());
        writer.AddMetadata("format", "pt");

        string tmp = OutputFolder.CreateTemporary(outDir);
        try
        {
            writer.Write(Path.Combine(tmp, "model.safetensors"));
            OutputFolder.CopyModelFiles(inDir, tmp, WithQuantConfig(Path.Combine(inDir, "config.json"), meta));
            OutputFolder.Commit(tmp, outDir);
        }
        catch
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
            throw;
        }
        long outBytes = new FileInfo(Path.Combine(outDir, "model.safetensors")).Length;
        progress?.Report($"wrote {outDir}: {inBytes / 1e6:F1} MB → {outBytes / 1e6:F1} MB");
        return new QuantizeReport(outDir, meta, inBytes, outBytes);
    }

    /// <summary>"auto" → null; "channel" → 0; otherwise a positive multiple of 32.</summary>
    public static int? ParseGroup(string group)
    {
        switch (group.Trim().ToLowerInvariant())
        {
            case "auto": return null;
            case "channel": case "c": case "-1": return 0;
        }
        if (int.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out int g) && g >= 32 && g % 32 == 0) return g;
        throw new LrlException($"--group must be auto, channel or a multiple of 32 (32, 64, 128, ...), got '{group}'");
    }

    /// <summary>
    /// 2-D float Linear weights and the token embedding table (unless <see cref="QuantizeOptions.EmbeddingBits"/> is 0);
    /// positional embeddings only with <see cref="QuantizeOptions.QuantizeEmbeddings"/> (norms and biases are vectors
    /// and never quantized).
    /// </summary>
    public static bool ShouldQuantize(HostTensor t, QuantizeOptions options)
    {
        if (t.Rank != 2 || !t.DType.IsFloat() || !t.Name.EndsWith(".weight", StringComparison.Ordinal)) return false;
        if (options.QuantizeEmbeddings) return true;
        if (IsPositionalEmbedding(t.Name)) return false;
        return !IsTokenEmbedding(t.Name) || options.EmbeddingBits != 0;
    }

    private static bool IsTokenEmbedding(string name) =>
        name.Contains("embed_tokens") || name.Contains("wte") || name.Contains("word_embeddings");

    private static bool IsPositionalEmbedding(string name) =>
        name.Contains("wpe") || (name.Contains("embeddings") && !name.Contains("word_embeddings"));

    /// <summary>The bits a quantized tensor gets: the per-weight override, the embedding bits, or the default.</summary>
    private static int BitsOf(string name, QuantizeOptions options) =>
        options.BitsFor?.Invoke(name) ?? (!options.QuantizeEmbeddings && IsTokenEmbedding(name) ? options.EmbeddingBits : options.Bits);

    private static string WithQuantConfig(string configPath, QuantMetadata meta)
    {
        var json = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject
                   ?? throw new ModelFormatException(configPath, "not a JSON object");
        json["quantization_config"] = new JsonObject
        {
            ["quant_method"] = "lrlrun",
            ["bits"] = meta.Bits,
            ["group"] = meta.Group,
            ["version"] = meta.Version,
        };
        return json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
    }
}
