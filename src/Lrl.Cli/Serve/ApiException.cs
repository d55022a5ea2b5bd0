namespace Lrl.Cli.Serve;

/// <summary>
/// A request the client can fix (or an endpoint it got wrong): answered with <see cref="Status"/> and an OpenAI-style
/// body <c>{"error": {"message", "type", "param", "code"}}</c>, never a stack trace.
/// </summary>
public sealed class ApiException(int status, string message, string? param = null, string type = "invalid_request_error")
    : Exception(message)
{
    public int Status { get; } = status;
    /// <summary>The request field at fault, e.g. "temperature" or "messages[1].role"; null when none is.</summary>
    public string? Param { get; } = param;
    /// <summary>OpenAI's error type: invalid_request_error, not_found_error, server_error.</summary>
    public string Type { get; } = type;

    /// <summary>A 400 naming the field at fault.</summary>
    public static ApiException BadRequest(string param, string message) => new(400, message, param);
}
