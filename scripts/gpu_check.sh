#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU (issue 12), about 8 minutes on one GPU:
#   1. environment facts (GPU, driver, CUDA, torch, cart commit);
#   2. `cart bench --device cuda`: the matmul peak, training at the paper's d=1024 P6 R6 T=1024 shape
#      in bf16 (tokens/s and MFU beside the paper's 32,393 tokens/s and 49 % on an RTX 3090) next to
#      the CPU shapes, the same step under torch.compile, and batched decoding (batch 1 and 8);
#   3. a short training run of the `paper` preset (d=1024 P6 R6, seq 1024, batch 32, bf16) on the
#      synthetic `smoke` data (no network needed; its 512-token vocabulary replaces the paper's 32k);
#   4. one JSON per part and a summary under results/bench/ (gpu_<gpu>*.json), ready to commit.
# Every part has its own time limit, so a part that hangs costs only its own result.
#
#   bash scripts/gpu_check.sh                 # on the GPU machine, after scripts/setup.sh
#   bash scripts/gpu_check.sh --dry-run --out /tmp/gpu-dry    # the same steps on the CPU at toy sizes (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=results/bench
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SLUG=cpu-dry-run
  BENCH_ARGS=(--device cpu --quick --repeats 1 --compile-backend eager)
  TRAIN_ARGS=(--d-model 64 --n-prelude 1 --n-loops 2 --max-seq-len 64 --seq-len 64 --batch-size 4 --steps 3 --dtype bf16)
  LIMIT_BENCH=600; LIMIT_TRAIN=300
else
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU visible to $PY (run with --dry-run to check the script on a CPU)" >&2
    exit 2
  fi
  DEVICE=cuda
  SLUG=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))")
  BENCH_ARGS=(--device cuda)
  TRAIN_ARGS=(--steps 20 --batch-size 8 --grad-accum 4)  # the preset's 32k tokens per step in 4 micro-steps: fits 24 GB GPUs
  LIMIT_BENCH=210; LIMIT_TRAIN=120
fi
PREFIX="$OUT/gpu_$SLUG"
STATUS="$WORK/status.tsv"
: > "$STATUS"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, record status and seconds, never abort the script
  local name=$1 limit=$2; shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" >&2
  set +e
  timeout "$limit" "$@"
  rc=$?
  set -e
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STATUS"
}

# 1. environment
step env 60 "$PY" - "$PREFIX"_env.json "$DEVICE" <<'EOF'
import json, platform, subprocess, sys
import cart  # noqa: F401  (before torch: OpenMP's wait policy)
import torch
from cart.bench import _git_commit
from cart.runtime import omp_wait_policy
dev = sys.argv[2]
facts = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
         "cuda": torch.version.cuda, "cart_commit": _git_commit(), "device": dev, "cpu_threads": torch.get_num_threads(),
         "omp_wait_policy": omp_wait_policy()}
if dev == "cuda":
    p = torch.cuda.get_device_properties(0)
    facts.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                 gpu_count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
    try:
        facts["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        facts["nvidia_smi"] = f"unavailable: {e}"
json.dump(facts, open(sys.argv[1], "w"), indent=2)
print(json.dumps(facts, indent=2))
EOF

# 2. cart bench: peak + training (eager) at every shape, torch.compile at the paper's shape, decoding
step bench_train "$LIMIT_BENCH" "$PY" -m cart.cli bench "${BENCH_ARGS[@]}" --suite peak train --json "$PREFIX"_train.json
step bench_compile "$LIMIT_BENCH" "$PY" -m cart.cli bench "${BENCH_ARGS[@]}" --suite peak compile --json "$PREFIX"_compile.json
step bench_generate "$LIMIT_BENCH" "$PY" -m cart.cli bench "${BENCH_ARGS[@]}" --suite generate cache --json "$PREFIX"_generate.json

# 3. a short run of the paper preset on data that needs no network
step data 300 "$PY" -m cart.cli data prepare smoke --data-dir "$WORK/data"
OPT=()
if [ "$DEVICE" = cpu ] || ! "$PY" -c "import bitsandbytes" 2>/dev/null; then OPT=(--optimizer adamw); fi  # 8-bit AdamW needs bitsandbytes on CUDA
step train "$LIMIT_TRAIN" "$PY" -m cart.cli train --preset paper --data "$WORK/data/smoke" --vocab-size 512 --out-dir "$WORK/run" \
  --device "$DEVICE" --log-every 5 --eval-every 0 --ckpt-every 0 --final-eval-tokens 8192 --tensorboard false --no-resume \
  "${OPT[@]}" "${TRAIN_ARGS[@]}"
[ -f "$WORK/run/summary.json" ] && cp "$WORK/run/summary.json" "$PREFIX"_paper_run.json
[ -f "$WORK/run/metrics.jsonl" ] && cp "$WORK/run/metrics.jsonl" "$PREFIX"_paper_run_metrics.jsonl

# 4. the summary: every part's status and time, the targets of each bench part
"$PY" - "$STATUS" "$PREFIX" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
status, prefix, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
steps = {}
for line in status.read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"exit_status": int(rc), "seconds": int(secs), "ok": rc == "0", "timed_out": rc == "124"}
summary = {"dry_run": dry, "steps": steps, "files": {}, "targets": []}
for part in ("env", "train", "compile", "generate", "paper_run"):
    p = Path(f"{prefix}_{part}.json")
    if p.is_file():
        summary["files"][part] = p.name
        data = json.loads(p.read_text())
        summary["targets"] += [t | {"from": p.name} for t in data.get("targets", [])]
run = Path(f"{prefix}_paper_run.json")
if run.is_file():
    r = json.loads(run.read_text())
    summary["paper_run"] = {k: r.get(k) for k in ("status", "step", "tokens_per_s", "mfu", "final_train_loss", "device", "dtype")}
Path(f"{prefix}.json").write_text(json.dumps(summary, indent=2) + "\n")
for name, s in steps.items():
    print(f"{name:15s} {'ok' if s['ok'] else 'FAILED (timed out)' if s['timed_out'] else 'FAILED'}  {s['seconds']} s")
for t in summary["targets"]:
    if t.get("issue") == 12 and (t["measured"] is not None or t["id"] == "gpu_mfu_cart_d1024"):
        m = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        print(f"  {t['id']:32s} {m:>8s} {dict([(True, 'PASS'), (False, 'MISS'), (None, 'n/a')])[t['passed']]:4s} {t['note']}")
print(f"wrote {prefix}.json" + (" (dry run: nothing measured means anything)" if dry else ""))
sys.exit(0 if all(s["ok"] for s in steps.values()) else 1)
EOF
