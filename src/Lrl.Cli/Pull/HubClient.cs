using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using Lrl.Loading;

namespace Lrl.Cli.Pull;

/// <summary>One file of a hub repository, with its size when the hub reported it.</summary>
/// <summary>A file of a hub repo: its name, size, and the SHA-256 the listing gives for LFS files (weights).</summary>
public sealed record HubFile(string Name, long? Size, string? Sha256 = null);

/// <summary>What <see cref="HubClient.PullAsync"/> did.</summary>
public sealed record PullResult(string Directory, IReadOnlyList<string> Downloaded, IReadOnlyList<string> UpToDate, long BytesDownloaded);

/// <summary>
/// Downloads the files lrlrun needs to run a model from a Hugging Face hub (or any server speaking its HTTP API):
/// lists the repo with <c>GET {endpoint}/api/models/{repo}/revision/{rev}</c>, fetches each file from
/// <c>{endpoint}/{repo}/resolve/{rev}/{file}</c>. Each file is written to a temporary file in the target folder and
/// renamed when complete (and its SHA-256 checked when the hub gives one), so a folder never holds half a file;
/// files already there with the hub's size are skipped, and an interrupted weight download resumes where it stopped.
/// </summary>
public sealed partial class HubClient : IDisposable
{
    /// <summary>Files lrlrun reads besides the weights (which are *.safetensors and their index).</summary>
    public static readonly IReadOnlySet<string> RunFiles = new HashSet<string>(StringComparer.Ordinal)
    {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
    };

    private static readonly TimeSpan StallTimeout = TimeSpan.FromSeconds(60);
    private readonly HttpClient _http;
    private readonly string? _token;
    private readonly TextWriter? _log;
    private readonly Uri _endpoint;

