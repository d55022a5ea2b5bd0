using System.Diagnostics;
using System.Numerics.Tensors;
using Lrl.Cpu;
using Lrl.Loading;
using Lrl.Models;

namespace Lrl;

/// <summary>Settings of <see cref="HeadsTrainer.Train"/> (<c>lrlrun heads train</c>).</summary>
public sealed record HeadsTrainOptions
{
    /// <summary>Folder the heads (and the resumable training state) are written to, atomically, after every epoch.</summary>
    public required string Out { get; init; }
    public int Heads { get; init; } = 4;
    public int Layers { get; init; } = 1;
    /// <summary>Train on this text (teacher forcing) instead of the model's own greedy continuations.</summary>
    public string? TextFile { get; init; }
    /// <summary>Self-distillation: sequences the model generates.</summary>
    public int Samples { get; init; } = 64;
    /// <summary>
    /// Self-distillation: 1 to this many tokens sampled (temperature 1; the count uniform per sequence) at the start of
    /// each sequence before the greedy continuation, so the sequences begin as the model's text does and differ from
    /// each other; their positions train no head.
    /// </summary>
    public int SamplePrefix { get; init; } = 12;
    /// <summary>Tokens per sequence (generated, or per window of the text).</summary>
    public int Length { get; init; } = 128;
    public int Epochs { get; init; } = 4;
    public float LearningRate { get; init; } = 3e-3f;
    public float WeightDecay { get; init; } = 0.01f;
    /// <summary>Head k's loss weight is Decay^(k-1) (Medusa's decaying weights: later heads are harder).</summary>
    public float Decay { get; init; } = 0.8f;
    public int BatchSize { get; init; } = 32;
    public int Seed { get; init; } = 1;
    /// <summary>Continue from the heads and optimizer state in <see cref="Out"/>.</summary>
    public bool Resume { get; init; }

    public void Validate()
    {
        if (Heads is < 1 or > 64) throw new LrlException($"--heads must be in 1..64, got {Heads}");
        if (Layers is < 1 or > 16) throw new LrlException($"--layers must be in 1..16, got {Layers}");
        if (Samples < 1) throw new LrlException($"--samples must be ≥ 1, got {Samples}");
        if (SamplePrefix < 0) throw new LrlException($"--sample-prefix must be ≥ 0, got {SamplePrefix}");
        if (Length < Heads + 2) throw new LrlException($"--length must be at least --heads + 2 ({Heads + 2}), got {Length}");
        if (Epochs < 1) throw new LrlException($"--epochs must be ≥ 1, got {Epochs}");
        if (!(LearningRate > 0) || !float.IsFinite(LearningRate)) throw new LrlException($"--lr must be a positive number, got {LearningRate}");
        if (WeightDecay < 0 || !float.IsFinite(WeightDecay)) throw new LrlException($"--weight-decay must be ≥ 0, got {WeightDecay}");
        if (!(Decay > 0) || Decay > 1) throw new LrlException($"--decay must be in (0, 1], got {Decay}");
        if (BatchSize < 1) throw new LrlException($"--batch must be ≥ 1, got {BatchSize}");
        if (TextFile is not null && !File.Exists(TextFile)) throw new LrlException($"text file not found: {TextFile}");
    }
}

/// <summary>
/// Trains Medusa-1 draft heads with the model frozen: for every position t of the training sequences, head k learns
/// the token at t + 1 + k from the model's final hidden row at t. Self-distillation by default: the sequences are the
/// model's own greedy continuations, so the targets are what the model itself would say (no dataset needed). Loss:
/// cross-entropy summed over heads with decaying weights; AdamW; hand-written gradients through the residual blocks
/// (checked against finite differences in the tests) and the model's output projection, which the heads share.
/// </summary>
public static class HeadsTrainer
{
    public const string StateFile = "train_state.safetensors";

