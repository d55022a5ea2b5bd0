namespace Lrl.Cpu.Tests;

/// <summary>
/// The CPU kernels against their references on every dispatch path: AVX2 (with and without AVX-VNNI), Vector128 and
/// scalar, forced off the machine's best path in child runs (see <see cref="InstructionSets"/>).
/// </summary>
public class InstructionSetTests
{
    [Theory]
    [MemberData(nameof(InstructionSets.Levels), MemberType = typeof(InstructionSets))]
    public void KernelsMatchTheirReferencesOnEveryDispatchPath(string level) =>
        InstructionSets.RunClasses(typeof(InstructionSetTests).Assembly, level,
            typeof(CpuKernelTests), typeof(HalfEdgeTests), typeof(F16ToFloatTests), typeof(InstructionSetTests));

    [Fact]
    public void ChildRunsWithItsInstructionSetsOff() => InstructionSets.AssertChildLevel();
}
