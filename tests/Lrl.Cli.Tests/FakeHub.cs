using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Lrl.Cli.Tests;

/// <summary>
/// A local stand-in for the Hugging Face hub (Kestrel on a free port) serving model folders from shared/models as
/// repos, the way the hub does: the revision API lists "siblings", resolve/ answers small files directly and
/// redirects weights to a storage URL with x-linked-size / x-linked-etag, and every request needs the bearer token.
/// Repos can be told to misbehave (cut a download short, lie about a hash, miss a file).
/// </summary>
public sealed class FakeHub : IAsyncDisposable
{
    public const string Token = "hf_test_token";

    /// <summary>One repo: its files (name → bytes) and how it misbehaves.</summary>
    public sealed class Repo
    {
        public Dictionary<string, byte[]> Files { get; } = new(StringComparer.Ordinal);
        /// <summary>Names the sibling list gives (files not in <see cref="Files"/> answer 404).</summary>
        public List<string> Listed { get; } = [];
        /// <summary>Files whose body is cut off half-way (the connection drops).</summary>
        public HashSet<string> Truncated { get; } = [];
        /// <summary>Files whose x-linked-etag is wrong.</summary>
        public HashSet<string> WrongHash { get; } = [];
        /// <summary>Weights served without x-linked-size / x-linked-etag (the listing's lfs fields are all there is).</summary>
        public HashSet<string> NoEtag { get; } = [];
        /// <summary>Weights whose lfs.sha256 in the listing is wrong.</summary>
        public HashSet<string> WrongListingHash { get; } = [];
        /// <summary>When set, the revision API answers this text instead of the listing.</summary>
        public string? RawListing { get; set; }
        /// <summary>Files whose resolve/ answer is a redirect to this location.</summary>
        public Dictionary<string, string> RedirectTo { get; } = new(StringComparer.Ordinal);
    }

    private readonly WebApplication _app;
    public Dictionary<string, Repo> Repos { get; } = new(StringComparer.Ordinal);
    /// <summary>Old repo id → new one: requests for the old id get a 307 to the same path under the new id, as the hub answers for renamed repos.</summary>
    public Dictionary<string, string> Renamed { get; } = new(StringComparer.Ordinal);
    /// <summary>Every path requested, in order.</summary>
    public ConcurrentQueue<string> Requests { get; } = new();
    /// <summary>Every Range header received.</summary>
    public ConcurrentQueue<string> Ranges { get; } = new();
    public string Endpoint { get; private set; } = "";

