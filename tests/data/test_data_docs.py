"""docs/recipes.md stays true: its complete TOML examples are valid recipes."""
import re
from pathlib import Path

from cart.data import load_recipe

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def test_recipe_examples_parse(tmp_path):
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S) if "[tokenizer]" in b]
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        (tmp_path / f"r{i}.toml").write_text(block)
        recipe = load_recipe(tmp_path / f"r{i}.toml")
        assert recipe.train
