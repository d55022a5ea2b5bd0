using System.Text;
using BenchmarkDotNet.Attributes;
using Lrl.Tokenization;

namespace Lrl.Bench;

/// <summary>
/// Encode throughput of lrlrun's tokenizers beside the Rust Hugging Face library (through Tokenizers.DotNet, one
/// thread), per tokenizer kind: short lines (the shared corpus, one call per line: the fixed per-call cost shows)
/// and one 1 MB text (the corpus repeated). MB/s = the text's UTF-8 bytes / the mean time.
/// Needs ../shared/tokenizers (or LRL_SHARED). Run:
///   dotnet run -c Release --project bench/Lrl.Bench -- --filter '*Tokenizer*'
/// </summary>
[MemoryDiagnoser]
public class TokenizerBenchmarks
{
    [Params("gpt2-json", "smollm-135m-json", "mistral-v0.3-json", "naijaml-yor-json", "whisper-v3-json", "mistral-v0.3-model")]
    public string Tokenizer { get; set; } = "";

    [Params("lines", "1MB")]
    public string Text { get; set; } = "";

    private LrlTokenizer _lrl = null!;
    private Tokenizers.DotNet.Tokenizer? _rust;
    private string[] _inputs = [];

    public static string SharedTokenizers()
    {
        var env = Environment.GetEnvironmentVariable("LRL_SHARED");
        if (!string.IsNullOrEmpty(env)) return Path.Combine(env, "tokenizers");
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (Directory.Exists(Path.Combine(d.FullName, "shared", "tokenizers"))) return Path.Combine(d.FullName, "shared", "tokenizers");
        throw new DirectoryNotFoundException("shared/tokenizers not found (set LRL_SHARED)");
    }

    [GlobalSetup]
    public void Setup()
    {
        var root = SharedTokenizers();
        var dir = Path.Combine(root, Tokenizer);
        _lrl = LrlTokenizer.Load(dir);
        var json = Path.Combine(dir, "tokenizer.json");
        _rust = File.Exists(json) ? new Tokenizers.DotNet.Tokenizer(json) : null;
        var lines = File.ReadAllText(Path.Combine(root, "corpus.txt")).Split('\n').Where(l => l.Length > 0).ToArray();
        if (Text == "lines") _inputs = lines;
        else
        {
            var sb = new StringBuilder();
            while (Encoding.UTF8.GetByteCount(sb.ToString()) < 1 << 20) sb.AppendJoin('\n', lines).Append('\n');
            _inputs = [sb.ToString()];
        }
        Console.WriteLine($"// {Tokenizer} {Text}: {_inputs.Sum(Encoding.UTF8.GetByteCount)} bytes in {_inputs.Length} calls");
    }

    [Benchmark(Baseline = true)]
    public int Lrlrun()
    {
        int n = 0;
        foreach (var s in _inputs) n += _lrl.Encode(s, addSpecial: false).Length;
        return n;
    }

    [Benchmark]
    public int Rust()
    {
        if (_rust is null) return 0; // tokenizer.model: sentencepiece has no .NET binding here
        int n = 0;
        foreach (var s in _inputs) n += _rust.Encode(s).Length;
        return n;
    }

    [GlobalCleanup]
    public void Cleanup() => _rust?.Dispose();
}
