using System.Globalization;
using Lrl.Bench;
using ScottPlot;

namespace Lrl.Cli;

/// <summary>
/// `lrlrun bench --plot`: a bar chart (ScottPlot) with prompt processing on the left axis and generation on the right
/// (their speeds differ by orders of magnitude), ±stddev error bars, value labels, a legend, and the model, format,
/// backend and threads in the title. PNG or SVG by the file's extension.
/// </summary>
internal static class BenchPlot
{
    public static void Save(IReadOnlyList<BenchResult> rows, string title, string path)
    {
        var plot = Build(rows, title);
        int width = Math.Max(900, 140 * rows.Count + 300), height = 560;
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.tmp-{Guid.NewGuid():N}{Path.GetExtension(path)}");
        try
        {
            if (path.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) plot.SavePng(tmp, width, height);
            else if (path.EndsWith(".svg", StringComparison.OrdinalIgnoreCase)) plot.SaveSvg(tmp, width, height);
            else throw new LrlException($"--plot {path}: the file must end in .png or .svg");
            File.Move(tmp, path, overwrite: true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }

    internal static Plot Build(IReadOnlyList<BenchResult> rows, string title)
    {
        var plot = new Plot();
        plot.Title(title, size: 16);
        var pp = rows.Where(r => r.Test.StartsWith("pp", StringComparison.Ordinal)).ToList();
        var tg = rows.Where(r => r.Test.StartsWith("tg", StringComparison.Ordinal)).ToList();
        var ticks = new List<Tick>();
        double position = 0;
        var ppColor = new Color(0x44, 0x77, 0xAA);
        var tgColor = new Color(0xCC, 0x66, 0x77);
        Bar MakeBar(BenchResult r, Color color)
        {
            var bar = new Bar
            {
                Position = position, Value = r.MeanTokensPerSecond, Error = r.StdDevTokensPerSecond, FillColor = color,
                Label = Format(r.MeanTokensPerSecond), Size = 0.7,
            };
            ticks.Add(new Tick(position, r.Test));
            position += 1;
            return bar;
        }
        if (pp.Count > 0)
        {
            var series = plot.Add.Bars(pp.Select(r => MakeBar(r, ppColor)).ToList());
            series.LegendText = "prompt processing (tok/s, left axis)";
            series.ValueLabelStyle.FontSize = 13;
            position += 0.5;
        }
        if (tg.Count > 0)
        {
            var series = plot.Add.Bars(tg.Select(r => MakeBar(r, tgColor)).ToList());
            series.LegendText = "generation (tok/s, right axis)";
            series.ValueLabelStyle.FontSize = 13;
            if (pp.Count > 0) series.Axes.YAxis = plot.Axes.Right;
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks.ToArray());
        plot.Axes.Bottom.TickLabelStyle.FontSize = 14;
        var formatter = new ScottPlot.TickGenerators.NumericAutomatic { LabelFormatter = Format };
        plot.Axes.Left.TickGenerator = formatter;
        plot.Axes.Left.Label.Text = pp.Count > 0 ? "prompt processing, tokens/s" : "generation, tokens/s";
        if (pp.Count > 0 && tg.Count > 0)
        {
            plot.Axes.Right.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { LabelFormatter = Format };
            plot.Axes.Right.Label.Text = "generation, tokens/s";
            plot.Axes.Right.Label.ForeColor = tgColor;
            plot.Axes.Left.Label.ForeColor = ppColor;
        }
        plot.Axes.Margins(left: 0.08, right: 0.08, bottom: 0, top: 0.18);
        plot.Axes.SetLimitsY(0, Top(pp), plot.Axes.Left);
        if (pp.Count > 0 && tg.Count > 0) plot.Axes.SetLimitsY(0, Top(tg), plot.Axes.Right);
        else if (tg.Count > 0) plot.Axes.SetLimitsY(0, Top(tg), plot.Axes.Left);
        plot.Axes.SetLimitsX(-0.7, position - (tg.Count > 0 ? 0.3 : 0.8));
        plot.ShowLegend(Alignment.UpperLeft);
        return plot;
    }

    private static double Top(List<BenchResult> rows) => rows.Count == 0 ? 1 : rows.Max(r => r.MeanTokensPerSecond + r.StdDevTokensPerSecond) * 1.25;

    /// <summary>Plain numbers (no E-notation): thousands separated, one decimal below 100.</summary>
    internal static string Format(double v) =>
        v >= 100 || v == 0 ? v.ToString("N0", CultureInfo.InvariantCulture) : v.ToString(v >= 10 ? "F1" : "0.##", CultureInfo.InvariantCulture);
}
