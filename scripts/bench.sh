#!/usr/bin/env bash
# The measurements in BENCHMARKS.md, in one go (about 40 minutes on a 2-core lavapipe machine).
# Usage: scripts/bench.sh [OUTPUT_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-gpu.sh
cargo build --release --quiet
export NODEVICE_SELECT=1 MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/mesa}
out=${1:-bench-$(date +%Y%m%d-%H%M).txt}
a=target/release/augur
{
  echo "# $(date -u) $(uname -m) $(nproc) cores"
  $a bench smollm2-135m --runs 5
  $a bench qwen2.5-coder-0.5b --runs 3
  $a bench qwen2.5-coder-1.5b --runs 3
  $a bench-spec smollm2-135m --workload rewrite --per-category 17 --max-tokens 64
  $a bench-spec smollm2-135m --workload spec-bench --per-category 2 --max-tokens 48 --turns 1
  $a bench-spec smollm2-135m --workload spec-bench --per-category 5 --max-tokens 48   # both turns, as Spec-Bench runs them
  # the same after a history of 90 other Spec-Bench conversations in the suffix store
  $a bench-spec smollm2-135m --workload spec-bench --per-category 5 --max-tokens 48 --history 10
} 2>&1 | tee "$out"
