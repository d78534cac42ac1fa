"""cart.eval.lm_eval_adapter imports, and fails clearly, where lm-eval is not installed."""
import importlib.util
import sys

import pytest

import cart.eval.lm_eval_adapter as adapter


def test_imports_without_lm_eval(monkeypatch):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import lm_eval...` now raises ImportError
    spec = importlib.util.spec_from_file_location("_cart_lm_eval_adapter_alone", adapter.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod._HAVE_LM_EVAL is False and mod.register() is False
    with pytest.raises(ImportError, match="pip install"):
        mod.CARTLM(checkpoint="x")
