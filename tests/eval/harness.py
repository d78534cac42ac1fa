"""Run lm-evaluation-harness's own task code offline on local rows, through the `cart` adapter, and compare
what it builds and scores with `cart eval tasks` (used by test_harness_parity.py).

Each harness task is a YAML in a temporary include folder that `include`s the installed harness's
own task YAML (so its prompts, `!function` preprocessing, delimiters and metrics are the harness's)
and overrides only where the rows come from (local `.arrow`/`.jsonl` files), which splits exist,
and the metric list (acc, acc_norm and acc_bytes for every multiple-choice task).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cart.eval.benchmarks import LOGLIKELIHOOD, Benchmark
from cart.eval.options import TaskOptions
from cart.eval.tasks import Task, evaluate_task

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never reach for a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the harness's task YAMLs, relative to the installed lm_eval/tasks/ (lm-eval 0.4.13)
HARNESS_YAML = {
    "hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml", "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml", "lambada_openai": "lambada/lambada_openai.yaml",
    "winogrande": "winogrande/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml", "sciq": "sciq/sciq.yaml",
    "boolq": "super_glue/boolq/default.yaml", "commonsense_qa": "commonsense_qa/default.yaml", "social_iqa": "siqa/siqa.yaml",
}


class BPETokenizer:
    """A byte-level BPE trained on the given texts in about a second: realistic merges (trailing spaces must
    move into the continuation) and sequences ~3x shorter than bytes."""

    bos_id, eos_id, name = 0, 1, "test-bpe"

    def __init__(self, texts: list[str], vocab_size: int = 2048):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        self.hf = Tokenizer(models.BPE())
        self.hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.hf.decoder = decoders.ByteLevel()
        self.hf.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        self.vocab_size = self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids))


def harness_yaml_path(b: Benchmark) -> Path:
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / HARNESS_YAML[b.harness_task]
    assert path.is_file(), f"the installed lm-eval has no {path}"
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def harness_task(folder: Path, b: Benchmark, files: dict[str, Path], eval_split: str, *,
                 fewshot_split: str | None = None) -> str:
    """Write the YAML of one harness task over local files ({split: path}, all .jsonl or all .arrow);
    `eval_split` plays the role of the YAML's test split (or validation split when it has none). With
    `fewshot_split` = `eval_split` the evaluated split is the test split, so the harness's sampler excludes the
    evaluated document (its rule: fewshot_split == test_split), as cart always does."""
    name = f"cartcmp_{b.name}"
    builder = {Path(p).suffix for p in files.values()}
    assert len(builder) == 1, files
    cfg = {
        "task": name, "include": str(harness_yaml_path(b)),
        "dataset_path": {".jsonl": "json", ".arrow": "arrow"}[builder.pop()], "dataset_name": None,
        "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()}, "cache_dir": str(folder / "hf-cache")},
        "training_split": "train" if "train" in files else None,
        "validation_split": None, "test_split": None,
    }
    if b.test_split is not None or fewshot_split == eval_split:
        cfg["test_split"] = eval_split
    else:
        cfg["validation_split"] = eval_split
    if fewshot_split is not None:
        cfg["fewshot_split"] = fewshot_split
    if b.output_type != LOGLIKELIHOOD:
        cfg["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                              for m in ("acc", "acc_norm", "acc_bytes")]
    (folder / f"{name}.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.items()) + "\n")
    return name


def run_harness(folder: Path, names: list[str], lm, *, limit: int, shots: int = 0, seed: int = 1234) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                           limit=limit, num_fewshot=shots, fewshot_random_seed=seed, bootstrap_iters=0, log_samples=True)


def compare(out: dict, harness_name: str, task: Task, model, tokenizer, limit: int) -> dict:
    """Assert the harness's requests, per-item log-likelihoods and metrics equal cart's; return counts."""
    samples = sorted(out["samples"][harness_name], key=lambda s: s["doc_id"])
    assert len(samples) == min(limit, len(task.items)), (harness_name, len(samples))
    ours = evaluate_task(model, tokenizer, task, TaskOptions(limit=limit), return_samples=True)
    for s, item, mine in zip(samples, task.items, ours["samples"]):
        assert s["doc_id"] == item.doc_id
        got = [tuple(a) for a in s["arguments"]]
        want = list(zip(item.contexts, item.continuations))
        assert got == want, f"{task.name} doc {item.doc_id}: the harness's requests differ:\n{got}\n{want}"
        lls = [r[0][0] for r in s["resps"]]
        assert lls == pytest.approx(mine["loglikelihoods"], abs=1e-5), f"{task.name} doc {item.doc_id}"
        assert [bool(r[0][1]) for r in s["resps"]] == mine["is_greedy"], f"{task.name} doc {item.doc_id}"
    res = out["results"][harness_name]
    compared = {}
    for metric, value in ours["metrics"].items():
        key = f"{metric},none"
        if metric.endswith("_stderr") or key not in res:
            continue
        if metric == "perplexity":
            assert res[key] == pytest.approx(value, rel=1e-6), (task.name, metric)
        else:
            assert res[key] == value, (task.name, metric, res[key], value)
        compared[metric] = value
    return {"items": len(samples), "metrics": compared}
