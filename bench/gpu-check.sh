#!/usr/bin/env bash
# The device check: what to run first when a GPU is lent (see README, "CUDA"). Two halves:
#
#   bench/gpu-check.sh pack    (here) publishes the CLI and the GPU tests with ../shared/gpu/pack.sh into .gpu/
#                              (with the .NET runtime and ASP.NET Core) and copies the real checkpoints and their
#                              references into .gpu/shared (~16 MB), all git-ignored, to carry to the GPU machine.
#   bench/gpu-check.sh run     (on the GPU machine: the device tool with carry [".gpu"]) runs, each step under a
#                              time limit, in about five minutes:
#                                1. the GPU tests on CUDA (and the CPU accelerator) with the real checkpoints;
#                                2. greedy equality CUDA vs CPU on every real model (token ids of 32 tokens);
#                                3. `lrlrun bench kernels --device cuda`;
#                                4. decode and prefill tok/s of the SmolLM2-135M and Llama-3.2-1B presets (bf16, q8, q4),
#                                   and bf16 / q4 prefill with and without tensor cores (LRL_GPU_MMA=0), and SmolLM2 q4 /
#                                   Llama bf16 decode compiled at ILGPU's O1 (LRL_GPU_OPT=O1) beside the default O2;
#                                5. decode with 0, 1 and 4 random rank-16 LoRA adapters (SmolLM2-135M q4: int8-held);
#                                6. speculative decoding on CUDA: the verify-pass cost (exact rows: one-row kernels per
#                                   row) and lookup end to end on the SmolLM2-135M q4 preset;
#                                7. batched decode of 4 and 16 sequences (SmolLM2-135M q4): RoPE + cache writes and
#                                   attention for up to eight sequences a launch.
#                              It writes $OUT/gpu-check.md (the summary, also printed last) and each step's log.
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
  pack)
    ../shared/gpu/pack.sh src/Lrl.Cli/Lrl.Cli.csproj tests/Lrl.Gpu.Tests/Lrl.Gpu.Tests.csproj
    # Trim what the GPU machine does not need (symbols, docs, code coverage, resource translations, other
    # platforms' native assets), then compress the programs and checkpoints into one archive (the device tool
    # carries at most 64 MiB with the working tree).
    for d in .gpu/Lrl.Cli .gpu/Lrl.Gpu.Tests; do
      find "$d" -name '*.pdb' -delete
      rm -rf "$d"/CodeCoverage "$d"/{alpine,arm64,macos,ubuntu,x64,x86} "$d"/{cs,de,es,fr,it,ja,ko,pl,pt-BR,ru,tr,zh-Hans,zh-Hant}
      rm -rf "$d"/runtimes/{win,osx,linux-arm,linux-arm64,linux-musl}* 2>/dev/null
    done
    rm -rf .gpu/shared && mkdir -p .gpu/shared
    cp -r ../shared/models ../shared/reference .gpu/shared/
    tar -C .gpu -cJf .gpu/payload.tar.xz Lrl.Cli Lrl.Gpu.Tests shared
    rm -rf .gpu/Lrl.Cli .gpu/Lrl.Gpu.Tests .gpu/shared
    du -sh .gpu/*
    ;;
  run)
    out="${OUT:-/tmp/gpu-check}"; mkdir -p "$out"
    p=/tmp/gpu-payload; [ -d "$p/Lrl.Cli" ] || { mkdir -p "$p" && tar -C "$p" -xJf .gpu/payload.tar.xz; }
    export LRL_SHARED="$p/shared" LRL_CACHE=/tmp/lrl-cache
    lrl=(.gpu/run dotnet "$p/Lrl.Cli/lrlrun.dll")
    summary="$out/gpu-check.md"
    { echo "# gpu-check $(date -u +%FT%TZ)"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1; } > "$summary"
    step() { # step NAME SECONDS COMMAND...: runs it with a limit, logs to $out/NAME.log, records the outcome
      local name=$1 limit=$2; shift 2
      local t0=$SECONDS; timeout "$limit" "$@" > "$out/$name.log" 2>&1; local rc=$?
      echo "- $name: exit $rc in $((SECONDS - t0)) s" >> "$summary"; return $rc
    }
    step gpu-tests 150 .gpu/run dotnet "$p/Lrl.Gpu.Tests/Lrl.Gpu.Tests.dll" -noColor
    grep -E "^\s*(Total|Passed|Failed|Skipped|Errors)|=== TEST EXECUTION SUMMARY|Tests:" "$out/gpu-tests.log" | tail -n 3 >> "$summary"
    grep -E "\[FAIL\]" "$out/gpu-tests.log" | head -n 20 >> "$summary"
    echo "## greedy CUDA vs CPU (32 tokens)" >> "$summary"
    for m in stories260k stories260k-fp16 stories260k-bf16-sharded capp-gpt2-tiny rwkv-tiny-5v2-730K rwkv-tiny-7v0-834K; do
      args=(generate --model "$LRL_SHARED/models/$m" --prompt "Once upon a time" -n 32 --temperature 0 --ignore-eos --ids)
      a=$(timeout 60 "${lrl[@]}" "${args[@]}" --device cuda 2>&1 | sed -n 's/^ids: //p')
      b=$(timeout 60 "${lrl[@]}" "${args[@]}" --device cpu 2>&1 | sed -n 's/^ids: //p')
      if [ -n "$a" ] && [ "$a" = "$b" ]; then echo "- $m: equal" >> "$summary"; else echo "- $m: DIFFERENT (cuda: ${a:-none}; cpu: ${b:-none})" >> "$summary"; fi
    done
    step kernels 90 "${lrl[@]}" bench kernels --device cuda
    tail -n 30 "$out/kernels.log" >> "$summary"
    echo "## presets on CUDA (pp128, tg64)" >> "$summary"
    for p in SmolLM2-135M Llama-3.2-1B; do
      for d in bf16 q8 q4; do
        step "bench-$p-$d" 120 "${lrl[@]}" bench --preset "$p" --dtype "$d" --device cuda -p 128 -n 64 -r 3 && grep -E "^\| $p" "$out/bench-$p-$d.log" >> "$summary"
      done
    done
    echo "## prefill: tensor cores against the f32 tile kernel (LRL_GPU_MMA=0), Llama-3.2-1B pp512, bf16 and q4" >> "$summary"
    for d in bf16 q4; do
      step "mma-on-$d" 120 "${lrl[@]}" bench --preset Llama-3.2-1B --dtype "$d" --device cuda -p 512 -n 0 -r 3 \
        && grep -E "^\| Llama" "$out/mma-on-$d.log" >> "$summary"
      step "mma-off-$d" 120 env LRL_GPU_MMA=0 "${lrl[@]}" bench --preset Llama-3.2-1B --dtype "$d" --device cuda -p 512 -n 0 -r 3 \
        && grep -E "^\| Llama" "$out/mma-off-$d.log" >> "$summary"
    done
    echo "## decode: ILGPU O1 (generic loads, LRL_GPU_OPT=O1) beside the presets' O2 rows above, tg64" >> "$summary"
    for pd in SmolLM2-135M:q4 Llama-3.2-1B:bf16; do
      p=${pd%%:*} d=${pd##*:}
      step "o1-$p-$d" 90 env LRL_GPU_OPT=O1 "${lrl[@]}" bench --preset "$p" --dtype "$d" --device cuda -p 0 -n 64 -r 3 \
        && grep -E "^\| $p" "$out/o1-$p-$d.log" | sed 's/$/ (O1)/' >> "$summary"
    done
    echo "## LoRA on CUDA: decode with 0, 1 and 4 random rank-16 adapters on every linear module (int8-held), SmolLM2-135M q4" >> "$summary"
    step lora 90 "${lrl[@]}" bench --preset SmolLM2-135M --dtype q4 --device cuda -p 0 -n 64 -r 3 --lora-random 0,1,4 \
      && grep -E "^\| SmolLM2|x of tg" "$out/lora.log" >> "$summary"
    echo "## speculative on CUDA (SmolLM2-135M q4)" >> "$summary"
    step verify-cost 90 "${lrl[@]}" bench --preset SmolLM2-135M --dtype q4 --device cuda -p 64 --verify-cost 1,2,4,8,16 -r 3 \
      && grep -E "^\| (decode|verify)" "$out/verify-cost.log" >> "$summary"
    step lookup 120 "${lrl[@]}" bench --preset SmolLM2-135M --dtype q4 --device cuda --speculative lookup -n 256 -r 3 \
      && grep -E "^\| (plain|lookup)" "$out/lookup.log" >> "$summary"
    echo "## batched decode on CUDA (SmolLM2-135M q4, aggregate tok/s)" >> "$summary"
    step batched 120 "${lrl[@]}" bench --preset SmolLM2-135M --dtype q4 --device cuda -p 0 -n 64 -r 3 --batch 4,16 \
      && grep -E "^\| SmolLM2" "$out/batched.log" >> "$summary"
    cat "$summary"
    ;;
  *) echo "usage: bench/gpu-check.sh pack | run" >&2; exit 2 ;;
esac
