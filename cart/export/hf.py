"""`cart export hf` and `cart import hf`: a checkpoint as a Hugging Face model directory, and back.

An exported directory (`export_hf`) holds

    config.json              CartConfig fields (cart's model config, field for field) + auto_map
    model.safetensors        the weights, `model.<cart parameter name>`, fp32, bit-equal to cart's
    modeling_cart.py         self-contained modelling code (torch + transformers only)
    tokenizer.json           the run's tokenizer (trained BPE, Llama-2 or GPT-2) for AutoTokenizer,
    tokenizer_config.json    BOS prepended as cart does; ids checked equal to cart's
    generation_config.json   BOS, EOS and pad (= EOS) ids
    README.md                the model card, generated from the run (cart/export/card.py)
    cart_run/                provenance: cart's model.json, train_config.json, summary.json, the data
                             manifest, ngram_floors.json when present, the original tokenizer file,
                             export.json (what was checked, with the numbers)

Writing is all-or-nothing: everything goes to a temporary folder beside OUT_DIR, is checked (the
tokenizer on hard strings and sample documents; with transformers installed, the directory is loaded
with AutoModelForCausalLM/AutoTokenizer and its logits compared with cart's), and only then renamed
into place. `import_hf` reads such a directory (or one re-saved by transformers) back into a cart
run directory with bit-equal weights and, when the export carried it, the original tokenizer.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cart.checkpoint import MODEL_JSON, WEIGHTS, atomic_write_json, model_state, save_model
from cart.config import CARTConfig, DenseConfig, config_fields, config_from_dict, config_to_dict
from cart.data.fetch import sha256_file
from cart.eval.loading import load_for_eval, load_manifest, read_train_config
from cart.export import card
from cart.export.hf_tokenizer import HARD_TEXTS, check_ids, to_hf, tokenizer_files
from cart.model import build_model

MODELING_FILE = Path(__file__).with_name("modeling_cart.py")
PREFIX = "model."  # transformers' base_model_prefix: the backbone's weights live under it
RUN_FILES = "cart_run"
# kind -> (model_type, config class, model class): one config class per model class (transformers maps them 1:1)
ARCHITECTURES = {"cart": ("cart", "CartConfig", "CartForCausalLM"), "dense": ("cart_dense", "CartDenseConfig", "CartDenseForCausalLM")}
SAMPLE_DOCS = 64  # validation documents re-encoded when checking the exported tokenizer


@dataclass
class ExportReport:
    out_dir: Path
    checkpoint: Path
    step: int | None
    tokenizer_texts: int  # texts encoded identically by cart and the exported tokenizer
    verified: dict | None  # transformers' load-and-compare numbers (None: transformers not installed or skipped)


# ===================================================================================== export
def hf_config(cfg, tok, step: int | None) -> dict:
    """config.json: the cart config's fields for its kind, the special tokens, auto_map."""
    fields = config_to_dict(cfg)
    model_type, config_class, arch = ARCHITECTURES[fields["kind"]]
    return {"architectures": [arch], "model_type": model_type,
            "auto_map": {"AutoConfig": f"modeling_cart.{config_class}", "AutoModelForCausalLM": f"modeling_cart.{arch}"},
            **fields, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id,
            "tie_word_embeddings": True, "use_cache": True, "dtype": "float32",
            "cart_step": step}


def generation_config(cfg, tok) -> dict:
    # greedy by default (transformers' default); pad = EOS: the model has no padding token, and a
    # left-padded batch is told apart by its attention mask, not by the pad id
    # (no max_length: the context is config.max_position_embeddings; pass max_new_tokens)
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id}


