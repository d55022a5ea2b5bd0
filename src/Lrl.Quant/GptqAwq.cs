using Lrl.Loading;

namespace Lrl.Quant;

/// <summary>
/// GPTQ and AWQ 4-bit checkpoints, converted at load into <see cref="QuantizedTensor"/>'s layout (unsigned nibbles with
/// per-group zero points and f16 scales; GPTQ act-order becomes a column permutation). No precision is lost.
/// <para>GPTQ: qweight I32 [in/8, out], 8 input rows per word (row i in bits 4·(i mod 8)); qzeros I32 [groups, out/8]
/// (column o in bits 4·(o mod 8); stored minus one unless checkpoint_format is gptq_v2); scales [groups, out];
/// g_idx I32 [in] (group of each input column, any order with desc_act).</para>
/// <para>AWQ (GEMM): qweight I32 [in, out/8]; within a word, output column 8k + j sits in nibble
/// <see cref="AwqOrder"/>[j] = 0,4,1,5,2,6,3,7; qzeros I32 [groups, out/8] packed the same way; scales [groups, out].</para>
/// </summary>
public static unsafe class GptqAwq
{
    /// <summary>AWQ: nibble holding output column j of each group of eight.</summary>
    public static ReadOnlySpan<int> AwqOrder => [0, 4, 1, 5, 2, 6, 3, 7];

    private static void Expect(HostTensor t, DType dtype, params int[] shape)
    {
        if (t.DType != dtype || !t.Shape.AsSpan().SequenceEqual(shape))
            throw new ModelFormatException(t.Source, $"tensor '{t.Name}' is {t.DType} {t.ShapeString}, expected {dtype} [{string.Join(", ", shape)}]");
    }

    private static HostTensor Need(Checkpoint ck, HostTensor qweight, string name) =>
        ck.TryGet(name, out var t) ? t : throw new ModelFormatException(qweight.Source, $"tensor '{qweight.Name}' has no companion tensor '{name}'");

    private static int CheckCommon(QuantConfig qc, HostTensor qweight, string method, int rows, int cols)
    {
        if (qc.Bits != 4)
            throw new ModelFormatException(qc.Path, $"{method} with {qc.Bits} bits is not supported (4-bit only), for tensor '{qweight.Name}'");
        int gs = qc.GroupSize <= 0 ? cols : qc.GroupSize;
        if (cols % gs != 0)
            throw new ModelFormatException(qweight.Source, $"tensor '{qweight.Name}': group size {gs} does not divide the row length {cols}");
        if (rows % 8 != 0)
            throw new ModelFormatException(qweight.Source, $"tensor '{qweight.Name}': {rows} output features are not a multiple of 8, as {method} packing needs");
        return gs;
    }

    private static Half[] Scales(HostTensor scales, int groups, int rows, out Half* pointer)
    {
        if (scales.DType is not (DType.F16 or DType.F32 or DType.BF16) || scales.Rank != 2 || scales.Shape[0] != groups || scales.Shape[1] != rows)
            throw new ModelFormatException(scales.Source, $"tensor '{scales.Name}' is {scales.DType} {scales.ShapeString}, expected F16 [{groups}, {rows}]");
        // Transposed into [rows, groups].
        var a = QuantizedWeights.Pinned<Half>((long)rows * groups, out pointer);
        for (int g = 0; g < groups; g++)
            for (int o = 0; o < rows; o++)
                a[(long)o * groups + g] = (Half)scales.GetFloat((long)g * rows + o);
        return a;
    }

