using Lrl.Runtime;

namespace Lrl.Cli.Tests;

/// <summary>Chat templates, prompt-prefix state reuse, and `lrlrun chat`.</summary>
public class ChatTests
{
    [Fact]
    public void TemplatesAreRecognisedFromTheJinjaText()
    {
        Assert.Equal("chatml", ChatTemplate.FromTemplateText("{% for message in messages %}{{'<|im_start|>' + message['role'] ...").Name);
        Assert.Equal("llama3", ChatTemplate.FromTemplateText("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}").Name);
        Assert.Equal("inst", ChatTemplate.FromTemplateText("{{ '[INST] ' + message['content'] + ' [/INST]' }}").Name);
        Assert.Equal("plain", ChatTemplate.FromTemplateText(null).Name);
        ChatMessage[] conv = [new("system", "Be brief."), new("user", "Hi"), new("assistant", "Hello!"), new("user", "Bye")];
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" +
                     "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", ChatTemplate.ChatMl.Format(conv));
        Assert.Equal("[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] Bye [/INST]", ChatTemplate.Inst.Format(conv));
        Assert.Throws<LrlException>(() => ChatTemplate.ChatMl.Format([new ChatMessage("robot", "x")]));
    }

    [Fact]
    public void ReusingThePrefixStateGivesTheSameTokensAsAFreshModel()
    {
        var dir = CliRunner.Model("stories260k");
        var greedy = new GenerationOptions { MaxTokens = 12, IgnoreEos = true, Sampling = SamplingOptions.Greedy };
        using var warm = LrlModel.Load(dir, new ModelOptions { Threads = 1 });
        var first = warm.Generate("Once upon a time", greedy).Select(t => t.Id).ToList();
        // The second prompt extends the first (and diverges from its continuation): state up to the divergence is reused.
        const string second = "Once upon a time, there was a big dog";
        var reused = warm.Generate(second, greedy).Select(t => t.Id).ToList();
        Assert.True(warm.LastStats.CachedTokens > 0);
        using var fresh = LrlModel.Load(dir, new ModelOptions { Threads = 1 });
        Assert.Equal(fresh.Generate(second, greedy).Select(t => t.Id).ToList(), reused);
        Assert.Equal(0, fresh.LastStats.CachedTokens);
        // The same prompt again reruns only its last token.
        Assert.Equal(first, warm.Generate("Once upon a time", greedy).Select(t => t.Id).ToList());
    }

    [Fact]
    public void ChatVerbAnswersEachLineAndReusesTheConversationState()
    {
        var r = CliRunner.RunWithInput("Tell me a story.\nWhat happened next?\n",
            "chat", "--model", CliRunner.Model("stories260k"), "--temperature", "0", "--max-tokens", "20");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(2, r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        var turns = r.Stderr.Split('\n').Where(l => l.StartsWith("[")).ToArray();
        Assert.Equal(2, turns.Length);
        Assert.Contains("(0 cached)", turns[0]);
        Assert.DoesNotContain("(0 cached)", turns[1]);
    }
}

/// <summary>`lrlrun quantize` (round-to-nearest and GPTQ-calibrated) and `lrlrun perplexity` end to end.</summary>
public class QuantizeCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("lrl-qcli").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    private static double Perplexity(string model, string text)
    {
        var r = CliRunner.Run("perplexity", "--model", model, "--file", text, "--context", "256", "--stride", "128", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var doc = System.Text.Json.JsonDocument.Parse(r.Stdout);
        return doc.RootElement.GetProperty("perplexity").GetDouble();
    }

    [Fact]
    public void QuantizedModelsLoadAndCalibrationLowersInt4Perplexity()
    {
        var src = CliRunner.Model("stories260k");
        var text = Path.Combine(AppContext.BaseDirectory, "heldout.txt");
        Assert.True(File.Exists(text), "heldout.txt is copied next to the tests");
        double f32 = Perplexity(src, text);

        var q8 = Path.Combine(_dir, "q8");
        var r = CliRunner.Run("quantize", "--model", src, "--bits", "8", "--out", q8);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.True(Math.Abs(Perplexity(q8, text) / f32 - 1) < 0.005);

        var rtn = Path.Combine(_dir, "q4");
        Assert.Equal(0, CliRunner.Run("quantize", "--model", src, "--bits", "4", "--out", rtn).ExitCode);
        var gptq = Path.Combine(_dir, "q4-gptq");
        r = CliRunner.Run("quantize", "--model", src, "--bits", "4", "--calibration", "self", "--out", gptq);
        Assert.True(r.ExitCode == 0, r.Stderr);
        double pRtn = Perplexity(rtn, text), pGptq = Perplexity(gptq, text);
        Assert.True(pGptq < pRtn, $"GPTQ int4 perplexity {pGptq:F4} is not below round-to-nearest {pRtn:F4}");
        // Issue 4's acceptance: int4 with auto groups within 5 % of f32 (measured +4.0 %).
        Assert.True(pGptq / f32 - 1 <= 0.05, $"GPTQ int4 perplexity {pGptq:F4} vs f32 {f32:F4}");

        // Writing over an existing folder needs --force; bad values are clear errors.
        Assert.Equal(2, CliRunner.Run("quantize", "--model", src, "--bits", "4", "--out", rtn).ExitCode);
        Assert.Contains("--bits", CliRunner.Run("quantize", "--model", src, "--bits", "3", "--out", Path.Combine(_dir, "x")).Stderr);
        Assert.Contains("--calibration", CliRunner.Run("quantize", "--model", src, "--bits", "4", "--calibration", "/nope.txt", "--out", Path.Combine(_dir, "y")).Stderr);
    }
}

