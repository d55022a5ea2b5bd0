using System.Diagnostics;
using System.Net;
using System.Text;

namespace Lrl.Cli.Tests;

/// <summary>A server with a small admission queue and request-size limit, for the load test.</summary>
public sealed class BoundedServerProcess : ServerProcess
{
    public const int Queue = 4;
    protected override string[] ExtraArgs => ["--queue", Queue.ToString(), "--max-request-bytes", (2 << 20).ToString()];
}

/// <summary>
/// `lrlrun serve` under load (loopback, bounded): concurrent streaming and non-streaming clients, clients that hang up
/// mid-stream or read slowly, oversized bodies and broken text. Every answer is a 200, a 503 with Retry-After (queue
/// full), a 413 or a 400 — never a 500 — memory stays bounded, and the server is healthy afterwards.
/// </summary>
public sealed class ServeLoadTests(BoundedServerProcess server) : IClassFixture<BoundedServerProcess>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private int Pid => server.ProcessId;

    private long RssKiB()
    {
        foreach (var line in File.ReadLines($"/proc/{Pid}/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        return 0;
    }

    [Fact]
    public async Task ConcurrentClientsGetAnswersOrA503_MemoryStaysBounded()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("reads RSS from /proc");
        server.Start();
        var http = server.Http;
        long rssBefore = RssKiB();
        int clients = 24;
        var latencies = new System.Collections.Concurrent.ConcurrentBag<double>();
        var statuses = new System.Collections.Concurrent.ConcurrentBag<HttpStatusCode>();
        var retryAfter = new System.Collections.Concurrent.ConcurrentBag<bool>();
        async Task Client(int i)
        {
            var clock = Stopwatch.StartNew();
            bool stream = i % 2 == 0;
            string body = $$"""{"prompt": "Once upon a time", "max_tokens": {{40 + i % 5 * 20}}, "temperature": 0.7, "seed": {{i}}, "ignore_eos": true, "stream": {{(stream ? "true" : "false")}}}""";
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct);
            statuses.Add(response.StatusCode);
            if (response.StatusCode == HttpStatusCode.ServiceUnavailable) { retryAfter.Add(response.Headers.RetryAfter is not null); return; }
            using var s = await response.Content.ReadAsStreamAsync(Ct);
            var buffer = new byte[64];
            if (i % 6 == 1) { await s.ReadAsync(buffer, Ct); return; } // hangs up mid-stream
            int n;
            while ((n = await s.ReadAsync(buffer, Ct)) > 0)
                if (i % 6 == 3) await Task.Delay(5, Ct); // a slow reader
            latencies.Add(clock.Elapsed.TotalMilliseconds);
        }
        await Task.WhenAll(Enumerable.Range(0, clients).Select(Client));

        // Oversized bodies are refused before they are read; broken text is a 400.
        var big = new string('a', 3 << 20);
        // (Expect: 100-continue, as careful clients send large bodies: the 413 comes before the upload.)
        var oversized = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ =>
        {
            var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent($"{{\"prompt\": \"{big}\"}}", Encoding.UTF8, "application/json") };
            request.Headers.ExpectContinue = true;
            return http.SendAsync(request, Ct);
        }));
        var lone = await http.PostAsync("/v1/completions", new StringContent("{\"prompt\": \"a\\ud800b\"}", Encoding.UTF8, "application/json"), Ct);
        var badUtf8 = await http.PostAsync("/v1/completions", new ByteArrayContent([(byte)'{', (byte)'"', 0xC3, (byte)'"', (byte)':', (byte)'1', (byte)'}']), Ct);
        long rssAfter = RssKiB();
        var health = await http.GetAsync("/health", Ct);

        var ok = statuses.Count(s => s == HttpStatusCode.OK);
        var busy = statuses.Count(s => s == HttpStatusCode.ServiceUnavailable);
        var sorted = latencies.Order().ToArray();
        double P(double q) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(q * sorted.Length))];
        TestContext.Current.SendDiagnosticMessage(
            $"serve load: {clients} clients, queue {BoundedServerProcess.Queue}: {ok} answered, {busy} refused 503; p50 {P(0.5):F0} ms, p95 {P(0.95):F0} ms; RSS {rssBefore / 1024} -> {rssAfter / 1024} MiB");
        if (Environment.GetEnvironmentVariable("LRL_REPORT") is { Length: > 0 } report)
            File.AppendAllText(report, $"serve load: {clients} clients, queue {BoundedServerProcess.Queue}: {ok} answered, {busy} refused 503, " +
                $"p50 {P(0.5):F0} ms, p95 {P(0.95):F0} ms; 4 x 3 MB bodies: {oversized.Count(r => r.StatusCode == HttpStatusCode.RequestEntityTooLarge)} refused 413; RSS {rssBefore / 1024} -> {rssAfter / 1024} MiB\n");

        Assert.Equal(clients, ok + busy);
        Assert.True(ok >= BoundedServerProcess.Queue, $"only {ok} answered");
        Assert.All(retryAfter, Assert.True);
        Assert.All(oversized, r => Assert.Equal(HttpStatusCode.RequestEntityTooLarge, r.StatusCode));
        Assert.Equal(HttpStatusCode.BadRequest, lone.StatusCode);
        Assert.Contains("unpaired surrogate", await lone.Content.ReadAsStringAsync(Ct));
        Assert.Equal(HttpStatusCode.BadRequest, badUtf8.StatusCode);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.DoesNotContain(" 500 ", server.Stderr);
        Assert.True(rssAfter < rssBefore + 300 * 1024, $"RSS grew from {rssBefore / 1024} to {rssAfter / 1024} MiB");
    }
}
