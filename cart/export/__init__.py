"""Export to, and import from, other ecosystems.

- `hf.py`: `cart export hf` / `cart import hf`: a checkpoint as a Hugging Face directory that
  `transformers` loads with trust_remote_code (and back, with bit-equal weights);
- `modeling_cart.py`: the self-contained modelling code copied into every export (torch and
  transformers only; it never imports cart);
- `hf_tokenizer.py`: cart's tokenizers (trained BPE, Llama-2, GPT-2) as tokenizer.json, checked
  to give cart's ids;
- `card.py`: the model card, generated from the run's records.
Importing this package does not import transformers; only loading an export back does.
"""
from cart.export.hf import ExportReport, export_hf, import_hf

__all__ = ["ExportReport", "export_hf", "import_hf"]
