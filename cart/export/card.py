"""The model card (README.md of an exported directory), generated from the run, never typed by hand.

`gather` collects what the run directory records about the exported checkpoint: the training
config, the validation results at that checkpoint's step (`summary.json` when it is the final step,
else the `eval` event of metrics.jsonl at that step), the n-gram floors when `cart eval ngram`
wrote `ngram_floors.json`, and the data manifest. `render` turns that into Markdown: architecture,
parameters and FLOPs (`cart.accounting`, the one place they are computed), data recipe and licence
per source (the source registry's), training recipe, results, how to load it.
"""
from __future__ import annotations

import json
from pathlib import Path

from cart.accounting import account, parity
from cart.config import CARTConfig, config_fields

NGRAM_FLOORS = "ngram_floors.json"
NOT_COMPUTED = "not computed"


def find_run_file(checkpoint: Path, name: str) -> Path | None:
    """`name` in the checkpoint dir or the run dir above it (run/checkpoints/step_N)."""
    for d in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (d / name).is_file():
            return d / name
    return None


def _json(path: Path | None):
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _eval_at(checkpoint: Path, step) -> dict | None:
    """Validation results recorded for exactly this step: summary.json's, else metrics.jsonl's
    eval event (the final one preferred)."""
    summary = _json(find_run_file(checkpoint, "summary.json"))
    if isinstance(summary, dict) and summary.get("step") == step and isinstance(summary.get("final"), dict):
        return {"sets": summary["final"], "source": "summary.json (final evaluation)"}
    metrics = find_run_file(checkpoint, "metrics.jsonl")
    found = None
    if metrics is not None:
        for line in metrics.read_text().splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if ev.get("event") == "eval" and ev.get("step") == step and isinstance(ev.get("sets"), dict):
                if found is None or ev.get("final"):
                    found = {"sets": ev["sets"], "source": f"metrics.jsonl, eval at step {step}"
                             + (" (final)" if ev.get("final") else f" ({_tokens(ev)})")}
    return found


def _tokens(ev: dict) -> str:
    n = [v.get("tokens") for v in ev["sets"].values() if isinstance(v, dict)]
    return f"{min(n):,}-{max(n):,} tokens per set" if n and all(isinstance(x, int) for x in n) else "partial sets"


def gather(setup, manifest) -> dict:
    """Everything the card says, read from the run (no numbers are computed here except the
    accounting, which `render` asks `cart.accounting` for)."""
    from cart.eval.loading import read_train_config
    from cart.provenance import code_version

    ckpt = Path(setup.checkpoint)
    step = setup.meta.get("step")
    found = read_train_config(ckpt)
    summary = _json(find_run_file(ckpt, "summary.json"))
    return {
        "checkpoint": str(ckpt), "step": step, "code_version": setup.meta.get("code_version"),
        "code_version_now": code_version(),
        "train_config": found[0] if found else None,
        "summary": summary if isinstance(summary, dict) and summary.get("step") == step else None,
        "eval": _eval_at(ckpt, step),
        "ngram_floors": _json(find_run_file(ckpt, NGRAM_FLOORS)),
        "manifest": manifest.data if manifest is not None else None,
    }


# ===================================================================================== rendering
def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _num(x, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}" if abs(x) < 1e6 else f"{x:.4g}"
    return str(x)


def _ablations(cfg) -> list[str]:
    """Fields that differ from the full model's defaults (the ablations and other non-defaults)."""
    default = type(cfg)()
    skip = {"vocab_size", "d_model", "max_seq_len", "n_prelude", "n_loops", "n_layers", "fidelity"}
    return [f"`{f.name}={getattr(cfg, f.name)!r}`" for f in config_fields(type(cfg))
            if f.name not in skip and getattr(cfg, f.name) != getattr(default, f.name)]


