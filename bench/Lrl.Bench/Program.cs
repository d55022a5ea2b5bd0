using BenchmarkDotNet.Running;

// CPU kernel microbenchmarks (BenchmarkDotNet). Examples:
//   dotnet run -c Release --project bench/Lrl.Bench -- --filter '*MatMul*'
//   dotnet run -c Release --project bench/Lrl.Bench -- --filter '*MatMul*' --job short
// GPU kernels are benchmarked by `lrlrun bench kernels --device cuda` (the same kernels verified first).
BenchmarkSwitcher.FromAssembly(typeof(Lrl.Bench.MatMulBenchmarks).Assembly).Run(args);