    public static DraftHeads Train(LrlModel model, HeadsTrainOptions o, TextWriter? log = null)
    {
        o.Validate();
        string existing = Path.Combine(o.Out, "config.json");
        if (File.Exists(existing) && !File.ReadAllText(existing).Contains("medusa_num_heads", StringComparison.Ordinal))
            throw new LrlException($"--out {o.Out}: holds a config.json that is not a draft heads folder's; choose another folder (a model folder is never overwritten)");
        if (model.Model is not ModelBase mb || mb.HiddenSize == 0)
            throw new LrlException($"{model.Model.Architecture} cannot train draft heads (Llama-family and GPT-2 models can)");
        if (mb.OutputWeight is not CpuMatrix output)
            throw new LrlException("heads train runs on the CPU backend (--device cpu)");
        int hidden = mb.HiddenSize, vocab = mb.VocabSize;
        var clock = Stopwatch.StartNew();

        // The shared output projection as f32 [vocab, hidden].
        var e = new float[(long)vocab * hidden];
        for (int r = 0; r < vocab; r++) output.RowToFloat(r, e.AsSpan(r * hidden, hidden));

        var sequences = o.TextFile is null ? SelfDistill(model, o) : FromText(model, o);
        var (hiddenRows, targets) = Collect(mb, sequences, hidden, o.Heads);
        int positions = targets.Length / o.Heads;
        log?.WriteLine($"heads train: {sequences.Count} sequences, {positions} positions, {o.Heads} heads × {o.Layers} layer(s), hidden {hidden}, vocabulary {vocab} ({clock.Elapsed.TotalSeconds:F1} s to collect)");

        DraftHeads heads;
        var opt = new AdamW(o);
        int firstEpoch = 0;
        if (o.Resume && File.Exists(Path.Combine(o.Out, DraftHeads.WeightsFile)))
        {
            heads = DraftHeads.Load(o.Out);
            if (heads.Count != o.Heads || heads.Layers != o.Layers || heads.Hidden != hidden || heads.Vocab != vocab || !heads.SharedHead)
                throw new LrlException($"{o.Out}: the saved heads ({heads.Count} × {heads.Layers}, hidden {heads.Hidden}) do not match this run ({o.Heads} × {o.Layers}, hidden {hidden})");
            firstEpoch = opt.Load(Path.Combine(o.Out, StateFile), heads);
            log?.WriteLine($"resuming after epoch {firstEpoch}");
        }
        else heads = DraftHeads.Create(o.Heads, o.Layers, hidden, vocab);

        var order = Enumerable.Range(0, positions).ToArray();
        var grads = new Gradients(heads);
        for (int epoch = firstEpoch; epoch < o.Epochs; epoch++)
        {
            // Each epoch's order from its own seed over the identity order, so a resumed run takes the same batches.
            for (int i = 0; i < positions; i++) order[i] = i;
            new Random(o.Seed * 7919 + epoch).Shuffle(order);
            var loss = new double[o.Heads];
            var correct = new long[o.Heads];
            var counted = new long[o.Heads];
            for (int b0 = 0; b0 < positions; b0 += o.BatchSize)
            {
                int b1 = Math.Min(positions, b0 + o.BatchSize);
                grads.Clear();
                for (int i = b0; i < b1; i++)
                {
                    int p = order[i];
                    Accumulate(heads, e, hiddenRows.AsSpan(p * hidden, hidden), targets.AsSpan(p * o.Heads, o.Heads), o.Decay, grads, loss, correct, counted);
                }
                opt.Step(heads, grads, b1 - b0);
            }
            heads.Version++;
            heads.Save(o.Out, model.Directory);
            opt.Save(Path.Combine(o.Out, StateFile), heads, epoch + 1);
            var perHead = Enumerable.Range(0, o.Heads).Select(k => counted[k] == 0 ? "-" : $"{loss[k] / counted[k]:F3}/{(double)correct[k] / counted[k]:P0}");
            log?.WriteLine($"epoch {epoch + 1}/{o.Epochs}: loss {loss.Sum() / Math.Max(1, counted.Sum()):F4}; per head loss/top-1: {string.Join(" ", perHead)} ({clock.Elapsed.TotalSeconds:F1} s)");
        }
        return heads;
    }

