namespace Lrl.Models.Tests;

/// <summary>
/// The real checkpoints against the float64 reference (logits and greedy continuations) and speculative rows against
/// lone ones, on every dispatch path of the CPU kernels: AVX2 with and without AVX-VNNI, Vector128 and scalar, forced
/// off the machine's best path in child runs (see <see cref="InstructionSets"/>).
/// </summary>
public class InstructionSetTests
{
    [Theory]
    [MemberData(nameof(InstructionSets.Levels), MemberType = typeof(InstructionSets))]
    public void ModelsMatchTheReferenceOnEveryDispatchPath(string level) =>
        InstructionSets.RunClasses(typeof(InstructionSetTests).Assembly, level, typeof(LlamaReferenceTests), typeof(StepBatchTests), typeof(InstructionSetTests));

    [Fact]
    public void ChildRunsWithItsInstructionSetsOff() => InstructionSets.AssertChildLevel();
}
