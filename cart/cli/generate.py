"""`cart generate`: prompt -> text with incremental decoding, streamed to the terminal."""
from __future__ import annotations

import sys

from cart.cli import CLIError
from cart.cli.common import nonneg_float, nonneg_int, positive_int, probability


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint (cached decoding, streamed)",
                       description='Example: cart generate runs/d256 --prompt "Once upon a time" --temperature 0.8 --top-p 0.95 --seed 1')
    p.add_argument("checkpoint", help="run dir, checkpoint dir or model.safetensors")
    p.add_argument("--prompt", default=None, help="the prompt text ('-' reads stdin)")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=nonneg_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=probability, default=None, help="nucleus sampling: the smallest set of tokens with mass >= P")
    p.add_argument("--seed", type=nonneg_int, default=None, help="sampling seed (a seed reproduces a sample exactly)")
    p.add_argument("--n-loops", type=positive_int, default=None, help="loop count R (default: the trained R)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or name (default: the run's data manifest)")
    p.add_argument("--data", default=None, help="prepared data dir with manifest.json")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--mla-cache", default="auto", choices=["auto", "latent", "latent_k", "kv"],
                   help="what MLA layers cache: the d/4 latent (smallest; K re-projected every step), the latent "
                        "plus the rotated K (5x the bytes), or rotated K and V (8x); faster at large batch x "
                        "context; same tokens every way. auto (default): latent at batch 1, latent_k for batches")
    p.add_argument("--no-bos", action="store_true", help="do not start the prompt with BOS")
    p.add_argument("--no-stream", action="store_true", help="print the text only at the end")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating after EOS")
    p.add_argument("--truncate-prompt", action="store_true", help="keep the end of a prompt longer than the context instead of failing")
    p.set_defaults(func=run)


def _prompt(args) -> str:
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            return f.read()
    if args.prompt == "-":
        return sys.stdin.read()
    if args.prompt is None:
        raise CLIError("give --prompt TEXT (or --prompt - for stdin, or --prompt-file PATH)")
    return args.prompt


def run(args) -> int:
    from cart.eval.generate import TextStreamer, generate
    from cart.eval.options import Run, Sampling
    from cart.eval.loading import load_for_eval

    text = _prompt(args)
    setup = load_for_eval(args.checkpoint, device=args.device, tokenizer=args.tokenizer, data=args.data)
    tok, model = setup.tokenizer, setup.model
    ids = ([tok.bos_id] if not args.no_bos else []) + list(tok.encode(text))
    if not ids:
        raise CLIError("empty prompt")
    stream = None if args.no_stream else TextStreamer(tok, lambda s: (sys.stdout.write(s), sys.stdout.flush()),
                                                      skip_ids=() if args.ignore_eos else (tok.eos_id,))
    if stream is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
    try:
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
        run_opts = Run(n_loops=args.n_loops, device=next(model.parameters()).device, dtype=args.dtype)
    except ValueError as e:
        raise CLIError(f"cart generate: {e}") from e
    g = generate(model, ids, args.max_new_tokens, sampling, run_opts, eos_id=None if args.ignore_eos else tok.eos_id,
                 on_token=stream, truncate=args.truncate_prompt, mla_layout=args.mla_cache)
    new = [t for t in g.tokens[0] if args.ignore_eos or t != tok.eos_id]
    if stream is not None:
        stream.flush()
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text + tok.decode(new) + "\n")
    sys.stdout.flush()
    n = len(g.tokens[0])
    print(f"[{n} tokens in {g.seconds:.2f} s ({n / max(g.seconds, 1e-9):.1f} tok/s), stop: {g.stop_reason[0]}, "
          f"prompt {g.prompt_tokens} tokens, cache {g.cache_bytes_per_token:.0f} B/token]", file=sys.stderr)
    return 0
