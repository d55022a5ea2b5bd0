using CommandLine;
using Lrl;
using Lrl.Cli;

// lrlrun: one verb per class in Verbs/; errors the user can fix print one line and exit 2, never a stack trace.
Console.OutputEncoding = System.Text.Encoding.UTF8;
var parser = new Parser(s => { s.HelpWriter = Console.Error; s.CaseInsensitiveEnumValues = true; s.AutoVersion = false; });
try
{
    return parser.ParseArguments<GenerateVerb, ChatVerb, InfoVerb, BenchVerb, SynthVerb, ServeVerb, PullVerb, QuantizeVerb, PerplexityVerb, TokenizeVerb>(args).MapResult(
        (GenerateVerb v) => v.Run(),
        (ChatVerb v) => v.Run(),
        (InfoVerb v) => v.Run(),
        (BenchVerb v) => v.Run(),
        (SynthVerb v) => v.Run(),
        (QuantizeVerb v) => v.Run(),
        (PerplexityVerb v) => v.Run(),
        (ServeVerb v) => v.Run(),
        (PullVerb v) => v.Run(),
        (TokenizeVerb v) => v.Run(),
        _ => 2);
}
catch (LrlException e)
{
    Console.Error.WriteLine($"lrlrun: error: {e.Message}");
    return 2;
}
catch (OperationCanceledException)
{
    return 130;
}
