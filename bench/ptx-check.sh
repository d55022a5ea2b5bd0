#!/usr/bin/env bash
# PTX check without a GPU: compiles every ILGPU kernel entry point (kernels/Lrl.Kernels, generic kernels for every
# weight reader) to PTX for sm_80 and sm_90 and assembles each with ptxas (fetched by bench/fetch-ptxas.sh when not
# on PATH or in $LRL_PTXAS), printing registers, shared memory, stack and spill bytes per kernel. Fails on any
# compile or assembly error, or on register spills. Usage: bench/ptx-check.sh [--arch sm_80,sm_90] [--ptx-out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export LRL_PTXAS="${LRL_PTXAS:-$(command -v ptxas || bench/fetch-ptxas.sh)}"
dotnet run -c Release --project src/Lrl.Cli -- bench ptx "$@"
