"""The lm-eval-harness adapter, offline: local task definitions over small jsonl files."""
import json
import math
import os

import pytest
import torch

import cart.eval.lm_eval_adapter as adapter
from cart.eval.tasks import TaskSource, evaluate_task, load_task
from tests.eval.helpers import MC_ITEMS, ByteTokenizer, mc_rows, save_checkpoint, tiny_cart, write_task

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local json files only: never reach for a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

# items whose contexts end without a space and whose choices start with one (the harness adds the " ")
HARNESS_ITEMS = [MC_ITEMS[i] for i in (0, 1, 3, 4)]


def _yaml(path, **fields):
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "\n")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    mc = d / "mc.jsonl"
    mc.write_text("".join(json.dumps({"query": c, "choices": [x[1:] for x in ch], "gold": g}) + "\n" for c, ch, g in HARNESS_ITEMS))
    lam = d / "lam.jsonl"
    lam.write_text("".join(json.dumps({"context": c, "word": w}) + "\n"
                           for c, w in [("He opened the door and saw his old friend", "Tom"), ("The last word is", "word")]))
    txt = d / "txt.jsonl"
    txt.write_text(json.dumps({"text": "A short document about nothing in particular. " * 6}) + "\n")
    common = lambda f: {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(f)}, "cache_dir": str(d / "hf")},  # noqa: E731
                        "test_split": "test"}
    _yaml(d / "mc.yaml", task="cart_toy_mc", **common(mc), output_type="multiple_choice", doc_to_text="{{query}}",
          doc_to_choice="{{choices}}", doc_to_target="{{gold}}",
          metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}, {"metric": "acc_bytes"}])
    _yaml(d / "lam.yaml", task="cart_toy_lambada", **common(lam), output_type="loglikelihood", doc_to_text="{{context}}",
          doc_to_target=" {{word}}", metric_list=[{"metric": "perplexity"}, {"metric": "acc"}])
    _yaml(d / "txt.yaml", task="cart_toy_rolling", **common(txt), output_type="loglikelihood_rolling", doc_to_text="",
          doc_to_target="{{text}}", metric_list=[{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}])
    _yaml(d / "gen.yaml", task="cart_toy_gen", **common(lam), output_type="generate_until", doc_to_text="{{context}}",
          doc_to_target=" {{word}}", generation_kwargs={"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False},
          metric_list=[{"metric": "exact_match"}])
    return d


@pytest.fixture(scope="module")
def results(task_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    torch.manual_seed(0)
    model = tiny_cart(max_seq_len=48)  # shorter than the rolling document: several windows
    lm = adapter.CARTLM(model=model, tokenizer=ByteTokenizer())
    out = simple_evaluate(model=lm, tasks=["cart_toy_mc", "cart_toy_lambada", "cart_toy_rolling", "cart_toy_gen"],
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), bootstrap_iters=0, log_samples=True)
    return model, out


def test_registered_under_cart():
    from lm_eval.api.registry import get_model

    assert get_model("cart") is adapter.CARTLM
    assert adapter.register() is True  # idempotent


def test_multiple_choice_through_the_harness_equals_cart_eval(results, tmp_path):
    model, out = results
    r = out["results"]["cart_toy_mc"]
    write_task(tmp_path, "toy", "rc_0shot", mc_rows(HARNESS_ITEMS))
    ours = evaluate_task(model, ByteTokenizer(), load_task("toy", TaskSource(tmp_path)))["metrics"]
    assert r["acc,none"] == pytest.approx(ours["acc"])
    assert r["acc_norm,none"] == pytest.approx(ours["acc_norm"])  # per character
    assert r["acc_bytes,none"] == pytest.approx(ours["acc_bytes"])  # per UTF-8 byte


def test_loglikelihood_and_rolling(results):
    model, out = results
    lam = out["results"]["cart_toy_lambada"]
    assert lam["perplexity,none"] > 1 and 0 <= lam["acc,none"] <= 1
    samples = out["samples"]["cart_toy_rolling"]
    resp = samples[0]["resps"][0][0]
    ll = resp[0] if isinstance(resp, (list, tuple)) else resp
    text = "A short document about nothing in particular. " * 6
    ids = [256] + list(text.encode())
    # brute force, harness rolling windows: disjoint windows of 48 predictions, the last with full context
    want, done = 0.0, 0
    while done < len(ids) - 1:
        end = min(done + 48, len(ids) - 1)
        begin = max(0, end - 48)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[begin:end]]))[0].double(), -1)
        for t in range(done + 1, end + 1):
            want += logp[t - 1 - begin, ids[t]].item()
        done = end
    assert ll == pytest.approx(want, rel=1e-4)
    assert math.isfinite(out["results"]["cart_toy_rolling"]["word_perplexity,none"])


def test_generate_until_stops_at_stop_strings(results):
    _, out = results
    for s in out["samples"]["cart_toy_gen"]:
        text = s["resps"][0][0]
        assert "\n" not in text and "." not in text and len(text) <= 8  # <= 8 byte tokens


def test_from_checkpoint_arg_string(tmp_path, monkeypatch):
    monkeypatch.setattr("cart.eval.loading.load_tokenizer", lambda spec: ByteTokenizer())
    save_checkpoint(tiny_cart(), tmp_path / "run")
    lm = adapter.CARTLM.create_from_arg_string(f"checkpoint={tmp_path / 'run'},tokenizer=bytes,n_loops=3",
                                               {"batch_size": 4, "device": "cpu"})
    assert lm.n_loops == 3

    class Req:
        args = ("Hello", " world")

    ((lp, greedy),) = lm.loglikelihood([Req()])
    assert lp < 0 and isinstance(greedy, bool)
