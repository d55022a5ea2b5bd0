using Lrl.Loading;
using Lrl.Quant;

namespace Lrl.Models;

/// <summary>
/// Loads a model's weights dense or quantized: when "X.weight" is stored as "X.qweight" (lrlrun, GPTQ or AWQ), the
/// weight is read as a <see cref="QuantizedTensor"/> and handed to the backend's <see cref="IQuantizedBackend"/>;
/// otherwise the dense tensor goes to <see cref="IBackend.LoadWeight"/>.
/// </summary>
public static class WeightLoader
{
    /// <summary>Loads <paramref name="name"/> with the expected <paramref name="shape"/> ([out, in] for matrices).</summary>
    public static Weight Load(Checkpoint checkpoint, IBackend backend, string name, params int[] shape)
    {
        if (!checkpoint.Contains(name) && QuantizedWeights.IsQuantized(checkpoint, name))
        {
            if (shape.Length != 2)
                throw new ModelFormatException(checkpoint.Directory, $"tensor '{name}' is quantized but must be a vector {ShapeText(shape)}");
            var q = QuantizedWeights.Read(checkpoint, name, shape[0], shape[1]);
            if (backend is not IQuantizedBackend qb)
                throw new LrlException($"the {backend.Name} backend cannot run quantized weights ({name} is {q.Format})");
            return qb.LoadQuantized(q);
        }
        return backend.LoadWeight(checkpoint.Get(name, shape));
    }

    /// <summary>Whether the weight is present, dense or quantized.</summary>
    public static bool Exists(Checkpoint checkpoint, string name) => QuantizedWeights.Exists(checkpoint, name);

    /// <summary>Parameters of the checkpoint, counting each quantized matrix by its logical size (not its packed bytes).</summary>
    public static long ParameterCount(Checkpoint checkpoint)
    {
        long n = 0;
        foreach (var t in checkpoint.Tensors)
        {
            int dot = t.Name.LastIndexOf('.');
            string suffix = dot < 0 ? "" : t.Name[dot..];
            if (suffix == ".qweight")
                n += t.ElementCount * (t.DType switch { DType.I32 => 8, DType.U8 => 2, _ => 1 });
            else if (suffix is ".scales" or ".zeros" or ".qzeros" or ".g_idx" && checkpoint.Contains(t.Name[..dot] + ".qweight"))
                continue;
            else
                n += t.ElementCount;
        }
        return n;
    }

    private static string ShapeText(int[] shape) => "[" + string.Join(", ", shape) + "]";
}
