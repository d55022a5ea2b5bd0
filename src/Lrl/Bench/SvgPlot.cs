using System.Globalization;
using System.Text;

namespace Lrl.Bench;

/// <summary>A plain SVG bar chart of benchmark results: one bar per (model, format, test), tok/s with ±stddev whiskers.</summary>
public static class SvgPlot
{
    public static string Render(IReadOnlyList<BenchResult> rows, string title)
    {
        const int BarW = 46, Gap = 18, Left = 70, Top = 40, H = 300, Bottom = 120;
        int width = Left + rows.Count * (BarW + Gap) + Gap;
        double max = rows.Count == 0 ? 1 : rows.Max(r => r.MeanTokensPerSecond + r.StdDevTokensPerSecond) * 1.1;
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(c, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{Top + H + Bottom}\" font-family=\"sans-serif\" font-size=\"11\">");
        sb.AppendLine(c, $"<rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{Left}\" y=\"22\" font-size=\"14\">{Escape(title)}</text>");
        sb.AppendLine(c, $"<line x1=\"{Left}\" y1=\"{Top}\" x2=\"{Left}\" y2=\"{Top + H}\" stroke=\"black\"/><line x1=\"{Left}\" y1=\"{Top + H}\" x2=\"{width}\" y2=\"{Top + H}\" stroke=\"black\"/>");
        for (int i = 0; i <= 4; i++)
        {
            double v = max * i / 4; double y = Top + H - H * i / 4.0;
            sb.AppendLine(c, $"<text x=\"{Left - 6}\" y=\"{y + 4:F0}\" text-anchor=\"end\">{v:G3}</text>");
        }
        sb.AppendLine(c, $"<text x=\"14\" y=\"{Top + H / 2}\" transform=\"rotate(-90 14 {Top + H / 2})\" text-anchor=\"middle\">tokens/s</text>");
        for (int i = 0; i < rows.Count; i++)
        {
            var r = rows[i];
            double x = Left + Gap + i * (BarW + Gap);
            double h = H * r.MeanTokensPerSecond / max, y = Top + H - h;
            string color = r.Test.StartsWith("pp", StringComparison.Ordinal) ? "#4477aa" : "#cc6677";
            sb.AppendLine(c, $"<rect x=\"{x:F0}\" y=\"{y:F1}\" width=\"{BarW}\" height=\"{h:F1}\" fill=\"{color}\"/>");
            double y1 = Top + H - H * (r.MeanTokensPerSecond + r.StdDevTokensPerSecond) / max;
            double y2 = Top + H - H * Math.Max(0, r.MeanTokensPerSecond - r.StdDevTokensPerSecond) / max;
            sb.AppendLine(c, $"<line x1=\"{x + BarW / 2:F0}\" y1=\"{y1:F1}\" x2=\"{x + BarW / 2:F0}\" y2=\"{y2:F1}\" stroke=\"black\"/>");
            sb.AppendLine(c, $"<text x=\"{x + BarW / 2:F0}\" y=\"{y - 4:F0}\" text-anchor=\"middle\">{r.MeanTokensPerSecond:G3}</text>");
            double lx = x + BarW / 2, ly = Top + H + 10;
            sb.AppendLine(c, $"<text x=\"{lx:F0}\" y=\"{ly}\" transform=\"rotate(45 {lx:F0} {ly})\">{Escape($"{r.Model} {r.Format} {r.Test}")}</text>");
        }
        sb.AppendLine("</svg>");
        return sb.ToString();
    }

    private static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");
}
