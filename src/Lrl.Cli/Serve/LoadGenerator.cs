using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace Lrl.Cli.Serve;

/// <summary>
/// A bounded load generator for an OpenAI-compatible server on loopback: <c>streams</c> clients each send
/// <c>requests</c> streaming completions one after another, and the run reports aggregate generated tokens per second,
/// time to first token and the time between tokens (p50/p95) as the clients saw them.
/// </summary>
public static class LoadGenerator
{
    /// <summary>One run's figures. Latencies in milliseconds.</summary>
    public sealed record Result(string Mode, int Streams, int Requests, long Tokens, double Seconds,
                                double TtftP50, double TtftP95, double ItlP50, double ItlP95, int Failed)
    {
        public double TokensPerSecond => Tokens / Math.Max(Seconds, 1e-9);
    }

    /// <summary>Runs the load against <paramref name="address"/> (loopback only) and returns what the clients measured.</summary>
    public static async Task<Result> RunAsync(Uri address, string mode, int streams, int requestsPerStream, int[] promptIds,
                                              int maxTokens, CancellationToken ct = default)
    {
        if (!address.IsLoopback) throw new LrlException($"the load generator only targets loopback addresses, not {address.Host}");
        if (streams < 1 || streams > 1024) throw new LrlException($"streams must be in 1..1024, got {streams}");
        if (requestsPerStream < 1) throw new LrlException($"requests per stream must be ≥ 1, got {requestsPerStream}");
        using var handler = new SocketsHttpHandler { MaxConnectionsPerServer = streams, PooledConnectionLifetime = TimeSpan.FromMinutes(10) };
        using var http = new HttpClient(handler) { BaseAddress = address, Timeout = TimeSpan.FromMinutes(30) };
        var ttft = new List<double>();
        var itl = new List<double>();
        long tokens = 0;
        int failed = 0;
        var body = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["prompt"] = promptIds, ["max_tokens"] = maxTokens, ["temperature"] = 0, ["ignore_eos"] = true, ["stream"] = true,
            ["stream_options"] = new Dictionary<string, object> { ["include_usage"] = true },
        });
        var clock = Stopwatch.StartNew();

        async Task Client()
        {
            for (int r = 0; r < requestsPerStream; r++)
            {
                var sent = Stopwatch.GetTimestamp();
                using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
                using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
                if (!response.IsSuccessStatusCode) { Interlocked.Increment(ref failed); continue; }
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
                long last = 0;
                var gaps = new List<double>();
                double first = -1;
                long count = 0;
                string? line;
                while ((line = await reader.ReadLineAsync(ct)) is not null)
                {
                    if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
                    using var doc = JsonDocument.Parse(line.AsMemory(6));
                    var root = doc.RootElement;
                    if (root.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                        count = usage.GetProperty("completion_tokens").GetInt64();
                    // A chunk per token (its text may be empty: random-weight presets make ids with no text).
                    if (root.TryGetProperty("choices", out var choices) && choices.GetArrayLength() > 0
                        && choices[0].TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String
                        && choices[0].TryGetProperty("finish_reason", out var fr) && fr.ValueKind == JsonValueKind.Null)
                    {
                        long now = Stopwatch.GetTimestamp();
                        if (first < 0) first = Stopwatch.GetElapsedTime(sent, now).TotalMilliseconds;
                        else gaps.Add(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
                        last = now;
                    }
                }
                lock (ttft)
                {
                    if (first >= 0) ttft.Add(first);
                    itl.AddRange(gaps);
                    tokens += count;
                }
            }
        }

        await Task.WhenAll(Enumerable.Range(0, streams).Select(_ => Task.Run(Client, ct)));
        double seconds = clock.Elapsed.TotalSeconds;
        return new Result(mode, streams, streams * requestsPerStream, tokens, seconds,
                          Percentile(ttft, 0.5), Percentile(ttft, 0.95), Percentile(itl, 0.5), Percentile(itl, 0.95), failed);
    }

    /// <summary>The q-quantile (nearest rank) of <paramref name="values"/>; NaN when empty.</summary>
    public static double Percentile(List<double> values, double q)
    {
        if (values.Count == 0) return double.NaN;
        var sorted = values.Order().ToArray();
        int rank = (int)Math.Ceiling(q * sorted.Length) - 1;
        return sorted[Math.Clamp(rank, 0, sorted.Length - 1)];
    }

    /// <summary>A markdown table of the runs, with each run's throughput relative to the first run of one stream.</summary>
    public static string ToMarkdown(IReadOnlyList<Result> results)
    {
        var sb = new StringBuilder();
        double baseline = results.FirstOrDefault(r => r.Streams == 1)?.TokensPerSecond ?? double.NaN;
        sb.AppendLine("| mode | streams | requests | tokens | wall s | tok/s | vs 1 stream | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | failed |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in results)
            sb.AppendLine(FormattableString.Invariant(
                $"| {r.Mode} | {r.Streams} | {r.Requests} | {r.Tokens} | {r.Seconds:F1} | {r.TokensPerSecond:F1} | {(double.IsNaN(baseline) ? "-" : (r.TokensPerSecond / baseline).ToString("F2", System.Globalization.CultureInfo.InvariantCulture) + "x")} | {r.TtftP50:F0} | {r.TtftP95:F0} | {r.ItlP50:F1} | {r.ItlP95:F1} | {r.Failed} |"));
        return sb.ToString();
    }
}
