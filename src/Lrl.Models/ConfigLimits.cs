namespace Lrl.Models;

/// <summary>
/// Upper bounds on config.json sizes, checked before anything is allocated: far above any small (or large) model,
/// low enough that a corrupt value ("num_hidden_layers": 2147483647) is a clear error, not an 8 GB allocation.
/// </summary>
internal static class ConfigLimits
{
    public const int Layers = 1024, Hidden = 65_536, Intermediate = 1 << 20, Heads = 4096, Vocab = 1 << 24, Positions = 1 << 24;

    /// <summary>Each (field, value, limit) must be in 1..limit.</summary>
    public static void Check(string path, params (string Field, long Value, long Limit)[] fields)
    {
        foreach (var (field, value, limit) in fields)
            if (value < 1 || value > limit)
                throw new ModelFormatException(path, $"field '{field}' = {value} is outside 1..{limit}");
    }

    /// <summary>A positive, finite value (an epsilon, a rope base).</summary>
    public static void Positive(string path, string field, double value)
    {
        if (!(value > 0) || !double.IsFinite(value)) throw new ModelFormatException(path, $"field '{field}' = {value} must be a positive finite number");
    }
}
