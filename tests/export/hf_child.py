"""Run in a separate interpreter that cannot import cart (only torch and transformers): load an
exported directory, compare it with what cart computed, print one JSON line.

    python -S hf_child.py EXPECTED.safetensors EXPORT_DIR [EXPECTED2 DIR2 ...]   (PYTHONPATH: site-packages)

EXPECTED holds, computed by cart: `input_ids` [B, T] and their `logits` [B, T, V], `greedy` (the
greedy continuation of input_ids[0]) and, for the tokenizer, `text_ids` (the ids of TEXTS, each with
BOS, padded with -1). One JSON line per pair. This file imports nothing from cart or the tests, by design.
"""
import json
import sys

TEXTS = ["Once upon a time, there was a little house.", "  two  spaces\nand a newline", "numbers 12345 and café"]


def main(expected_path: str, export_dir: str) -> dict:
    try:
        import cart  # noqa: F401
        cart_importable = True
    except ImportError:
        cart_importable = False
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    want = load_file(expected_path)
    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
    ids = want["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
        prompt = ids[:1]
        n_new = want["greedy"].shape[0]
        greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new, do_sample=False,
                                eos_token_id=None)[0, prompt.shape[1]:]
        torch.manual_seed(0)
        sampled = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=True, top_p=0.9)
        beams = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, num_beams=3, do_sample=False)
    text_ids = [[t for t in row if t >= 0] for row in want["text_ids"].tolist()]
    return {
        "cart_importable": cart_importable,
        "cart_modules": sorted(m for m in sys.modules if m == "cart" or m.startswith("cart.")),
        "transformers": transformers.__version__,
        "model_class": type(model).__name__,
        "max_abs_logit_diff": (logits - want["logits"]).abs().max().item(),
        "greedy_equal": greedy.tolist() == want["greedy"].tolist(),
        "sampled_len": sampled.shape[1] - prompt.shape[1],
        "beam_len": beams.shape[1] - prompt.shape[1],
        "tokenizer_equal": [tok(t)["input_ids"] for t in TEXTS] == text_ids,
        "bos_eos": [tok.bos_token_id, tok.eos_token_id],
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    for expected, export in zip(args[0::2], args[1::2]):
        print(json.dumps(main(expected, export)))