    /// <param name="endpoint">Hub address; null = $HF_ENDPOINT or https://huggingface.co.</param>
    /// <param name="token">Bearer token; null = $HF_TOKEN (none when unset).</param>
    /// <param name="log">Where progress goes (stderr for the CLI); null = nowhere.</param>
    /// <param name="handler">HTTP handler (tests); null = sockets with a 30 s connect timeout.</param>
    public HubClient(string? endpoint = null, string? token = null, TextWriter? log = null, HttpMessageHandler? handler = null)
    {
        endpoint ??= NullIfEmpty(Environment.GetEnvironmentVariable("HF_ENDPOINT")) ?? "https://huggingface.co";
        if (!Uri.TryCreate(endpoint.TrimEnd('/') + "/", UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            throw new LrlException($"--endpoint '{endpoint}' is not an http(s) URL");
        _endpoint = uri;
        _token = NullIfEmpty(token) ?? NullIfEmpty(Environment.GetEnvironmentVariable("HF_TOKEN"));
        _log = log;
        _http = new HttpClient(handler ?? new SocketsHttpHandler
        {
            AllowAutoRedirect = false, // followed by hand: the hub's first hop carries x-linked-size/-etag, and the token stays on the hub
            ConnectTimeout = TimeSpan.FromSeconds(30),
            AutomaticDecompression = DecompressionMethods.None,
        }) { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.ParseAdd("lrlrun/1.0");
    }

    public string Endpoint => _endpoint.ToString().TrimEnd('/');

    public void Dispose() => _http.Dispose();

    /// <summary>The folder a repo is pulled to by default: $LRL_CACHE (or ~/.cache/lrlrun)/models/{owner}--{name}.</summary>
    public static string DefaultDirectory(string repo)
    {
        var root = NullIfEmpty(Environment.GetEnvironmentVariable("LRL_CACHE"))
                   ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "lrlrun");
        return Path.Combine(root, "models", CheckRepo(repo).Replace("/", "--"));
    }

    /// <summary>Checks a repo id ("owner/name" or "name") and returns it.</summary>
    public static string CheckRepo(string repo)
    {
        if (!RepoId().IsMatch(repo) || repo.Contains(".."))
            throw new LrlException($"'{repo}' is not a hub repo id (expected owner/name, e.g. HuggingFaceTB/SmolLM2-135M)");
        return repo;
    }

    /// <summary>Every file of the repo at the revision.</summary>
    public async Task<IReadOnlyList<HubFile>> ListFilesAsync(string repo, string revision, CancellationToken ct = default)
    {
        CheckRepo(repo);
        var url = new Uri(_endpoint, $"api/models/{repo}/revision/{Uri.EscapeDataString(revision)}?blobs=True");
        using var response = await SendAsync(url, repo, revision, null, ct);
        byte[] body;
        try { body = await response.Content.ReadAsByteArrayAsync(ct); }
        catch (HttpRequestException e) { throw Network(repo, "the file list", e); }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 64 }); }
        catch (JsonException e) { throw new LrlException($"{repo}: the hub's file list at {url} is not valid JSON: {JsonFile.Reason(e)}"); }
        using (doc)
        {
            string where = $"{repo}: the hub's file list for revision '{revision}'";
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new LrlException($"{where} is a JSON {doc.RootElement.ValueKind.ToString().ToLowerInvariant()}, not an object");
            if (!doc.RootElement.TryGetProperty("siblings", out var siblings) || siblings.ValueKind != JsonValueKind.Array)
                throw new LrlException($"{where} at {url} has no \"siblings\" file list");
            var files = new List<HubFile>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var s in siblings.EnumerateArray())
            {
                if (s.ValueKind != JsonValueKind.Object || !s.TryGetProperty("rfilename", out var n) || n.ValueKind != JsonValueKind.String)
                    throw new LrlException($"{where} has an entry without an \"rfilename\" string");
                var name = n.GetString()!;
                if (!names.Add(name)) throw new LrlException($"{where} names '{name}' twice");
                long? size = null;
                string? sha = null;
                if (s.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object)
                {
                    size = Size(lfs, "size", where, name);
                    if (lfs.TryGetProperty("sha256", out var h) || lfs.TryGetProperty("oid", out h))
                    {
                        var hex = h.ValueKind == JsonValueKind.String ? h.GetString()!.Replace("sha256:", "", StringComparison.Ordinal) : "";
                        sha = hex.Length == 64 && hex.All(char.IsAsciiHexDigit) ? hex.ToLowerInvariant()
                            : throw new LrlException($"{where}: the SHA-256 of '{name}' is not 64 hex digits");
                    }
                }
                size ??= Size(s, "size", where, name);
                files.Add(new HubFile(name, size, sha));
            }
            return files;
        }
    }

    private static long? Size(JsonElement e, string field, string where, string name)
    {
        if (!e.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long x) && x >= 0 ? x
            : throw new LrlException($"{where}: the size of '{name}' is {(v.ValueKind == JsonValueKind.String ? "a string" : v.GetRawText())}, not a byte count");
    }

    /// <summary>
    /// Downloads what lrlrun needs to run the repo into <paramref name="directory"/>: <see cref="RunFiles"/> and the
    /// safetensors weights (only the shards the index names when there is one). Other files are left on the hub.
    /// </summary>
    public async Task<PullResult> PullAsync(string repo, string revision, string directory, CancellationToken ct = default)
    {
        CheckRepo(repo);
        var files = await ListFilesAsync(repo, revision, ct);
        var root = files.Where(f => IsPlainName(f.Name)).ToDictionary(f => f.Name);
        var wanted = root.Values.Where(f => RunFiles.Contains(f.Name) || f.Name.EndsWith(".safetensors.index.json", StringComparison.Ordinal)).ToList();
        if (!root.ContainsKey("config.json"))
            throw new LrlException($"{repo}: revision '{revision}' has no config.json, so it is not a model repo lrlrun can run");
        Directory.CreateDirectory(directory);
        _log?.WriteLine($"lrlrun: pulling {repo} ({revision}) from {Endpoint} into {directory}");

        var downloaded = new List<string>();
        var upToDate = new List<string>();
        long bytes = 0;
        async Task Fetch(HubFile f)
        {
            var got = await DownloadAsync(repo, revision, f, directory, ct);
            if (got < 0) upToDate.Add(f.Name);
            else { downloaded.Add(f.Name); bytes += got; }
        }

        var index = wanted.FirstOrDefault(f => f.Name == "model.safetensors.index.json") ?? wanted.FirstOrDefault(f => f.Name.EndsWith(".safetensors.index.json", StringComparison.Ordinal));
        List<HubFile> weights;
        if (index is not null)
        {
            await Fetch(index);
            var shards = ShardsOf(Path.Combine(directory, index.Name), repo, index.Name);
            weights = [];
            foreach (var s in shards)
                weights.Add(root.TryGetValue(s, out var f) ? f
                    : throw new LrlException($"{repo}: {index.Name} names shard '{s}', which revision '{revision}' does not have"));
        }
        else
        {
            weights = root.Values.Where(f => f.Name.EndsWith(".safetensors", StringComparison.Ordinal)).ToList();
        }
        if (weights.Count == 0)
        {
            var other = root.Keys.Where(n => n.EndsWith(".bin") || n.EndsWith(".pt") || n.EndsWith(".gguf") || n.EndsWith(".pth")).ToList();
            throw new LrlException($"{repo}: revision '{revision}' has no *.safetensors weights (lrlrun reads safetensors only" +
                                   (other.Count > 0 ? $"; it has {string.Join(", ", other.Take(4))})" : ")"));
        }
        foreach (var f in wanted.Where(f => f != index).OrderBy(f => f.Name, StringComparer.Ordinal)) await Fetch(f);
        foreach (var f in weights.OrderBy(f => f.Name, StringComparer.Ordinal)) await Fetch(f);
        return new PullResult(directory, downloaded, upToDate, bytes);
    }

    /// <summary>
    /// Downloads one file unless it is already complete; returns the bytes fetched, or -1 when skipped. Data goes to
    /// <c>.{name}.part</c> (held open exclusively) and is renamed to the file's name only when complete and verified;
    /// a transfer cut short leaves the part for the next run to resume with a Range request (weights only, whose
    /// SHA-256 the hub gives, so a resumed file is still checked end to end).
    /// </summary>
    public async Task<long> DownloadAsync(string repo, string revision, HubFile file, string directory, CancellationToken ct = default)
    {
        if (!IsPlainName(file.Name)) throw new LrlException($"{repo}: refusing file name '{file.Name}' (not a plain file name)");
        var path = Path.Combine(directory, file.Name);
        if (file.Size is { } known && File.Exists(path) && new FileInfo(path).Length == known && await MatchesAsync(path, file.Sha256, ct))
        {
            _log?.WriteLine($"  {file.Name}: up to date ({Size(known)})");
            return -1;
        }
        var url = new Uri(_endpoint, $"{repo}/resolve/{Uri.EscapeDataString(revision)}/{Uri.EscapeDataString(file.Name)}");
        var part = Path.Combine(directory, $".{file.Name}.part");
        FileStream output;
        try { output = new FileStream(part, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1 << 16, useAsync: true); }
        catch (IOException e) { throw new LrlException($"{repo}: cannot write {part} ({e.Message}); is another pull writing into {directory}?"); }
        bool keepPart = false;
        HttpResponseMessage? response = null;
        try
        {
            long have = output.Length;
            var linked = new LinkedHeaders();
            response = await SendAsync(url, repo, revision, file.Name, ct, linked, have);
            bool partial = response.StatusCode == HttpStatusCode.PartialContent;
            long? total = linked.Size ?? (partial ? response.Content.Headers.ContentRange?.Length : response.Content.Headers.ContentLength) ?? file.Size;
            bool resume = have > 0 && partial && response.Content.Headers.ContentRange?.From == have
                          && linked.Sha256 is not null && total is { } t0 && have < t0;
            if (have > 0 && !resume && (partial || response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable))
            {
                // Not resumable (no hash to check the whole file by, or the part does not fit): start over.
                response.Dispose();
                have = 0;
                linked = new LinkedHeaders();
                response = await SendAsync(url, repo, revision, file.Name, ct, linked, 0);
                total = linked.Size ?? response.Content.Headers.ContentLength ?? file.Size;
            }
            string? sha = linked.Sha256 ?? file.Sha256;
            if (total is { } e && file.Size is { } listed && e != listed)
                throw new LrlException($"{repo}: {file.Name} is announced as {e} bytes but listed as {listed}; run pull again");
            if (total is { } e2 && File.Exists(path) && new FileInfo(path).Length == e2 && await MatchesAsync(path, sha, ct))
            {
                _log?.WriteLine($"  {file.Name}: up to date ({Size(e2)})");
                return -1;
            }
            using var hash = sha is null ? null : IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            if (resume)
            {
                _log?.WriteLine($"  {file.Name}: resuming after {Size(have)}");
                output.Position = 0;
                var buffer = new byte[1 << 20];
                for (long left = have; left > 0;)
                {
                    int n = await output.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)), ct);
                    if (n == 0) break;
                    hash!.AppendData(buffer, 0, n);
                    left -= n;
                }
                output.Position = have;
            }
            else
            {
                have = 0;
                output.SetLength(0);
            }

            keepPart = true; // from here a transfer cut short (network, stall, Ctrl+C) leaves the part to resume
            long fetched = await CopyAsync(response, output, hash, file.Name, have, total, repo, ct);
            await output.FlushAsync(ct);
            output.Flush(flushToDisk: true);
            long size = have + fetched;
            if (total is { } n0 && size < n0)
                throw new LrlException($"{repo}: download of {file.Name} ended after {size} of {n0} bytes; run pull again to resume");
            keepPart = false;
            if (total is { } n1 && size > n1)
                throw new LrlException($"{repo}: {file.Name} came out as {size} bytes, more than the {n1} the hub announced; run pull again");
            // Checked against the download's own hash (x-linked-etag) and the listing's lfs.sha256, whichever the hub gave.
            if (hash is not null && Convert.ToHexStringLower(hash.GetHashAndReset()) is var got
                && (got != sha || (file.Sha256 is not null && got != file.Sha256)))
                throw new LrlException($"{repo}: {file.Name} is corrupt (SHA-256 {got}, the hub says {(got != sha ? sha : file.Sha256)}); run pull again");
            await output.DisposeAsync();
            File.Move(part, path, overwrite: true);
            if (sha is not null)
            {
                var info = new FileInfo(path);
                try { AtomicFile.WriteAllText(Path.Combine(directory, $".{file.Name}.sha256"), $"{sha} {info.Length} {info.LastWriteTimeUtc.Ticks}"); }
                catch (IOException) { }
            }
            return fetched;
        }
        finally
        {
            response?.Dispose();
            await output.DisposeAsync();
            if (!keepPart) { try { File.Delete(part); } catch (IOException) { } catch (UnauthorizedAccessException) { } }
        }
    }

    private async Task<long> CopyAsync(HttpResponseMessage response, Stream output, IncrementalHash? hash, string name,
        long start, long? expected, string repo, CancellationToken ct)
    {
        using var stall = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var buffer = new byte[1 << 20];
        long total = 0;
        var clock = Stopwatch.StartNew();
        var bar = _log is null ? null : new ProgressBar("  " + name, bytes: true, _log);
        try
        {
            stall.CancelAfter(StallTimeout);
            await using var input = await response.Content.ReadAsStreamAsync(stall.Token);
            while (true)
            {
                stall.CancelAfter(StallTimeout);
                int n = await input.ReadAsync(buffer, stall.Token);
                if (n == 0) break;
                hash?.AppendData(buffer, 0, n);
                await output.WriteAsync(buffer.AsMemory(0, n), ct);
                total += n;
                bar?.Report(start + total, expected);
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new LrlException($"{repo}: download of {name} stalled (no data for {StallTimeout.TotalSeconds:F0} s after {Size(start + total)}); run pull again to resume");
        }
        catch (Exception e) when (e is HttpRequestException or IOException && !ct.IsCancellationRequested)
        {
            throw new LrlException($"{repo}: download of {name} failed after {Size(start + total)}: {e.Message}; run pull again to resume");
        }
        bar?.Done($"  {name}: {Size(total)} in {clock.Elapsed.TotalSeconds:F1} s ({total / 1e6 / Math.Max(clock.Elapsed.TotalSeconds, 1e-3):F1} MB/s)");
        return total;
    }

    /// <summary>
    /// Whether a file already there has the expected SHA-256 (true when none is known). The hash of a checked file is
    /// cached beside it (<c>.NAME.sha256</c>: hash, size, modification time) so an up-to-date pull does not re-read it.
    /// </summary>
    private static async Task<bool> MatchesAsync(string path, string? sha, CancellationToken ct)
    {
        if (sha is null) return true;
        var info = new FileInfo(path);
        var cache = Path.Combine(info.DirectoryName!, $".{info.Name}.sha256");
        string stamp = $"{info.Length} {info.LastWriteTimeUtc.Ticks}";
        if (File.Exists(cache) && (await File.ReadAllTextAsync(cache, ct)).Split(' ', 2) is [var cached, var cachedStamp] && cachedStamp.Trim() == stamp)
            return cached == sha;
        string actual;
        await using (var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, useAsync: true))
            actual = Convert.ToHexStringLower(await SHA256.HashDataAsync(fs, ct));
        try { AtomicFile.WriteAllText(cache, $"{actual} {stamp}"); } catch (IOException) { }
        return actual == sha;
    }

    /// <summary>What the hub says about an LFS file (x-linked-size, x-linked-etag = SHA-256) before redirecting to its storage.</summary>
    private sealed class LinkedHeaders
    {
        public long? Size;
        public string? Sha256;
    }

    /// <summary>GET with redirects followed by hand; non-success statuses become errors naming repo and file.</summary>
    private async Task<HttpResponseMessage> SendAsync(Uri url, string repo, string revision, string? file, CancellationToken ct,
        LinkedHeaders? linked = null, long rangeFrom = 0)
    {
        string what = file is null ? $"the file list of revision '{revision}'" : file;
        for (int hop = 0; hop < 10; hop++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, url);
            if (_token is not null && SameOrigin(url, _endpoint)) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
            if (rangeFrom > 0) request.Headers.Range = new RangeHeaderValue(rangeFrom, null);
            HttpResponseMessage response;
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                timeout.CancelAfter(StallTimeout);
                try { response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token); }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    throw new LrlException($"{repo}: {url.Host} did not answer within {StallTimeout.TotalSeconds:F0} s fetching {what}");
                }
                catch (HttpRequestException e) { throw Network(repo, what, e); }
            }
            if (linked is not null && SameOrigin(url, _endpoint)) // the hub's own hops (a renamed repo redirects first), not the storage's
            {
                if (Header(response, "x-linked-size") is { } ls && long.TryParse(ls, out var size)) linked.Size ??= size;
                if (linked.Sha256 is null && Header(response, "x-linked-etag")?.Trim('"') is { Length: 64 } h && h.All(char.IsAsciiHexDigit)) linked.Sha256 = h.ToLowerInvariant();
            }
            int status = (int)response.StatusCode;
            if (status is 301 or 302 or 303 or 307 or 308 && response.Headers.Location is { } location)
            {
                response.Dispose();
                url = new Uri(url, location);
                if (url.Scheme is not ("http" or "https"))
                    throw new LrlException($"{repo}: the hub redirected {what} to '{url.Scheme}:', not http(s); refusing it");
                continue;
            }
            if (response.IsSuccessStatusCode || (rangeFrom > 0 && status == 416)) return response;
            using (response) throw StatusError(response, repo, revision, file, what);
        }
        throw new LrlException($"{repo}: too many redirects fetching {what}");
    }

    private Exception StatusError(HttpResponseMessage response, string repo, string revision, string? file, string what)
    {
        int status = (int)response.StatusCode;
        var hub = Header(response, "x-error-message") is { Length: > 0 } m ? $" (hub: {m})" : "";
        return status switch
        {
            401 => new LrlException($"{repo}: 401 Unauthorized fetching {what}{hub}: " + (_token is null
                ? "the repo is private or gated, or does not exist; pass --token or set HF_TOKEN"
                : "the token was refused, or the repo does not exist")),
            403 => new LrlException($"{repo}: 403 Forbidden fetching {what}{hub}: the token has no access (a gated repo needs its terms accepted on the hub)"),
            404 when file is null => new LrlException($"{repo}: repository or revision '{revision}' not found at {Endpoint}{hub}"),
            404 => new LrlException($"{repo}: {file} not found at revision '{revision}'{hub}"),
            _ => new LrlException($"{repo}: HTTP {status} {response.ReasonPhrase} fetching {what} from {Endpoint}{hub}"),
        };
    }

    private LrlException Network(string repo, string what, HttpRequestException e) =>
        e.HttpRequestError is HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError or HttpRequestError.SecureConnectionError
            ? new($"{repo}: cannot reach {Endpoint} fetching {what}: {e.Message}")
            : new($"{repo}: fetching {what} from {Endpoint} failed: {e.Message}; run pull again");

    private static IEnumerable<string> ShardsOf(string indexPath, string repo, string name)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new LrlException($"{repo}: {name} has no \"weight_map\" object");
            var shards = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                var s = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : "";
                if (!IsPlainName(s) || !s.EndsWith(".safetensors", StringComparison.Ordinal))
                    throw new LrlException($"{repo}: {name} maps tensor '{p.Name}' to '{s}', not a .safetensors file in the repo's top folder");
                shards.Add(s);
            }
            return shards;
        }
        catch (JsonException e)
        {
            throw new LrlException($"{repo}: {name} is not valid JSON: {e.Message}");
        }
    }

    private static bool SameOrigin(Uri a, Uri b) =>
        a.Scheme == b.Scheme && string.Equals(a.Host, b.Host, StringComparison.OrdinalIgnoreCase) && a.Port == b.Port;

    private static string? Header(HttpResponseMessage r, string name) =>
        r.Headers.TryGetValues(name, out var v) || r.Content.Headers.TryGetValues(name, out v) ? v.FirstOrDefault() : null;

    private static bool IsPlainName(string name) =>
        name.Length > 0 && name != "." && name != ".." && name.IndexOfAny(['/', '\\', '\0', ':']) < 0 && !name.StartsWith('.');

    private static string? NullIfEmpty(string? s) => string.IsNullOrWhiteSpace(s) ? null : s;

    /// <summary>Bytes as B, KB, MB or GB (powers of 1000, as the hub shows them).</summary>
    public static string Size(long bytes) => bytes switch
    {
        < 1000 => $"{bytes} B",
        < 1_000_000 => $"{bytes / 1e3:F1} KB",
        < 1_000_000_000 => $"{bytes / 1e6:F1} MB",
        _ => $"{bytes / 1e9:F2} GB",
    };

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")]
    private static partial Regex RepoId();
}
