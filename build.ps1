#!/usr/bin/env pwsh
# lrlrun build script: ./build.ps1 [restore|build|test|bench|publish|all] [-Gpu] [-Configuration Release]
param(
    [ValidateSet('restore', 'build', 'test', 'bench', 'publish', 'all')]
    [string]$Target = 'all',
    [string]$Configuration = 'Release',
    # Also pack the CLI and GPU tests for a CUDA machine (../shared/gpu/pack.sh).
    [switch]$Gpu
)
$ErrorActionPreference = 'Stop'
Set-Location $PSScriptRoot

function Step([string]$name, [scriptblock]$body) {
    Write-Host "==> $name"
    & $body
    if ($LASTEXITCODE -ne 0) { throw "$name failed (exit $LASTEXITCODE)" }
}

if ($Target -in 'restore', 'all') { Step 'restore' { dotnet restore Engine.sln } }
if ($Target -in 'build', 'all') { Step 'build' { dotnet build Engine.sln -c $Configuration --no-restore } }
if ($Target -in 'test', 'all') { Step 'test' { dotnet test Engine.sln -c $Configuration } }
if ($Target -eq 'bench') { Step 'bench' { dotnet run -c Release --project src/Lrl.Cli -- bench kernels --device cpu } }
if ($Target -in 'publish', 'all') {
    Step 'publish' { dotnet publish src/Lrl.Cli/Lrl.Cli.csproj -c $Configuration -o artifacts/lrlrun }
}
if ($Gpu) { Step 'pack for GPU' { bash ../shared/gpu/pack.sh src/Lrl.Cli/Lrl.Cli.csproj } }