    public static QuantizedTensor ReadGptq(Checkpoint ck, QuantConfig qc, string b, HostTensor qweight, int rows, int cols)
    {
        int gs = CheckCommon(qc, qweight, "GPTQ", rows, cols);
        if (cols % 8 != 0)
            throw new ModelFormatException(qweight.Source, $"tensor '{qweight.Name}': {cols} input features are not a multiple of 8, as GPTQ packing needs");
        int groups = cols / gs;
        Expect(qweight, DType.I32, cols / 8, rows);
        var qzeros = Need(ck, qweight, b + ".qzeros");
        var scalesT = Need(ck, qweight, b + ".scales");
        Expect(qzeros, DType.I32, groups, rows / 8);
        var scales = Scales(scalesT, groups, rows, out var sp);

        // Column order: input columns sorted by group (stable); identity unless act-order shuffled g_idx.
        int[]? order = null;
        if (ck.TryGet(b + ".g_idx", out var gidxT))
        {
            Expect(gidxT, DType.I32, cols);
            var gidx = gidxT.As<int>();
            var counts = new int[groups];
            bool identity = true;
            for (int i = 0; i < cols; i++)
            {
                int g = gidx[i];
                if ((uint)g >= (uint)groups)
                    throw new ModelFormatException(gidxT.Source, $"tensor '{gidxT.Name}': g_idx[{i}] = {g} is outside 0..{groups - 1}");
                counts[g]++;
                identity &= g == i / gs;
            }
            if (!identity)
            {
                for (int g = 0; g < groups; g++)
                    if (counts[g] != gs)
                        throw new ModelFormatException(gidxT.Source, $"tensor '{gidxT.Name}': group {g} has {counts[g]} columns, expected {gs}");
                var keys = gidx.ToArray();
                order = Enumerable.Range(0, cols).OrderBy(i => keys[i]).ThenBy(i => i).ToArray();
            }
        }

        var qw = qweight.As<int>();
        var qz = qzeros.As<int>();
        var codes = QuantizedWeights.Pinned<byte>((long)rows * cols / 2, out var cp);
        var zeros = QuantizedWeights.Pinned<byte>((long)rows * groups, out var zp);
        int zeroOffset = qc.CheckpointFormat.Equals("gptq_v2", StringComparison.OrdinalIgnoreCase) ? 0 : 1;
        var nibbles = new byte[cols];
        for (int o = 0; o < rows; o++)
        {
            for (int j = 0; j < cols; j++)
            {
                int i = order?[j] ?? j;
                nibbles[j] = (byte)((qw[(i / 8) * rows + o] >>> (4 * (i % 8))) & 15);
            }
            QuantLayout.PackInt4Row(nibbles, codes.AsSpan((int)((long)o * cols / 2), cols / 2));
            for (int g = 0; g < groups; g++)
                zeros[(long)o * groups + g] = (byte)(((qz[g * (rows / 8) + o / 8] >>> (4 * (o % 8))) & 15) + zeroOffset);
        }
        var q = new QuantizedTensor
        {
            Name = b + ".weight", Source = qweight.Source, Bits = 4, GroupSize = gs, Rows = rows, Cols = cols,
            Codes = cp, Scales = sp, Zeros = zp, ColumnOrder = order, Owner = new object[] { codes, scales, zeros },
        };
        q.Validate();
        return q;
    }

    public static QuantizedTensor ReadAwq(Checkpoint ck, QuantConfig qc, string b, HostTensor qweight, int rows, int cols)
    {
        int gs = CheckCommon(qc, qweight, "AWQ", rows, cols);
        int groups = cols / gs;
        Expect(qweight, DType.I32, cols, rows / 8);
        var qzeros = Need(ck, qweight, b + ".qzeros");
        var scalesT = Need(ck, qweight, b + ".scales");
        Expect(qzeros, DType.I32, groups, rows / 8);
        var scales = Scales(scalesT, groups, rows, out var sp);

        var qw = qweight.As<int>();
        var qz = qzeros.As<int>();
        var codes = QuantizedWeights.Pinned<byte>((long)rows * cols / 2, out var cp);
        var zeros = QuantizedWeights.Pinned<byte>((long)rows * groups, out var zp);
        var nibbles = new byte[cols];
        var awq = AwqOrder;
        for (int o = 0; o < rows; o++)
        {
            int shift = 4 * awq[o % 8], word = o / 8;
            for (int i = 0; i < cols; i++) nibbles[i] = (byte)((qw[i * (rows / 8) + word] >>> shift) & 15);
            QuantLayout.PackInt4Row(nibbles, codes.AsSpan((int)((long)o * cols / 2), cols / 2));
            for (int g = 0; g < groups; g++)
                zeros[(long)o * groups + g] = (byte)((qz[g * (rows / 8) + word] >>> shift) & 15);
        }
        var q = new QuantizedTensor
        {
            Name = b + ".weight", Source = qweight.Source, Bits = 4, GroupSize = gs, Rows = rows, Cols = cols,
            Codes = cp, Scales = sp, Zeros = zp, Owner = new object[] { codes, scales, zeros },
        };
        q.Validate();
        return q;
    }
}