def _architecture(cfg, seq_len: int) -> list[str]:
    d = cfg.d_model
    mla = isinstance(cfg, CARTConfig) or cfg.attention == "mla"
    widths = (f"{d} ({cfg.n_heads} head{'s' if cfg.n_heads > 1 else ''} of 64, "
              + (f"MLA latent {cfg.d_latent}, " if mla else "") + f"SwiGLU {cfg.d_ff})")
    if isinstance(cfg, CARTConfig):
        core = ("one shared" if cfg.share_core else f"{cfg.n_loops} distinct") + (
            " cross-attention core over the anchor K/V" + (" (frozen: computed once)" if cfg.freeze_kv else " (recomputed every loop)")
            if cfg.core_attention == "cross" else " MLA self-attention core")
        rows = [["model", f"CART, `{cfg.fidelity}` fidelity"], ["width d", widths],
                ["prelude P / loops R / coda", f"{cfg.n_prelude} / {cfg.n_loops} / 1"], ["core", core],
                ["hyper-connections / LTI gate / loop-index embedding",
                 " / ".join("yes" if v else "no" for v in (cfg.hyper_connections, cfg.lti_gate, cfg.loop_embedding))]]
    else:
        kind = "dense baseline (full-rank MHA)" if cfg.attention == "mha" else "homogeneous control (CART's MLA layer at every depth)"
        rows = [["model", kind + (", one shared layer looped" if cfg.share_layers else "")], ["width d", widths],
                ["layers", cfg.n_layers]]
    non_default = _ablations(cfg)
    rows += [["non-default fields", ", ".join(non_default) if non_default else "none"],
             ["vocabulary / context", f"{cfg.vocab_size:,} / {cfg.max_seq_len:,} tokens"]]
    acc = account(cfg, seq_len)
    rows += [["stored parameters", f"{acc.stored:,} (tied embedding counted once)"],
             ["effective parameters", f"{acc.effective:,} (leverage {acc.leverage:.3f})"],
             ["forward FLOPs per token", f"{acc.fwd_flops_per_token / 1e6:,.2f} M at {seq_len} tokens of context (LM head included)"]]
    if isinstance(cfg, CARTConfig):
        s, e = parity(cfg, "stored"), parity(cfg, "effective")
        rows.append(["dense depth at parity", f"{s.n_layers} layers (stored, {s.dense_params:,}), "
                                              f"{e.n_layers} layers (effective, {e.dense_params:,})"])
    return _table(["", ""], rows)


_TOKENIZER_ORIGIN = {
    "bpe": "a byte-level BPE trained by `cart data prepare` on this recipe's training split",
    "llama2": "Llama 2's 32k SentencePiece tokenizer, rebuilt from llama.cpp's vocab-only GGUF (llama-cpp-python sdist); "
              "the vocabulary is Meta's, under the Llama 2 Community License",
    "gpt2": "GPT-2's 50,257-token BPE, from the `gpt2.tiktoken` rank file of the openai-whisper sdist (MIT licence)",
    "file": "a tokenizer file named by the recipe",
}


def _licence(name: str, src: dict) -> str:
    from cart.data.sources import SOURCES
    kind = src.get("kind")
    if kind == "registry":
        reg = SOURCES.get(src.get("source", name))
        return getattr(reg, "licence", "not recorded")
    if kind == "hub":
        return f"see the dataset card of https://huggingface.co/datasets/{src.get('dataset')}"
    if kind == "files":
        return "local files: their licence is not recorded by cart; check it before sharing this model"
    if kind == "synthetic":
        return "synthetic text generated by cart (no third-party text)"
    return "not recorded"


def _provenance(src: dict) -> str:
    kind = src.get("kind")
    if kind == "registry":
        return f"`{src.get('command')}`"
    if kind == "hub":
        return f"hub dataset `{src.get('dataset')}`" + (f" ({src.get('config')})" if src.get("config") else "")
    if kind == "files":
        return f"{len(src.get('files', []))} local file(s)"
    if kind == "synthetic":
        return f"synthetic style `{src.get('style')}`, {src.get('docs')} docs, seed {src.get('seed')}"
    return kind or "?"


def _data(manifest: dict | None, tok) -> list[str]:
    if manifest is None:
        return ["No data manifest was found for this run: the data and its licences are not recorded here. "
                f"Tokenizer: `{tok.name}`, vocabulary {tok.vocab_size:,}, sha256 `{tok.sha256}`.", ""]
    rec = manifest["recipe"]
    tk = manifest["tokenizer"]
    kind = (rec.get("spec", {}).get("tokenizer") or {}).get("kind", "file")
    lines = [f"Recipe `{rec['name']}`: {rec.get('description', '')} (recipe sha256 `{rec.get('sha256', '?')[:16]}…`, "
             f"split seed {rec.get('seed')}).", "",
             f"Tokenizer `{tk['name']}`: {_TOKENIZER_ORIGIN.get(kind, kind)}; vocabulary {tk['vocab_size']:,}, "
             f"BOS {tk['bos_id']}, EOS {tk['eos_id']}, sha256 `{tk['sha256'][:16]}…`. Every document is BOS … EOS.", ""]
    train = manifest.get("train", {})
    rows = [[name, _num(v.get("docs")), _num(v.get("bytes")), _num(v.get("tokens"))] for name, v in train.items()]
    lines += ["Training domains:", ""] + _table(["domain", "documents", "bytes", "tokens"], rows)
    rows = [[name, "out of domain" if v.get("out_of_domain") else "held out", _num(v.get("docs")), _num(v.get("tokens"))]
            for name, v in manifest.get("val", {}).items()]
    lines += ["Validation sets:", ""] + _table(["set", "kind", "documents", "tokens"], rows)
    rows = [[name, _provenance(src), _licence(name, src)] for name, src in manifest.get("sources", {}).items()]
    lines += ["### Sources and licences", ""] + _table(["source", "fetched by", "licence"], rows)
    lines += ["The licence of a trained model's weights with respect to its training text is not settled law; the "
              "restrictions above (e.g. research or non-commercial use) are those of the text, and whoever shares "
              "this model should respect them.", ""]
    return lines


