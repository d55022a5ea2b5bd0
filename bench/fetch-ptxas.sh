#!/usr/bin/env bash
# Fetches NVIDIA's PTX assembler (ptxas, CUDA 11.8: sm_50 .. sm_90) from Debian bookworm's non-free
# nvidia-cuda-toolkit package without installing anything: `apt-get download` into a private apt state, then
# `dpkg-deb -x` and keep usr/bin/ptxas (a static-enough binary: libc, libm, libpthread). Cached in
# ${LRL_CACHE:-~/.cache/lrlrun}/ptxas/ptxas; prints its path. Costs one 84 MB download (about 1-10 s on a CI
# network) and ~3 s to extract. Exit 1 (nothing cached) when apt or the network is unavailable.
set -euo pipefail
cache="${LRL_CACHE:-$HOME/.cache/lrlrun}/ptxas"
if [ -x "$cache/ptxas" ]; then echo "$cache/ptxas"; exit 0; fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "fetch-ptxas: needs apt-get and dpkg-deb (Debian/Ubuntu)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo 'deb http://deb.debian.org/debian bookworm non-free' > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1)
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$work" && apt-get "${apt_opts[@]}" download -qq nvidia-cuda-toolkit >&2)
dpkg-deb -x "$work"/nvidia-cuda-toolkit_*.deb "$work/x"
mkdir -p "$cache"
cp "$work/x/usr/bin/ptxas" "$cache/ptxas.tmp" && mv "$cache/ptxas.tmp" "$cache/ptxas"
"$cache/ptxas" --version | tail -n 1 >&2
echo "$cache/ptxas"
