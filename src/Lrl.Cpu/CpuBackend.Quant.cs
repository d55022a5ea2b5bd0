namespace Lrl.Cpu;

/// <summary>Quantized weights on the CPU: read in place, dequantized on the fly inside the products.</summary>
public sealed partial class CpuBackend : IQuantizedBackend
{
    public unsafe Weight LoadQuantized(QuantizedTensor q)
    {
        if (_arena is null) return new QuantMatrix(q);
        return new QuantMatrix(new QuantizedTensor
        {
            Name = q.Name, Source = q.Source, Bits = q.Bits, GroupSize = q.GroupSize, Rows = q.Rows, Cols = q.Cols,
            Codes = _arena.Copy(q.Codes, q.CodeBytes),
            Scales = (Half*)_arena.Copy((byte*)q.Scales, q.ScaleCount * 2),
            Zeros = q.Zeros == null ? null : _arena.Copy(q.Zeros, q.ScaleCount),
            ColumnOrder = q.ColumnOrder, Owner = q.Owner,
        });
    }
}
