using System.Diagnostics;
using System.Runtime.InteropServices;
using Lrl;
using Lrl.Cpu;

// Decode GEMV speed of quantized vs bf16 matrices on the CPU backend (y = W·x through CpuBackend.MatMul, one row).
// "hot": one matrix over and over (stays in cache when it fits); "cold": a ring of copies larger than the L3 cache,
// so every product streams its weights from DRAM. GB/s = weight bytes read (codes + scales) / time.
//   dotnet run -c Release --project bench/Lrl.Quant.Bench [-- threads...]
unsafe
{
    int[] threadCounts = args.Length > 0 ? args.Select(int.Parse).ToArray() : [1, Environment.ProcessorCount];
    var shapes = new (string Name, int Rows, int Cols)[] { ("SmolLM2-135M MLP 1536x576", 1536, 576), ("Llama-1B MLP 8192x2048", 8192, 2048) };
    var rng = new Random(1);
    Console.WriteLine($"CPU: {Environment.ProcessorCount} logical cores; AVX2 {System.Runtime.Intrinsics.X86.Avx2.IsSupported}, AVX-VNNI {System.Runtime.Intrinsics.X86.AvxVnni.IsSupported}");
    Console.WriteLine($"{"matrix",-28} {"format",-10} {"kernel",-9} {"thr",3} {"MB",7} {"hot µs",9} {"hot GB/s",9} {"cold µs",9} {"cold GB/s",9}");
    foreach (var (name, rows, cols) in shapes)
        foreach (int threads in threadCounts)
        {
            using var cpu = new CpuBackend(threads);
            var x = cpu.Allocate(cols); var y = cpu.Allocate(rows);
            var xs = new float[cols];
            for (int i = 0; i < cols; i++) xs[i] = (float)(rng.NextDouble() * 2 - 1);
            cpu.Upload(xs, x);
            foreach (var (format, kernel) in new (string, QuantKernel)[]
                     {
                         ("BF16", QuantKernel.Auto), ("Q8_G32", QuantKernel.Vnni), ("Q8_G32", QuantKernel.Avx2Int), ("Q8_G32", QuantKernel.WidenF32),
                         ("Q8_GC", QuantKernel.Vnni), ("Q4_G32", QuantKernel.Vnni), ("Q4_G32", QuantKernel.Avx2Int), ("Q4_G32", QuantKernel.WidenF32),
                         ("Q4_G128", QuantKernel.Vnni), ("Q4_G32Z", QuantKernel.Vnni),
                     })
            {
                if (kernel == QuantKernel.Vnni && !System.Runtime.Intrinsics.X86.AvxVnni.IsSupported) continue;
                if (format.Contains("G128") && cols % 128 != 0) continue;
                long bytes = Make(format, rows, cols, rng, kernel).ByteSize;
                int copies = (int)Math.Max(1, Math.Ceiling(128e6 / bytes)); // ring > L3
                var ring = Enumerable.Range(0, copies).Select(_ => Make(format, rows, cols, rng, kernel)).ToArray();
                double hot = Time(() => cpu.MatMul(x, ring[0], y, 1));
                int k = 0;
                double cold = Time(() => { cpu.MatMul(x, ring[k], y, 1); k = (k + 1) % copies; });
                Console.WriteLine($"{name,-28} {ring[0].Format,-10} {(format == "BF16" ? "-" : kernel.ToString()),-9} {threads,3} {bytes / 1e6,7:F2} {hot * 1e6,9:F1} {bytes / hot / 1e9,9:F1} {cold * 1e6,9:F1} {bytes / cold / 1e9,9:F1}");
                foreach (var w in ring) w.Dispose();
                Native.FreeAll();
            }
        }
}

// Median seconds per call over ~0.4 s of calls (after warm-up).
static double Time(Action f)
{
    for (int i = 0; i < 5; i++) f();
    var times = new List<double>();
    var total = Stopwatch.StartNew();
    while (total.Elapsed.TotalSeconds < 0.4 || times.Count < 10)
    {
        long t0 = Stopwatch.GetTimestamp();
        f();
        times.Add(Stopwatch.GetElapsedTime(t0).TotalSeconds);
    }
    times.Sort();
    return times[times.Count / 2];
}

static unsafe Weight Make(string format, int rows, int cols, Random rng, QuantKernel kernel)
{
    if (format == "BF16")
    {
        var p = (ushort*)Native.Alloc((nuint)((long)rows * cols * 2), 64);
        for (long i = 0; i < (long)rows * cols; i++) p[i] = DTypes.FloatToBF16((float)(rng.NextDouble() - 0.5));
        return new DenseMatrix("w", rows, cols, DType.BF16, (byte*)p);
    }
    int bits = format[1] - '0';
    string g = format[(format.IndexOf('G') + 1)..].TrimEnd('Z');
    int group = g == "C" ? cols : int.Parse(g);
    bool zeros = format.EndsWith('Z');
    long codeBytes = QuantLayout.CodeBytes(bits, rows, cols);
    var codes = (byte*)Native.Alloc((nuint)codeBytes, 64);
    rng.NextBytes(new Span<byte>(codes, (int)codeBytes));
    if (bits == 8) for (long i = 0; i < codeBytes; i++) if (codes[i] == 0x80) codes[i] = 0x81;
    long groups = (long)rows * (cols / group);
    var scales = (Half*)Native.Alloc((nuint)(groups * 2), 64);
    for (long i = 0; i < groups; i++) scales[i] = (Half)(0.001 + rng.NextDouble() * 0.01);
    byte* zp = null;
    if (zeros)
    {
        zp = (byte*)Native.Alloc((nuint)groups, 64);
        for (long i = 0; i < groups; i++) zp[i] = (byte)rng.Next(16);
    }
    var q = new QuantizedTensor { Name = "w", Source = "bench", Bits = bits, GroupSize = group, Rows = rows, Cols = cols, Codes = codes, Scales = scales, Zeros = zp };
    return new QuantMatrix(q) { Kernel = kernel };
}

static unsafe class Native
{
    private static readonly List<nint> Blocks = new();
    public static void* Alloc(nuint bytes, nuint align)
    {
        var p = NativeMemory.AlignedAlloc(bytes, align);
        Blocks.Add((nint)p);
        return p;
    }
    public static void FreeAll()
    {
        foreach (var p in Blocks) NativeMemory.AlignedFree((void*)p);
        Blocks.Clear();
    }
}
