using System.Text.RegularExpressions;

namespace Lrl.Cli.Tests;

/// <summary>Starts one <see cref="FakeHub"/> serving the shared tiny checkpoints as repos.</summary>
public sealed class FakeHubFixture : IAsyncLifetime
{
    public FakeHub Hub { get; } = new();

    public async ValueTask InitializeAsync()
    {
        if (CliRunner.SharedRoot is { } shared)
        {
            var models = Path.Combine(shared, "models");
            Hub.AddFolder("test/stories", Path.Combine(models, "stories260k"));
            Hub.Renamed["old/stories"] = "test/stories";
            Hub.Renamed["old/corrupt"] = "test/corrupt";
            var sharded = Hub.AddFolder("test/sharded", Path.Combine(models, "stories260k-bf16-sharded"));
            sharded.Files["consolidated.safetensors"] = new byte[64]; // not in the index: must not be fetched
            sharded.Listed.Add("consolidated.safetensors");
            Hub.AddFolder("test/truncated", Path.Combine(models, "stories260k")).Truncated.Add("tokenizer.json");
            Hub.AddFolder("test/truncated-weights", Path.Combine(models, "stories260k")).Truncated.Add("model.safetensors");
            Hub.AddFolder("test/corrupt", Path.Combine(models, "stories260k")).WrongHash.Add("model.safetensors");
            Hub.AddFolder("test/resume", Path.Combine(models, "stories260k")).Truncated.Add("model.safetensors");
            Hub.AddFolder("test/missing-file", Path.Combine(models, "stories260k")).Files.Remove("tokenizer.json");
            Hub.AddFolder("test/no-etag", Path.Combine(models, "stories260k")).NoEtag.Add("model.safetensors");
            var bad = Hub.AddFolder("test/no-etag-bad-listing", Path.Combine(models, "stories260k"));
            bad.NoEtag.Add("model.safetensors");
            bad.WrongListingHash.Add("model.safetensors");
            Hub.AddFolder("test/listing-array", Path.Combine(models, "stories260k")).RawListing = "[]";
            Hub.AddFolder("test/listing-duplicate", Path.Combine(models, "stories260k")).RawListing =
                "{\"siblings\": [{\"rfilename\": \"config.json\"}, {\"rfilename\": \"config.json\"}]}";
            Hub.AddFolder("test/listing-size-string", Path.Combine(models, "stories260k")).RawListing =
                "{\"siblings\": [{\"rfilename\": \"config.json\", \"size\": \"12\"}]}";
            Hub.AddFolder("test/file-redirect", Path.Combine(models, "stories260k")).RedirectTo["config.json"] = "file:///etc/passwd";
            var pt = Hub.AddFolder("test/pytorch-only", Path.Combine(models, "stories260k"));
            pt.Files.Remove("model.safetensors");
            pt.Listed.Remove("model.safetensors");
        }
        await Hub.StartAsync();
    }

    public ValueTask DisposeAsync() => Hub.DisposeAsync();
}

/// <summary>`lrlrun pull` against a local fake hub; the pulled folder must load and generate like the original.</summary>
public sealed class PullTests(FakeHubFixture fixture) : IClassFixture<FakeHubFixture>, IDisposable
{
    private static readonly string[] RunFiles =
        ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"];

    private readonly string _dir = Directory.CreateTempSubdirectory("lrl-pull").FullName;
    private readonly Dictionary<string, string> _noEnv = new() { ["HF_TOKEN"] = "", ["HF_ENDPOINT"] = "" };
    private FakeHub Hub => fixture.Hub;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private CliRunner.Result Pull(string repo, string outDir, params string[] extra) =>
        CliRunner.RunWith(_noEnv, ["pull", repo, "--endpoint", Hub.Endpoint, "--out", outDir, .. extra]);

    /// <summary>The visible files (pull keeps hidden hash caches and partial downloads beside them).</summary>
    private static string[] Listing(string dir) => Directory.GetFiles(dir).Select(Path.GetFileName).Where(n => !n!.StartsWith('.')).Order(StringComparer.Ordinal).ToArray()!;

