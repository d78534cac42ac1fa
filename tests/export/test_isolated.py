"""An exported directory loads, runs and generates in an interpreter that cannot import cart: `python -S`
(no site hooks, so no editable install of cart), PYTHONPATH = a folder whose `cart` raises on import,
then the site-packages (torch, transformers); the working directory is outside the repository."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("transformers")

from cart.cli import main  # noqa: E402
from cart.data import Manifest  # noqa: E402
from cart.eval.generate import generate  # noqa: E402
from cart.eval.options import GREEDY  # noqa: E402
from tests.export.conftest import VOCAB, make_run, site_packages, tiny  # noqa: E402
from tests.export.hf_child import TEXTS  # noqa: E402

CHILD = Path(__file__).with_name("hf_child.py")


def expected(model, tok, path: Path) -> None:
    """What cart computes, for the child to compare against."""
    x = torch.randint(2, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    x[:, 0] = tok.bos_id
    with torch.no_grad():
        logits = model(x)
    greedy = generate(model, x[0].tolist(), 10, GREEDY).tokens[0]
    rows = [[tok.bos_id] + tok.encode(t) for t in TEXTS]
    width = max(map(len, rows))
    save_file({"input_ids": x, "logits": logits, "greedy": torch.tensor(greedy),
               "text_ids": torch.tensor([r + [-1] * (width - len(r)) for r in rows])}, str(path))


KINDS = {"cart": ("cart", {}), "cart_paper_unfrozen": ("cart", {"fidelity": "paper", "freeze_kv": False}), "dense": ("dense", {})}


@pytest.mark.slow  # one fresh interpreter importing torch and transformers (~15 s on 2 cores)
def test_loads_and_generates_without_cart(smoke_data, tmp_path):
    pairs = []
    for name, (kind, over) in KINDS.items():
        model = tiny(kind, **over)
        run = make_run(tmp_path / name, model, smoke_data)
        out = tmp_path / "somewhere else" / f"{name}-export"
        assert main(["export", "hf", str(run), str(out), "--no-verify"]) == 0
        expected(model, Manifest.load(smoke_data).load_tokenizer(), tmp_path / f"{name}.safetensors")
        pairs += [str(tmp_path / f"{name}.safetensors"), str(out)]

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "cart.py").write_text("raise ImportError('cart must not be needed to load an exported model')\n")
    work = tmp_path / "cwd"
    work.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(blocker), *site_packages()])}
    proc = subprocess.run([sys.executable, "-S", str(CHILD), *pairs], cwd=work, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.strip().splitlines()[-len(KINDS):]]
    for (name, (kind, _)), got in zip(KINDS.items(), results):
        assert got["cart_importable"] is False and got["cart_modules"] == [], name
        assert got["model_class"] == ("CartForCausalLM" if kind == "cart" else "CartDenseForCausalLM"), name
        assert got["max_abs_logit_diff"] <= 1e-5 and got["greedy_equal"] and got["tokenizer_equal"], (name, got)
        assert got["sampled_len"] >= 1 and got["beam_len"] >= 1 and got["bos_eos"] == [0, 1], name
