using CommandLine;
using CommandLine.Text;
using Lrl;
using Lrl.Cli;

// lrlrun: one verb per class in Verbs/; errors the user can fix print one line and exit 2, never a stack trace.
Console.OutputEncoding = System.Text.Encoding.UTF8;
try
{
    return Cli.Run(args);
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

namespace Lrl.Cli
{
    /// <summary>Parses the command line: help and version to stdout (exit 0), mistakes as one line with the closest match (exit 2).</summary>
    internal static class Cli
    {
        public static readonly Type[] Verbs =
        [
            typeof(GenerateVerb), typeof(ChatVerb), typeof(ServeVerb), typeof(TokenizeVerb), typeof(InfoVerb), typeof(BenchVerb),
            typeof(QuantizeVerb), typeof(MergeLoraVerb), typeof(PerplexityVerb), typeof(PullVerb), typeof(SynthVerb), typeof(HeadsVerb),
        ];

        public static string Version =>
            typeof(Cli).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
                .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion.Split('+')[0] ?? "0";

        public static int Run(string[] args)
        {
            if (args is ["--version"] or ["version"] or ["-V"])
            {
                Console.Out.WriteLine($"lrlrun {Version} (.NET {Environment.Version})");
                return 0;
            }
            var parser = new Parser(s => { s.HelpWriter = null; s.CaseInsensitiveEnumValues = true; s.AutoVersion = true; s.AllowMultiInstance = true; });
            var result = parser.ParseArguments(args, Verbs);
            return result.MapResult(Dispatch, errors => Report(result, errors.ToList(), args));
        }

        private static int Dispatch(object verb) => verb switch
        {
            GenerateVerb v => v.Run(),
            ChatVerb v => v.Run(),
            InfoVerb v => v.Run(),
            BenchVerb v => v.Run(),
            SynthVerb v => v.Run(),
            QuantizeVerb v => v.Run(),
            MergeLoraVerb v => v.Run(),
            HeadsVerb v => v.Run(),
            PerplexityVerb v => v.Run(),
            ServeVerb v => v.Run(),
            PullVerb v => v.Run(),
            TokenizeVerb v => v.Run(),
            _ => throw new InvalidOperationException($"no handler for {verb.GetType().Name}"),
        };

        private static int Report(ParserResult<object> result, List<Error> errors, string[] args)
        {
            if (errors.Any(e => e is VersionRequestedError))
            {
                Console.Out.WriteLine($"lrlrun {Version} (.NET {Environment.Version})");
                return 0;
            }
            if (errors.OfType<HelpVerbRequestedError>().FirstOrDefault() is { Matched: true, Verb: { } helpVerb })
                return Run([helpVerb, "--help"]); // `lrlrun help generate` = `lrlrun generate --help`
            if (errors.Any(e => e is HelpRequestedError or HelpVerbRequestedError))
            {
                Console.Out.Write(Help(result));
                return 0;
            }
            if (errors.Any(e => e is NoVerbSelectedError))
            {
                Console.Error.Write(Help(result));
                return 2;
            }
            var verbNames = Verbs.Select(VerbName).ToList();
            if (errors.OfType<BadVerbSelectedError>().FirstOrDefault() is { } bad)
            {
                var close = Closest(bad.Token, verbNames);
                Console.Error.WriteLine($"lrlrun: unknown verb '{bad.Token}'.{(close is null ? "" : $" Did you mean '{close}'?")} Verbs: {string.Join(", ", verbNames)}. See lrlrun --help.");
                return 2;
            }
            var verbType = result.TypeInfo.Current;
            string verb = verbType == typeof(NullInstance) ? "" : " " + VerbName(verbType);
            var options = OptionNames(verbType);
            var sentences = SentenceBuilder.Create();
            // An unknown option explains the rest (a misspelt required option is also "missing"): report it alone.
            if (errors.OfType<UnknownOptionError>().Any()) errors = errors.OfType<UnknownOptionError>().Cast<Error>().ToList();
            foreach (var e in errors)
            {
                string message = e switch
                {
                    UnknownOptionError u when Closest(u.Token, options) is { } close =>
                        $"unknown option '{Dashes(u.Token)}'. Did you mean '--{close}'?",
                    UnknownOptionError u => $"unknown option '{Dashes(u.Token)}'.",
                    BadFormatConversionError b => BadValue(verbType, b.NameInfo, args) ?? sentences.FormatError(e),
                    _ => sentences.FormatError(e),
                };
                Console.Error.WriteLine($"lrlrun{verb}: {message} See lrlrun{verb} --help.");
            }
            return 2;
        }

        /// <summary>
        /// "--opt: 'value' is not one of a, b, c." (an enum), "... is not a whole number" / "a number": the value as typed,
        /// found in the arguments; null for other types (the library's sentence then).
        /// </summary>
        private static string? BadValue(Type verbType, NameInfo name, string[] args)
        {
            var prop = verbType.GetProperties().FirstOrDefault(p => p.GetCustomAttributes(typeof(OptionAttribute), true).OfType<OptionAttribute>()
                .Any(o => o.LongName == name.LongName && !string.IsNullOrEmpty(o.LongName)));
            var type = prop is null ? null : Nullable.GetUnderlyingType(prop.PropertyType) ?? prop.PropertyType;
            if (type is { IsGenericType: true } && type.GetGenericArguments() is [var element]) type = element; // lists: their items
            string? want = type is null ? null
                : type.IsEnum ? "one of " + string.Join(", ", Enum.GetNames(type).Select(n => n.ToLowerInvariant()))
                : type == typeof(int) || type == typeof(long) ? "a whole number"
                : type == typeof(float) || type == typeof(double) ? "a number" : null;
            if (want is null) return null;
            string flag = "--" + name.LongName, shortFlag = string.IsNullOrEmpty(name.ShortName) ? flag : "-" + name.ShortName;
            int at = Array.FindIndex(args, a => a == flag || a == shortFlag || a.StartsWith(flag + "=", StringComparison.Ordinal));
            string value = at < 0 ? "" : args[at].Contains('=') ? args[at][(args[at].IndexOf('=') + 1)..] : at + 1 < args.Length ? args[at + 1] : "";
            return $"{flag}: '{value}' is not {want}.";
        }

        private static string Dashes(string token) => token.Length == 1 ? "-" + token : "--" + token;

        /// <summary>The help text: verb list, or a verb's options followed by its examples.</summary>
        private static string Help(ParserResult<object> result)
        {
            var help = HelpText.AutoBuild(result, h =>
            {
                h.Heading = $"lrlrun {Version}: a native inference engine for small language models";
                h.Copyright = "";
                h.AdditionalNewLineAfterOption = false;
                h.AddDashesToOption = true;
                h.MaximumDisplayWidth = 110;
                if (result.TypeInfo.Current == typeof(NullInstance))
                    h.AddPostOptionsLine("Run `lrlrun VERB --help` for a verb's options and examples; `lrlrun --version` for the version.");
                return HelpText.DefaultParsingErrorsHandler(result, h);
            }, e => e, verbsIndex: true).ToString().TrimEnd();
            // Examples unwrapped, so each can be copied as one command line.
            if (result.TypeInfo.Current.GetProperty("Examples", System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static)?.GetValue(null) is string[] examples)
                help += "\n\nExamples:\n" + string.Join("\n", examples.Select(x => "  " + x));
            return help + "\n";
        }

        internal static string VerbName(Type t) => t.GetCustomAttributes(typeof(VerbAttribute), true).OfType<VerbAttribute>().First().Name;

        internal static List<string> OptionNames(Type verb) =>
            verb.GetProperties().SelectMany(p => p.GetCustomAttributes(typeof(OptionAttribute), true).OfType<OptionAttribute>())
                .Select(o => o.LongName).Where(n => !string.IsNullOrEmpty(n)).Append("help").ToList();

        /// <summary>The candidate nearest to <paramref name="token"/> by edit distance, when near enough to be a typo.</summary>
        internal static string? Closest(string token, IEnumerable<string> candidates)
        {
            token = token.TrimStart('-').Replace('_', '-').ToLowerInvariant();
            string? best = null;
            int bestDistance = int.MaxValue;
            foreach (var c in candidates)
            {
                int d = c.StartsWith(token, StringComparison.Ordinal) && token.Length >= 3 ? 1 : Distance(token, c);
                if (d < bestDistance) { bestDistance = d; best = c; }
            }
            return best is not null && bestDistance <= Math.Max(2, best.Length / 3) ? best : null;
        }

        private static int Distance(string a, string b)
        {
            var d = new int[a.Length + 1, b.Length + 1];
            for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
            for (int j = 0; j <= b.Length; j++) d[0, j] = j;
            for (int i = 1; i <= a.Length; i++)
                for (int j = 1; j <= b.Length; j++)
                {
                    d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
                    if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
                }
            return d[a.Length, b.Length];
        }
    }
}
