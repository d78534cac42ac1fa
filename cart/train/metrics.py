"""Run metrics: JSONL (the source of truth), TensorBoard, and a progress display. Rank 0 only.

- `metrics.jsonl`: one JSON object per event, each with "step" and "event" ("start", "train",
  "eval", "checkpoint", "resume", "nonfinite", "interrupted", "end"). On resume from step S the
  file is first rewritten (atomically) without the events after S and without a line torn by a
  kill, so a resumed run never logs a step twice; then new events are appended, each line flushed.
- TensorBoard under `tb/` when tensorboard is installed (purged past S on resume).
- A tqdm bar with ETA on an interactive terminal; plain lines at log steps otherwise (logs).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from cart.checkpoint import atomic_write_bytes

METRICS = "metrics.jsonl"


def truncate_after(path: Path, step: int) -> None:
    """Keep the events at or before `step` (and drop torn lines), atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            keep.append(line)
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Metrics:
    def __init__(self, run_dir: Path, enabled: bool, start_step: int, total_steps: int, tensorboard: bool = True):
        self.enabled, self.total = enabled, total_steps
        self.start_step, self.t0 = start_step, time.perf_counter()
        self.file = self.tb = self.bar = None
        if not enabled:
            return
        path = Path(run_dir) / METRICS
        truncate_after(path, start_step)
        self.file = open(path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
            except ImportError:
                self.tb = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                self.bar = None

    def log(self, event: dict) -> None:
        """Append one event (must hold "step" and "event") and mirror it to TensorBoard/the display."""
        if not self.enabled:
            return
        self.file.write(json.dumps(event, sort_keys=True) + "\n")
        self.file.flush()
        if self.tb is not None:
            self._tb(event)
        self._show(event)

    def sync(self) -> None:
        """fsync the JSONL (at checkpoints, so metrics are as durable as the checkpoint they describe)."""
        if self.enabled:
            self.file.flush()
            os.fsync(self.file.fileno())
            if self.tb is not None:
                self.tb.flush()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        """A human-readable line (not a metric)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.file.close()

    # ------------------------------------------------------------------ mirrors
    def _tb(self, event: dict) -> None:
        kind, step = event["event"], event["step"]

        def put(prefix: str, obj) -> None:
            if isinstance(obj, bool) or obj is None:
                return
            if isinstance(obj, (int, float)):
                self.tb.add_scalar(prefix, obj, step)  # NaN too: a skipped step shows as NaN, not as a gap or 0
            elif isinstance(obj, dict):
                for k, v in obj.items():
                    put(f"{prefix}/{k}", v)
            elif isinstance(obj, list):
                for i, v in enumerate(obj):
                    put(f"{prefix}/{i}", v)

        if kind in ("train", "eval"):
            for k, v in event.items():
                if k not in ("step", "event"):
                    put(f"{kind}/{k}", v)

    def _show(self, event: dict) -> None:
        kind, step = event["event"], event["step"]
        if kind == "train":
            done = step - self.start_step
            eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)
            parts = [f"loss {event['loss']:.4f}", f"lr {event['lr']:.2e}", f"gnorm {event['grad_norm']:.3f}",
                     f"{event['tokens_per_s']:,.0f} tok/s", f"mfu {100 * event['mfu']:.1f}%"]
            if "rho_gate" in event:
                parts.append(f"rho {event['rho_gate']:.4f}")
            if self.bar is not None:
                self.bar.set_postfix_str(" | ".join(parts[:1] + parts[3:]), refresh=False)
            else:
                print(f"step {step}/{self.total} | " + " | ".join(parts) + f" | eta {_fmt_time(eta)}", flush=True)
        elif kind == "eval":
            sets = event.get("sets", {})
            text = "  ".join(f"{n} ppl {m['ppl']:.2f}" for n, m in sets.items())
            self.note(f"step {step} eval | {text}")
        elif kind in ("nonfinite", "interrupted", "resume", "checkpoint_corrupt"):
            self.note(f"step {step} {kind}: {event.get('message', '')}")
