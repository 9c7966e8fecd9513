"""Quality: the `langid` documents -> the `quality` artifact (documents passing heuristics and classifier).

Two phases, so thresholds can change without recomputing any score:
1. score (`quality_score_shard`): for every document, the verdict of each heuristic filter
   (`tasks.quality.heuristics`: datatrove's Gopher repetition, Gopher quality, C4 quality, FineWeb
   quality, per language) and `quality_score` = P(high quality) from the fastText quality classifier
   (`tasks.quality.classifier`, a versioned artifact). Written to the score cache, the versioned side
   artifact `<root>/quality_scores/<scores version>/part-NNNNN.parquet` (id, source, language,
   input_error, heuristic_<filter>, quality_score) with its manifest (storage.artifacts; kind
   `quality_scores`). The scores version hashes only the scoring params, the langid version and the
   classifier version; the quality manifest names it in its `inputs` (lineage, not part of its version id).
2. filter (`quality_filter_shard`): joins each input shard with its score shard, copies the score
   columns onto the documents, and drops by the thresholds. `keep_top_fraction` first computes one
   global score threshold over all score shards (`top_fraction_threshold`).
A change of `enforce_filters`, `min_score`, `keep_top_fraction` or `exempt_sources` gives a new quality
version that reuses the cached scores: no tokenizer or model runs again.

The classifier gates only when it is shown to work (issue 10): its manifest's held-out AUC must reach
`classifier_min_auc` (0.8) and it must have been trained and validated on >= `classifier_min_examples`
(200) examples per class. A classifier below that bar annotates only: `quality_score` is stored, nothing
is dropped as `quality_score_low` (nor by `keep_top_fraction`), and the log, the manifest extras
(`classifier_gates: false`, `classifier_warning`) and the report say why. With no classifier configured
(the default) the stage runs the heuristics only and trains nothing (issue 14: the bootstrap classifier
cost 17 s on every fresh data root and rarely passed the bar). `classifier_version: bootstrap` trains one
from the heuristic layer, but only if the langid version can supply the bar's example count per class;
otherwise it skips training (no fastText run) and runs the heuristics only, saying so. A real classifier:
`pretrain train-quality-classifier --positive good.jsonl --negative bad.jsonl`, then `classifier_version`
(see `tasks.quality.classifier`).

Columns added: `heuristic_gopher_repetition`, `heuristic_gopher_quality`, `heuristic_c4_quality`,
`heuristic_fineweb_quality` (`pass`, the filter's reason, `undefined`, or null when the filter does not
apply to the language), `quality_score` (float64; null for languages outside `classifier_languages` or
with the classifier off). Counters: `heuristic.<filter>.<reason>` (every failure, enforced or not),
`score_bin.<0-9>` (histogram of scores in tenths), `unscored.<language>`, `exempt`.
Drop reasons: `empty_text` (empty or whitespace only), `text_too_long` (over `max_chars`: beyond
Gopher's 100,000-word cap anyway, and not worth tokenizing), one per heuristic filter, named after it
(`gopher_repetition`, `gopher_quality`, `c4_quality`, `fineweb_quality`: the first enforced filter that
failed; detail {filter, reason, failed: every failed filter}), `quality_score_low` (detail {score, threshold}).
Documents whose `source` is in `exempt_sources` are scored but never dropped by either layer.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, model_validator

from models.classifiers import TextClassifier, load_quality_model
from storage import paths
from storage.documents import (
    Document,
    Rejects,
    ShardResult,
    batched,
    iter_batches,
    read_documents,
    run_document_shard,
)
from storage.files import AtomicFile
from storage.manifest import Manifest, canonical_json
from storage.params import StageParams
from storage.stats import StageStats
from tasks.lazy_task import task
from tasks.quality.classifier import FIX_HINT, classifier_shortfall, classifier_text, score_texts
from tasks.quality.heuristics import (
    FILTER_NAMES,
    FilterName,
    HeuristicLayer,
    check_options,
    failures,
)

log = logging.getLogger(__name__)

STAGE = "quality"
# 2: Gopher paper words by default; a classifier below the validation bar drops nothing
# 3: no classifier unless classifier_version names one (or 'bootstrap'): no bootstrap training by default
STAGE_VERSION = 3
BOOTSTRAP = "bootstrap"  # classifier_version: train the bootstrap classifier on this langid version
SCORES_KIND = "quality_scores"  # the score cache: `<root>/quality_scores/<version>/`, a versioned side artifact
SCORES_VERSION = 2  # 2: gopher_quality verdicts on whitespace words unless datatrove_compatible

EMPTY_TEXT = "empty_text"
TEXT_TOO_LONG = "text_too_long"
QUALITY_SCORE_LOW = "quality_score_low"
# one drop reason per heuristic filter, named after it
HEURISTIC_REASONS: tuple[str, ...] = FILTER_NAMES

HEURISTIC_COLUMNS = [f"heuristic_{f}" for f in FILTER_NAMES]
QUALITY_FIELDS: list[pa.Field] = [pa.field(c, pa.string()) for c in HEURISTIC_COLUMNS] + [
    pa.field("quality_score", pa.float64())
]
SCORE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("language", pa.string()),
        pa.field("input_error", pa.string()),
        *QUALITY_FIELDS,
    ]
)


class QualityParams(StageParams):
    filters: list[FilterName] = Field(
        list(FILTER_NAMES), description=("Heuristic filters to evaluate (datatrove's, with their published defaults).")
    )
    filter_options: dict[FilterName, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "Constructor overrides per filter, e.g. {c4_quality: {filter_no_terminal_punct: false}} (FineWeb's C4)."
        ),
    )
    datatrove_compatible: bool = Field(
        False,
        description=(
            "Reproduce datatrove's verdicts exactly: Gopher quality counts spaCy tokens, punctuation included, as "
            "words. Default (false): the Gopher paper's rules on whitespace-separated words (tasks.quality.heuristics)."
        ),
    )
    use_classifier: bool = Field(
        True,
        description=(
            "Score documents with the fastText quality classifier named by classifier_version (false: never, "
            "even when one is named)."
        ),
    )
    classifier_version: str | None = Field(
        None,
        description=(
            "quality_classifier version id, 'latest', or 'bootstrap': train (once, then reused) a classifier "
            "bootstrapped from the heuristic layer on this langid version, unless it cannot supply "
            "classifier_min_examples per class (then: heuristics only, with a warning). Empty: no classifier, "
            "heuristics only (no training). Train a real one: pretrain train-quality-classifier."
        ),
    )
    classifier_min_auc: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description=(
            "Validation bar: a classifier whose held-out ROC AUC (in its manifest) is below this only annotates "
            "(quality_score stored, nothing dropped by it)."
        ),
    )
    classifier_min_examples: int = Field(
        200,
        ge=2,
        le=10_000_000,
        description=(
            "Validation bar: labelled examples per class (train + held-out) a classifier must have seen to drop "
            "documents; the bootstrap classifier is not trained when the langid version cannot supply this many."
        ),
    )
    classifier_languages: list[str] = Field(
        ["en"],
        description=(
            "Languages the classifier scores; other documents get a null quality_score and skip the score threshold."
        ),
    )
    max_chars: int = Field(
        1_000_000,
        ge=1000,
        le=100_000_000,
        description=("Longer documents are dropped as text_too_long (the heuristics would tokenize all of it)."),
    )
    batch_size: int = Field(512, ge=1, le=65_536, description="Documents per classifier predict call.")
    enforce_filters: list[FilterName] | None = Field(
        None,
        description=(
            "Filters whose failure drops a document (threshold phase: no rescoring); empty: all evaluated filters."
        ),
    )
    min_score: float | None = Field(
        0.5, ge=0.0, le=1.0, description=("Drop documents with quality_score below this (threshold phase).")
    )
    keep_top_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description=(
            "Instead of min_score: keep this top share by quality_score of the scored documents that pass the "
            "heuristics (one global threshold; ties at it are kept)."
        ),
    )
    exempt_sources: list[str] = Field(
        default_factory=list,
        description=("Sources (e.g. code) scored but never dropped: prose heuristics misjudge them."),
    )

    @model_validator(mode="after")
    def _check(self) -> QualityParams:
        check_options(dict(self.filter_options))
        if self.keep_top_fraction is not None and self.min_score is not None:
            if "min_score" in self.model_fields_set:
                raise ValueError("set min_score or keep_top_fraction, not both")
            object.__setattr__(self, "min_score", None)  # the top fraction replaces the default min_score
        unknown = [f for f in (self.enforce_filters or []) if f not in self.filters]
        if unknown:
            raise ValueError(f"enforce_filters {unknown} are not evaluated; add them to filters {self.filters}")
        if not self.use_classifier and (self.keep_top_fraction is not None):
            raise ValueError("keep_top_fraction needs the classifier (use_classifier: true)")
        return self

    def version_params(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"batch_size"})

    def scoring_params(self) -> dict[str, Any]:
        """What the score cache depends on (the threshold knobs are left out)."""
        return self.model_dump(
            mode="json",
            include={
                "filters",
                "filter_options",
                "datatrove_compatible",
                "use_classifier",
                "classifier_languages",
                "max_chars",
            },
        )


class ScoreJob(StageParams):
    """What one score task needs: the params and the resolved classifier."""

    params: QualityParams
    classifier_path: str | None = None
    classifier_max_chars: int = 100_000


class FilterJob(StageParams):
    """What one filter task needs: the params, the score cache and the global score threshold."""

    params: QualityParams
    scores_dir: str
    score_threshold: float | None = None


class ScoreResult(BaseModel):
    index: int
    rows: int
    bytes: int
    counters: dict[str, int]
    seconds: float


@functools.lru_cache(maxsize=4)
def heuristic_layer(
    filters: tuple[FilterName, ...], options_json: str, datatrove_compatible: bool = False
) -> HeuristicLayer:
    """One layer (spaCy tokenizers, datatrove filters) per process and configuration."""
    return HeuristicLayer(list(filters), json.loads(options_json), datatrove_compatible)


def input_error(text: str, max_chars: int) -> str | None:
    if not text.strip():
        return EMPTY_TEXT
    if len(text) > max_chars:
        return TEXT_TOO_LONG
    return None


def score_documents(
    docs: Iterable[Document], job: ScoreJob, stats: StageStats, layer: HeuristicLayer, model: TextClassifier | None
) -> Iterator[dict[str, Any]]:
    """One score row per document, in input order (heuristic verdicts first, then a batched classifier)."""
    p = job.params
    scored_languages = set(p.classifier_languages)
    for batch in batched(docs, p.batch_size):
        rows, to_score = [], []
        for doc in batch:
            lang = doc.meta.get("language")
            err = input_error(doc.text, p.max_chars)
            verdicts = layer.evaluate(doc.text, lang) if err is None else {f: None for f in FILTER_NAMES}
            row = {
                "id": doc.id,
                "source": doc.source,
                "language": lang,
                "input_error": err,
                "quality_score": None,
                **{f"heuristic_{f}": verdicts.get(f) for f in FILTER_NAMES},
            }
            rows.append(row)
            if err is None and model is not None and lang in scored_languages:
                to_score.append((row, classifier_text(doc.text, job.classifier_max_chars)))
            elif err is None:
                stats.count(f"unscored.{lang}")
        if to_score:
            for (row, _), score in zip(to_score, score_texts(model, [t for _, t in to_score])):
                row["quality_score"] = score
        yield from rows


def _scorers(job: ScoreJob) -> tuple[HeuristicLayer, TextClassifier | None]:
    """The heuristic layer (cached per process) and the classifier (None without one) a score job uses."""
    p = job.params
    layer = heuristic_layer(tuple(p.filters), canonical_json(p.filter_options), p.datatrove_compatible)
    return layer, load_quality_model(job.classifier_path) if job.classifier_path else None


@task(task_run_name="quality-score-{index}")
def quality_score_shard(src: str, out_dir: str, index: int, job: ScoreJob) -> ScoreResult:
    """Score one langid shard into `<out_dir>/part-NNNNN.parquet` of the score cache (written whole or not at all)."""
    t0, stats = time.perf_counter(), StageStats()
    layer, model = _scorers(job)
    fs, path = paths.filesystem(paths.join(out_dir, paths.shard_name(index)))
    rows = 0
    with AtomicFile(fs, path) as out, pq.ParquetWriter(out.file, SCORE_SCHEMA, compression="zstd") as writer:
        docs = read_documents(src, columns=["id", "text", "source", "language"])
        for chunk in batched(score_documents(docs, job, stats, layer, model), 2048):
            writer.write_table(pa.Table.from_pylist(chunk, schema=SCORE_SCHEMA))
            rows += len(chunk)
    seconds = time.perf_counter() - t0
    log.info("%s: scored %d documents in %.1fs", src, rows, seconds)
    return ScoreResult(index=index, rows=rows, bytes=int(fs.size(path)), counters=stats.counters, seconds=seconds)


def _drop(
    doc: Document, row: dict[str, Any], p: QualityParams, threshold: float | None, stats: StageStats
) -> tuple[str, dict[str, Any]] | None:
    """The drop reason and detail of one scored document, or None to keep it."""
    if row["input_error"] is not None:
        return row["input_error"], {"chars": len(doc.text)}
    verdicts: dict[str, str | None] = {f: row[f"heuristic_{f}"] for f in FILTER_NAMES}
    for f, reason in failures(verdicts):
        stats.count(f"heuristic.{f}.{reason}")
    if doc.source in p.exempt_sources:
        stats.count("exempt")
        return None
    failed = failures(verdicts, p.enforce_filters)
    if failed:
        return failed[0][0], {"filter": failed[0][0], "reason": failed[0][1], "failed": dict(failed)}
    score = row["quality_score"]
    if threshold is not None and score is not None and score < threshold:
        return QUALITY_SCORE_LOW, {"score": round(score, 4), "threshold": threshold}
    return None


def filter_documents(
    docs: Iterable[Document], job: FilterJob, stats: StageStats, rejects: Rejects, scores: Iterator[dict[str, Any]]
) -> Iterator[Document]:
    """Copy the cached scores (`scores`: the rows of the shard's score file) onto the documents and apply
    the thresholds."""
    threshold = job.score_threshold
    for doc in docs:
        row = next(scores, None)
        assert row is not None and row["id"] == doc.id, (
            f"score cache {job.scores_dir} out of step with the input at document {doc.id} (got {row and row['id']}); "
            f"delete the cache directory and rerun"
        )
        doc.meta.update({c: row[c] for c in HEURISTIC_COLUMNS}, quality_score=row["quality_score"])
        if row["quality_score"] is not None:
            stats.count(f"score_bin.{min(int(row['quality_score'] * 10), 9)}")
        dropped = _drop(doc, row, job.params, threshold, stats)
        if dropped is None:
            yield doc
        else:
            rejects.add(doc, dropped[0], dropped[1])
    assert next(scores, None) is None, f"score cache {job.scores_dir} has more rows than the input shard"


def candidate_documents(root: str, langid: Manifest, languages: list[str]) -> int:
    """Documents of the langid version in `languages` (the bootstrap classifier's pool; reads one column)."""
    keep, n = set(languages), 0
    base = paths.version_dir(root, langid.stage, langid.version)
    for shard in langid.shards:
        for batch in iter_batches(paths.join(base, shard.name), columns=["language"]):
            n += sum(1 for lang in batch.column(0).to_pylist() if lang in keep)
    return n


def below_bar_warning(clf: Manifest, p: QualityParams) -> str | None:
    """Why the classifier `clf` only annotates (below the validation bar), or None when it may drop documents."""
    shortfall = classifier_shortfall(clf.extras, p.classifier_min_auc, p.classifier_min_examples)
    if not shortfall:
        return None
    return (
        f"quality_classifier@{clf.version} is below the validation bar ({shortfall}): it only "
        f"annotates (quality_score stored, no quality_score_low drops). {FIX_HINT[0].upper()}"
        f"{FIX_HINT[1:]}, or lower classifier_min_auc / classifier_min_examples"
    )


def _score_rows(path: str) -> Iterator[dict[str, Any]]:
    for batch in iter_batches(path):
        yield from batch.to_pylist()


@task(task_run_name="quality-filter-{index}")
def quality_filter_shard(src: str, out_dir: str, index: int, job: FilterJob) -> ShardResult:
    """Apply the thresholds to one langid shard using its cached scores."""
    scores = _score_rows(paths.join(job.scores_dir, paths.shard_name(index)))
    result = run_document_shard(
        src, out_dir, index, lambda docs, st, rj: filter_documents(docs, job, st, rj, scores), QUALITY_FIELDS
    )
    log.info("%s: %d in, %d kept, dropped %s", src, result.stats.docs_in, result.stats.docs_out, result.stats.dropped)
    return result


class ScoreFilterJob(StageParams):
    """What one fused task needs: score a shard into the score cache and filter it in the same pass."""

    score: ScoreJob
    filter: FilterJob


class ScoreFilterResult(BaseModel):
    index: int
    stats: StageStats  # the filter's (documents in, kept, dropped)
    result: ShardResult
    score: ScoreResult


@task(task_run_name="quality-{index}")
def quality_score_filter_shard(src: str, out_dir: str, index: int, job: ScoreFilterJob) -> ScoreFilterResult:
    """`quality_score_shard` and `quality_filter_shard` in one pass over the shard (issue 14): each batch is
    scored, its rows appended to the score cache's shard (`job.filter.scores_dir`, written whole or not at
    all), and the same rows decide the documents. For thresholds known before scoring (no
    `keep_top_fraction`); outputs are those of the two passes."""
    t0, score_stats = time.perf_counter(), StageStats()
    p = job.score.params
    layer, model = _scorers(job.score)
    fs, path = paths.filesystem(paths.join(job.filter.scores_dir, paths.shard_name(index)))
    rows = 0

    def process(docs: Iterable[Document], stats: StageStats, rejects: Rejects) -> Iterator[Document]:
        nonlocal rows
        with AtomicFile(fs, path) as out, pq.ParquetWriter(out.file, SCORE_SCHEMA, compression="zstd") as writer:
            for batch in batched(docs, p.batch_size):
                scored = list(score_documents(batch, job.score, score_stats, layer, model))
                writer.write_table(pa.Table.from_pylist(scored, schema=SCORE_SCHEMA))
                rows += len(scored)
                yield from filter_documents(batch, job.filter, stats, rejects, iter(scored))

    result = run_document_shard(src, out_dir, index, process, QUALITY_FIELDS)
    seconds = time.perf_counter() - t0
    size = int(fs.size(path))
    score = ScoreResult(index=index, rows=rows, bytes=size, counters=score_stats.counters, seconds=seconds)
    log.info(
        "%s: %d in, %d kept, dropped %s (scored in the same pass, %.1fs)",
        src,
        result.stats.docs_in,
        result.stats.docs_out,
        result.stats.dropped,
        seconds,
    )
    return ScoreFilterResult(index=index, stats=result.stats, result=result, score=score)


def top_fraction_threshold(score_paths: list[str], p: QualityParams) -> float | None:
    """The score of the last document inside the top `keep_top_fraction` of the eligible scored documents."""
    assert p.keep_top_fraction is not None
    eligible: list[float] = []
    for path in score_paths:
        for row in _score_rows(path):
            verdicts: dict[str, str | None] = {f: row[f"heuristic_{f}"] for f in FILTER_NAMES}
            if (
                row["input_error"] is None
                and row["quality_score"] is not None
                and row["source"] not in p.exempt_sources
                and not failures(verdicts, p.enforce_filters)
            ):
                eligible.append(row["quality_score"])
    if not eligible:
        return None
    k = max(1, math.ceil(len(eligible) * p.keep_top_fraction))
    return float(np.sort(np.asarray(eligible))[::-1][k - 1])
