namespace Lrl.Kernels.Reference;

/// <summary>The unmerged LoRA update as plain loops accumulating in double (the oracle for other backends).</summary>
public sealed partial class ReferenceBackend : ILoraOps
{
    private sealed class RefLora(string name, int rank, int inF, int outF, float[] a, float[] b) : LoraWeights(name, rank, inF, outF)
    {
        public float[] A { get; } = a;   // [rank, in]
        public float[] B { get; } = b;   // [out, rank]
        public override long ByteSize => (A.Length + (long)B.Length) * 4;
    }

    public LoraWeights LoadLora(string name, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, int inFeatures, int outFeatures,
                                DType stored = DType.F32)
    {
        if (a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
            throw new ArgumentException($"LoRA {name}: A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]");
        return new RefLora(name, rank, inFeatures, outFeatures, a.ToArray(), b.ToArray());
    }

    public void LoraRows(DeviceBuffer x, int row0, int rows, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = (RefLora)lora;
        var X = D(x); var Y = D(y);
        int inF = w.InFeatures, outF = w.OutFeatures, rank = w.Rank;
        var t = new double[rank];
        for (int r = row0; r < row0 + rows; r++)
        {
            for (int j = 0; j < rank; j++)
            {
                double s = 0;
                for (int i = 0; i < inF; i++) s += (double)X[(long)r * inF + i] * w.A[(long)j * inF + i];
                t[j] = s;
            }
            for (int o = 0; o < outF; o++)
            {
                double s = 0;
                for (int j = 0; j < rank; j++) s += t[j] * w.B[(long)o * rank + j];
                Y[(long)r * outF + o] = (float)(Y[(long)r * outF + o] + scale * s);
            }
        }
    }

    public void LoraEmbedRows(ReadOnlySpan<int> tokens, int row0, LoraWeights lora, float scale, DeviceBuffer y)
    {
        var w = (RefLora)lora;
        var Y = D(y);
        int vocab = w.InFeatures, outF = w.OutFeatures, rank = w.Rank;
        for (int r = 0; r < tokens.Length; r++)
        {
            int tok = tokens[r];
            if ((uint)tok >= (uint)vocab) throw new LrlException($"token id {tok} is outside the vocabulary (0..{vocab - 1})");
            for (int o = 0; o < outF; o++)
            {
                double s = 0;
                for (int j = 0; j < rank; j++) s += (double)w.A[(long)j * vocab + tok] * w.B[(long)o * rank + j];
                long at = (long)(row0 + r) * outF + o;
                Y[at] = (float)(Y[at] + scale * s);
            }
        }
    }
}