    [Fact]
    public void PullFetchesOnlyTheRunFilesAndTheFolderGeneratesTheReferenceText()
    {
        var source = CliRunner.Model("stories260k");
        var outDir = Path.Combine(_dir, "stories");
        var r = Pull("test/stories", outDir, "--token", FakeHub.Token);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(outDir, r.Stdout.Trim());
        Assert.Equal(RunFiles, Listing(outDir));
        foreach (var f in RunFiles) Assert.Equal(File.ReadAllBytes(Path.Combine(source, f)), File.ReadAllBytes(Path.Combine(outDir, f)));
        Assert.DoesNotContain(Hub.Requests, p => p.Contains("README") || p.Contains("pytorch_model") || p.Contains("onnx") || p.Contains(".gitattributes"));
        Assert.Contains("7 downloaded", r.Stderr);

        var p0 = CliRunner.Reference("stories260k").GetProperty("prompts")[0];
        int n = p0.GetProperty("greedy_ids").GetArrayLength();
        var g = CliRunner.Run("generate", "--model", outDir, "--prompt", p0.GetProperty("text").GetString()!,
            "--temperature", "0", "--ignore-eos", "--max-tokens", n.ToString());
        Assert.True(g.ExitCode == 0, g.Stderr);
        Assert.Equal(p0.GetProperty("greedy_text").GetString()!.TrimEnd('\n'), g.Stdout.TrimEnd('\n'));
    }

    [Fact]
    public void ASecondPullSkipsCompleteFilesAndRefetchesAChangedOne()
    {
        var source = CliRunner.Model("stories260k");
        var outDir = Path.Combine(_dir, "again");
        Assert.Equal(0, Pull("test/stories", outDir, "--token", FakeHub.Token).ExitCode);
        var weights = Path.Combine(outDir, "model.safetensors");
        var stamp = File.GetLastWriteTimeUtc(Path.Combine(outDir, "tokenizer.model"));

        var again = Pull("test/stories", outDir, "--token", FakeHub.Token);
        Assert.True(again.ExitCode == 0, again.Stderr);
        Assert.Contains("0 downloaded", again.Stderr);
        Assert.Contains("7 already up to date", again.Stderr);
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(Path.Combine(outDir, "tokenizer.model")));

