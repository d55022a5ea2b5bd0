using System.Text.Json;
using Lrl.Tokenization.Hf;

namespace Lrl.Tokenization;

/// <summary>Finds and loads a model folder's tokenizer files.</summary>
internal static class TokenizerLoader
{
    public static LrlTokenizer Load(string dir)
    {
        var special = SpecialTokenConfig.Load(dir);
        var json = Path.Combine(dir, "tokenizer.json");
        if (File.Exists(json)) return FromTokenizerJson(json, special);
        var model = Path.Combine(dir, "tokenizer.model");
        if (File.Exists(model)) return FromSentencePieceModel(model, special);
        var mappings = Path.Combine(dir, "token_mappings.json");
        if (File.Exists(mappings)) return VocabularyTokenizer.Load(mappings, special);
        if (special.DeclaresByteLevel) return ByteTokenizer.Create(special);
        throw new LrlException($"no tokenizer in {dir}: expected tokenizer.json, tokenizer.model or token_mappings.json");
    }

    private static LrlTokenizer FromSentencePieceModel(string path, SpecialTokenConfig cfg)
    {
        var sp = SentencePieceModel.Load(path);
        int? bos = cfg.BosId ?? (sp.BosId >= 0 ? sp.BosId : null);
        var eos = cfg.EosIds(sp.EosId >= 0 ? sp.EosId : null);
        string kind = sp.ModelType == 2 ? "sentencepiece BPE (tokenizer.model)" : "sentencepiece Unigram (tokenizer.model)";
        // sentencepiece itself adds nothing; BOS comes from tokenizer_config.json's add_bos_token (default true, as
        // transformers' LlamaTokenizer).
        return new LrlTokenizer(kind, sp, bos, eos, prependBos: cfg.AddBos ?? true);
    }

    internal static bool TryParseByteToken(string piece, out byte b)
    {
        b = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
               && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out b);
    }

    private static LrlTokenizer FromTokenizerJson(string path, SpecialTokenConfig cfg)
    {
        var hf = HfTokenizer.Load(path);
        int? Lookup(string? t) => t is null ? null : hf.TokenToId(t);
        int? templateFirst = hf.Post is { } p && p.Single.Before.Length > 0 ? p.Single.Before[0] : null;
        int? bos = cfg.BosId ?? Lookup(cfg.BosToken) ?? templateFirst;
        var eos = cfg.EosIds(Lookup(cfg.EosToken));
        // The post-processor decides what add_special_tokens adds; with none, tokenizer_config.json's add_bos_token
        // (as transformers' Llama tokenizers) may still ask for BOS.
        bool prependBos = hf.Post is null && cfg.AddBos == true;
        string kind = $"{(hf.ByteLevel ? "byte-level " : "")}{hf.ModelType} (tokenizer.json)";
        return new LrlTokenizer(kind, hf, bos, eos, prependBos);
    }

    internal static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
}
