"""EleutherAI lm-evaluation-harness adapter: `CARTLM`, an `lm_eval.api.model.LM` for any cart checkpoint.

    pip install 'cart[lm-eval]'
    cart eval lm-eval -- --model cart --model_args checkpoint=runs/x,n_loops=6 --tasks hellaswag --device cpu
    # or, in Python: lm_eval.simple_evaluate(model=CARTLM(checkpoint="runs/x"), tasks=[...])

Importing this module registers the model name "cart" with the harness (when lm-eval is
installed; without it the module still imports and `CARTLM` raises on construction). The
`lm_eval` console script of lm-eval 0.4.x reads no third-party entry points, so `lm_eval --model
cart` cannot work; `cart eval lm-eval -- ARGS` (or `python -m cart.eval.lm_eval_adapter ARGS`)
runs the harness's own command line after registering the model. The harness downloads its
datasets from the Hugging Face hub; `cart eval tasks` scores the same tasks on local rows.

Model arguments: checkpoint (run dir, checkpoint dir or model.safetensors), tokenizer, data,
device, dtype (fp32/bf16), n_loops, batch_tokens, add_bos (default true), max_length.
The three request types:
- loglikelihood: the batched, shared-context engine of `cart.eval.loglik` (harness tokenization);
- loglikelihood_rolling: the text after a BOS in disjoint windows of max_length, each window
  conditioned on the previous one's last token (the harness's rolling windows);
- generate_until: greedy (or sampled, if do_sample) cached decoding, cut at the first stop string.
"""
from __future__ import annotations

import torch

from cart.eval.generate import generate
from cart.eval.loading import load_for_eval, resolve_device
from cart.eval.loglik import loglikelihoods
from cart.eval.options import PplOptions, Run, Sampling
from cart.eval.perplexity import stream_sums
from cart.eval.tasks import encode_pairs

try:  # lm-eval is an optional extra
    from lm_eval.api.model import LM as _LMBase
    _HAVE_LM_EVAL = True
except ImportError:  # pragma: no cover - depends on the environment
    _LMBase = object
    _HAVE_LM_EVAL = False


def _as_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "on")


class CARTLM(_LMBase):
    def __init__(self, checkpoint=None, tokenizer=None, data=None, device: str | None = None, dtype: str = "fp32",
                 n_loops=None, batch_tokens=4096, add_bos=True, max_length=None, model=None, batch_size=None, **_ignored):
        if not _HAVE_LM_EVAL:
            raise ImportError("CARTLM needs lm-eval: pip install 'cart[lm-eval]'")
        super().__init__()
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # the harness passes device="cuda" by default
        if model is not None:  # an in-memory model and tokenizer object (tests, notebooks)
            if tokenizer is None or isinstance(tokenizer, str):
                raise ValueError("CARTLM(model=...) needs a tokenizer object")
            self.model, self.tok = model, tokenizer
            self._device = torch.device(device) if device else next(model.parameters()).device
        else:
            if checkpoint is None:
                raise ValueError("CARTLM needs checkpoint=PATH (run dir, checkpoint dir or model.safetensors)")
            setup = load_for_eval(checkpoint, device=device, tokenizer=tokenizer, data=data)
            self.model, self.tok = setup.model, setup.tokenizer
            self._device = resolve_device(device)
        self.model.eval()
        self.dtype = dtype
        self.n_loops = None if n_loops in (None, "", "None") else int(n_loops)
        self.batch_tokens = int(batch_tokens)
        self.add_bos = _as_bool(add_bos)
        self.max_length = int(max_length) if max_length else self.model.config.max_seq_len
        if self.n_loops is not None:
            self.model.resolve_loops(self.n_loops)

    # ------------------------------------------------------------------ harness API
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tok, "name", type(self.tok).__name__))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        reqs = encode_pairs(self.tok, pairs, self.add_bos)
        out = loglikelihoods(self.model, reqs, Run(n_loops=self.n_loops, device=self._device, dtype=self.dtype),
                             batch_tokens=self.batch_tokens, max_len=self.max_length)
        results = [(s.logprob, s.is_greedy) for s in out]
        for (ctx, cont), res in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", (ctx, cont), res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in requests:
            (text,) = r.args[:1]
            ids = [self.tok.bos_id] + list(self.tok.encode(text))
            nats = stream_sums(self.model, ids, PplOptions(seq_len=self.max_length, batch_size=8),
                               Run(n_loops=self.n_loops, device=self._device, dtype=self.dtype), full_last=True).nats
            out.append(-nats)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), -nats)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1] if len(r.args) > 1 else {})
            until = kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_new = int(kwargs.pop("max_gen_toks", 256))
            do_sample = _as_bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0
            ids = ([self.tok.bos_id] if self.add_bos else []) + list(self.tok.encode(context))
            ids = ids[-(self.max_length - 1):]  # keep the end of a long prompt, as the harness does
            sampling = Sampling(temperature, kwargs.pop("top_k", None), kwargs.pop("top_p", None), kwargs.pop("seed", 1234))
            g = generate(self.model, ids, max_new, sampling, Run(self.n_loops, self._device, self.dtype),
                         eos_id=self.tok.eos_id)
            toks = [t for t in g.tokens[0] if t != self.tok.eos_id]
            text = self.tok.decode(toks)
            for s in until:
                if s and s in text:
                    text = text[: text.index(s)]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, r.args[1] if len(r.args) > 1 else {}), text)
        return out


def register() -> bool:
    """Register "cart" in the harness's model registry (idempotent). False without lm-eval."""
    if not _HAVE_LM_EVAL:
        return False
    from lm_eval.api import registry

    try:  # the harness's own models ("hf", ...) register lazily when lm_eval.models is imported, and get_model
        import lm_eval.models  # noqa: F401  imports it only into an EMPTY registry: load them before adding "cart"
    except ImportError:  # pragma: no cover - an lm-eval without that module
        pass
    # lm-eval >= 0.4.10 keeps a Registry object (`model_registry`); earlier 0.4.x a dict (`MODEL_REGISTRY`)
    reg = getattr(registry, "model_registry", None) or getattr(registry, "MODEL_REGISTRY", None)
    if reg is not None and "cart" in reg:
        objs = reg if isinstance(reg, dict) else getattr(reg, "_objs", {})
        if objs.get("cart") is CARTLM:
            return True
        objs.pop("cart", None)  # a lazy placeholder or a stale class: replace it (there is no public unregister)
    registry.register_model("cart")(CARTLM)
    return True


try:
    register()
except Exception as e:  # pragma: no cover - an lm-eval whose registry we do not know: import anyway
    import warnings

    warnings.warn(f"cart: could not register the model 'cart' with lm-eval ({type(e).__name__}: {e})", stacklevel=1)


def main(argv: list[str] | None = None) -> None:
    """The harness's own command line, with "cart" registered: python -m cart.eval.lm_eval_adapter --model cart ..."""
    if not _HAVE_LM_EVAL:
        raise SystemExit("lm-eval is not installed: pip install 'cart[lm-eval]'")
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