    public FakeHub()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        _app = builder.Build();
        _app.Run(HandleAsync);
    }

    /// <summary>Adds a repo serving every file of a folder, plus listed files that are not needed to run.</summary>
    public Repo AddFolder(string repoId, string folder)
    {
        var repo = new Repo();
        foreach (var f in Directory.GetFiles(folder))
        {
            repo.Files[Path.GetFileName(f)] = File.ReadAllBytes(f);
            repo.Listed.Add(Path.GetFileName(f));
        }
        repo.Files["README.md"] = "# not needed\n"u8.ToArray();
        repo.Files["pytorch_model.bin"] = new byte[100];
        repo.Files["onnx/model.onnx"] = new byte[100];
        repo.Listed.AddRange(["README.md", "pytorch_model.bin", "onnx/model.onnx", ".gitattributes"]);
        Repos[repoId] = repo;
        return repo;
    }

    public async Task StartAsync()
    {
        await _app.StartAsync();
        Endpoint = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
    }

    public async ValueTask DisposeAsync() => await _app.DisposeAsync();

    private static bool IsWeight(string name) => name.EndsWith(".safetensors", StringComparison.Ordinal) || name.EndsWith(".bin") || name.EndsWith(".onnx");

    private async Task HandleAsync(HttpContext ctx)
    {
        var path = Uri.UnescapeDataString(ctx.Request.Path.Value ?? "");
        Requests.Enqueue(path);
        if (path.StartsWith("/cdn/", StringComparison.Ordinal)) { await ServeBlobAsync(ctx, path[5..]); return; } // storage: no token, as on the hub's CDN
        if (ctx.Request.Headers.Authorization.ToString() != $"Bearer {Token}")
        {
            ctx.Response.StatusCode = 401;
            ctx.Response.Headers["X-Error-Message"] = "Invalid credentials in Authorization header";
            return;
        }
        var parts = path.Trim('/').Split('/');
        foreach (var (old, now) in Renamed)
        {
            if (path.StartsWith($"/{old}/", StringComparison.Ordinal) || path.StartsWith($"/api/models/{old}/", StringComparison.Ordinal))
            {
                ctx.Response.StatusCode = 307;
                ctx.Response.Headers.Location = path.Replace($"/{old}/", $"/{now}/") + ctx.Request.QueryString;
                return;
            }
        }
        // /api/models/{owner}/{name}/revision/{rev}
        if (parts is ["api", "models", var owner, var name, "revision", var rev])
        {
            if (!Repos.TryGetValue($"{owner}/{name}", out var repo) || rev != "main") { NotFound(ctx); return; }
            if (repo.RawListing is { } raw) { ctx.Response.ContentType = "application/json"; await ctx.Response.WriteAsync(raw); return; }
            var siblings = new JsonArray();
            foreach (var n in repo.Listed)
            {
                var s = new JsonObject { ["rfilename"] = n };
                if (n.EndsWith(".json", StringComparison.Ordinal) && repo.Files.TryGetValue(n, out var b)) s["size"] = b.Length; // sizes for some files only
                if (IsWeight(n) && repo.Files.TryGetValue(n, out var w))
                {
                    var sha = repo.WrongListingHash.Contains(n) ? new string('1', 64) : Convert.ToHexStringLower(SHA256.HashData(w));
                    s["lfs"] = new JsonObject { ["size"] = w.Length, ["sha256"] = sha, ["pointerSize"] = 134 };
                }
                siblings.Add(s);
            }
            await ctx.Response.WriteAsJsonAsync(new JsonObject { ["id"] = $"{owner}/{name}", ["sha"] = "0123abcd", ["siblings"] = siblings });
            return;
        }
        // /{owner}/{name}/resolve/{rev}/{file}
        if (parts.Length >= 5 && parts[2] == "resolve")
        {
            var file = string.Join('/', parts[4..]);
            if (!Repos.TryGetValue($"{parts[0]}/{parts[1]}", out var repo) || parts[3] != "main") { NotFound(ctx); return; }
            if (!repo.Files.TryGetValue(file, out var bytes)) { NotFound(ctx, entry: true); return; }
            if (repo.RedirectTo.TryGetValue(file, out var target)) { ctx.Response.StatusCode = 302; ctx.Response.Headers.Location = target; return; }
            if (IsWeight(file) && repo.NoEtag.Contains(file))
            {
                ctx.Response.StatusCode = 302;
                ctx.Response.Headers.Location = $"/cdn/{parts[0]}/{parts[1]}/{file}";
                return;
            }
            if (IsWeight(file))
            {
                var hash = Convert.ToHexStringLower(SHA256.HashData(bytes));
                if (repo.WrongHash.Contains(file)) hash = new string('0', 64);
                ctx.Response.StatusCode = 302;
                ctx.Response.Headers.Location = $"/cdn/{parts[0]}/{parts[1]}/{file}";
                ctx.Response.Headers["X-Linked-Size"] = bytes.Length.ToString();
                ctx.Response.Headers["X-Linked-ETag"] = $"\"{hash}\"";
                return;
            }
            await WriteAsync(ctx, bytes, repo.Truncated.Contains(file));
            return;
        }
        NotFound(ctx);
    }

    private async Task ServeBlobAsync(HttpContext ctx, string rest)
    {
        var parts = rest.Split('/', 3);
        if (parts.Length < 3 || !Repos.TryGetValue($"{parts[0]}/{parts[1]}", out var repo) || !repo.Files.TryGetValue(parts[2], out var bytes))
        {
            NotFound(ctx);
            return;
        }
        await WriteAsync(ctx, bytes, repo.Truncated.Contains(parts[2]));
    }

    /// <summary>Sends a file, honouring "Range: bytes=N-"; a truncated file drops the connection half-way (only when sent whole).</summary>
    private async Task WriteAsync(HttpContext ctx, byte[] bytes, bool truncate)
    {
        ctx.Response.ContentType = "application/octet-stream";
        ctx.Response.Headers.AcceptRanges = "bytes";
        var range = ctx.Request.Headers.Range.ToString();
        if (range.Length > 0)
        {
            Ranges.Enqueue(range);
            var m = System.Text.RegularExpressions.Regex.Match(range, @"^bytes=(\d+)-$");
            long from = m.Success ? long.Parse(m.Groups[1].Value) : -1;
            if (from < 0 || from >= bytes.Length)
            {
                ctx.Response.StatusCode = 416;
                ctx.Response.Headers.ContentRange = $"bytes */{bytes.Length}";
                return;
            }
            ctx.Response.StatusCode = 206;
            ctx.Response.Headers.ContentRange = $"bytes {from}-{bytes.Length - 1}/{bytes.Length}";
            ctx.Response.ContentLength = bytes.Length - from;
            await ctx.Response.Body.WriteAsync(bytes.AsMemory((int)from));
            return;
        }
        ctx.Response.ContentLength = bytes.Length;
        if (!truncate)
        {
            await ctx.Response.Body.WriteAsync(bytes);
            return;
        }
        await ctx.Response.Body.WriteAsync(bytes.AsMemory(0, bytes.Length / 2));
        await ctx.Response.Body.FlushAsync();
        ctx.Abort();
    }

    private static void NotFound(HttpContext ctx, bool entry = false)
    {
        ctx.Response.StatusCode = 404;
        ctx.Response.Headers["X-Error-Code"] = entry ? "EntryNotFound" : "RepoNotFound";
        ctx.Response.Headers["X-Error-Message"] = entry ? "Entry not found" : "Repository not found";
    }
}
