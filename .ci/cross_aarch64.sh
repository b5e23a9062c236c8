#!/usr/bin/env bash
# Portability check: compiles every CPU engine source (csrc/cpu/*.cpp) for aarch64 with the
# GNU cross compiler, so x86-only code (intrinsics, cpuid, target_clones) stays behind
# LAYERKNN_X86 (csrc/cpu/arch.h) and the engine builds with its scalar table elsewhere.
# Installs g++-aarch64-linux-gnu with apt when aarch64-linux-gnu-g++ is missing (needs root).
# Objects go to a temporary directory; exits non-zero on the first file that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=aarch64-linux-gnu-g++
if ! command -v "$CXX" >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cross_aarch64: $CXX is missing and installing it needs root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
count=0
for src in csrc/cpu/*.cpp; do
  count=$((count + 1))
  if "$CXX" -std=c++17 -O2 -Wall -Wextra -c -Icsrc "$src" -o "$out/$(basename "$src" .cpp).o"; then
    echo "ok      $src"
  else
    echo "FAILED  $src" >&2
    status=1
  fi
done
if [ "$count" -eq 0 ]; then
  echo "cross_aarch64: no sources found under csrc/cpu" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "cross_aarch64: some sources do not build for aarch64" >&2
fi
exit "$status"