def _sample_texts(tok, data_dir: Path | None) -> list[str]:
    """Documents of the run's validation sets, decoded, for the tokenizer check (none without data)."""
    if data_dir is None:
        return []
    try:
        manifest = load_manifest(data_dir)
    except (FileNotFoundError, ValueError):
        return []
    texts: list[str] = []
    per_set = max(1, SAMPLE_DOCS // max(1, len(manifest.val_sets)))
    for name in manifest.val_sets:
        try:
            ids = np.asarray(manifest.val_file(name, check_ids=False).tokens)
        except (FileNotFoundError, ValueError):
            continue
        starts = np.flatnonzero(ids == tok.bos_id)
        ends = np.flatnonzero(ids == tok.eos_id)
        for s in starts[:per_set]:
            e = ends[ends > s]
            texts.append(tok.decode(ids[s + 1:e[0] if len(e) else len(ids)].tolist()))
    return texts


def _provenance(out: Path, setup, tok, manifest) -> None:
    """cart_run/: what cart knows about the run, so that an import restores it."""
    d = out / RUN_FILES
    d.mkdir()
    shutil.copyfile(setup.checkpoint / MODEL_JSON, d / MODEL_JSON)
    found = read_train_config(setup.checkpoint)
    if found is not None:
        atomic_write_json(d / "train_config.json", found[0])
    for name in ("summary.json", card.NGRAM_FLOORS):
        src = card.find_run_file(setup.checkpoint, name)
        if src is not None:
            shutil.copyfile(src, d / name)
    if manifest is not None and manifest.tokenizer_sha256 == getattr(tok, "sha256", None):
        shutil.copyfile(manifest.root / "manifest.json", d / "manifest.json")
    shutil.copyfile(tok.path, d / Path(tok.path).name)


def export_hf(source: str | Path, out_dir: str | Path, *, tokenizer: str | Path | None = None, data: str | Path | None = None,
              force: bool = False, verify: bool = True, log=print) -> ExportReport:
    """Write the Hugging Face directory for a run dir, checkpoint dir or model.safetensors file."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ValueError(f"{out} exists and is not empty: choose another OUT_DIR or pass --force to replace it")
    setup = load_for_eval(source, device="cpu", tokenizer=tokenizer, data=data)
    model, tok = setup.model, setup.tokenizer
    cfg = model.config
    step = setup.meta.get("step")
    manifest = load_manifest(setup.data_dir) if setup.data_dir is not None else None

    hf_tok = to_hf(tok)
    texts = HARD_TEXTS + _sample_texts(tok, setup.data_dir)
    n_texts = check_ids(tok, hf_tok, texts)
    log(f"tokenizer {tok.name}: {n_texts} texts give cart's ids ({len(texts) - len(HARD_TEXTS)} validation documents)")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        state = {PREFIX + k: v for k, v in model_state(model).items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, tok, step), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(cfg, tok), indent=2) + "\n")
        shutil.copyfile(MODELING_FILE, tmp / MODELING_FILE.name)
        for name, text in tokenizer_files(tok, cfg.max_seq_len).items():
            (tmp / name).write_text(text)
        _provenance(tmp, setup, tok, manifest)
        verified = None
        if verify:
            verified = verify_export(tmp, model, tok, texts)
            if verified is None:
                log("transformers is not installed: the directory was not loaded back (pip install transformers to check it)")
            else:
                log(f"transformers {verified['transformers']} loads it: logits max |Δ| {verified['max_abs_logit_diff']:.3g} "
                    f"over {verified['tokens']} tokens, greedy tokens equal ({verified['greedy_tokens']}), tokenizer ids "
                    f"equal on {verified['tokenizer_texts']} texts")
        facts = card.gather(setup, manifest)
        (tmp / "README.md").write_text(card.render(facts, cfg, tok))
        atomic_write_json(tmp / RUN_FILES / "export.json", {
            "checkpoint": str(setup.checkpoint), "step": step, "code_version": facts.get("code_version_now"),
            "weights_sha256": sha256_file(tmp / WEIGHTS), "tokenizer": tok.info(),
            "tokenizer_texts_checked": n_texts, "verified": verified})
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {setup.checkpoint} -> {out}")
    return ExportReport(out, setup.checkpoint, step, n_texts, verified)


def _replace(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an existing OUT_DIR (--force) is removed only after.
    Temporary files are private (0600/0700); the result gets the usual modes under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tmp, *tmp.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def verify_export(path: Path, model: torch.nn.Module, tok, texts: list[str]) -> dict | None:
    """Load `path` with transformers (trust_remote_code) and compare with cart: logits on a few
    sample texts, 8 greedy tokens, tokenizer ids. None when transformers is not installed."""
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        return None
    from cart.eval.generate import generate
    from cart.eval.options import GREEDY

    hf = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    for text in texts:
        want = [tok.bos_id] + list(tok.encode(text))
        got = hf_tok(text, verbose=False)["input_ids"]
        if got != want:
            raise ValueError(f"the exported tokenizer, loaded by transformers, disagrees with {tok.name!r} on {text[:60]!r}")
    T = model.config.max_seq_len
    worst, n_tokens = 0.0, 0
    with torch.inference_mode():
        for text in texts[:4] + texts[len(HARD_TEXTS):][:4]:  # short hard strings and whole validation documents
            ids = torch.tensor([([tok.bos_id] + list(tok.encode(text)))[:T]])
            diff = (hf(ids).logits - model(ids)).abs().max().item()
            worst, n_tokens = max(worst, diff), n_tokens + ids.shape[1]
        prompt = ([tok.bos_id] + list(tok.encode(texts[0])))[: max(1, T - 8)]
        steps = min(8, T - len(prompt))
        ours = generate(model, prompt, steps, GREEDY).tokens[0]
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, eos_token_id=None,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))[0, len(prompt):].tolist()
    if theirs != ours:
        raise ValueError(f"greedy decoding of the exported model differs from cart's: {theirs} vs {ours}")
    if worst > 1e-3:
        raise ValueError(f"the exported model's logits differ from cart's by up to {worst:.3g}")
    return {"transformers": transformers.__version__, "max_abs_logit_diff": worst, "tokens": n_tokens,
            "greedy_tokens": len(ours), "tokenizer_texts": len(texts)}


# ===================================================================================== import
def _read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    single, index = src / WEIGHTS, src / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():  # a directory re-saved by transformers in shards
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(src / shard)))
        return state
    raise FileNotFoundError(f"{src}: no {WEIGHTS} (or model.safetensors.index.json)")


def cart_config_from_hf(hf: dict, source: str):
    """The cart model config inside an exported config.json (refused unless model_type is "cart")."""
    types = {t: kind for kind, (t, _, _) in ARCHITECTURES.items()}
    if hf.get("model_type") not in types:
        raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not a cart export (expected one of {sorted(types)})")
    kind = hf.get("kind", types[hf["model_type"]])
    cls = {"cart": CARTConfig, "dense": DenseConfig}.get(kind)
    if cls is None:
        raise ValueError(f"{source}: unknown kind {kind!r}")
    return config_from_dict({"kind": kind, **{f.name: hf[f.name] for f in config_fields(cls) if f.name in hf}}, source=source)


def import_hf(src_dir: str | Path, run_dir: str | Path, *, force: bool = False, log=print) -> Path:
    """Write `run_dir/checkpoints/step_N/` (N: the exported step, else 0) from an exported directory,
    and its tokenizer where cart's evaluation finds it. Returns the checkpoint dir."""
    src, run = Path(src_dir), Path(run_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{src}: no config.json (expected a directory written by `cart export hf`)")
    try:
        hf = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    cfg = cart_config_from_hf(hf, str(cfg_path))
    if run.exists() and any(run.iterdir()) and not force:
        raise ValueError(f"{run} exists and is not empty: choose another RUN_DIR or pass --force")
    state = _read_hf_weights(src)
    foreign = sorted(k for k in state if not k.startswith(PREFIX))
    if foreign:
        raise ValueError(f"{src}: weights {foreign[:3]} are not under {PREFIX!r} (not a cart export)")
    state = {k[len(PREFIX):]: v for k, v in state.items()}
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{src}: weights do not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]})")
    odd = sorted({str(v.dtype) for v in state.values()} - {"torch.float32"})
    if odd:
        log(f"note: {src} holds {', '.join(odd)} weights; cart keeps fp32 (converted exactly)")

    prov = src / RUN_FILES
    step = hf.get("cart_step") if isinstance(hf.get("cart_step"), int) else 0
    meta = {}
    if (prov / MODEL_JSON).is_file():
        meta = json.loads((prov / MODEL_JSON).read_text()).get("meta", {})
    meta.update(step=step, imported_from=str(src.resolve()))
    run.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=run.parent, prefix=f".{run.name}.import-"))
    try:
        data = _restore_data(prov, staged, run.resolve(), log)
        if data is not None:  # the checkpoint's own record of its data now names the restored folder
            meta["data"] = {**(meta.get("data") if isinstance(meta.get("data"), dict) else {}), "root": str(data)}
            note = "its tokenizer is found from the run dir"
        elif (src / "tokenizer.json").is_file():  # no provenance: keep the exported tokenizer for --tokenizer
            (staged / "tokenizer").mkdir()
            for name in ("tokenizer.json", "tokenizer_config.json"):
                if (src / name).is_file():
                    shutil.copyfile(src / name, staged / "tokenizer" / name)
            note = f"pass --tokenizer {run / 'tokenizer'} to evaluate or generate"
        else:
            note = f"{src} holds no tokenizer: pass --tokenizer to evaluate or generate"
        ckpt = save_model(staged / "checkpoints" / f"step_{step:08d}", model, meta)
        _replace(staged, run)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    ckpt = run / ckpt.relative_to(staged)
    log(f"imported {src} -> {ckpt} ({note})")
    return ckpt


