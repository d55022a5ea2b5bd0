namespace Lrl;

/// <summary>
/// A user-facing error: bad input (file, field, option, prompt) described in words that name what was wrong.
/// The CLI prints its message and exits non-zero, never a stack trace.
/// </summary>
public class LrlException : Exception
{
    public LrlException(string message) : base(message) { }
    public LrlException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A malformed or inconsistent file: the message names the file and, where known, the tensor or field.</summary>
public sealed class ModelFormatException : LrlException
{
    public string File { get; }
    public ModelFormatException(string file, string message) : base($"{file}: {message}") => File = file;
}