/// <summary>`lrlrun chat` when the conversation outgrows the context, and Ctrl-C during a reply.</summary>
public class ChatSessionTests
{
    [Fact]
    public void AFullContextDropsTheOldestTurnsAndGoesOn()
    {
        var lines = string.Concat(Enumerable.Range(1, 8).Select(i => $"Tell me story number {i} about a little dog and a big cat.\n"));
        var r = CliRunner.RunWithInput(lines, "chat", "--model", CliRunner.Model("stories260k"), "--temperature", "0",
            "--max-tokens", "16", "--context", "96", "--system", "Short stories.");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(8, r.Stderr.Split('\n').Count(l => l.StartsWith("[") && l.Contains("prompt tokens")));
        Assert.Contains("context full: dropped", r.Stderr);
        Assert.DoesNotContain("error", r.Stderr);
    }

    [Fact]
    public void AMessageLongerThanTheContextIsRefusedAndTheChatGoesOn()
    {
        var r = CliRunner.RunWithInput(string.Concat(Enumerable.Repeat("very long ", 200)) + "\nHi\n",
            "chat", "--model", CliRunner.Model("stories260k"), "--temperature", "0", "--max-tokens", "8", "--context", "64");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("longer than the context window", r.Stderr);
        Assert.Single(r.Stderr.Split('\n').Where(l => l.StartsWith("[") && l.Contains("prompt tokens")));
    }

    [Fact]
    public void CtrlCStopsTheReplyAndTheChatContinues()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("sends SIGINT with kill(1)");
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet")
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
            StandardOutputEncoding = System.Text.Encoding.UTF8, StandardErrorEncoding = System.Text.Encoding.UTF8,
        };
        // RWKV's recurrent state has no context limit to end the reply first: only Ctrl-C (or a million tokens) can.
        foreach (var a in (string[])[Path.Combine(AppContext.BaseDirectory, "lrlrun.dll"), "chat", "--model", CliRunner.Model("rwkv-tiny-7v0-834K"),
                     "--temperature", "0", "--max-tokens", "1000000", "--ignore-eos", "--threads", "1"])
            psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stderr = new System.Text.StringBuilder();
        var firstTurn = new ManualResetEventSlim();
        p.ErrorDataReceived += (_, e) => { if (e.Data is null) return; lock (stderr) stderr.AppendLine(e.Data); if (e.Data.StartsWith("[")) firstTurn.Set(); };
        p.BeginErrorReadLine();
        var output = new System.Text.StringBuilder();
        var replying = new ManualResetEventSlim();
        var buffer = new char[256];
        var reader = Task.Run(() => { int n; while ((n = p.StandardOutput.Read(buffer, 0, buffer.Length)) > 0) { lock (output) output.Append(buffer, 0, n); replying.Set(); } });
        p.StandardInput.WriteLine("Tell me a very long story.");
        p.StandardInput.Flush();
        Assert.True(replying.Wait(TimeSpan.FromSeconds(30)), "no reply started:\n" + stderr);
        Thread.Sleep(300);
        using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", p.Id.ToString()])) kill.WaitForExit();
        Assert.True(firstTurn.Wait(TimeSpan.FromSeconds(20)), "the reply did not stop on Ctrl-C:\n" + stderr);
        // The second reply is as endless: it stops on a second Ctrl-C too, then end of input ends the chat. The chat now
        // waits for input and writes nothing, so once the first reply's output stops arriving (on a busy machine the
        // pipe can lag its stats line by more than any fixed sleep) all that comes next is the second reply: a second
        // Ctrl-C sent on the first reply's late output would land at the prompt, where it ends the chat.
        int mark = -1;
        for (var quietSince = DateTime.UtcNow; ; Thread.Sleep(50))
        {
            int now;
            lock (output) now = output.Length;
            if (now != mark) { mark = now; quietSince = DateTime.UtcNow; }
            else if (DateTime.UtcNow - quietSince > TimeSpan.FromMilliseconds(500)) break;
        }
        p.StandardInput.WriteLine("Hi");
        p.StandardInput.Flush();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            lock (output) if (output.Length > mark + 20) break;
            Assert.True(DateTime.UtcNow < deadline, "no second reply:\n" + stderr);
            Thread.Sleep(20);
        }
        using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", p.Id.ToString()])) kill.WaitForExit();
        p.StandardInput.Close();
        Assert.True(p.WaitForExit(60_000), "lrlrun chat did not exit at end of input");
        p.WaitForExit();
        reader.Wait(TestContext.Current.CancellationToken);
        Assert.Equal(0, p.ExitCode);
        var turns = stderr.ToString().Split('\n').Where(l => l.StartsWith("[") && l.Contains("prompt tokens")).ToArray();
        Assert.Equal(2, turns.Length);
        Assert.All(turns, t => Assert.Contains("Cancelled", t));
    }
}
