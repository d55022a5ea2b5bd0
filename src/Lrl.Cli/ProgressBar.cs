using System.Diagnostics;
using System.Globalization;

namespace Lrl.Cli;

/// <summary>
/// Progress on stderr: on a terminal one redrawn line with a bar, percent, rate and ETA (at most every 100 ms);
/// when stderr is a file or pipe, a plain line every 10 %. Reports are synchronous (no line can arrive after
/// <see cref="Done"/>), and Done ends the line before anything else is printed.
/// </summary>
internal sealed class ProgressBar
{
    private readonly TextWriter _out;
    private readonly string _label;
    private readonly bool _bytes, _terminal;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private TimeSpan _lastDraw = TimeSpan.FromDays(-1);
    private int _lastDecile = -1;
    private bool _drawn;

    public ProgressBar(string label, bool bytes = false, TextWriter? output = null, bool? terminal = null)
    {
        _label = label; _bytes = bytes;
        _out = output ?? Console.Error;
        _terminal = terminal ?? (_out == Console.Error && !Console.IsErrorRedirected);
    }

    /// <summary>Progress at <paramref name="done"/> of <paramref name="total"/> (total null: unknown, no bar or ETA).</summary>
    public void Report(long done, long? total, string? note = null)
    {
        var now = _clock.Elapsed;
        double rate = done / Math.Max(now.TotalSeconds, 1e-3);
        if (_terminal)
        {
            if (now - _lastDraw < TimeSpan.FromMilliseconds(100) && done != total) return;
            _lastDraw = now;
            _out.Write("\r" + Line(done, total, rate, note, bar: true) + "\u001b[K");
            _out.Flush();
            _drawn = true;
        }
        else if (total is > 0)
        {
            int decile = (int)(10 * done / total.Value);
            if (decile <= _lastDecile) return;
            _lastDecile = decile;
            _out.WriteLine(Line(done, total, rate, note, bar: false));
        }
    }

    /// <summary>Ends the progress line (a terminal's redrawn line is cleared) and prints <paramref name="summary"/> when given.</summary>
    public void Done(string? summary = null)
    {
        if (_terminal && _drawn) _out.Write("\r\u001b[K");
        if (summary is not null) _out.WriteLine(summary);
        _out.Flush();
    }

    internal string Line(long done, long? total, double rate, string? note, bool bar)
    {
        var sb = new System.Text.StringBuilder(_label).Append(' ');
        if (total is > 0 and var t)
        {
            double f = Math.Clamp((double)done / t, 0, 1);
            if (bar)
            {
                const int width = 24;
                int full = (int)(f * width);
                sb.Append('[').Append('#', full).Append('.', width - full).Append("] ");
            }
            sb.Append(string.Create(CultureInfo.InvariantCulture, $"{f * 100,5:F1}% "));
            sb.Append(Amount(done)).Append('/').Append(Amount(t));
        }
        else sb.Append(Amount(done));
        sb.Append(_bytes ? $"  {Size((long)rate)}/s" : string.Create(CultureInfo.InvariantCulture, $"  {rate:F1}/s"));
        if (total is > 0 and var tt && rate > 0 && done < tt)
        {
            var eta = TimeSpan.FromSeconds((tt - done) / rate);
            sb.Append("  ETA ").Append(eta.TotalHours >= 1 ? eta.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture) : eta.ToString(@"m\:ss", CultureInfo.InvariantCulture));
        }
        if (note is not null) sb.Append("  ").Append(note);
        return sb.ToString();
    }

    private string Amount(long n) => _bytes ? Size(n) : n.ToString(CultureInfo.InvariantCulture);

    internal static string Size(long bytes) =>
        bytes >= 1L << 30 ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):F2} GiB")
        : bytes >= 1L << 20 ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):F1} MiB")
        : bytes >= 1L << 10 ? string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:F1} KiB")
        : $"{bytes} B";
}

/// <summary>An <see cref="IProgress{T}"/> that runs the handler on the reporting thread, in order (unlike Progress&lt;T&gt;).</summary>
internal sealed class SyncProgress<T>(Action<T> handler) : IProgress<T>
{
    public void Report(T value) => handler(value);
}
