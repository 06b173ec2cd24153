#!/usr/bin/env bash
# The whole test suite: a Vulkan driver if there is none (lavapipe), then every test on the GPU
# wgpu finds. Tests pull the models they need (SmolLM2-135M, Qwen2.5-Coder-0.5B) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-gpu.sh
export NODEVICE_SELECT=1 MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/mesa}
cargo test --release "$@"
