"""Manifest, TokenFile, the vocabulary check, and TrainLoader (interleave, resume, sharding)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cart.data import Manifest, TokenFile, TrainLoader, validate_against_model
from cart.data.fetch import sha256_file
from cart.data.manifest import MANIFEST_FORMAT

VOCAB = 5000


def fake_prepared(root: Path, sizes: dict[str, int], cycle: dict[str, int], vocab: int = VOCAB) -> Path:
    """A prepared folder whose domain i holds tokens 1000*(i+1) + 0, 1, 2, ...: every token tells
    its domain and its position, so the loader's choices can be read back from a batch."""
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    (root / "tokenizer.json").write_text("{}")
    train, val = {}, {}
    for i, (name, n) in enumerate(sizes.items()):
        arr = (1000 * (i + 1) + np.arange(n) % 1000).astype(np.uint16)
        arr.tofile(root / "train" / f"{name}.bin")
        train[name] = {"path": f"train/{name}.bin", "docs": 1, "bytes": n * 4, "tokens": n, "sha256": sha256_file(root / "train" / f"{name}.bin")}
        arr[:100].tofile(root / "val" / f"{name}.bin")
        val[name] = {"path": f"val/{name}.bin", "docs": 1, "bytes": 400, "tokens": 100, "out_of_domain": False,
                     "sha256": sha256_file(root / "val" / f"{name}.bin")}
    manifest = {"format": MANIFEST_FORMAT, "recipe": {"name": "fake", "sha256": "x"}, "dtype": "uint16",
                "tokenizer": {"name": "fake", "kind": "hf", "file": "tokenizer.json", "sha256": sha256_file(root / "tokenizer.json"),
                              "vocab_size": vocab, "bos_id": 0, "eos_id": 1},
                "interleave": {"cycle": cycle}, "train": train, "val": val}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def fake(tmp_path) -> Path:
    return fake_prepared(tmp_path / "fake", {"a": 900, "b": 700, "c": 500}, {"a": 3, "b": 3, "c": 4})


def row_domain(row: torch.Tensor) -> str:
    return "abc"[int(row[0]) // 1000 - 1]


def test_manifest_fields(fake):
    m = Manifest.load(fake / "manifest.json")
    assert m.root == fake and m.vocab_size == VOCAB and m.dtype == np.uint16
    assert m.train_domains == ["a", "b", "c"] and m.tokenizer_path == fake / "tokenizer.json"
    v = m.val_sets["b"]
    assert (v.path, v.tokens, v.bytes, v.out_of_domain) == (fake / "val" / "b.bin", 100, 400, False)
    assert len(m.train_file("a")) == 900


def test_validate_against_model(fake):
    validate_against_model(fake, VOCAB)
    with pytest.raises(ValueError) as e:
        validate_against_model(Manifest.load(fake), 32000)
    assert "5,000" in str(e.value) and "32,000" in str(e.value) and "'fake'" in str(e.value)
    validate_against_model(fake, 5056, allow_padded=True)
    with pytest.raises(ValueError):
        validate_against_model(fake, 4096, allow_padded=True)


def test_token_file_errors(tmp_path, fake):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="not a multiple of 2"):
        TokenFile(odd, vocab_size=VOCAB)
    big = tmp_path / "big.bin"
    np.array([1, 2, 4999, 5000, 3], dtype=np.uint16).tofile(big)
    with pytest.raises(ValueError, match=r"token id 5000 at position 3 is >= vocab_size 5000"):
        TokenFile(big, vocab_size=VOCAB)
    assert len(TokenFile(big, vocab_size=8000)) == 5
    with pytest.raises(ValueError, match="cannot tell the token dtype"):
        TokenFile(big)
    assert TokenFile(fake / "train" / "a.bin").dtype == np.uint16  # dtype from the manifest beside it
    with pytest.raises(FileNotFoundError):
        TokenFile(tmp_path / "missing.bin", vocab_size=VOCAB)


