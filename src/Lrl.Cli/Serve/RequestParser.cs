using System.Text.Json;
using Lrl.Runtime;

namespace Lrl.Cli.Serve;

/// <summary>
/// Reads an OpenAI request body into a <see cref="CompletionRequest"/>, checking every field's type and range and
/// naming the field in the 400 it raises. Unknown fields are ignored (as OpenAI-compatible servers do); known fields
/// that ask for something this server cannot do (n &gt; 1, logprobs, echo, tools, ...) are refused, not silently dropped.
/// </summary>
public static class RequestParser
{
    /// <summary>Parses a request body; <paramref name="defaults"/> supplies what the request leaves out.</summary>
    public static CompletionRequest Parse(ReadOnlySpan<byte> body, bool chat, GenerationOptions defaults)
    {
        if (body.IsEmpty) throw new ApiException(400, "the request body is empty; send a JSON object");
        if (!System.Text.Unicode.Utf8.IsValid(body))
            throw new ApiException(400, "the request body is not valid UTF-8");
        JsonDocument doc;
        try
        {
            var reader = new Utf8JsonReader(body, new JsonReaderOptions { MaxDepth = 64 });
            doc = JsonDocument.ParseValue(ref reader);
        }
        catch (JsonException e)
        {
            throw new ApiException(400, $"the request body is not valid JSON: {e.Message}");
        }
        using (doc)
        {
            try { CheckStrings(doc.RootElement, ""); }
            catch (InvalidOperationException)
            {
                // System.Text.Json refuses to materialize an escaped lone surrogate ("\ud800") as a .NET string.
                throw new ApiException(400, "the request holds an unpaired surrogate escape (text that is not valid Unicode)");
            }
            return Parse(doc.RootElement, chat, defaults);
        }
    }

