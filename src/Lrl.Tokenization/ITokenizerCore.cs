namespace Lrl.Tokenization;

/// <summary>One tokenizer implementation (tokenizer.json, tokenizer.model, word-level, bytes) behind <see cref="LrlTokenizer"/>.</summary>
internal interface ITokenizerCore
{
    /// <summary>One more than the largest id the tokenizer knows.</summary>
    int VocabSize { get; }

    /// <summary>Appends the ids of <paramref name="text"/>; with <paramref name="addSpecial"/>, what the post-processor adds.</summary>
    void Encode(string text, bool addSpecial, List<int> ids);

    string Decode(ReadOnlySpan<int> ids, bool skipSpecial);

    string? IdToToken(int id);

    int? TokenToId(string token);

    bool IsSpecial(int id);
}