    /// <summary>
    /// The model's own text: from BOS (or a random first token without one), <see cref="HeadsTrainOptions.SamplePrefix"/>
    /// tokens sampled from its distribution, then its greedy continuation. Returns each sequence and where its greedy
    /// part starts.
    /// </summary>
    private static List<(int[] Tokens, int Greedy)> SelfDistill(LrlModel model, HeadsTrainOptions o)
    {
        var m = model.Model;
        var rng = new Random(o.Seed);
        var list = new List<(int[], int)>(o.Samples);
        var logits = new float[m.VocabSize];
        var p = new double[m.VocabSize];
        int length = Math.Min(o.Length, m.ContextLength);
        var eos = new HashSet<int>(model.Tokenizer.EosIds);
        for (int s = 0; s < o.Samples; s++)
        {
            using var state = m.CreateState();
            var seq = new List<int>(length);
            if (model.Tokenizer.BosId is int bos && bos < m.VocabSize) seq.Add(bos);
            else
            {
                int first;
                do first = rng.Next(m.VocabSize); while (eos.Contains(first));
                seq.Add(first);
            }
            // A prefix of 1..SamplePrefix sampled tokens (uniform per sequence): the greedy part, whose positions train
            // the heads, starts anywhere from the second token on, so short prompts find trained heads (with a fixed
            // prefix of 12, drafts after a 5-token prompt came from positions no head had seen); at least one sampled
            // token keeps the sequences apart.
            int greedyFrom = Math.Min(length, seq.Count + (o.SamplePrefix == 0 ? 0 : 1 + rng.Next(o.SamplePrefix)));
            m.Forward(state, seq.ToArray(), 0, logits);
            while (seq.Count < length)
            {
                int t = seq.Count < greedyFrom ? Sample(logits, p, rng, eos) : Logits.ArgMax(logits);
                seq.Add(t);
                if (eos.Contains(t) || seq.Count == length) break;
                m.Forward(state, [t], seq.Count - 1, logits);
            }
            list.Add(([.. seq], greedyFrom));
        }
        return list;
    }

    /// <summary>A token from softmax(logits), never an end-of-sequence token (the sequence must go on).</summary>
    private static int Sample(float[] logits, double[] p, Random rng, HashSet<int> eos)
    {
        double max = logits.Max(), sum = 0;
        for (int i = 0; i < logits.Length; i++) sum += p[i] = eos.Contains(i) ? 0 : Math.Exp(logits[i] - max);
        double r = rng.NextDouble() * sum;
        for (int i = 0; i < logits.Length; i++) if ((r -= p[i]) <= 0 && p[i] > 0) return i;
        return Logits.ArgMax(logits);
    }

    /// <summary>Windows of <see cref="HeadsTrainOptions.Length"/> tokens of the text (teacher forcing), every position trained.</summary>
    private static List<(int[] Tokens, int Greedy)> FromText(LrlModel model, HeadsTrainOptions o)
    {
        var ids = model.Tokenizer.Encode(File.ReadAllText(o.TextFile!), addSpecial: true);
        int length = Math.Min(o.Length, model.Model.ContextLength);
        var list = new List<(int[], int)>();
        for (int i = 0; i + o.Heads + 2 <= ids.Length; i += length) list.Add((ids[i..Math.Min(ids.Length, i + length)], 0));
        if (list.Count == 0) throw new LrlException($"{o.TextFile}: too short to train on ({ids.Length} tokens)");
        return list;
    }

    /// <summary>
    /// Every trained position's final hidden row and its heads' targets (token t + 1 + k, or −1 past the end); positions
    /// whose next token was sampled (a sequence's prefix) are left out.
    /// </summary>
    private static (float[] Hidden, int[] Targets) Collect(ModelBase m, List<(int[] Tokens, int Greedy)> sequences, int hidden, int heads)
    {
        long rows = sequences.Sum(s => (long)Math.Max(0, s.Tokens.Length - Math.Max(0, s.Greedy - 1)));
        var h = new float[checked(rows * hidden)];
        var targets = new int[checked(rows * heads)];
        int p = 0;
        using var capture = m.CaptureHidden();
        foreach (var (seq, greedy) in sequences)
        {
            using var state = m.CreateState();
            var logits = new float[(long)seq.Length * m.VocabSize];
            m.Forward(state, seq, 0, logits);
            for (int t = Math.Max(0, greedy - 1); t < seq.Length; t++, p++)
            {
                m.CopyCapturedHidden(t, h.AsSpan(p * hidden, hidden));
                for (int k = 1; k <= heads; k++) targets[p * heads + k - 1] = t + 1 + k < seq.Length ? seq[t + 1 + k] : -1;
            }
        }
        return (h, targets);
    }

