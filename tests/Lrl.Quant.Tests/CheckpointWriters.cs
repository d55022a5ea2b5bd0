using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Lrl.Loading;

namespace Lrl.Quant.Tests;

/// <summary>
/// Writes GPTQ and AWQ checkpoints in their exact tensor layouts from a dense model, plus the dense model with the
/// dequantized weights (the reference those checkpoints must reproduce). Asymmetric 4-bit per (group, output column).
/// </summary>
public static class CheckpointWriters
{
    /// <summary>Matrices quantized in the GPTQ/AWQ test checkpoints (their dimensions pack into int32 words).</summary>
    public static readonly string[] Targets = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"];

    public static string TempDir(string tag)
    {
        var d = Path.Combine(Path.GetTempPath(), $"lrl-quant-{tag}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }

    private sealed record Quantized(int Rows, int Cols, int[,] Q, int[,] Z, Half[,] S, int[] GIdx, float[] Dequant);

    /// <summary>q[o, i], zero z[g, o] ∈ 1..15, scale s[g, o]; columns grouped by gIdx.</summary>
    private static Quantized Quantize(float[] w, int rows, int cols, int gs, int[] gIdx)
    {
        int groups = cols / gs;
        var q = new int[rows, cols]; var z = new int[groups, rows]; var s = new Half[groups, rows];
        var deq = new float[rows * cols];
        for (int o = 0; o < rows; o++)
            for (int g = 0; g < groups; g++)
            {
                float min = 0, max = 0;
                for (int i = 0; i < cols; i++) if (gIdx[i] == g) { min = Math.Min(min, w[o * cols + i]); max = Math.Max(max, w[o * cols + i]); }
                float scale = (float)(Half)Math.Max((max - min) / 15f, 1e-6f);
                int zero = Math.Clamp((int)MathF.Round(-min / scale), 1, 15);
                s[g, o] = (Half)scale; z[g, o] = zero;
                for (int i = 0; i < cols; i++)
                    if (gIdx[i] == g)
                    {
                        int c = Math.Clamp((int)MathF.Round(w[o * cols + i] / scale) + zero, 0, 15);
                        q[o, i] = c;
                        deq[o * cols + i] = (float)((c - zero) * (double)(float)s[g, o]);
                    }
            }
        return new Quantized(rows, cols, q, z, s, gIdx, deq);
    }

    private static byte[] Bytes<T>(T[] a) where T : unmanaged => MemoryMarshal.AsBytes(a.AsSpan()).ToArray();

    private static byte[] ScalesBytes(Quantized m)
    {
        var a = new Half[m.S.Length];
        int groups = m.S.GetLength(0), rows = m.S.GetLength(1);
        for (int g = 0; g < groups; g++) for (int o = 0; o < rows; o++) a[g * rows + o] = m.S[g, o];
        return Bytes(a);
    }

    /// <param name="format">"gptq" or "awq".</param>
    /// <param name="actOrder">GPTQ only: shuffled g_idx (desc_act).</param>
    /// <returns>(quantized folder, dense dequantized folder).</returns>
    public static (string Quantized, string Dense) Write(string modelDir, string format, int groupSize, bool actOrder, int seed = 7)
    {
        string qDir = TempDir(format), dDir = TempDir(format + "-dense");
        using var ck = Checkpoint.Open(modelDir);
        var qw = new SafeTensorsWriter();
        var dw = new SafeTensorsWriter();
        var rng = new Random(seed);
        foreach (var t in ck.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            string b = t.Name.EndsWith(".weight") ? t.Name[..^7] : t.Name;
            if (!Targets.Any(b.EndsWith)) { qw.Add(t); dw.Add(t); continue; }
            int rows = t.Shape[0], cols = t.Shape[1], gs = groupSize <= 0 ? cols : groupSize, groups = cols / gs;
            var gIdx = Enumerable.Range(0, cols).Select(i => i / gs).ToArray();
            if (actOrder)
            {
                var perm = Enumerable.Range(0, cols).ToArray();
                rng.Shuffle(perm);
                for (int k = 0; k < cols; k++) gIdx[perm[k]] = k / gs;
            }
            var m = Quantize(t.ToFloatArray(), rows, cols, gs, gIdx);
            dw.Add(t.Name, [rows, cols], m.Dequant);
            if (format == "gptq")
            {
                var qweight = new int[cols / 8 * rows];
                for (int i = 0; i < cols; i++)
                    for (int o = 0; o < rows; o++)
                        qweight[(i / 8) * rows + o] |= m.Q[o, i] << (4 * (i % 8));
                var qzeros = new int[groups * (rows / 8)];
                for (int g = 0; g < groups; g++)
                    for (int o = 0; o < rows; o++)
                        qzeros[g * (rows / 8) + o / 8] |= ((m.Z[g, o] - 1) & 15) << (4 * (o % 8)); // GPTQ v1 stores zero − 1
                qw.Add(b + ".qweight", DType.I32, [cols / 8, rows], Bytes(qweight));
                qw.Add(b + ".qzeros", DType.I32, [groups, rows / 8], Bytes(qzeros));
                qw.Add(b + ".scales", DType.F16, [groups, rows], ScalesBytes(m));
                qw.Add(b + ".g_idx", DType.I32, [cols], Bytes(gIdx));
            }
            else
            {
                int[] order = [0, 2, 4, 6, 1, 3, 5, 7]; // AutoAWQ pack: nibble k holds column order[k]
                var qweight = new int[cols * (rows / 8)];
                for (int i = 0; i < cols; i++)
                    for (int o8 = 0; o8 < rows / 8; o8++)
                        for (int k = 0; k < 8; k++)
                            qweight[i * (rows / 8) + o8] |= m.Q[o8 * 8 + order[k], i] << (4 * k);
                var qzeros = new int[groups * (rows / 8)];
                for (int g = 0; g < groups; g++)
                    for (int o8 = 0; o8 < rows / 8; o8++)
                        for (int k = 0; k < 8; k++)
                            qzeros[g * (rows / 8) + o8] |= m.Z[g, o8 * 8 + order[k]] << (4 * k);
                qw.Add(b + ".qweight", DType.I32, [cols, rows / 8], Bytes(qweight));
                qw.Add(b + ".qzeros", DType.I32, [groups, rows / 8], Bytes(qzeros));
                qw.Add(b + ".scales", DType.F16, [groups, rows], ScalesBytes(m));
            }
        }
        qw.Write(Path.Combine(qDir, "model.safetensors"));
        dw.Write(Path.Combine(dDir, "model.safetensors"));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")))!.AsObject();
        File.WriteAllText(Path.Combine(dDir, "config.json"), config.ToJsonString());
        config["quantization_config"] = format == "gptq"
            ? new JsonObject { ["quant_method"] = "gptq", ["bits"] = 4, ["group_size"] = groupSize, ["desc_act"] = actOrder, ["sym"] = false, ["checkpoint_format"] = "gptq" }
            : new JsonObject { ["quant_method"] = "awq", ["bits"] = 4, ["group_size"] = groupSize, ["zero_point"] = true, ["version"] = "gemm" };
        File.WriteAllText(Path.Combine(qDir, "config.json"), config.ToJsonString());
        return (qDir, dDir);
    }

    /// <summary>Copies a model folder, rewriting model.safetensors through <paramref name="edit"/> (tensors kept unless it returns false).</summary>
    public static string Rewrite(string srcDir, Func<HostTensor, SafeTensorsWriter, bool> edit, Action<Dictionary<string, string>>? metadata = null, Action<JsonObject>? config = null)
    {
        string dst = TempDir("broken");
        foreach (var f in Directory.GetFiles(srcDir))
            if (!f.EndsWith(".safetensors")) File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        using (var file = SafeTensorsFile.Open(Path.Combine(srcDir, "model.safetensors")))
        {
            var w = new SafeTensorsWriter();
            foreach (var t in file.Tensors)
                if (edit(t, w)) w.Add(t);
            var meta = new Dictionary<string, string>(file.Metadata);
            metadata?.Invoke(meta);
            foreach (var (k, v) in meta) w.AddMetadata(k, v);
            w.Write(Path.Combine(dst, "model.safetensors"));
        }
        if (config != null)
        {
            var path = Path.Combine(dst, "config.json");
            var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            config(json);
            File.WriteAllText(path, json.ToJsonString());
        }
        return dst;
    }
}
