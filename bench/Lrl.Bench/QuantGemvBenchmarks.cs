using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Lrl.Cpu;

namespace Lrl.Bench;

/// <summary>
/// CPU int8/int4 GEMV (decode, one row) per group size at SmolLM2-135M's shapes (576→576 attention output, 576→1536 MLP
/// up, 1536→576 MLP down). These matrices (0.2–0.9 MB) stay in the caches here, so the figures show the kernels' compute
/// cost per row, the part of a small model's decode that memory bandwidth does not explain.
/// </summary>
public unsafe class QuantGemvBenchmarks
{
    [Params(8, 4)]
    public int Bits { get; set; }

    [Params(0, 32)]
    public int Group { get; set; }

    [Params(QuantKernel.Avx2Int, QuantKernel.Vnni)]
    public QuantKernel Kernel { get; set; }

    [Params("576x576", "1536x576", "576x1536")]
    public string Shape { get; set; } = "576x576";

    private CpuBackend _cpu = null!;
    private Weight _w = null!;
    private DeviceBuffer _x = null!, _y = null!;
    private byte* _codes;
    private Half* _scales;

    [GlobalSetup]
    public void Setup()
    {
        var dims = Shape.Split('x');
        int rows = int.Parse(dims[0]), cols = int.Parse(dims[1]);
        int group = Group == 0 ? cols : Group;
        long codeBytes = QuantLayout.CodeBytes(Bits, rows, cols), scales = (long)rows * (cols / group);
        _codes = (byte*)NativeMemory.AlignedAlloc((nuint)codeBytes, 64);
        _scales = (Half*)NativeMemory.AlignedAlloc((nuint)(scales * 2), 64);
        var rng = new Random(1);
        for (long i = 0; i < codeBytes; i++) _codes[i] = (byte)rng.Next(256);
        for (long i = 0; i < scales; i++) _scales[i] = (Half)(0.001 + rng.NextDouble() * 0.01);
        var q = new QuantizedTensor { Name = "w", Source = "bench", Bits = Bits, GroupSize = group, Rows = rows, Cols = cols, Codes = _codes, Scales = _scales };
        _cpu = new CpuBackend();
        _w = _cpu.LoadQuantized(q);
        ((QuantMatrix)_w).Kernel = Kernel;
        _x = _cpu.Allocate(cols);
        _cpu.Upload(Enumerable.Range(0, cols).Select(k => (float)Math.Sin(k)).ToArray(), _x);
        _y = _cpu.Allocate(rows);
    }

    [Benchmark]
    public void Gemv() => _cpu.MatMul(_x, _w, _y, 1);

    [GlobalCleanup]
    public void Cleanup()
    {
        _cpu.Dispose();
        NativeMemory.AlignedFree(_codes);
        NativeMemory.AlignedFree(_scales);
    }
}
