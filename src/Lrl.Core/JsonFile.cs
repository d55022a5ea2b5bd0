using System.Text.Json;
using System.Text.Json.Nodes;

namespace Lrl;

/// <summary>
/// Reading a model folder's JSON files (config.json, tokenizer.json, ...) strictly: a size limit checked before
/// reading, duplicate keys refused (the last one would silently win), bounded depth, and every failure a
/// <see cref="ModelFormatException"/> naming the file with a short reason, never the rest of the file.
/// </summary>
public static class JsonFile
{
    /// <summary>Larger JSON files than this are refused before they are read (the largest real tokenizer.json are ~20 MB).</summary>
    public const long MaxBytes = 512L << 20;

    private static readonly JsonDocumentOptions Options = new() { AllowDuplicateProperties = false, MaxDepth = 128, CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };

    public static byte[] ReadBytes(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new ModelFormatException(path, "not found");
        if (info.Length > MaxBytes) throw new ModelFormatException(path, $"is {info.Length} bytes; JSON files over {MaxBytes} bytes are refused");
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ModelFormatException(path, $"cannot be read: {e.Message}"); }
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
        {
            int at = 0;
            try { new System.Text.UTF8Encoding(false, true).GetCharCount(bytes); }
            catch (System.Text.DecoderFallbackException e) { at = e.Index; }
            throw new ModelFormatException(path, $"is not valid UTF-8 (at byte {at})");
        }
        return bytes;
    }

    /// <summary>The file as a JsonDocument (dispose it); the root must be an object.</summary>
    public static JsonDocument ParseObject(string path)
    {
        var bytes = ReadBytes(path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes, Options); }
        catch (JsonException e) { throw new ModelFormatException(path, $"not valid JSON: {Reason(e)}"); }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            var kind = doc.RootElement.ValueKind;
            doc.Dispose();
            throw new ModelFormatException(path, $"is a JSON {kind.ToString().ToLowerInvariant()}, expected an object");
        }
        return doc;
    }

    /// <summary>The file as a JsonObject.</summary>
    public static JsonObject ParseNode(string path)
    {
        var bytes = ReadBytes(path);
        try
        {
            return JsonNode.Parse(bytes, documentOptions: Options) switch
            {
                JsonObject o => o,
                var other => throw new ModelFormatException(path, $"is {(other is null ? "null" : "a JSON " + other.GetValueKind().ToString().ToLowerInvariant())}, expected an object"),
            };
        }
        catch (JsonException e) { throw new ModelFormatException(path, $"not valid JSON: {Reason(e)}"); }
    }

    /// <summary>The parser's reason and position, at most a short line.</summary>
    public static string Reason(JsonException e)
    {
        var m = e.Message.ReplaceLineEndings(" ");
        return m.Length <= 200 ? m : m[..200] + "…";
    }
}