def _training(tc: dict | None, summary: dict | None, step) -> list[str]:
    if not tc or not isinstance(tc.get("config"), dict):
        return [f"No train_config.json was found beside the checkpoint (step {step}).", ""]
    c = tc["config"]
    try:
        from cart.train.config import TrainConfig
        tokens_per_step = TrainConfig.from_dict(c).tokens_per_step
    except (ValueError, TypeError):
        tokens_per_step = c.get("batch_size", 0) * c.get("grad_accum", 1) * c.get("seq_len", 0)
    ls = c.get("loop_sampling") or {}
    rows = [["checkpoint step", f"{step} of {c.get('steps')}"],
            ["tokens", f"{tokens_per_step:,} per step ({c.get('batch_size')} × {c.get('seq_len')} × grad_accum "
                       f"{c.get('grad_accum', 1)}); {tokens_per_step * (step or 0):,} seen"],
            ["optimizer", f"{c.get('optimizer')}, betas {c.get('betas')}, eps {c.get('eps')}, weight decay {c.get('weight_decay')} "
                          f"(decay_everything={c.get('decay_everything')}), grad clip {c.get('grad_clip')}"],
            ["schedule", f"peak lr {c.get('lr')}, {c.get('warmup_steps')} warmup steps, cosine to {c.get('min_lr')}"],
            ["loop count in training", ls.get("kind", "fixed") + ("" if ls.get("kind", "fixed") == "fixed" else
                                                                  f" ({', '.join(f'{k}={v}' for k, v in ls.items() if k != 'kind')})")],
            ["precision / seed", f"{c.get('dtype')}" + (f" ({summary['dtype']})" if summary and summary.get("dtype")
                                                         and c.get("dtype") == "auto" else "") + f" / {c.get('seed')}"],
            ["code version", tc.get("code_version", "?")]]
    if summary:
        rows += [["hardware", f"{summary.get('device')} × {summary.get('world_size')}"],
                 ["training time", f"{_num(summary.get('train_time_s'), 1)} s, {_num(summary.get('tokens_per_s'), 0)} tokens/s, "
                                   f"MFU {_num(100 * summary['mfu'], 1) if isinstance(summary.get('mfu'), float) else '?'} %"]]
    return _table(["", ""], rows)


def _results(ev: dict | None, summary: dict | None, order: list[str]) -> list[str]:
    if ev is None:
        lines = ["No validation results are recorded for this checkpoint's step (run `cart eval ppl` on it).", ""]
    else:
        names = sorted(ev["sets"], key=lambda n: order.index(n) if n in order else len(order))  # the manifest's order
        rows = [[name, "out of domain" if v.get("out_of_domain") else "held out", _num(v.get("ppl"), 2), _num(v.get("bpb"), 3),
                 _num(v.get("tokens"))] for name, v in ((n, ev["sets"][n]) for n in names)]
        lines = [f"Validation perplexity and bits per byte ({ev['source']}):", ""] + _table(
            ["set", "kind", "ppl", "bits/byte", "tokens"], rows)
    if summary and "rho_gate" in summary:
        extra = [f"ρ_gate = max σ(a) = {summary['rho_gate']:.4f} (gate min/mean {summary.get('gate_min', 0):.3f}/"
                 f"{summary.get('gate_mean', 0):.3f})"]
        if summary.get("contraction"):
            extra.append("measured per-loop contraction " + ", ".join(f"{x:.3f}" for x in summary["contraction"]))
        if summary.get("loop_jacobian_norm") is not None:
            extra.append(f"loop-Jacobian norm {summary['loop_jacobian_norm']:.3f}")
        lines += ["; ".join(extra) + ".", ""]
    return lines


