using System.Text;

namespace Lrl.Cli;

/// <summary>
/// Reads a line from the terminal with editing and history: ←/→, Home/End (Ctrl-A/Ctrl-E), Backspace/Delete,
/// ↑/↓ through earlier lines, Ctrl-U clears, Ctrl-D on an empty line ends input. Echoes to stderr so stdout carries
/// only replies. For piped input use Console.In.ReadLine instead.
/// </summary>
internal sealed class LineEditor
{
    private readonly List<string> _history = new();
    private readonly TextWriter _echo = Console.Error;

    public string? ReadLine(string prompt)
    {
        var line = new StringBuilder();
        int cursor = 0, shownLength = 0;
        int historyIndex = _history.Count;
        string pending = "";
        void Redraw()
        {
            var text = line.ToString();
            _echo.Write('\r' + prompt + text);
            int extra = Math.Max(0, shownLength - text.Length);
            _echo.Write(new string(' ', extra) + new string('\b', extra + text.Length - cursor));
            shownLength = text.Length;
            _echo.Flush();
        }
        _echo.Write(prompt);
        _echo.Flush();
        while (true)
        {
            ConsoleKeyInfo key;
            try { key = Console.ReadKey(intercept: true); }
            catch (InvalidOperationException) { return Console.In.ReadLine(); } // not a terminal after all
            switch (key.Key)
            {
                case ConsoleKey.Enter:
                    _echo.WriteLine();
                    var result = line.ToString();
                    if (result.Trim().Length > 0 && (_history.Count == 0 || _history[^1] != result)) _history.Add(result);
                    return result;
                case ConsoleKey.Backspace when cursor > 0:
                    line.Remove(--cursor, 1); break;
                case ConsoleKey.Delete when cursor < line.Length:
                    line.Remove(cursor, 1); break;
                case ConsoleKey.LeftArrow when cursor > 0: cursor--; break;
                case ConsoleKey.RightArrow when cursor < line.Length: cursor++; break;
                case ConsoleKey.Home: cursor = 0; break;
                case ConsoleKey.End: cursor = line.Length; break;
                case ConsoleKey.UpArrow when historyIndex > 0:
                    if (historyIndex == _history.Count) pending = line.ToString();
                    historyIndex--;
                    line.Clear().Append(_history[historyIndex]); cursor = line.Length; break;
                case ConsoleKey.DownArrow when historyIndex < _history.Count:
                    historyIndex++;
                    line.Clear().Append(historyIndex == _history.Count ? pending : _history[historyIndex]); cursor = line.Length; break;
                default:
                    if ((key.Modifiers & ConsoleModifiers.Control) != 0)
                    {
                        if (key.Key == ConsoleKey.D && line.Length == 0) { _echo.WriteLine(); return null; }
                        if (key.Key == ConsoleKey.A) cursor = 0;
                        else if (key.Key == ConsoleKey.E) cursor = line.Length;
                        else if (key.Key == ConsoleKey.U) { line.Clear(); cursor = 0; }
                        break;
                    }
                    if (key.KeyChar >= ' ' || char.IsSurrogate(key.KeyChar)) line.Insert(cursor++, key.KeyChar);
                    break;
            }
            Redraw();
        }
    }
}
