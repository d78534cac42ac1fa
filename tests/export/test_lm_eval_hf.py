"""The standard path: `lm_eval --model hf --model_args pretrained=OUT_DIR,trust_remote_code=True` on an
exported model, with local tasks, agrees with `cart eval tasks` item for item."""
import importlib.util
import json
import sys

import pytest

pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")
if importlib.util.find_spec("accelerate") is None:  # lm-eval's hf model imports it
    pytest.skip("lm-eval's hf model needs accelerate (pip install 'lm-eval[hf]')", allow_module_level=True)

from cart.cli import main  # noqa: E402
from cart.data import Manifest  # noqa: E402
from cart.eval.tasks import TaskSource, evaluate_task, load_task  # noqa: E402
from tests.eval.helpers import MC_ITEMS, LAMBADA_ITEMS, lambada_rows, mc_rows, write_task  # noqa: E402
from tests.export.conftest import make_run, tiny  # noqa: E402

# contexts without a trailing space, choices with a leading one (the harness joins them with " ")
ITEMS = [MC_ITEMS[i] for i in (0, 1, 3, 4)]


def _yaml(path, **fields):
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "\n")


def test_registering_cart_keeps_the_harness_models():
    """cart's adapter registers "cart"; `--model hf` must still resolve in the same process (lm-eval 0.4.13
    loads its own models only into an empty registry)."""
    import cart.eval.lm_eval_adapter as adapter
    from lm_eval.api.registry import get_model

    assert adapter.register() is True
    assert get_model("cart") is adapter.CARTLM and get_model("hf").__name__ == "HFLM"


@pytest.mark.slow  # the harness's own start-up and dataset machinery (~25 s on 2 cores)
def test_lm_eval_hf_agrees_with_cart_eval_tasks(smoke_data, tmp_path, monkeypatch):
    model = tiny()
    run = make_run(tmp_path / "run", model, smoke_data)
    out = tmp_path / "hf"
    assert main(["export", "hf", str(run), str(out), "--no-verify"]) == 0

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps({"query": c, "choices": [x[1:] for x in ch], "gold": g}) + "\n"
                                            for c, ch, g in ITEMS))
    (tasks / "lam.jsonl").write_text("".join(json.dumps({"context": c, "word": w.strip()}) + "\n" for c, w in LAMBADA_ITEMS))
    common = lambda f: {"dataset_path": "json", "test_split": "test",  # noqa: E731
                        "dataset_kwargs": {"data_files": {"test": str(tasks / f)}, "cache_dir": str(tmp_path / "hf_datasets")}}
    _yaml(tasks / "mc.yaml", task="cart_hf_mc", **common("mc.jsonl"), output_type="multiple_choice", doc_to_text="{{query}}",
          doc_to_choice="{{choices}}", doc_to_target="{{gold}}",
          metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}, {"metric": "acc_bytes"}])
    _yaml(tasks / "lam.yaml", task="cart_hf_lambada", **common("lam.jsonl"), output_type="loglikelihood",
          doc_to_text="{{context}}", doc_to_target=" {{word}}", metric_list=[{"metric": "perplexity"}, {"metric": "acc"}])

    from lm_eval.__main__ import cli_evaluate  # the `lm_eval` console script
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(sys, "argv", ["lm_eval", "--model", "hf", "--model_args", f"pretrained={out},trust_remote_code=True",
                                      "--tasks", "cart_hf_mc,cart_hf_lambada", "--include_path", str(tasks), "--device", "cpu",
                                      "--batch_size", "2", "--output_path", str(tmp_path / "results"), "--log_samples"])
    cli_evaluate()
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())["results"]
    samples = {}
    for task in ("cart_hf_mc", "cart_hf_lambada"):
        path = next((tmp_path / "results").rglob(f"samples_{task}_*.jsonl"))
        rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["doc_id"])
        samples[task] = [[float(r[0][0]) for r in row["resps"]] for row in rows]

    # the same items through `cart eval tasks`' own engine, on cart's model (olmo-eval layout)
    tok = Manifest.load(smoke_data).load_tokenizer()
    write_task(tmp_path / "olmo", "toy", "rc_0shot", mc_rows(ITEMS))
    write_task(tmp_path / "olmo", "lambada", "bpb_0shot", lambada_rows(LAMBADA_ITEMS))
    mc = evaluate_task(model, tok, load_task("toy", TaskSource(tmp_path / "olmo")), return_samples=True)
    lam = evaluate_task(model, tok, load_task("lambada/bpb_0shot", TaskSource(tmp_path / "olmo")), return_samples=True)
    for task, ours in (("cart_hf_mc", mc), ("cart_hf_lambada", lam)):  # every choice's log-likelihood
        theirs = [ll for item in samples[task] for ll in item]
        want = [ll for s in ours["samples"] for ll in s["loglikelihoods"]]
        assert theirs == pytest.approx(want, rel=1e-5, abs=1e-4), task
    for metric in ("acc", "acc_norm", "acc_bytes"):  # acc_norm per character, acc_bytes per byte, in both
        assert results["cart_hf_mc"][f"{metric},none"] == pytest.approx(mc["metrics"][metric]), metric
    assert results["cart_hf_lambada"]["acc,none"] == pytest.approx(lam["metrics"]["acc"])
    assert results["cart_hf_lambada"]["perplexity,none"] == pytest.approx(lam["metrics"]["perplexity"], rel=1e-4)