def _ngram(floors, ev: dict | None, step) -> list[str]:
    """The n-gram floors of `cart eval ngram` / the trainer (ngram_floors.json: per set unigram and
    Kneser-Ney bigram perplexity, counted on the tokens the run trained on), beside the model's own
    perplexity when both describe the same sets. Another layout is shown as recorded."""
    if floors is None:
        return [f"N-gram floors: {NOT_COMPUTED} (`cart eval ngram RUN` writes {NGRAM_FLOORS} into the run directory).", ""]
    sets = floors.get("sets") if isinstance(floors, dict) else None
    if not isinstance(sets, dict):
        return [f"N-gram floors, as recorded in the run's {NGRAM_FLOORS}:", "", "```", json.dumps(floors, indent=2), "```", ""]
    at = floors.get("step")
    lines = [f"N-gram floors ({NGRAM_FLOORS}): count-based models fitted to the {_num(floors.get('train_tokens'))} training "
             f"tokens of the run's first {_num(at)} steps ({floors.get('method', 'method not recorded')})."
             + (f" They describe step {at}; this checkpoint is step {step}." if at is not None and at != step else ""), ""]
    model = (ev or {}).get("sets", {})
    rows = []
    for name, f in sets.items():
        m = model.get(name, {}).get("ppl") if at == step else None
        ratio = f"{m / f['bigram_kn_ppl']:.3f}" if isinstance(m, (int, float)) and f.get("bigram_kn_ppl") else ""
        rows.append([name, "out of domain" if f.get("out_of_domain") else "held out", _num(m, 2) if m is not None else "",
                     _num(f.get("bigram_kn_ppl"), 2), _num(f.get("unigram_ppl"), 2), ratio])
    return lines + _table(["set", "kind", "model ppl", "bigram KN ppl", "unigram ppl", "model / bigram"], rows)


def _usage(cfg, tok) -> list[str]:
    shared = cfg.share_core if isinstance(cfg, CARTConfig) else cfg.share_layers
    trained = cfg.n_loops if isinstance(cfg, CARTConfig) else cfg.n_layers
    loops = (f"\nlogits = model(ids, n_loops={2 * trained}).logits   # any loop count at inference (trained: {trained})"
             if shared else "")
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            "tok = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)   # BOS is prepended, as in training",
            "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)",
            'ids = tok("The president said", return_tensors="pt").input_ids',
            "out = model.generate(ids, max_new_tokens=40, do_sample=True, top_p=0.95)" + loops,
            "print(tok.decode(out[0]))", "```", "",
            f"`trust_remote_code=True` runs `modeling_cart.py` from this directory (torch and transformers only; read it "
            f"first); the tokenizer runs no code, the flag only spares transformers' question about the config. The "
            f"cache keeps each MLA layer's d/4 latent and the anchor K/V once for all loops. Context: "
            f"{cfg.max_seq_len} tokens. Evaluate with EleutherAI's harness: `lm_eval --model hf --model_args "
            f"pretrained=PATH,trust_remote_code=True --tasks ...`" + (" (add `,n_loops=R` to change the loop count)." if shared else "."), ""]


def render(facts: dict, cfg, tok) -> str:
    tc = facts.get("train_config") or {}
    seq_len = (tc.get("config") or {}).get("seq_len") or cfg.max_seq_len
    if isinstance(cfg, CARTConfig):
        title = f"CART d={cfg.d_model}, P={cfg.n_prelude}, R={cfg.n_loops} ({cfg.fidelity} fidelity)"
    else:
        title = f"{'Dense baseline' if cfg.attention == 'mha' else 'Homogeneous control'} d={cfg.d_model}, {cfg.n_layers} layers"
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [cart, looped-transformer, recurrent-depth, custom_code]", "---", "", f"# {title}", "",
             "A model trained with cart, the reference implementation of CART (Context-Anchored Recurrent "
             "Transformer; Capps, arXiv 2606.01495, 2026): P prelude layers build an anchor whose keys and values are "
             "computed once; one shared core block cross-attends to them R times; one coda layer and a tied head "
             "finish the model. This card was generated by `cart export hf` from the run's own records.", "",
             "## Use", ""] + _usage(cfg, tok)
    lines += ["## Architecture and accounting", ""] + _architecture(cfg, seq_len)
    lines += ["## Data", ""] + _data(facts.get("manifest"), tok)
    lines += ["## Training", ""] + _training(facts.get("train_config"), facts.get("summary"), facts.get("step"))
    order = list((facts.get("manifest") or {}).get("val", {}))
    lines += ["## Results", ""] + _results(facts.get("eval"), facts.get("summary"), order)
    lines += _ngram(facts.get("ngram_floors"), facts.get("eval"), facts.get("step"))
    ckpt = Path(facts["checkpoint"])
    where = f"checkpoint `{ckpt.name}` of run `{ckpt.parent.parent.name}`" if ckpt.parent.name == "checkpoints" else f"`{ckpt.name}`"
    lines += ["## Provenance", "",
              f"Exported from {where} (step {facts.get('step')}, trained with cart {facts.get('code_version') or '?'}; "
              f"exported with cart {facts.get('code_version_now')}). `cart_run/` holds cart's own records of the run "
              "(model.json, train_config.json, the data manifest, the original tokenizer file); "
              "`cart import hf PATH RUN_DIR` turns this directory back into a cart checkpoint with bit-equal weights.", ""]
    return "\n".join(lines)


__all__ = ["NGRAM_FLOORS", "NOT_COMPUTED", "find_run_file", "gather", "render"]
