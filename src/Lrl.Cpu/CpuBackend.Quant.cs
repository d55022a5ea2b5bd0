namespace Lrl.Cpu;

/// <summary>Quantized weights on the CPU: read in place, dequantized on the fly inside the products.</summary>
public sealed partial class CpuBackend : IQuantizedBackend
{
    public Weight LoadQuantized(QuantizedTensor q) => new QuantMatrix(q);
}