    /// <summary>Every string (and key) must be valid Unicode: a lone surrogate ("\ud800") is a 400 naming where it is.</summary>
    private static void CheckStrings(JsonElement e, string path)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                string value;
                try { value = e.GetString()!; }
                catch (InvalidOperationException)
                {
                    throw ApiException.BadRequest(path.TrimStart('.'), $"'{path.TrimStart('.')}' holds an unpaired surrogate (text that is not valid Unicode)");
                }
                if (HasLoneSurrogate(value))
                    throw ApiException.BadRequest(path.TrimStart('.'), $"'{path.TrimStart('.')}' holds an unpaired surrogate (text that is not valid Unicode)");
                break;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    if (HasLoneSurrogate(p.Name)) throw new ApiException(400, "a key of the request holds an unpaired surrogate (text that is not valid Unicode)");
                    CheckStrings(p.Value, path + "." + p.Name);
                }
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var x in e.EnumerateArray()) CheckStrings(x, $"{path}[{i++}]");
                break;
        }
    }

    private static bool HasLoneSurrogate(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (!char.IsSurrogate(c)) continue;
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            return true;
        }
        return false;
    }

    private static CompletionRequest Parse(JsonElement root, bool chat, GenerationOptions defaults)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new ApiException(400, $"the request body must be a JSON object, got {Kind(root)}");

        string? prompt = null;
        int[]? promptIds = null;
        IReadOnlyList<ChatMessage>? messages = null;
        if (chat) messages = ReadMessages(root);
        else (prompt, promptIds) = ReadPrompt(root);

        var d = defaults.Sampling;
        var sampling = new SamplingOptions
        {
            Temperature = Number(root, "temperature", 0, float.MaxValue, "must be ≥ 0") ?? d.Temperature,
            TopP = Number(root, "top_p", 0, 1, "must be in (0, 1]", minExclusive: true) ?? d.TopP,
            TopK = Integer(root, "top_k", 0, int.MaxValue, "must be ≥ 0") ?? d.TopK,
            MinP = Number(root, "min_p", 0, 1, "must be in [0, 1]") ?? d.MinP,
            RepeatPenalty = Number(root, "repeat_penalty", 0, float.MaxValue, "must be > 0", minExclusive: true) ?? d.RepeatPenalty,
            RepeatLastN = Integer(root, "repeat_last_n", 0, int.MaxValue, "must be ≥ 0") ?? d.RepeatLastN,
            Seed = Seed(root) ?? d.Seed,
        };
        sampling = sampling with
        {
            FrequencyPenalty = Number(root, "frequency_penalty", -2, 2, "must be in [-2, 2]") ?? d.FrequencyPenalty,
            PresencePenalty = Number(root, "presence_penalty", -2, 2, "must be in [-2, 2]") ?? d.PresencePenalty,
            LogitBias = LogitBias(root) ?? d.LogitBias,
        };

        int? maxTokens = Integer(root, "max_tokens", 0, int.MaxValue, "must be ≥ 0");
        if (chat) maxTokens = Integer(root, "max_completion_tokens", 0, int.MaxValue, "must be ≥ 0") ?? maxTokens;
        int? n = Integer(root, "n", 1, int.MaxValue, "must be ≥ 1");
        if (n is > 1) throw ApiException.BadRequest("n", "'n' > 1 is not supported by this server (one choice per request)");
        int? bestOf = Integer(root, "best_of", 1, int.MaxValue, "must be ≥ 1");
        if (bestOf is > 1) throw ApiException.BadRequest("best_of", "'best_of' > 1 is not supported by this server");
        RefuseIfSet(root, "logprobs");
        RefuseIfSet(root, "top_logprobs");
        RefuseIfSet(root, "echo");
        RefuseIfSet(root, "suffix");
        RefuseIfSet(root, "tools");
        RefuseIfSet(root, "functions");
        if (Property(root, "response_format") is { } rf)
        {
            var type = rf.ValueKind == JsonValueKind.Object && rf.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            if (type != "text") throw ApiException.BadRequest("response_format", "'response_format' other than {\"type\": \"text\"} is not supported by this server");
        }

        bool stream = Bool(root, "stream") ?? false;
        bool includeUsage = false;
        if (Property(root, "stream_options") is { } so)
        {
            if (so.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("stream_options", $"'stream_options' must be an object, got {Kind(so)}");
            includeUsage = Bool(so, "include_usage", "stream_options.include_usage") ?? false;
        }

        var options = defaults with
        {
            MaxTokens = maxTokens ?? defaults.MaxTokens,
            Sampling = sampling,
            StopStrings = [.. defaults.StopStrings, .. Stop(root)],
            IgnoreEos = Bool(root, "ignore_eos") ?? defaults.IgnoreEos,
            TruncatePrompt = false,
        };
        try { options.Validate(); }
        catch (LrlException e) { throw new ApiException(400, e.Message); }

        string? model = null;
        if (Property(root, "model") is { } m)
        {
            if (m.ValueKind is not (JsonValueKind.String or JsonValueKind.Null)) throw ApiException.BadRequest("model", $"'model' must be a string, got {Kind(m)}");
            model = m.ValueKind == JsonValueKind.String ? m.GetString() : null;
        }

        return new CompletionRequest
        {
            Prompt = prompt, PromptIds = promptIds, Messages = messages, Options = options,
            Stream = stream, IncludeUsage = includeUsage, Model = model,
        };
    }

    private static (string?, int[]?) ReadPrompt(JsonElement root)
    {
        if (Property(root, "prompt") is not { } p) throw ApiException.BadRequest("prompt", "'prompt' is required");
        switch (p.ValueKind)
        {
            case JsonValueKind.String:
                return (p.GetString()!, null);
            case JsonValueKind.Array when p.GetArrayLength() == 0:
                throw ApiException.BadRequest("prompt", "'prompt' is an empty array");
            case JsonValueKind.Array when p.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String):
                if (p.GetArrayLength() != 1)
                    throw ApiException.BadRequest("prompt", "'prompt' with several strings is not supported by this server (one prompt per request)");
                return (p[0].GetString()!, null);
            case JsonValueKind.Array when p.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number):
                var ids = new int[p.GetArrayLength()];
                int i = 0;
                foreach (var e in p.EnumerateArray())
                {
                    if (!e.TryGetInt32(out ids[i]) || ids[i] < 0)
                        throw ApiException.BadRequest("prompt", $"'prompt[{i}]' must be a token id (an integer ≥ 0), got {e.GetRawText()}");
                    i++;
                }
                return (null, ids);
            default:
                throw ApiException.BadRequest("prompt", $"'prompt' must be a string, an array of one string, or an array of token ids; got {Kind(p)}");
        }
    }

    private static List<ChatMessage> ReadMessages(JsonElement root)
    {
        if (Property(root, "messages") is not { } m) throw ApiException.BadRequest("messages", "'messages' is required");
        if (m.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("messages", $"'messages' must be an array, got {Kind(m)}");
        if (m.GetArrayLength() == 0) throw ApiException.BadRequest("messages", "'messages' must hold at least one message");
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var e in m.EnumerateArray())
        {
            var at = $"messages[{i}]";
            if (e.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest(at, $"'{at}' must be an object with 'role' and 'content', got {Kind(e)}");
            if (Property(e, "role") is not { ValueKind: JsonValueKind.String } r || string.IsNullOrWhiteSpace(r.GetString()))
                throw ApiException.BadRequest($"{at}.role", $"'{at}.role' is required (a string such as \"system\", \"user\" or \"assistant\")");
            var role = r.GetString()! switch
            {
                "developer" => "system", // OpenAI's newer name for the system role
                "system" or "user" or "assistant" => r.GetString()!,
                var other => throw ApiException.BadRequest($"{at}.role", $"'{at}.role' is \"{other}\"; this server takes \"system\", \"user\" or \"assistant\""),
            };
            list.Add(new ChatMessage(role, Content(e, $"{at}.content")));
            i++;
        }
        return list;
    }

    private static string Content(JsonElement message, string at)
    {
        if (Property(message, "content") is not { } c) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array)
            throw ApiException.BadRequest(at, $"'{at}' must be a string or an array of text parts, got {Kind(c)}");
        var sb = new System.Text.StringBuilder();
        int j = 0;
        foreach (var part in c.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object
                || !part.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || type.GetString() != "text"
                || !part.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                throw ApiException.BadRequest($"{at}[{j}]", $"'{at}[{j}]' must be {{\"type\": \"text\", \"text\": \"...\"}} (this server reads text only)");
            sb.Append(text.GetString());
            j++;
        }
        return sb.ToString();
    }

    private static IEnumerable<string> Stop(JsonElement root)
    {
        if (Property(root, "stop") is not { } s) return [];
        if (s.ValueKind == JsonValueKind.String) return NonEmpty([s.GetString()!]);
        if (s.ValueKind == JsonValueKind.Array && s.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String))
            return NonEmpty(s.EnumerateArray().Select(e => e.GetString()!).ToArray());
        throw ApiException.BadRequest("stop", $"'stop' must be a string or an array of strings, got {Kind(s)}");

        static string[] NonEmpty(string[] stops) => stops.Any(x => x.Length == 0)
            ? throw ApiException.BadRequest("stop", "'stop' strings must not be empty")
            : stops;
    }

    /// <summary>The property, or null when it is missing or JSON null (OpenAI treats both as "use the default").</summary>
    private static JsonElement? Property(JsonElement obj, string name) =>
        obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static float? Number(JsonElement root, string name, float min, float max, string range, bool minExclusive = false)
    {
        if (Property(root, name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw ApiException.BadRequest(name, $"'{name}' must be a number, got {Kind(v)}");
        double x = v.GetDouble();
        bool ok = double.IsFinite(x) && (minExclusive ? x > min : x >= min) && x <= max;
        if (!ok) throw ApiException.BadRequest(name, $"'{name}' {range}, got {v.GetRawText()}");
        return (float)x;
    }

    private static int? Integer(JsonElement root, string name, int min, int max, string range)
    {
        if (Property(root, name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x))
            throw ApiException.BadRequest(name, $"'{name}' must be an integer, got {v.GetRawText()}");
        if (x < min || x > max) throw ApiException.BadRequest(name, $"'{name}' {range}, got {x}");
        return (int)x;
    }

    /// <summary>logit_bias: an object of token id (as a string) → bias in [-100, 100].</summary>
    private static IReadOnlyDictionary<int, float>? LogitBias(JsonElement root)
    {
        if (Property(root, "logit_bias") is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("logit_bias", $"'logit_bias' must be an object of token id → bias, got {Kind(v)}");
        var result = new Dictionary<int, float>();
        foreach (var p in v.EnumerateObject())
        {
            if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                throw ApiException.BadRequest("logit_bias", $"'logit_bias' key '{(p.Name.Length > 20 ? p.Name[..20] + "…" : p.Name)}' is not a token id");
            if (p.Value.ValueKind != JsonValueKind.Number || !(p.Value.GetDouble() is var b && b >= -100 && b <= 100))
                throw ApiException.BadRequest("logit_bias", $"'logit_bias' of token {id} must be a number in [-100, 100]");
            result[id] = (float)p.Value.GetDouble();
        }
        return result;
    }

    private static int? Seed(JsonElement root)
    {
        if (Property(root, "seed") is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x))
            throw ApiException.BadRequest("seed", $"'seed' must be an integer, got {v.GetRawText()}");
        return x is >= int.MinValue and <= int.MaxValue ? (int)x : (int)(x ^ (x >> 32)); // 64-bit seeds fold, deterministically
    }

    private static bool? Bool(JsonElement obj, string name, string? param = null)
    {
        if (Property(obj, name) is not { } v) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ApiException.BadRequest(param ?? name, $"'{param ?? name}' must be true or false, got {Kind(v)}"),
        };
    }

    /// <summary>Refuses a feature the server lacks unless the request leaves it off (null, false, 0, "" or []).</summary>
    private static void RefuseIfSet(JsonElement root, string name)
    {
        if (Property(root, name) is not { } v) return;
        bool off = v.ValueKind switch
        {
            JsonValueKind.False => true,
            JsonValueKind.Number => v.TryGetDouble(out var d) && d == 0,
            JsonValueKind.String => v.GetString()!.Length == 0,
            JsonValueKind.Array => v.GetArrayLength() == 0,
            _ => false,
        };
        if (!off) throw ApiException.BadRequest(name, $"'{name}' is not supported by this server");
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}
