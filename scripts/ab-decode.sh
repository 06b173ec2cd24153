#!/usr/bin/env bash
# Plain decode speed of two augur binaries, alternating run by run on one prompt (these machines
# drift by 10-30% within the hour, so only side-by-side figures compare). Prints decode and
# prefill tok/s and a hash of the generated tokens (the two must agree).
# Usage: scripts/ab-decode.sh OLD_BINARY NEW_BINARY MODEL [TOKENS] [RUNS]
set -euo pipefail
old=$1 new=$2 model=$3 n=${4:-32} runs=${5:-3}
export NODEVICE_SELECT=1 MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/mesa}
prompt="Write a short story about a lighthouse keeper who finds a message in a bottle."
for _ in $(seq "$runs"); do
  for b in "$old" "$new"; do
    "$b" generate "$model" "$prompt" --chat --speculate off --max-tokens "$n" --ctx 512 --json 2>/dev/null |
      python3 -c "import hashlib, json, sys; d = json.load(sys.stdin)
print('$b', 'decode %.2f tok/s' % d['decode_tok_s'], 'prefill %.1f tok/s' % d['prefill_tok_s'],
      'tokens', hashlib.md5(str(d['tokens']).encode()).hexdigest()[:8])"
  done
done
