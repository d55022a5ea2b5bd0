namespace Lrl.Quant.Tests;

/// <summary>
/// The int8/int4 GEMV/GEMM kernels against their references on every dispatch path: AVX2 with AVX-VNNI, AVX2 without
/// VNNI, Vector128 and scalar, forced off the machine's best path in child runs (see <see cref="InstructionSets"/>).
/// </summary>
public class InstructionSetTests
{
    [Theory]
    [MemberData(nameof(InstructionSets.Levels), MemberType = typeof(InstructionSets))]
    public void QuantizedKernelsMatchTheirReferencesOnEveryDispatchPath(string level) =>
        InstructionSets.RunClasses(typeof(InstructionSetTests).Assembly, level, typeof(KernelTests), typeof(InstructionSetTests));

    [Fact]
    public void ChildRunsWithItsInstructionSetsOff() => InstructionSets.AssertChildLevel();
}
