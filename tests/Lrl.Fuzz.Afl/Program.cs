// Coverage-guided fuzzing of lrlrun's loaders with SharpFuzz + AFL++. Anything but an LrlException is a finding.
//
//   dotnet tool install --global SharpFuzz.CommandLine
//   dotnet publish tests/Lrl.Fuzz.Afl -c Release -o /tmp/lrlfuzz
//   sharpfuzz /tmp/lrlfuzz/Lrl.Loading.dll && sharpfuzz /tmp/lrlfuzz/Lrl.Tokenization.dll && sharpfuzz /tmp/lrlfuzz/Lrl.Core.dll
//   mkdir -p /tmp/in && cp ../shared/models/stories260k/model.safetensors /tmp/in/   # seeds of the chosen target
//   afl-fuzz -i /tmp/in -o /tmp/out -t 5000 -m none -- dotnet /tmp/lrlfuzz/Lrl.Fuzz.Afl.dll safetensors
//
// Targets: safetensors | config | tokenizer-json | tokenizer-model | token-mappings.
using Lrl;
using Lrl.Loading;
using Lrl.Tokenization;
using SharpFuzz;

if (args.Length != 1 || Targets.For(args[0]) is not { } target)
{
    Console.Error.WriteLine("usage: Lrl.Fuzz.Afl safetensors|config|tokenizer-json|tokenizer-model|token-mappings  (input on stdin, under afl-fuzz)");
    return 2;
}
Fuzzer.OutOfProcess.Run(stream =>
{
    using var ms = new MemoryStream();
    stream.CopyTo(ms);
    target(ms.ToArray());
});
return 0;

internal static class Targets
{
    private static readonly string Dir = Directory.CreateTempSubdirectory("lrl-afl").FullName;

    public static Action<byte[]>? For(string name) => name switch
    {
        "safetensors" => bytes => Run("model.safetensors", bytes, d => { using var f = SafeTensorsFile.Open(Path.Combine(d, "model.safetensors")); foreach (var t in f.Tensors) _ = t.ByteLength; }),
        "config" => bytes => Run("config.json", bytes, d => { var c = ModelConfig.Load(d); _ = (c.Architecture, c.ModelType); }),
        "tokenizer-json" => bytes => Run("tokenizer.json", bytes, Exercise),
        "tokenizer-model" => bytes => Run("tokenizer.model", bytes, Exercise),
        "token-mappings" => bytes => Run("token_mappings.json", bytes, Exercise),
        _ => null,
    };

    private static void Exercise(string dir)
    {
        var tok = LrlTokenizer.Load(dir);
        var ids = tok.Encode("Hello wörld ሰላም 123 <s>", addSpecial: true);
        _ = tok.Decode(ids);
    }

    private static void Run(string file, byte[] bytes, Action<string> load)
    {
        foreach (var f in Directory.GetFiles(Dir)) File.Delete(f);
        File.WriteAllBytes(Path.Combine(Dir, file), bytes);
        try { load(Dir); }
        catch (LrlException) { } // a clear error: the expected outcome for bad input
    }
}