    /// <summary>The gradients of one batch, shaped as the heads' tensors, and the per-position scratch (made once).</summary>
    internal sealed class Gradients
    {
        public readonly float[][] W, B;
        internal readonly float[] Xs, Zs, Logits, Gx, Gz;
        public Gradients(DraftHeads h)
        {
            W = h.W.Select(w => new float[w.Length]).ToArray();
            B = h.B.Select(b => new float[b.Length]).ToArray();
            Xs = new float[(h.Layers + 1) * h.Hidden];
            Zs = new float[h.Layers * h.Hidden];
            Logits = new float[h.Vocab];
            Gx = new float[h.Hidden];
            Gz = new float[h.Hidden];
        }

        public void Clear()
        {
            foreach (var w in W) Array.Clear(w);
            foreach (var b in B) Array.Clear(b);
        }
    }

    /// <summary>
    /// Adds one position's loss gradients (every head with a target) to <paramref name="g"/>; returns the weighted loss.
    /// Head k: x₀ = h; z_l = W_l x_l + b_l; x_{l+1} = x_l + SiLU(z_l); logits = E x_L; loss = w_k · CE(logits, y_k).
    /// Backward: g = w_k (softmax − onehot); gx = Eᵀ g; per layer from the last: gz = gx ⊙ SiLU'(z_l),
    /// ∂W_l += gz x_lᵀ, ∂b_l += gz, gx += W_lᵀ gz.
    /// </summary>
    internal static double Accumulate(DraftHeads heads, float[] e, ReadOnlySpan<float> h, ReadOnlySpan<int> targets, float decay, Gradients g,
                                      double[]? lossPerHead = null, long[]? correct = null, long[]? counted = null)
    {
        int H = heads.Hidden, V = heads.Vocab, L = heads.Layers;
        float[] xs = g.Xs, zs = g.Zs, logits = g.Logits, gx = g.Gx, gz = g.Gz;
        double total = 0;
        float weight = 1;
        for (int k = 0; k < heads.Count; k++, weight *= decay)
        {
            int y = targets[k];
            if (y < 0) continue;
            h.CopyTo(xs);
            for (int l = 0; l < L; l++)
            {
                var w = heads.W[k * L + l];
                var x = xs.AsSpan(l * H, H);
                var z = zs.AsSpan(l * H, H);
                for (int o = 0; o < H; o++) z[o] = TensorPrimitives.Dot(w.AsSpan(o * H, H), x) + heads.B[k * L + l][o];
                var next = xs.AsSpan((l + 1) * H, H);
                for (int o = 0; o < H; o++) next[o] = x[o] + Silu(z[o]);
            }
            var xl = xs.AsSpan(L * H, H);
            for (int v = 0; v < V; v++) logits[v] = TensorPrimitives.Dot(e.AsSpan(v * H, H), xl);
            // Softmax in double for a stable loss; gradient = weight · (p − onehot).
            double max = TensorPrimitives.Max(logits), sum = 0;
            for (int v = 0; v < V; v++) sum += Math.Exp(logits[v] - max);
            double logZ = max + Math.Log(sum);
            double loss = weight * (logZ - logits[y]);
            total += loss;
            if (lossPerHead is not null) { lossPerHead[k] += loss / weight; counted![k]++; if (TensorPrimitives.IndexOfMax(logits) == y) correct![k]++; }
            for (int v = 0; v < V; v++) logits[v] = (float)(weight * Math.Exp(logits[v] - logZ)) - (v == y ? weight : 0);
            Array.Clear(gx);
            for (int v = 0; v < V; v++) TensorPrimitives.MultiplyAdd(e.AsSpan(v * H, H), logits[v], gx, gx);
            for (int l = L - 1; l >= 0; l--)
            {
                var w = heads.W[k * L + l];
                var x = xs.AsSpan(l * H, H);
                var z = zs.AsSpan(l * H, H);
                for (int o = 0; o < H; o++) gz[o] = gx[o] * SiluGrad(z[o]);
                var gw = g.W[k * L + l];
                var gb = g.B[k * L + l];
                for (int o = 0; o < H; o++)
                {
                    TensorPrimitives.MultiplyAdd(x, gz[o], gw.AsSpan(o * H, H), gw.AsSpan(o * H, H));
                    gb[o] += gz[o];
                    TensorPrimitives.MultiplyAdd(w.AsSpan(o * H, H), gz[o], gx, gx); // the residual path keeps gx
                }
            }
        }
        return total;
    }

