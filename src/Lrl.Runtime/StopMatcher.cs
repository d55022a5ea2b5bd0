namespace Lrl.Runtime;

/// <summary>
/// Streams generated text while watching for stop strings: text that might be the start of a stop string is held
/// back until it is known not to be one, so a stop string never reaches the output, even split across tokens.
/// </summary>
public sealed class StopMatcher
{
    private readonly string[] _stops;
    private string _pending = "";

    public StopMatcher(IEnumerable<string> stops) => _stops = stops.Where(s => s.Length > 0).ToArray();

    public bool Stopped { get; private set; }

    /// <summary>Adds newly decoded text; returns what can be emitted now.</summary>
    public string Push(string text)
    {
        if (Stopped) return "";
        if (_stops.Length == 0) return text;
        _pending += text;
        int cut = -1;
        foreach (var s in _stops)
        {
            int i = _pending.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0)
        {
            Stopped = true;
            var head = _pending[..cut];
            _pending = "";
            return head;
        }
        int hold = 0;
        foreach (var s in _stops)
            for (int len = Math.Min(s.Length - 1, _pending.Length); len > hold; len--)
                if (_pending.AsSpan(_pending.Length - len).SequenceEqual(s.AsSpan(0, len))) { hold = len; break; }
        var emit = _pending[..^hold];
        _pending = _pending[^hold..];
        return emit;
    }

    /// <summary>The held-back text once generation ends without a stop string.</summary>
    public string Flush()
    {
        var rest = Stopped ? "" : _pending;
        _pending = "";
        return rest;
    }
}
