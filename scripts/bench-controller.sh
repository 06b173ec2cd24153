#!/usr/bin/env bash
# The controller's measurements in BENCHMARKS.md (`--speculate auto` against plain decoding,
# side by side per prompt): every Spec-Bench category, the rewrite workload, and the rewrite
# workload again on two simulated devices (a fixed extra cost per pass, as where launching a
# pass dominates, and an extra cost per row, as where wide trees are dearer still), to show the
# controller choosing other tree sizes by measurement alone. Each run gets a fresh AUGUR_HOME
# (empty suffix store, its own cost calibration).
# Usage: scripts/bench-controller.sh [OUTPUT_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-gpu.sh
cargo build --release --quiet
export NODEVICE_SELECT=1 MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/mesa}
out=${1:-bench-controller-$(date +%Y%m%d-%H%M).txt}
a=$PWD/target/release/augur
models=${AUGUR_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/augur}/models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fresh() { local h; h=$(mktemp -d -p "$work"); [ -d "$models" ] && ln -s "$models" "$h/models"; echo "$h"; }
{
  echo "# $(date -u) $(uname -m) $(nproc) cores"
  AUGUR_HOME=$(fresh) $a bench-spec smollm2-135m --workload spec-bench --per-category 10 --max-tokens 48 --turns 1 --speculate auto
  AUGUR_HOME=$(fresh) $a bench-spec smollm2-135m --workload rewrite --per-category 17 --max-tokens 64 --speculate auto
  echo "## simulated: +300 ms per pass"
  AUGUR_HOME=$(fresh) $a bench-spec smollm2-135m --workload rewrite --per-category 4 --max-tokens 64 --speculate auto --simulate-ms-per-pass 300
  echo "## simulated: +60 ms per row"
  AUGUR_HOME=$(fresh) $a bench-spec smollm2-135m --workload rewrite --per-category 4 --max-tokens 64 --speculate auto --simulate-ms-per-row 60
} 2>&1 | tee "$out"
