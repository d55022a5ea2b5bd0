namespace Lrl.Kernels.Reference;

/// <summary>Quantized weights on the reference backend: dequantized once, in double, to a plain matrix.</summary>
public sealed partial class ReferenceBackend : IQuantizedBackend
{
    public Weight LoadQuantized(QuantizedTensor q)
    {
        q.Validate();
        var data = new float[(long)q.Rows * q.Cols];
        var row = new double[q.Cols];
        for (int r = 0; r < q.Rows; r++)
        {
            q.DequantizeRow(r, row);
            for (int c = 0; c < q.Cols; c++) data[(long)r * q.Cols + c] = (float)row[c];
        }
        return new RefWeight(q.Name, q.Rows, q.Cols, data, q.Format);
    }
}
