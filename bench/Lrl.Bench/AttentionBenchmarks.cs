using BenchmarkDotNet.Attributes;
using Lrl.Cpu;

namespace Lrl.Bench;

/// <summary>
/// CPU decode attention (one query row over a filled KV cache) and prompt attention (Context rows from position 0: the
/// query tiles; 2·Context²·heads·64 FLOP, so GFLOP/s = that over the mean time) at the head layouts of SmolLM2-135M
/// (9 query heads over 3 kv heads: split over positions to keep both threads busy) and Llama-3.2-1B (32 over 8), head
/// dim 64. `dotnet run -c Release --project bench/Lrl.Bench -- --filter '*Attention*'`.
/// </summary>
public class AttentionBenchmarks
{
    public enum Layout { SmolLM2_135M, Llama_1B }

    [Params(Layout.SmolLM2_135M, Layout.Llama_1B)]
    public Layout Heads { get; set; }

    [Params(128, 1024, 4096)]
    public int Context { get; set; }

    private CpuBackend _cpu = null!;
    private DeviceBuffer _q = null!, _k = null!, _v = null!, _o = null!, _qs = null!, _os = null!;
    private (int Heads, int KvHeads) Dims => Heads == Layout.SmolLM2_135M ? (9, 3) : (32, 8);
    private const int HeadDim = 64;

    [GlobalSetup]
    public void Setup()
    {
        var (h, kv) = Dims;
        _cpu = new CpuBackend();
        var rng = new Random(1);
        float[] Fill(long n) => Enumerable.Range(0, (int)n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        _q = _cpu.Allocate(h * HeadDim); _cpu.Upload(Fill(h * HeadDim), _q);
        _k = _cpu.Allocate((long)Context * kv * HeadDim); _cpu.Upload(Fill((long)Context * kv * HeadDim), _k);
        _v = _cpu.Allocate((long)Context * kv * HeadDim); _cpu.Upload(Fill((long)Context * kv * HeadDim), _v);
        _o = _cpu.Allocate(h * HeadDim);
        _qs = _cpu.Allocate((long)Context * h * HeadDim); _cpu.Upload(Fill((long)Context * h * HeadDim), _qs);
        _os = _cpu.Allocate((long)Context * h * HeadDim);
    }

    [Benchmark]
    public void Decode()
    {
        var (h, kv) = Dims;
        _cpu.Attention(_q, _k, _v, _o, 1, Context - 1, h, kv, HeadDim, 0.125f);
    }

    [Benchmark]
    public void Prefill()
    {
        var (h, kv) = Dims;
        _cpu.Attention(_qs, _k, _v, _os, Context, 0, h, kv, HeadDim, 0.125f);
    }

    [GlobalCleanup]
    public void Cleanup() => _cpu.Dispose();
}
