"""A local directory laid out like the paper's three hub datasets, with small generated parquet shards.

Every document says where it lives ("wiki shard 7 doc 3 ..."), so a test can tell from the prepared
token files which shards and rows landed in which split. File names are those of the real
repositories (checked against public listings; see docs/recipes.md); decoy files that the paper's
selection must not read sit beside them.
"""
from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("the a small large river city music history science garden train story friend quiet bright morning "
         "evening school teacher market forest ocean mountain village paper number energy light water stone").split()

# the real TinyStories data file names (their hash suffixes included)
TINY_TRAIN = ["data/train-00000-of-00004-2d5a1467fff1081b.parquet", "data/train-00001-of-00004-5852b56a2bd28fd9.parquet",
              "data/train-00002-of-00004-a26307300439e943.parquet", "data/train-00003-of-00004-d243063613e5a057.parquet"]
TINY_VAL = "data/validation-00000-of-00001-869c898b519ad725.parquet"


def text(tag: str, seed: int, n_words: int = 24) -> str:
    rng = random.Random(f"{tag}/{seed}")
    return f"{tag}. " + " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def write(path: Path, docs: list[str], row_group: int | None = None, column: str = "text") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [str(i) for i in range(len(docs))], column: docs}), path, row_group_size=row_group)


def tiny_doc(split: str, f: int, i: int) -> str:
    return text(f"tiny {split} file {f} doc {i}", 0)


def wiki_doc(shard: int, i: int) -> str:
    return text(f"wiki shard {shard} doc {i}", 1, 40)


def edu_doc(f: int, i: int) -> str:
    return text(f"edu file {f} row {i}", 2, 30)


WIKI_DOCS = 12                                  # per shard
TINY_DOCS = 25                                  # per train file (the validation file has 30)
EDU_ROWS = [60 + 5 * f for f in range(14)]      # rows per sample/10BT file: unequal, so row shards cross files
EDU_ROW_GROUP = 16


def make_hub(root: Path, duplicate: tuple[int, int] | None = (1, 4)) -> Path:
    """The three datasets under root/<owner>/<name>/. `duplicate`: (shard, doc) of Wikipedia's training
    shards whose text is repeated as doc 1 of shard 40 (a validation document that also occurs in training)."""
    tiny = root / "roneneldan" / "TinyStories"
    for f, name in enumerate(TINY_TRAIN):
        write(tiny / name, [tiny_doc("train", f, i) for i in range(TINY_DOCS)])
    write(tiny / TINY_VAL, [tiny_doc("validation", 0, i) for i in range(30)])
    (tiny / "TinyStories-train.txt").write_text("a decoy: the raw text dump, not the parquet split\n")

    wiki = root / "wikimedia" / "wikipedia"
    for s in range(41):
        docs = [wiki_doc(s, i) for i in range(WIKI_DOCS)]
        if s == 40 and duplicate:
            docs[1] = wiki_doc(*duplicate)
        write(wiki / "20231101.en" / f"train-{s:05d}-of-00041.parquet", docs)
    write(wiki / "20231101.fr" / "train-00000-of-00001.parquet", [text("french decoy", i) for i in range(5)])
    (wiki / "README.md").write_text("---\nconfigs:\n- config_name: 20231101.en\n  data_files:\n  - split: train\n"
                                    "    path: 20231101.en/train-*\n- config_name: 20231101.fr\n  data_files:\n"
                                    "  - split: train\n    path: 20231101.fr/train-*\n---\n# Wikipedia\n")

    edu = root / "HuggingFaceFW" / "fineweb-edu"
    for f, n in enumerate(EDU_ROWS):
        write(edu / "sample" / "10BT" / f"{f:03d}_00000.parquet", [edu_doc(f, i) for i in range(n)], row_group=EDU_ROW_GROUP)
    write(edu / "sample" / "100BT" / "000_00000.parquet", [text("edu 100BT decoy", i) for i in range(5)])
    write(edu / "data" / "CC-MAIN-2024-10" / "train-00000-of-00001.parquet", [text("edu CC decoy", i) for i in range(5)])
    return root


def edu_global_rows() -> list[tuple[int, int]]:
    """(file, row) of every sample/10BT row in the order of the files' concatenation."""
    return [(f, i) for f, n in enumerate(EDU_ROWS) for i in range(n)]