        File.WriteAllBytes(weights, new byte[1000]); // a damaged (wrong-size) copy
        var fix = Pull("test/stories", outDir, "--token", FakeHub.Token);
        Assert.True(fix.ExitCode == 0, fix.Stderr);
        Assert.Contains("1 downloaded", fix.Stderr);
        Assert.Equal(File.ReadAllBytes(Path.Combine(source, "model.safetensors")), File.ReadAllBytes(weights));
    }

    [Fact]
    public void ShardedRepoFetchesTheIndexedShardsOnlyAndGenerates()
    {
        CliRunner.Model("stories260k-bf16-sharded");
        var outDir = Path.Combine(_dir, "sharded");
        var r = CliRunner.RunWith(new Dictionary<string, string> { ["HF_TOKEN"] = FakeHub.Token, ["HF_ENDPOINT"] = Hub.Endpoint }, "pull", "test/sharded", "--out", outDir);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var files = Listing(outDir);
        Assert.Contains("model.safetensors.index.json", files);
        Assert.Contains("model-00001-of-00002.safetensors", files);
        Assert.Contains("model-00002-of-00002.safetensors", files);
        Assert.DoesNotContain("consolidated.safetensors", files);
        Assert.DoesNotContain(Hub.Requests, p => p.Contains("consolidated"));
        var g = CliRunner.Run("generate", "--model", outDir, "--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "8");
        Assert.True(g.ExitCode == 0, g.Stderr);
        Assert.StartsWith(", there was", g.Stdout);
    }

    [Fact]
    public void ARenamedRepoIsFollowedWithTheTokenAndHashChecks()
    {
        var source = CliRunner.Model("stories260k");
        var outDir = Path.Combine(_dir, "renamed");
        var r = Pull("old/stories", outDir, "--token", FakeHub.Token);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(RunFiles, Listing(outDir));
        Assert.Equal(File.ReadAllBytes(Path.Combine(source, "model.safetensors")), File.ReadAllBytes(Path.Combine(outDir, "model.safetensors")));

        var corrupt = Pull("old/corrupt", Path.Combine(_dir, "renamed-corrupt"), "--token", FakeHub.Token);
        Assert.Equal(2, corrupt.ExitCode);
        Assert.Contains("model.safetensors is corrupt", corrupt.Stderr);
    }

    [Fact]
    public void DefaultFolderIsUnderTheCacheNamedAfterTheRepo()
    {
        CliRunner.Model("stories260k");
        var cache = Path.Combine(_dir, "cache");
        var r = CliRunner.RunWith(new Dictionary<string, string> { ["HF_TOKEN"] = FakeHub.Token, ["LRL_CACHE"] = cache },
            "pull", "test/stories", "--endpoint", Hub.Endpoint);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var expected = Path.Combine(cache, "models", "test--stories");
        Assert.Equal(expected, r.Stdout.Trim());
        Assert.Equal(RunFiles, Listing(expected));
    }

    [Theory]
    [InlineData("test/truncated", "tokenizer.json", "tokenizer.json")]
    [InlineData("test/truncated-weights", "model.safetensors", "model.safetensors")]
    [InlineData("test/corrupt", "model.safetensors", "SHA-256")]
    public void AnInterruptedOrCorruptDownloadLeavesNoFile(string repo, string file, string why)
    {
        CliRunner.Model("stories260k");
        var outDir = Path.Combine(_dir, repo.Replace('/', '-'));
        var r = Pull(repo, outDir, "--token", FakeHub.Token);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(repo, r.Stderr);
        Assert.True(r.Stderr.Contains(why), r.Stderr);
        // A connection dropped mid-body fails the read; one dropped before the client saw the headers fails the request.
        Assert.Matches($@"download of {Regex.Escape(file)} (ended|failed) after|{Regex.Escape(file)} is corrupt|fetching {Regex.Escape(file)}", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
        Assert.False(File.Exists(Path.Combine(outDir, file)));
        // Only the hidden part file of a transfer cut short may remain (for the next pull to resume); a corrupt one is deleted.
        var part = Path.Combine(outDir, $".{file}.part");
        if (why == "SHA-256") Assert.False(File.Exists(part));
        Assert.DoesNotContain(Directory.GetFiles(outDir), f => f.EndsWith(".part") && f != part);
    }

    [Fact]
    public void AnInterruptedWeightDownloadResumesAndIsVerified()
    {
        var source = File.ReadAllBytes(Path.Combine(CliRunner.Model("stories260k"), "model.safetensors"));
        var outDir = Path.Combine(_dir, "resume");
        var first = Pull("test/resume", outDir, "--token", FakeHub.Token); // the hub drops whole-file transfers half-way
        Assert.Equal(2, first.ExitCode);
        var part = Path.Combine(outDir, ".model.safetensors.part");
        Assert.False(File.Exists(Path.Combine(outDir, "model.safetensors")));

        var second = Pull("test/resume", outDir, "--token", FakeHub.Token); // range requests are answered in full
        Assert.True(second.ExitCode == 0, second.Stderr);
        Assert.Equal(source, File.ReadAllBytes(Path.Combine(outDir, "model.safetensors")));
        Assert.False(File.Exists(part));

        // Deterministically: a part holding the first 300000 bytes is completed with a range request for the rest.
        File.Delete(Path.Combine(outDir, "model.safetensors"));
        File.WriteAllBytes(part, source[..300_000]);
        var resumed = Pull("test/resume", outDir, "--token", FakeHub.Token);
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.Contains("model.safetensors: resuming after 300.0 KB", resumed.Stderr);
        Assert.Contains("bytes=300000-", Hub.Ranges);
        Assert.Equal(source, File.ReadAllBytes(Path.Combine(outDir, "model.safetensors")));
        Assert.False(File.Exists(part));

        // A stale part that does not match the file is caught by the hash and replaced on the next run.
        File.Delete(Path.Combine(outDir, "model.safetensors"));
        File.WriteAllBytes(part, new byte[1000]);
        var stale = Pull("test/resume", outDir, "--token", FakeHub.Token);
        Assert.Equal(2, stale.ExitCode);
        Assert.Contains("model.safetensors is corrupt", stale.Stderr);
        Assert.False(File.Exists(part));
    }

    [Fact]
    public void ErrorsNameTheRepoAndFile()
    {
        CliRunner.Model("stories260k");
        var outDir = Path.Combine(_dir, "errors");

        var noToken = Pull("test/stories", outDir);
        Assert.Equal(2, noToken.ExitCode);
        Assert.Contains("test/stories", noToken.Stderr);
        Assert.Contains("401", noToken.Stderr);
        Assert.Contains("HF_TOKEN", noToken.Stderr);

        var badToken = Pull("test/stories", outDir, "--token", "wrong");
        Assert.Equal(2, badToken.ExitCode);
        Assert.Contains("token was refused", badToken.Stderr);

        var noRepo = Pull("test/nope", outDir, "--token", FakeHub.Token);
        Assert.Equal(2, noRepo.ExitCode);
        Assert.Contains("test/nope", noRepo.Stderr);
        Assert.Contains("not found", noRepo.Stderr);

        var noRev = Pull("test/stories", outDir, "--token", FakeHub.Token, "--revision", "v9");
        Assert.Equal(2, noRev.ExitCode);
        Assert.Contains("'v9'", noRev.Stderr);

        var missing = Pull("test/missing-file", outDir, "--token", FakeHub.Token);
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("test/missing-file: tokenizer.json not found", missing.Stderr);

        var pt = Pull("test/pytorch-only", outDir, "--token", FakeHub.Token);
        Assert.Equal(2, pt.ExitCode);
        Assert.Contains("no *.safetensors", pt.Stderr);
        Assert.Contains("pytorch_model.bin", pt.Stderr);

        var badId = Pull("a/b/c", outDir);
        Assert.Equal(2, badId.ExitCode);
        Assert.Contains("'a/b/c' is not a hub repo id", badId.Stderr);

        foreach (var r in new[] { noToken, badToken, noRepo, noRev, missing, pt, badId }) Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void TheListingsHashIsCheckedWhenTheHubSendsNoEtag()
    {
        CliRunner.Model("stories260k");
        var good = Pull("test/no-etag", Path.Combine(_dir, "no-etag"), "--token", FakeHub.Token);
        Assert.True(good.ExitCode == 0, good.Stderr);
        var bad = Pull("test/no-etag-bad-listing", Path.Combine(_dir, "no-etag-bad"), "--token", FakeHub.Token);
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("model.safetensors is corrupt", bad.Stderr);
        Assert.False(File.Exists(Path.Combine(_dir, "no-etag-bad", "model.safetensors")));
    }

    [Fact]
    public void AWeightOfTheRightSizeButWrongContentIsFetchedAgain()
    {
        var source = CliRunner.Model("stories260k");
        var outDir = Path.Combine(_dir, "tampered");
        Assert.Equal(0, Pull("test/stories", outDir, "--token", FakeHub.Token).ExitCode);
        var weights = Path.Combine(outDir, "model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        bytes[^1] ^= 0xFF; // same size, other content
        File.WriteAllBytes(weights, bytes);
        var again = Pull("test/stories", outDir, "--token", FakeHub.Token);
        Assert.True(again.ExitCode == 0, again.Stderr);
        Assert.Contains("1 downloaded", again.Stderr);
        Assert.Equal(File.ReadAllBytes(Path.Combine(source, "model.safetensors")), File.ReadAllBytes(weights));
        // Verified once: the next pull finds everything up to date without fetching.
        var third = Pull("test/stories", outDir, "--token", FakeHub.Token);
        Assert.Contains("0 downloaded", third.Stderr);
    }

    [Theory]
    [InlineData("test/listing-array", "not an object")]
    [InlineData("test/listing-duplicate", "names 'config.json' twice")]
    [InlineData("test/listing-size-string", "not a byte count")]
    [InlineData("test/file-redirect", "not http(s)")]
    public void MalformedListingsAndOddRedirectsAreClearErrors(string repo, string message)
    {
        CliRunner.Model("stories260k");
        var outDir = Path.Combine(_dir, repo.Replace('/', '-'));
        var r = Pull(repo, outDir, "--token", FakeHub.Token);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(message, r.Stderr);
        Assert.Contains(repo, r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
        Assert.False(Directory.Exists(outDir) && Directory.GetFiles(outDir).Any(f => !Path.GetFileName(f).StartsWith('.') && new FileInfo(f).Length == 0));
    }

    [Fact]
    public void AnUnreachableHubIsAClearError()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        int port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop(); // nothing listens there now
        var r = CliRunner.RunWith(_noEnv, "pull", "owner/model", "--endpoint", $"http://127.0.0.1:{port}", "--out", Path.Combine(_dir, "x"));
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("owner/model: cannot reach", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }
}