def test_corrupt_prepared_files_rejected(fake):
    m = Manifest.load(fake)
    m.verify()
    path = fake / "train" / "b.bin"
    data = bytearray(path.read_bytes())
    data[10:12] = (65535).to_bytes(2, "little")      # an id beyond the vocabulary
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"sha256 .* differs"):
        m.verify()
    with pytest.raises(ValueError, match="65535 at position 5 is >= vocab_size"):
        m.train_file("b")
    with pytest.raises(ValueError, match="65535"):
        TrainLoader(fake, 2, 8)
    path.write_bytes(bytes(data[:-2]))               # truncated
    with pytest.raises(ValueError, match="holds 699 tokens but the manifest records 700"):
        m.train_file("b")
    (fake / "tokenizer.json").write_text('{"changed": 1}')
    with pytest.raises(ValueError, match="not the one this data was tokenized with|tokenizer"):
        m.load_tokenizer()


def test_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="cart data prepare"):
        Manifest.load(tmp_path)


def test_batches_shape_and_windows(fake):
    dl = TrainLoader(fake, batch_size=4, seq_len=8)
    x = next(dl)
    assert x.shape == (4, 9) and x.dtype == torch.int64
    # a row is T+1 consecutive tokens of one domain; consecutive rows of a domain overlap by one token
    assert torch.all(x[:, 1:] - x[:, :-1] == 1)
    assert x[0, 0] == 1000 and x[1, 0] == 1008 and x[2, 0] == 1016 and x[3, 0] == 2000


def test_interleave_order(fake):
    dl = TrainLoader(fake, batch_size=5, seq_len=8)
    rows = torch.cat([next(dl) for _ in range(4)])
    assert "".join(row_domain(r) for r in rows) == "aaabbbcccc" * 2
    dl = TrainLoader(fake, batch_size=5, seq_len=8, cycle={"c": 1, "a": 2})
    rows = torch.cat([next(dl) for _ in range(3)])
    assert "".join(row_domain(r) for r in rows) == "caa" * 5
    with pytest.raises(ValueError, match="not in"):
        TrainLoader(fake, 2, 8, cycle={"z": 1})


def test_no_seed_fixed_order(fake):
    a, b = TrainLoader(fake, 3, 8), TrainLoader(fake, 3, 8)
    for _ in range(5):
        assert torch.equal(next(a), next(b))


def test_resume_is_bit_identical(fake):
    dl = TrainLoader(fake, batch_size=3, seq_len=16)
    for _ in range(7):
        next(dl)
    state = json.loads(json.dumps(dl.state_dict()))    # survives a checkpoint's JSON
    expected = [next(dl) for _ in range(40)]
    resumed = TrainLoader(fake, batch_size=3, seq_len=16)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed), e) for e in expected)
    with pytest.raises(ValueError, match="seq_len"):
        TrainLoader(fake, batch_size=3, seq_len=32).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch"):
        TrainLoader(fake, batch_size=6, seq_len=16).load_state_dict(state)
    # same global batch over two ranks resumes too
    r1 = TrainLoader(fake, batch_size=1, seq_len=16, rank=1, world_size=3)
    r1.load_state_dict(state)
    assert all(torch.equal(next(r1), e[1:2]) for e in expected)


def test_wrap_counts_epochs(fake):
    dl = TrainLoader(fake, batch_size=10, seq_len=50)
    # c: 500 tokens -> 9 rows of 51 per epoch, 4 of every 10 rows
    assert dl.epochs_completed == {"a": 0, "b": 0, "c": 0}
    seen_c = []
    for _ in range(3):
        for r in next(dl):
            if row_domain(r) == "c":
                seen_c.append(int(r[0]))
    assert dl.epochs_completed == {"a": 0, "b": 0, "c": 1} and dl.state_dict()["epochs_completed"]["c"] == 1
    assert seen_c[:10] == [3000 + 50 * k for k in range(9)] + [3000]   # wrapped to the start


def test_sharding_contract(fake):
    """Rank r of W with batch B gets rows r*B..(r+1)*B-1 of the global batch B*W of one process."""
    B, W, T = 2, 3, 8
    single = TrainLoader(fake, batch_size=B * W, seq_len=T)
    ranks = [TrainLoader(fake, batch_size=B, seq_len=T, rank=r, world_size=W) for r in range(W)]
    for _ in range(12):
        g = next(single)
        for r, dl in enumerate(ranks):
            assert torch.equal(next(dl), g[r * B:(r + 1) * B])


