#!/usr/bin/env python3
# Usage: python3 scripts/make-rewrite-workload.py REV tests/data/rewrite.jsonl
# Makes tests/data/rewrite.jsonl: 25 lines from a third of the way into each .rs file of src/ and
# src/spec/ at one commit, in bench::rewrite_prompt's format
import json, subprocess, sys
rev, out = sys.argv[1], sys.argv[2]
def ls(d): return sorted(f for f in subprocess.check_output(['git','ls-tree','--name-only',rev,d],text=True).split() if f.endswith('.rs'))
changes = ["rename the variable `i` to `idx`","add a comment line at the top","rename `self` to `this` in comments only","change every `usize` to `u64`"]
with open(out,'w') as o:
  for i,f in enumerate(ls('src/')+ls('src/spec/')):
    lines = subprocess.check_output(['git','show',f'{rev}:{f}'],text=True).splitlines()
    s = len(lines)//3
    chunk = '\n'.join(lines[s:s+25])
    p = f"```rust\n{chunk}\n```\n\nRewrite the code above and {changes[i%4]}; change nothing else and output only the code."
    o.write(json.dumps({"category":"rewrite","source":f"{f}@{rev}","prompt":p})+'\n')