def _restore_data(prov: Path, staged: Path, final: Path, log) -> Path | None:
    """From cart_run/: the data manifest and the original tokenizer into data/, and a
    train_config.json whose "data" names that folder (at its final path), so `cart generate RUN_DIR`
    finds the tokenizer. None when the export carried no manifest."""
    manifest_path = prov / "manifest.json"
    if not manifest_path.is_file():
        return None
    m = json.loads(manifest_path.read_text())
    tok_file = prov / m["tokenizer"]["file"]
    if not tok_file.is_file():
        raise FileNotFoundError(f"{prov}: the manifest names tokenizer {m['tokenizer']['file']!r}, which is missing")
    if sha256_file(tok_file) != m["tokenizer"]["sha256"]:
        raise ValueError(f"{tok_file}: sha256 differs from the manifest's: the export was altered")
    (staged / "data").mkdir()
    shutil.copyfile(manifest_path, staged / "data" / "manifest.json")
    shutil.copyfile(tok_file, staged / "data" / tok_file.name)
    data = final / "data"
    train_cfg = json.loads((prov / "train_config.json").read_text()) if (prov / "train_config.json").is_file() else {}
    original = train_cfg.get("data")
    train_cfg["data"] = {**(original if isinstance(original, dict) else {}), "root": str(data),
                         "imported_from": original.get("root") if isinstance(original, dict) else original}
    if isinstance(train_cfg.get("config"), dict):
        train_cfg["config"]["data"] = str(data)
    atomic_write_json(staged / "train_config.json", train_cfg)
    for name in ("summary.json", card.NGRAM_FLOORS):
        if (prov / name).is_file():
            shutil.copyfile(prov / name, staged / name)
    log(f"restored the data manifest and tokenizer ({m['tokenizer']['name']}) into {data} (token files not included)")
    return data


__all__ = ["ExportReport", "cart_config_from_hf", "export_hf", "import_hf", "verify_export"]