    /// <summary>The weighted loss of one position alone (the finite-difference check's objective).</summary>
    internal static double Loss(DraftHeads heads, float[] e, ReadOnlySpan<float> h, ReadOnlySpan<int> targets, float decay) =>
        Accumulate(heads, e, h, targets, decay, new Gradients(heads));

    private static float Silu(float z) => z / (1 + MathF.Exp(-z));

    private static float SiluGrad(float z)
    {
        float s = 1 / (1 + MathF.Exp(-z));
        return s * (1 + z * (1 - s));
    }

    /// <summary>AdamW over the heads' blocks, with its moments saved beside the heads for resuming.</summary>
    private sealed class AdamW(HeadsTrainOptions o)
    {
        private const float Beta1 = 0.9f, Beta2 = 0.999f, Eps = 1e-8f;
        private float[][] _mw = [], _vw = [], _mb = [], _vb = [];
        private long _t;

        private void Ensure(DraftHeads h)
        {
            if (_mw.Length == h.W.Length) return;
            _mw = h.W.Select(w => new float[w.Length]).ToArray();
            _vw = h.W.Select(w => new float[w.Length]).ToArray();
            _mb = h.B.Select(b => new float[b.Length]).ToArray();
            _vb = h.B.Select(b => new float[b.Length]).ToArray();
        }

        public void Step(DraftHeads h, Gradients g, int count)
        {
            Ensure(h);
            _t++;
            float c1 = 1 - MathF.Pow(Beta1, _t), c2 = 1 - MathF.Pow(Beta2, _t), scale = 1f / count;
            for (int i = 0; i < h.W.Length; i++)
            {
                Update(h.W[i], g.W[i], _mw[i], _vw[i], o.WeightDecay);
                Update(h.B[i], g.B[i], _mb[i], _vb[i], 0);
            }

            void Update(float[] p, float[] grad, float[] m, float[] v, float decay)
            {
                for (int j = 0; j < p.Length; j++)
                {
                    float gj = grad[j] * scale;
                    m[j] = Beta1 * m[j] + (1 - Beta1) * gj;
                    v[j] = Beta2 * v[j] + (1 - Beta2) * gj * gj;
                    p[j] -= o.LearningRate * ((m[j] / c1) / (MathF.Sqrt(v[j] / c2) + Eps) + decay * p[j]);
                }
            }
        }

        public void Save(string path, DraftHeads h, int epoch)
        {
            Ensure(h);
            var w = new SafeTensorsWriter();
            w.AddMetadata("epoch", epoch.ToString(System.Globalization.CultureInfo.InvariantCulture));
            w.AddMetadata("step", _t.ToString(System.Globalization.CultureInfo.InvariantCulture));
            for (int i = 0; i < h.W.Length; i++)
            {
                w.Add($"m.{i}.weight", [_mw[i].Length], _mw[i]); w.Add($"v.{i}.weight", [_vw[i].Length], _vw[i]);
                w.Add($"m.{i}.bias", [_mb[i].Length], _mb[i]); w.Add($"v.{i}.bias", [_vb[i].Length], _vb[i]);
            }
            w.Write(path);
        }

        /// <summary>Reads the moments and returns the epochs already done.</summary>
        public int Load(string path, DraftHeads h)
        {
            Ensure(h);
            if (!File.Exists(path)) throw new LrlException($"{path}: missing (nothing to resume: run without --resume)");
            using var f = SafeTensorsFile.Open(path);
            if (!f.Metadata.TryGetValue("epoch", out var ep) || !int.TryParse(ep, out int epoch) ||
                !f.Metadata.TryGetValue("step", out var st) || !long.TryParse(st, out _t))
                throw new LrlException($"{path}: metadata 'epoch' and 'step' are missing");
            for (int i = 0; i < h.W.Length; i++)
            {
                Read(f, path, $"m.{i}.weight", _mw[i]); Read(f, path, $"v.{i}.weight", _vw[i]);
                Read(f, path, $"m.{i}.bias", _mb[i]); Read(f, path, $"v.{i}.bias", _vb[i]);
            }
            return epoch;
        }

        private static void Read(SafeTensorsFile f, string path, string name, float[] into)
        {
            if (!f.TryGet(name, out var t) || t.DType != DType.F32 || t.ElementCount != into.Length)
                throw new LrlException($"{path}: tensor '{name}' is missing or has the wrong size");
            t.As<float>().CopyTo(into);
        }
    }
}
