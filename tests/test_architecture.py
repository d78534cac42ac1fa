"""The package's layering, checked from the source: each package of `cart` imports only the layers below
it (ARCHITECTURE.md draws the same table). Model code stays single-device and free of I/O; training never
imports the benchmarks or the CLI; nothing inside `cart` imports the developer tools or the tests."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cart"
FOUNDATION = {"validation", "paths", "provenance", "runtime", "device"}

# package (or top-level module) -> the cart packages/modules it may import
ALLOWED: dict[str, set[str]] = {
    "validation": set(), "paths": set(), "provenance": set(), "runtime": set(), "device": set(),
    "config": {"validation"},
    "accounting": {"config"},
    "model": {"config", "accounting"},
    "checkpoint": {"config", "model"} | FOUNDATION,
    "data": FOUNDATION,
    "eval": {"config", "accounting", "model", "checkpoint", "data"} | FOUNDATION,
    "train": {"cart", "config", "accounting", "model", "checkpoint", "data", "eval"} | FOUNDATION,
    "export": {"config", "accounting", "model", "checkpoint", "data", "eval", "train"} | FOUNDATION,
    "experiments": {"cart", "config", "accounting", "model", "checkpoint", "data", "eval", "train"} | FOUNDATION,
    "bench": {"cart", "config", "accounting", "model", "checkpoint", "data", "eval", "train"} | FOUNDATION,
    "cli": {"config", "accounting", "model", "checkpoint", "data", "eval", "train", "export", "experiments",
            "bench"} | FOUNDATION,
    "__init__": {"config", "accounting", "model", "runtime"},
}
# `python -m cart.train` is a CLI shim, not part of the training layer
ENTRY_POINTS = {"cart/train/__main__.py": {"cli"}}


def _imports(path: Path) -> set[str]:
    """The cart packages a source file imports (absolute imports; the package uses no relative ones)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (line {node.lineno}); the layering test reads absolute ones")
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "cart":
                out.add(parts[1] if len(parts) > 1 else "cart")
            elif parts[0] in ("tools", "tests"):
                out.add(parts[0])
    return out


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


SOURCES = sorted(ROOT.rglob("*.py"))


def test_every_package_has_a_row():
    assert {_layer(p) for p in SOURCES} <= set(ALLOWED), sorted({_layer(p) for p in SOURCES} - set(ALLOWED))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_go_down_the_layers(path):
    layer = _layer(path)
    allowed = ALLOWED[layer] | {layer} | ENTRY_POINTS.get(str(path.relative_to(ROOT.parent)), set())
    bad = _imports(path) - allowed
    assert not bad, f"{path.relative_to(ROOT.parent)} ({layer}) imports {sorted(bad)}: not below it in the layering"


def test_the_check_can_fail(tmp_path):
    src = tmp_path / "cart" / "train" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("import torch\nfrom cart.bench import suites\nfrom cart.model import CART\nimport tools.ab\n")
    assert _imports(src) == {"bench", "model", "tools"}
