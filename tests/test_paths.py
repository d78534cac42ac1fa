"""`cart.paths`: a user-chosen name never places a file outside its root; outputs land whole or not at all."""
import os

import pytest

from cart.paths import atomic_output, check_name, contained


@pytest.mark.parametrize("bad", ["../../../X", "..", ".", "", "a/b", "/abs", ".hidden", "-flag", "a\\b", "x\0y", "a..b",
                                 "n" * 201, None, 3])
def test_bad_names_are_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="stage name") as e:
        check_name(bad, "stage name")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("good", ["stage1", "vary_r", "cart-d64-P2-R4-s42", "v1.2", "A"])
def test_plain_names_pass(good):
    assert check_name(good) == good


def test_contained_stays_inside_even_through_symlinks(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert contained(root, "a", "b") == root.resolve() / "a" / "b"
    with pytest.raises(ValueError, match="not a plain name"):
        contained(root, "..", "x")
    os.symlink(tmp_path, root / "escape")  # a name that is a link pointing out of the root
    with pytest.raises(ValueError, match="outside"):
        contained(root, "escape", "x")


def test_atomic_output_creates_folders_and_never_leaves_half_a_file(tmp_path):
    out = tmp_path / "new" / "deeper" / "r.json"
    with atomic_output(out) as tmp:
        tmp.write_text("first")
    assert out.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full half-way")
    assert out.read_text() == "first" and sorted(p.name for p in out.parent.iterdir()) == ["r.json"]
    with pytest.raises(IsADirectoryError):
        with atomic_output(tmp_path / "new"):
            pass