class _CountingReads:
    """A token array that records the length of every slice read from it."""

    def __init__(self, tokens, reads: list[int]):
        self.tokens, self.reads = tokens, reads

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, key):
        out = self.tokens[key]
        self.reads.append(len(out) if isinstance(key, slice) else 1)
        return out


def test_loader_is_cheap(tmp_path):
    """Per step, B slices of T+1 tokens from the memory-mapped files and nothing else, however large the data
    (counted, not timed: the work cannot grow with the dataset or the step)."""
    root = fake_prepared(tmp_path / "big", {"a": 2_000_000, "b": 1_000_000, "c": 1_000_000}, {"a": 1, "b": 1, "c": 1})
    dl = TrainLoader(root, batch_size=32, seq_len=512)
    reads: list[int] = []
    dl._files = [_CountingReads(f, reads) for f in dl._files]
    for step in range(50):
        reads.clear()
        batch = next(dl)
        assert reads == [513] * 32 and batch.shape == (32, 513), step
    dl.step = 10**9  # far into the run: the position is arithmetic, not a replay
    reads.clear()
    next(dl)
    assert reads == [513] * 32


def test_document_ids_option(tmp_path):
    """document_ids=True: each batch comes with the running count of BOS tokens per row (off by default)."""
    root = fake_prepared(tmp_path / "f", {"a": 900}, {"a": 1})
    docs = np.tile(np.array([0, 7, 8, 9, 1], dtype=np.uint16), 180)  # 5-token documents: BOS x x x EOS
    docs.tofile(root / "train" / "a.bin")
    m = json.loads((root / "manifest.json").read_text())
    m["train"]["a"]["sha256"] = sha256_file(root / "train" / "a.bin")
    (root / "manifest.json").write_text(json.dumps(m))
    plain = TrainLoader(root, batch_size=2, seq_len=8)
    masked = TrainLoader(root, batch_size=2, seq_len=8, document_ids=True)
    x = next(plain)
    tokens, ids = next(masked)
    assert isinstance(x, torch.Tensor) and torch.equal(tokens, x) and ids.shape == x.shape
    # row 0 = tokens 0..8: BOS x x x EOS BOS x x x; row 1 starts at token 8, inside a document (id 0)
    assert ids[0].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert ids[1].tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert torch.equal(masked.batch_at(3)[0], plain.batch_at(3))


def test_a_token_file_changed_in_place_is_refused_by_the_loader(fake):
    """Same size, ids in range, different content: only the hash sees it, once, when the loader starts."""
    path = fake / "train" / "b.bin"
    arr = np.fromfile(path, dtype=np.uint16)
    arr[[3, 4]] = arr[[4, 3]]  # swap two tokens
    arr.tofile(path)
    with pytest.raises(ValueError, match=r"b\.bin: sha256 .* differs from the manifest"):
        TrainLoader(fake, 2, 8)
    assert len(TrainLoader(fake, 2, 8, verify=False).batch_at(0)) == 2  # the check is the hash, nothing else


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("tokenizer"), "missing field 'tokenizer'"),
    (lambda d: d["tokenizer"].pop("vocab_size"), "missing field 'tokenizer.vocab_size'"),
    (lambda d: d["train"]["a"].__setitem__("tokens", "many"), "field 'train.a.tokens': expected int"),
    (lambda d: d["val"]["a"].pop("out_of_domain"), "missing field 'val.a.out_of_domain'"),
    (lambda d: d["train"]["a"].__setitem__("path", "../../etc/passwd"), "'train.a.path': '../../etc/passwd' is outside"),
    (lambda d: d["tokenizer"].__setitem__("file", "/etc/hostname"), "'tokenizer.file': '/etc/hostname' is outside"),
    (lambda d: d.__setitem__("dtype", "float77"), "field 'dtype'"),
])
def test_a_manifest_with_missing_or_bad_fields_is_one_line_naming_the_field(fake, edit, field):
    data = json.loads((fake / "manifest.json").read_text())
    edit(data)
    (fake / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        Manifest.load(fake)
    assert field in str(e.value) and "manifest.json" in str(e.value) and "\n" not in str(e.value)
