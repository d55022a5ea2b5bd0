using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Lrl.Cpu;

namespace Lrl.Bench;

/// <summary>
/// GEMV (decode, 1 row) and GEMM (prefill, 128 rows) of the CPU backend per weight format, at the matrix shapes of
/// SmolLM2-135M's MLP (1536×576) and Llama-3.2-1B's (8192×2048). Extra columns give GB/s of weights read (GEMV) and
/// GFLOP/s (GEMM), to set against the machine's limits reported by `lrlrun bench`.
/// </summary>
[Config(typeof(Config))]
public unsafe class MatMulBenchmarks
{
    private sealed class Config : ManualConfig
    {
        public Config() => AddColumn(new ThroughputColumn());
    }

    public enum Shape { SmolLM2_135M_Mlp, Llama_1B_Mlp }

    [Params(DType.F32, DType.F16, DType.BF16)]
    public DType Format { get; set; }

    [Params(Shape.SmolLM2_135M_Mlp, Shape.Llama_1B_Mlp)]
    public Shape Size { get; set; }

    [Params(1, 128)]
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
        _data = (byte*)NativeMemory.AlignedAlloc((nuint)(n * Format.Size()), 64);
        var rng = new Random(1);
        for (long k = 0; k < n; k++)
        {
            float v = (float)(rng.NextDouble() * 0.08 - 0.04);
            switch (Format)
            {
                case DType.F32: ((float*)_data)[k] = v; break;
                case DType.F16: ((Half*)_data)[k] = (Half)v; break;
                default: ((ushort*)_data)[k] = DTypes.FloatToBF16(v); break;
            }
        }
        _cpu = new CpuBackend();
        _w = _cpu.LoadWeight(new HostTensor("w", Format, [o, i], _data, n * Format.Size(), "bench"));
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

    /// <summary>GB/s of weight bytes for GEMV, GFLOP/s for GEMM, from the mean time.</summary>
    private sealed class ThroughputColumn : IColumn
    {
        public string Id => "Throughput";
        public string ColumnName => "Throughput";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => false;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "GEMV: GB/s of weights read; GEMM: GFLOP/s";
        public bool IsAvailable(Summary summary) => true;
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase c, SummaryStyle style)
        {
            var report = summary[c];
            if (report?.ResultStatistics is not { } stats) return "-";
            double seconds = stats.Mean / 1e9;
            var format = (DType)c.Parameters["Format"];
            var shape = (Shape)c.Parameters["Size"];
            int rows = (int)c.Parameters["Rows"];
            var (o, i) = shape == Shape.SmolLM2_135M_Mlp ? (1536, 576) : (8192, 2048);
            return rows == 1
                ? $"{(double)o * i * format.Size() / seconds / 1e9:F1} GB/s"
                : $"{2.0 * rows * o * i / seconds / 1e9:F1} GFLOP/s";
        }
    }
}
