"""TrainConfig.doc_masking: off by default (the paper), validated, passed to the model in training and
in the trainer's evaluation, part of what a resume must match, and invisible to existing study keys."""
import json
from pathlib import Path
from unittest import mock

import pytest

from cart.cli import main
from cart.model.cart import CART
from cart.train import TrainConfig, train
from cart.train.config import ADDED_FIELDS


def losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [e["loss"] for e in map(json.loads, lines) if e["event"] == "train"]


def test_config_field():
    assert TrainConfig().doc_masking is False and ADDED_FIELDS["doc_masking"] is False
    assert TrainConfig(doc_masking=True).doc_masking is True
    with pytest.raises(ValueError, match="TrainConfig.doc_masking must be true/false"):
        TrainConfig(doc_masking="yes")
    with pytest.raises(ValueError, match="TrainConfig.doc_masking must be true/false, got 1"):
        TrainConfig.from_dict({"doc_masking": 1})


def test_cli_flag(capsys):
    assert main(["train", "--preset", "smoke", "--doc-masking", "true", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["doc_masking"] is True


def test_the_model_sees_document_ids_only_when_masking(make_cfg):
    seen = []
    real = CART.forward

    def spy(self, idx, *a, doc_ids=None, **k):
        seen.append(doc_ids is not None and tuple(doc_ids.shape) == tuple(idx.shape))
        return real(self, idx, *a, doc_ids=doc_ids, **k)

    with mock.patch.object(CART, "forward", spy):
        train(make_cfg("plain", steps=4, log_every=1, final_eval_tokens=64))
        assert seen and not any(seen)
        seen.clear()
        train(make_cfg("masked", steps=4, log_every=1, final_eval_tokens=64, doc_masking=True))
        assert seen and all(seen)  # every training step and every evaluation forward
    # some smoke rows hold a document boundary: masking changes the training
    assert losses(make_cfg("plain").out_dir) != losses(make_cfg("masked").out_dir)


def test_resume_must_match_and_old_checkpoints_resume_unmasked(make_cfg):
    cfg = make_cfg("run", steps=4)
    train(cfg)
    with pytest.raises(ValueError, match=r"differs in \['doc_masking'\]"):
        train(cfg.replace(steps=8, doc_masking=True))
    for f in Path(cfg.out_dir).rglob("train_config.json"):  # as written before the field existed
        d = json.loads(f.read_text())
        (d["config"] if "config" in d else d).pop("doc_masking", None)
        f.write_text(json.dumps(d))
    assert train(cfg.replace(steps=8))["step"] == 8


def test_study_run_keys_unchanged_at_the_default():
    from cart.experiments.plans import load_plan, resolve_recipe
    plan = load_plan("smoke")
    assert "doc_masking" not in resolve_recipe(plan, {})
    assert resolve_recipe(plan, {"doc_masking": True})["doc_masking"] is True
