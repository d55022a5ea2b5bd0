using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Lrl.Cpu;

namespace Lrl.Bench;

/// <summary>
/// The CPU backend's product per weight format (f32, f16, bf16, and int8/int4 with one scale per row, the presets'
/// layout) at M = 1 (decode), 2-16 (a batched decode step, speculative verification) and 64-128 (prefill) rows, at the
/// matrix shapes of SmolLM2-135M's MLP (1536×576) and Llama-3.2-1B's (8192×2048). Extra columns: GB/s of weights read,
/// GOP/s (2 per multiply-add), and the fraction of this machine's measured peak for the kind of arithmetic the kernel
/// runs (f32 FMA for dense formats, int8 dot products for quantized ones: <see cref="Lrl.Bench.MachineProbe"/>, all
/// threads). Run: <c>dotnet run -c Release --project bench/Lrl.Bench -- --filter '*MatMulBenchmarks*'</c>.
/// </summary>
[Config(typeof(Config))]
public unsafe class MatMulBenchmarks
{
    private sealed class Config : ManualConfig
    {
        public Config() => AddColumn(new ThroughputColumn());
    }

    public enum Shape { SmolLM2_135M_Mlp, Llama_1B_Mlp }

    [Params("f32", "f16", "bf16", "q8", "q4")]
    public string Format { get; set; } = "bf16";

    [Params(Shape.SmolLM2_135M_Mlp, Shape.Llama_1B_Mlp)]
    public Shape Size { get; set; }

    [Params(1, 2, 4, 8, 16, 64, 128)]
    public int Rows { get; set; }

    private CpuBackend _cpu = null!;
    private Weight _w = null!;
    private DeviceBuffer _x = null!, _y = null!;
    private byte* _data;

    public (int Out, int In) Dims => Size == Shape.SmolLM2_135M_Mlp ? (1536, 576) : (8192, 2048);

    [GlobalSetup]
    public void Setup()
    {
        var (o, i) = Dims;
        long n = (long)o * i;
        var rng = new Random(1);
        _cpu = new CpuBackend();
        if (Format is "q8" or "q4")
        {
            int bits = Format == "q8" ? 8 : 4;
            long codeBytes = QuantLayout.CodeBytes(bits, o, i);
            _data = (byte*)NativeMemory.AlignedAlloc((nuint)(codeBytes + 2L * o), 64);
            for (long k = 0; k < codeBytes; k++) _data[k] = (byte)rng.Next(bits == 8 ? 255 : 256);
            var scales = (Half*)(_data + codeBytes);
            for (int r = 0; r < o; r++) scales[r] = (Half)(0.001 + rng.NextDouble() * 0.01);
            _w = _cpu.LoadQuantized(new QuantizedTensor
            {
                Name = "w", Source = "bench", Bits = bits, GroupSize = i, Rows = o, Cols = i, Codes = _data, Scales = scales,
            });
        }
        else
        {
            var dtype = Format switch { "f32" => DType.F32, "f16" => DType.F16, _ => DType.BF16 };
            _data = (byte*)NativeMemory.AlignedAlloc((nuint)(n * dtype.Size()), 64);
            for (long k = 0; k < n; k++)
            {
                float v = (float)(rng.NextDouble() * 0.08 - 0.04);
                switch (dtype)
                {
                    case DType.F32: ((float*)_data)[k] = v; break;
                    case DType.F16: ((Half*)_data)[k] = (Half)v; break;
                    default: ((ushort*)_data)[k] = DTypes.FloatToBF16(v); break;
                }
            }
            _w = _cpu.LoadWeight(new HostTensor("w", dtype, [o, i], _data, n * dtype.Size(), "bench"));
        }
        _x = _cpu.Allocate((long)Rows * i);
        _cpu.Upload(Enumerable.Range(0, Rows * i).Select(k => (float)Math.Sin(k)).ToArray(), _x);
        _y = _cpu.Allocate((long)Rows * o);
    }

    [Benchmark]
    public void MatMul() => _cpu.MatMul(_x, _w, _y, Rows);

    [GlobalCleanup]
    public void Cleanup()
    {
        _cpu.Dispose();
        NativeMemory.AlignedFree(_data);
    }

    /// <summary>The machine's peaks on all threads, measured once per process (the column runs in the host process).</summary>
    private static readonly Lazy<(double Fma, double Int8)> Peaks = new(() =>
        (MachineProbe.FmaPeakGFlops(Environment.ProcessorCount), MachineProbe.Int8PeakGOps(Environment.ProcessorCount)));

    /// <summary>GB/s of weight bytes, GOP/s and the fraction of the matching peak, from the mean time.</summary>
    private sealed class ThroughputColumn : IColumn
    {
        public string Id => "Throughput";
        public string ColumnName => "Throughput";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => false;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "GB/s of weights read; GOP/s (2 per multiply-add) and its fraction of the measured f32 FMA (dense) or int8 dot (quantized) peak";
        public bool IsAvailable(Summary summary) => true;
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase c, SummaryStyle style)
        {
            var report = summary[c];
            if (report?.ResultStatistics is not { } stats) return "-";
            double seconds = stats.Mean / 1e9;
            var format = (string)c.Parameters["Format"];
            var shape = (Shape)c.Parameters["Size"];
            int rows = (int)c.Parameters["Rows"];
            var (o, i) = shape == Shape.SmolLM2_135M_Mlp ? (1536, 576) : (8192, 2048);
            double bytesPer = format switch { "f32" => 4, "f16" or "bf16" => 2, "q8" => 1, _ => 0.5 };
            double gops = 2.0 * rows * o * i / seconds / 1e9;
            double peak = format is "q8" or "q4" ? Peaks.Value.Int8 : Peaks.Value.Fma;
            return $"{o * i * bytesPer / seconds / 1e9:F1} GB/s, {gops:F1} GOP/s, {(peak > 0 ? gops / peak : 0):P0} of peak";
        }
    }
}
