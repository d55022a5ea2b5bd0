namespace Lrl.Arch.Tests;

/// <summary>
/// GPT-2, RWKV and TransNormer against their references, and the linear-attention kernels, on every dispatch path of the
/// CPU kernels: AVX2 with and without AVX-VNNI, Vector128 and scalar, forced off the machine's best path in child runs
/// (see <see cref="InstructionSets"/>).
/// </summary>
public class InstructionSetTests
{
    [Theory]
    [MemberData(nameof(InstructionSets.Levels), MemberType = typeof(InstructionSets))]
    public void ArchitecturesMatchTheirReferencesOnEveryDispatchPath(string level) =>
        InstructionSets.RunClasses(typeof(InstructionSetTests).Assembly, level, typeof(Gpt2ReferenceTests), typeof(RwkvReferenceTests),
            typeof(TransNormerTests), typeof(LinearOpsTests), typeof(LightningAttentionTests), typeof(InstructionSetTests));

    [Fact]
    public void ChildRunsWithItsInstructionSetsOff() => InstructionSets.AssertChildLevel();
}
