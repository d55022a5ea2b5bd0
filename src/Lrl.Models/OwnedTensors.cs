using System.Runtime.InteropServices;

namespace Lrl.Models;

/// <summary>
/// Host tensors a model builds at load time (transposed Conv1D weights, constant vectors), in native memory it owns
/// until disposed, plus zero-copy reshaped views of checkpoint tensors. Backends may keep pointers into this memory
/// (the CPU backend reads matrices in place), so it must outlive the weights made from it.
/// </summary>
public sealed unsafe class OwnedTensors : IDisposable
{
    private readonly List<nint> _blocks = new();

    private byte* Alloc(long bytes)
    {
        var p = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64);
        _blocks.Add((nint)p);
        return p;
    }

    /// <summary>
    /// Columns [colStart, colStart + colCount) of a 2-D tensor [rows, cols], transposed to [colCount, rows] in the same
    /// dtype: a Conv1D weight stored [in, out] becomes the Linear layout [out, in].
    /// </summary>
    public HostTensor TransposeColumns(HostTensor t, int colStart, int colCount, string name)
    {
        if (t.Rank != 2) throw new ModelFormatException(t.Source, $"tensor '{t.Name}' has shape {t.ShapeString}; expected 2-D");
        int rows = t.Shape[0], cols = t.Shape[1], es = t.DType.Size();
        if (colStart < 0 || colCount <= 0 || colStart + colCount > cols)
            throw new ModelFormatException(t.Source, $"tensor '{t.Name}' {t.ShapeString} has no columns {colStart}..{colStart + colCount - 1}");
        if (t.ByteLength < (long)rows * cols * es)
            throw new ModelFormatException(t.Source, $"tensor '{t.Name}' holds {t.ByteLength} bytes, too few for {t.ShapeString} {t.DType}");
        long bytes = (long)rows * colCount * es;
        byte* dst = Alloc(bytes), src = t.Pointer;
        for (int o = 0; o < colCount; o++)
            for (int i = 0; i < rows; i++)
                Buffer.MemoryCopy(src + ((long)i * cols + colStart + o) * es, dst + ((long)o * rows + i) * es, es, es);
        return new HostTensor(name, t.DType, [colCount, rows], dst, bytes, t.Source);
    }

    /// <summary>A copy of a tensor in memory this owner holds (its source, e.g. an adapter file, may then close).</summary>
    public HostTensor Copy(HostTensor t, string? name = null)
    {
        long bytes = t.ElementCount * t.DType.Size();
        if (t.ByteLength < bytes)
            throw new ModelFormatException(t.Source, $"tensor '{t.Name}' holds {t.ByteLength} bytes, too few for {t.ShapeString} {t.DType}");
        byte* p = Alloc(bytes);
        Buffer.MemoryCopy(t.Pointer, p, bytes, bytes);
        return new HostTensor(name ?? t.Name, t.DType, t.Shape.ToArray(), p, bytes, t.Source);
    }

    /// <summary>An f32 vector of the given values.</summary>
    public HostTensor Floats(string name, ReadOnlySpan<float> values, string source)
    {
        long bytes = (long)values.Length * 4;
        byte* p = Alloc(bytes);
        values.CopyTo(new Span<float>(p, values.Length));
        return new HostTensor(name, DType.F32, [values.Length], p, bytes, source);
    }

    /// <summary>
    /// A zero-copy view of elements [offset, offset + product(shape)) of a checkpoint tensor, with a new shape;
    /// e.g. an rwkv.cpp [1, 1, C] mix vector as [C], or one row of a stacked [6, 1, C] tensor.
    /// </summary>
    public static HostTensor View(HostTensor t, long offset, int[] shape, string? name = null)
    {
        long n = 1;
        foreach (var d in shape) n *= d;
        if (offset < 0 || offset + n > t.ElementCount)
            throw new ModelFormatException(t.Source,
                $"tensor '{t.Name}' has shape {t.ShapeString} ({t.ElementCount} elements); expected at least {offset + n}");
        int es = t.DType.Size();
        return new HostTensor(name ?? t.Name, t.DType, shape, t.Pointer + offset * es, n * es, t.Source);
    }

    /// <summary>A tensor that must hold exactly n elements, viewed as a vector [n].</summary>
    public static HostTensor AsVector(HostTensor t, int n)
    {
        if (t.ElementCount != n)
            throw new ModelFormatException(t.Source, $"tensor '{t.Name}' has shape {t.ShapeString}; expected {n} elements");
        return View(t, 0, [n]);
    }

    public void Dispose()
    {
        foreach (var p in _blocks) NativeMemory.AlignedFree((void*)p);
        _blocks.Clear();
    }
}
