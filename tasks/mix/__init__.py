"""mix: weighted, seeded sampling across sources -> the `mix` version (documents, repeats included).

Input: the `decontaminate` version (documents with `source`; `quality_score` when annealing).
Output: `part-NNNNN.parquet` per input shard with the sampled copies, `anneal/part-NNNNN.parquet`
when `anneal_fraction > 0`, and `rejected/part-NNNNN.parquet`.

0. Source (both phases): a document whose `source` was derived from its URL (column `source_from`
   == "url", written by ingest) gets `classify_source(url, mix.source_rules)` (`tasks.ingest.sources`; the
   default rules are the ones ingest used, so by default nothing changes); one that brought its own
   source (`source_from` == "input"), or a shard without the column (older ingest versions, hand-made
   inputs), keeps its stored `source`. The mix output carries the resolved `source`.
1. Count (`mix_count_shard`, a task per shard): documents and characters per source, and each
   source's characters per bucket of the document's key u = hash64("mix:<seed>:<id>") / 2^64
   (and per quality-score bin when annealing).
2. Plan (`plan_mix`, in the flow's phases): positive weights normalised to shares. A weighted source with no
   text in the input is absent: its share is redistributed over the present sources in proportion to
   their weights (logged; `on_absent_source: error` fails instead), giving target shares w_s.
   Default budget (budget_chars and budget_tokens unset): every document at least once, up-sampling
   bounded by max_repeats. The total T = max_s avail_s / w_s is the smallest at which every source
   has rate >= 1; a source needing r_s = w_s T / avail_s > max_repeats is capped at max_repeats
   (logged, its achieved share is below target; no error and no down-sampling of the others), so
   clean data is never thrown away. A source holding far more than its share sets T, so the others
   are up-sampled (up to max_repeats) towards their shares; `max_repeats: 1` uses every document
   exactly once. Explicit budget T: target t_s = w_s T, rate r_s = t_s / avail_s
   (epochs over the source); a source needing r_s > max_repeats is short: an error naming it and by
   how much, or with `allow_shortfall` it is capped and the rest of the budget is shared among the
   other sources by weight (water-filling), reported as renormalised. The plan (manifest extras)
   records per source the configured weight, the target share after redistribution, the planned
   share and a status (ok / absent / capped); the report (`tasks.mix.report`) adds the achieved share.
3. Sample (`mix_shard`): a document gets floor(r_s) copies plus one if u < threshold_s, where the
   threshold is read off the key histogram so the extra copies hold frac(r_s) of the source's
   characters (exact up to one document). Copy k > 0 has id `<id>#r<k>` and `repeat = k`. Copies
   are written in passes (every first copy of the shard, then every second copy, ...) so repeats
   of a document do not sit next to each other in a packed sequence. No Python global RNG.

Counting: `docs_in`/`docs_out` count input documents (kept once however many copies); shard rows
count copies (`counters`: `copies`, `repeat_copies`, `chars_unique` (of first copies), `anneal_copies`,
`anneal_chars`, `source_changed` (documents whose source `mix.source_rules` changed), per source
`docs_in.<s>`, `chars_in.<s>`, `docs_out.<s>`, `copies.<s>`, `chars_out.<s>`).
Column written: `repeat` (int32).
Drop reasons: `mix_downsampled` (key outside the sample), `source_not_in_mix` (no positive weight).
Annealing: documents with `quality_score` >= a threshold chosen so they hold ~`anneal_fraction` of
the mixed characters go to `anneal/` (all their copies). max_repeats 4: Muennighoff et al. 2023,
"Scaling Data-Constrained Language Models" (repeating more than ~4 epochs stops paying off).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, model_validator

from storage import paths
from storage.documents import (
    Document,
    DocumentWriter,
    Rejects,
    ShardResult,
    counted,
    extra_fields,
    iter_batches,
    kept_name,
    open_shard_writers,
    read_documents,
    read_schema,
)
from storage.manifest import ShardInfo
from storage.params import StageParams
from storage.stats import StageStats
from tasks.ingest.sources import DEFAULT_SOURCE_RULES, FALLBACK_SOURCE, SourceRule, classify_source
from tasks.lazy_task import task
from tasks.text import sample_key

log = logging.getLogger(__name__)

STAGE = "mix"
STAGE_VERSION = 2  # 2: absent sources redistributed, default budget keeps every document, source_rules
DROP_DOWNSAMPLED = "mix_downsampled"
DROP_UNWEIGHTED = "source_not_in_mix"
ANNEAL_DIR = "anneal"
REPEAT_FIELD = pa.field("repeat", pa.int32())
SOURCE_FROM = "source_from"  # ingest's column: "url" (derived by the rules) or "input" (the row's own)
HASH_BUCKETS = 4096
QUALITY_BINS = 1000
# The demo crawl's sources (tasks/ingest/sources.py), weighted towards reference text over generic web pages.
DEFAULT_WEIGHTS = {"web": 0.40, "wikipedia": 0.20, "news": 0.12, "academic": 0.10, "code": 0.10, "forum": 0.08}


class MixParams(StageParams):
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Target share of the mixed characters per source (normalised to sum 1). Sources of the input "
        "that are absent here or weighted 0 are left out (reason source_not_in_mix).",
    )
    source_rules: list[SourceRule] = Field(
        default_factory=lambda: list(DEFAULT_SOURCE_RULES),
        description="Ordered URL rules {pattern: regex, field: host|path|url, source: name}; the first match "
        "gives the source of documents whose source ingest derived from the URL (source_from: url); "
        "no match gives 'web'. Documents that brought their own source keep it. Defaults: the "
        "tasks/ingest/sources.py table ingest uses (wikipedia, code, academic, forum, news).",
    )
    on_absent_source: Literal["redistribute", "error"] = Field(
        "redistribute",
        description="A weighted source with no documents in the input: share its weight among "
        "the present sources in proportion (logged and reported), or fail.",
    )
    budget_chars: Optional[int] = Field(
        None,
        ge=1,
        description="Total characters of the mix. Default (with "
        "budget_tokens unset): every document at least once, the sources at "
        "their target shares by up-sampling up to max_repeats (a source that "
        "needs more is capped and reported below target; nothing is dropped).",
    )
    budget_tokens: Optional[int] = Field(
        None,
        ge=1,
        description="Total budget in tokens, converted to characters "
        "with chars_per_token (an estimate: the tokenizer is trained later).",
    )
    chars_per_token: float = Field(4.0, gt=0, le=100, description="Characters per token for budget_tokens.")
    max_repeats: float = Field(4.0, ge=1, le=64, description="Most epochs over any source (up-sampling limit).")
    allow_shortfall: bool = Field(
        False,
        description="When a source cannot reach its target within max_repeats "
        "(or is missing), cap it and share its deficit among the others instead of "
        "failing; the report shows the renormalised shares.",
    )
    anneal_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the mixed characters, highest "
        "quality_score first, written to anneal/ for the end of training (0 = off).",
    )
    seed: int = Field(0, ge=0, description="Seed of the per-document sampling hash.")

    @model_validator(mode="after")
    def _check(self) -> MixParams:
        bad = {s: w for s, w in self.weights.items() if not (w >= 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"weights {bad}: weights must be finite and >= 0")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("weights: at least one source needs a positive weight")
        if self.budget_chars is not None and self.budget_tokens is not None:
            raise ValueError("set budget_chars or budget_tokens, not both")
        defaults = set(DEFAULT_SOURCE_RULES)
        unweighted = [
            (i, r.source) for i, r in enumerate(self.source_rules) if r not in defaults and r.source not in self.weights
        ]
        if unweighted:
            i, name = unweighted[0]
            raise ValueError(
                f"source_rules[{i}] maps URLs to source '{name}', which has no entry in weights, so "
                f"its documents would be dropped; add weights.{name} (0 to drop them on purpose)"
            )
        return self

    def budget(self) -> float | None:
        if self.budget_tokens is not None:
            return self.budget_tokens * self.chars_per_token
        return None if self.budget_chars is None else float(self.budget_chars)


class SourceCounts(BaseModel):
    docs: int = 0
    chars: int = 0
    key_chars: list[int] = Field(default_factory=lambda: [0] * HASH_BUCKETS)
    quality_chars: list[int] = Field(default_factory=list)

    def merge(self, o: SourceCounts) -> SourceCounts:
        q = (
            np.asarray(self.quality_chars or [0] * QUALITY_BINS) + np.asarray(o.quality_chars or [0] * QUALITY_BINS)
            if (self.quality_chars or o.quality_chars)
            else np.zeros(0, dtype=np.int64)
        )
        return SourceCounts(
            docs=self.docs + o.docs,
            chars=self.chars + o.chars,
            key_chars=(np.asarray(self.key_chars) + np.asarray(o.key_chars)).tolist(),
            quality_chars=q.tolist(),
        )


class SourcePlan(BaseModel):
    weight: float = Field(description="Configured share: the weight normalised over the weighted sources.")
    share_target: float = Field(
        0.0, description="Target share after the shares of absent sources were redistributed (0 for an absent source)."
    )
    share_planned: float = Field(
        0.0, description="target_chars / the planned total: below share_target when capped at max_repeats."
    )
    status: Literal["ok", "absent", "capped"] = Field(
        "ok", description="absent: no documents, share redistributed; capped: needs more than max_repeats."
    )
    available_docs: int
    available_chars: int
    target_chars: float = Field(description="Planned characters (after any renormalisation).")
    wanted_chars: float = Field(description="Characters the weights asked for before any shortfall.")
    rate: float = Field(description="target / available: epochs over the source.")
    full_copies: int
    threshold: float = Field(description="Documents with key below this get one extra copy.")


class MixPlan(BaseModel):
    budget_chars: float
    budget_from: Literal["budget_chars", "budget_tokens", "all_data"]
    sources: dict[str, SourcePlan]
    excluded: dict[str, int] = Field(description="Input sources without positive weight -> documents.")
    renormalised: bool
    redistributed: dict[str, float] = Field(
        default_factory=dict,
        description="Absent source -> its configured "
        "share, given to the present sources in proportion to their weights.",
    )
    capped: list[str] = Field(default_factory=list, description="Sources held at max_repeats below their target.")
    anneal_threshold: Optional[float] = None


class MixJob(StageParams):
    """What a `mix_shard` task needs: the params and the global plan."""

    params: MixParams
    plan: MixPlan


class ShardCounts(BaseModel):
    """What `mix_count_shard` returns: the per-source counts of shard `index`."""

    index: int
    counts: dict[str, SourceCounts]


class MixShardResult(ShardResult):
    anneal: Optional[ShardInfo] = None


def resolve_source(
    source: Optional[str], url: Optional[str], origin: Optional[str], rules: Sequence[SourceRule]
) -> str:
    """The source mix uses: re-derived from the URL by `rules` when ingest derived it (origin "url")."""
    if origin == "url":
        return classify_source(url or "", rules)
    return source or FALLBACK_SOURCE


def batch_sources(b: pa.RecordBatch, rules: Sequence[SourceRule]) -> list[str]:
    """Resolved source per row of a batch (see `resolve_source`; no `source_from` column: stored source)."""
    stored = b.column("source").to_pylist()
    if SOURCE_FROM not in b.schema.names:
        return [s or FALLBACK_SOURCE for s in stored]
    return [
        resolve_source(s, u, o, rules)
        for s, u, o in zip(stored, b.column("url").to_pylist(), b.column(SOURCE_FROM).to_pylist())
    ]


def count_batches(
    batches: Iterable[pa.RecordBatch], seed: int, with_quality: bool, rules: Sequence[SourceRule] = DEFAULT_SOURCE_RULES
) -> dict[str, SourceCounts]:
    """Documents, characters and key / quality histograms per (resolved) source."""
    hists: dict[str, list[np.ndarray]] = {}
    totals: dict[str, list[int]] = {}
    for b in batches:
        chars = pc.fill_null(pc.utf8_length(b.column("text")), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        keys = np.array(
            [int(sample_key("mix", seed, i) * HASH_BUCKETS) for i in b.column("id").to_pylist()], dtype=np.int64
        )
        quality = (
            np.nan_to_num(
                pc.fill_null(b.column("quality_score").cast(pa.float64()), -1.0).to_numpy(zero_copy_only=False),
                nan=-1.0,
            )
            if with_quality
            else None
        )
        sources = np.array(batch_sources(b, rules), dtype=object)
        for s in np.unique(sources):
            m = sources == s
            h = hists.setdefault(s, [np.zeros(HASH_BUCKETS, np.int64), np.zeros(QUALITY_BINS, np.int64)])
            np.add.at(h[0], keys[m], chars[m])
            if quality is not None:
                q = quality[m]
                ok = q >= 0
                np.add.at(h[1], np.clip((q[ok] * QUALITY_BINS).astype(np.int64), 0, QUALITY_BINS - 1), chars[m][ok])
            t = totals.setdefault(s, [0, 0])
            t[0] += int(m.sum())
            t[1] += int(chars[m].sum())
    return {
        s: SourceCounts(
            docs=totals[s][0],
            chars=totals[s][1],
            key_chars=h[0].tolist(),
            quality_chars=h[1].tolist() if with_quality else [],
        )
        for s, h in sorted(hists.items())
    }


def merge_counts(parts: Iterable[dict[str, SourceCounts]]) -> dict[str, SourceCounts]:
    out: dict[str, SourceCounts] = {}
    for part in parts:
        for s, c in part.items():
            out[s] = out[s].merge(c) if s in out else c
    return dict(sorted(out.items()))


def key_threshold(key_chars: np.ndarray, fraction: float) -> float:
    """Key threshold below which the documents hold `fraction` of the characters (interpolated in a bucket)."""
    total = float(key_chars.sum())
    if fraction <= 0 or total == 0:
        return 0.0
    if fraction >= 1:
        return 1.0
    cum = np.cumsum(key_chars, dtype=np.float64)
    target = fraction * total
    b = int(np.searchsorted(cum, target))
    before = cum[b - 1] if b > 0 else 0.0
    return min(1.0, float((b + (target - before) / key_chars[b]) / len(key_chars)))


def allocate(weights: dict[str, float], caps: dict[str, float], total: float) -> dict[str, float]:
    """Targets summing to `total` in proportion to weights, none above its cap (water-filling)."""
    alloc: dict[str, float] = {}
    free = dict(weights)
    remaining = total
    while free:
        wsum = sum(free.values())
        over = [s for s, w in free.items() if w / wsum * remaining > caps[s]]
        if not over:
            alloc.update({s: w / wsum * remaining for s, w in free.items()})
            break
        for s in over:
            alloc[s] = caps[s]
            remaining -= caps[s]
            del free[s]
    return alloc


def _shortfall_error(
    short: dict[str, float], wanted: dict[str, float], avail: dict[str, int], budget: float, params: MixParams
) -> ValueError:
    lines = [f"mix: the target mixture cannot be met within max_repeats={params.max_repeats:g}:"]
    for s, gap in short.items():
        lines.append(
            f"  - source '{s}' is short by {gap:,.0f} characters ({gap / wanted[s]:.0%} of its target "
            f"{wanted[s]:,.0f} of a {budget:,.0f}-character budget): it has {avail[s]:,} characters, "
            f"x max_repeats {params.max_repeats:g} = {avail[s] * params.max_repeats:,.0f}"
        )
    names = ", ".join(f"mix.weights.{s}" for s in short)
    lines.append(
        f"Fix: lower mix.budget_chars/mix.budget_tokens or {names}, raise mix.max_repeats, set "
        f"mix.allow_shortfall: true (the deficit is then shared among the other sources and reported), "
        f"or unset the budget (every document at least once, scarce sources capped at max_repeats)."
    )
    return ValueError("\n".join(lines))


def target_shares(counts: dict[str, SourceCounts], params: MixParams) -> tuple[dict[str, float], dict[str, float]]:
    """(configured share per weighted source, target share per present source): the shares of weighted
    sources without text in the input are redistributed over the present ones in proportion."""
    raw = {s: w for s, w in params.weights.items() if w > 0}
    configured = {s: v / sum(raw.values()) for s, v in raw.items()}
    present = [s for s in counts if counts[s].chars > 0]
    have = {s: v for s, v in raw.items() if s in counts and counts[s].chars > 0}
    if not have:
        raise ValueError(
            f"mix: none of the weighted sources {sorted(raw)} has any text in the input (sources "
            f"present: {present or 'none'}); set mix.weights for the input's sources (or check "
            f"mix.source_rules)"
        )
    absent = {s: v for s, v in configured.items() if s not in have}
    if absent and params.on_absent_source == "error":
        raise ValueError(
            f"mix: weighted sources {sorted(absent)} have no documents in the input (sources present: "
            f"{', '.join(present)}). Fix: remove them from mix.weights, check mix.source_rules, or set "
            f"mix.on_absent_source: redistribute"
        )
    if absent:
        log.warning(
            "mix: weighted sources %s have no documents in the input; their %.1f%% share is redistributed "
            "over %s in proportion to their weights",
            sorted(absent),
            100 * sum(absent.values()),
            sorted(have),
        )
    return configured, {s: v / sum(have.values()) for s, v in have.items()}


def plan_mix(counts: dict[str, SourceCounts], params: MixParams) -> MixPlan:
    """Per-source targets, rates and key thresholds (see the module docstring)."""
    configured, w = target_shares(counts, params)
    avail = {s: counts[s].chars for s in w}
    caps = {s: params.max_repeats * avail[s] for s in w}
    budget = params.budget()
    if budget is None:  # every document at least once; scarce sources capped at max_repeats
        wanted = {s: w[s] * max(avail[x] / w[x] for x in w) for s in w}
        targets = {s: min(max(wanted[s], avail[s]), caps[s]) for s in w}
        total = sum(targets.values())
    else:
        total = budget
        wanted = {s: w[s] * total for s in w}
        targets = allocate(w, caps, total)
    short = {s: wanted[s] - targets[s] for s in w if wanted[s] - targets[s] > 1e-6 * max(wanted[s], 1.0)}
    if short and budget is not None and not params.allow_shortfall:
        raise _shortfall_error(short, wanted, avail, total, params)
    if short:
        log.info(
            "mix: sources %s would need more than max_repeats=%g epochs to reach their target characters and "
            "are capped (planned vs target share: %s)",
            sorted(short),
            params.max_repeats,
            ", ".join(f"{s} {targets[s] / total:.1%} vs {w[s]:.1%}" for s in sorted(short)),
        )
    sources = {}
    for s, weight in configured.items():
        a = avail.get(s, 0)
        rate = targets[s] / a if a else 0.0
        rate = float(round(rate)) if abs(rate - round(rate)) < 1e-9 else rate
        full = int(math.floor(rate))
        hist = np.asarray(counts[s].key_chars if s in counts else [0] * HASH_BUCKETS, dtype=np.int64)
        status: Literal["ok", "absent", "capped"] = "absent" if s not in w else "capped" if s in short else "ok"
        sources[s] = SourcePlan(
            weight=weight,
            share_target=w.get(s, 0.0),
            share_planned=targets.get(s, 0.0) / total,
            status=status,
            available_docs=counts[s].docs if s in counts else 0,
            available_chars=a,
            target_chars=targets.get(s, 0.0),
            wanted_chars=wanted.get(s, 0.0),
            rate=rate,
            full_copies=full,
            threshold=key_threshold(hist, rate - full),
        )
    excluded = {s: c.docs for s, c in counts.items() if s not in configured}
    if excluded:
        log.warning("mix: input sources without positive weight are left out (%s): %s", DROP_UNWEIGHTED, excluded)
    budget_from: Literal["budget_chars", "budget_tokens", "all_data"] = (
        "budget_tokens" if params.budget_tokens is not None else "budget_chars" if params.budget_chars else "all_data"
    )
    plan = MixPlan(
        budget_chars=total,
        budget_from=budget_from,
        sources=sources,
        excluded=excluded,
        renormalised=bool(short) and budget is not None,
        redistributed={s: configured[s] for s in configured if s not in w},
        capped=sorted(short),
    )
    if params.anneal_fraction > 0:
        plan.anneal_threshold = anneal_threshold(counts, plan, params.anneal_fraction)
    return plan


def anneal_threshold(counts: dict[str, SourceCounts], plan: MixPlan, fraction: float) -> float:
    """quality_score at or above which documents hold ~fraction of the expected mixed characters."""
    expected = np.zeros(QUALITY_BINS)
    for s, sp in plan.sources.items():
        if s in counts and counts[s].quality_chars:
            expected += sp.rate * np.asarray(counts[s].quality_chars, dtype=np.float64)
    if expected.sum() == 0:
        return 1.0 + 1e-9  # nothing scored: nothing is annealed
    above = np.cumsum(expected[::-1])  # above[i]: chars in the top i+1 bins
    target = fraction * expected.sum()
    i = int(np.searchsorted(above, target))
    b = QUALITY_BINS - 1 - i  # the bin where the target is crossed
    before = above[i - 1] if i > 0 else 0.0
    return float((b + 1 - (target - before) / expected[b]) / QUALITY_BINS)


def n_copies(doc: Document, plan: MixPlan, seed: int) -> int:
    sp = plan.sources.get(doc.source)
    if sp is None:
        return 0
    return sp.full_copies + (1 if sample_key("mix", seed, doc.id) < sp.threshold else 0)


def _copy(doc: Document, k: int, stats: StageStats) -> Document:
    stats.count("copies")
    stats.count(f"copies.{doc.source}")
    stats.count(f"chars_out.{doc.source}", len(doc.text))
    if k == 0:
        stats.count("chars_unique", len(doc.text))
        return Document(doc.id, doc.text, doc.url, doc.source, doc.crawl_date, {**doc.meta, "repeat": 0})
    stats.count("repeat_copies")
    return Document(f"{doc.id}#r{k}", doc.text, doc.url, doc.source, doc.crawl_date, {**doc.meta, "repeat": k})


def _resolve(doc: Document, rules: Sequence[SourceRule]) -> bool:
    """Set the document's source as `resolve_source` says; True if the stored source changed."""
    source = resolve_source(doc.source, doc.url, doc.meta.get(SOURCE_FROM), rules)
    changed, doc.source = source != doc.source, source
    return changed


def process(
    docs: Callable[[], Iterable[Document]], job: MixJob, stats: StageStats, rejects: Rejects
) -> Iterator[Document]:
    """Copies of one shard's documents: every first copy, then every second copy, and so on.

    `docs` opens the shard's documents anew (one pass for the first copies, one per further copy), the
    one difference from the other stages' `process(docs, params, stats, rejects)`."""
    plan, seed, rules = job.plan, job.params.seed, job.params.source_rules
    most = 0
    for doc in counted(docs(), stats):
        if _resolve(doc, rules):
            stats.count("source_changed")
        stats.count(f"docs_in.{doc.source}")
        stats.count(f"chars_in.{doc.source}", len(doc.text))
        if doc.source not in plan.sources:
            rejects.add(doc, DROP_UNWEIGHTED, {"source": doc.source})
            continue
        n = n_copies(doc, plan, seed)
        if n == 0:
            rejects.add(doc, DROP_DOWNSAMPLED, {"source": doc.source, "rate": round(plan.sources[doc.source].rate, 6)})
            continue
        stats.docs_out += 1
        stats.count(f"docs_out.{doc.source}")
        most = max(most, n)
        yield _copy(doc, 0, stats)
    for k in range(1, most):
        for doc in docs():
            _resolve(doc, rules)
            if doc.source in plan.sources and n_copies(doc, plan, seed) > k:
                yield _copy(doc, k, stats)


def is_anneal(doc: Document, plan: MixPlan) -> bool:
    q = doc.meta.get("quality_score")
    return plan.anneal_threshold is not None and q is not None and q == q and q >= plan.anneal_threshold


@task
def mix_count_shard(src: str, out_dir: str, index: int, params: MixParams) -> ShardCounts:
    """Phase 1: per-source counts of one input shard (writes nothing; `out_dir` only keeps the shard-task
    signature `map_shards` maps)."""
    with_quality = params.anneal_fraction > 0
    names = read_schema(src).names
    if with_quality and "quality_score" not in names:
        raise ValueError(
            f"{src}: mix.anneal_fraction={params.anneal_fraction} needs a quality_score column, which "
            f"this shard lacks; run the quality stage upstream or set mix.anneal_fraction: 0"
        )
    cols = (
        ["id", "text", "source"]
        + (["url", SOURCE_FROM] if SOURCE_FROM in names else [])
        + (["quality_score"] if with_quality else [])
    )
    counts = count_batches(iter_batches(src, columns=cols), params.seed, with_quality, params.source_rules)
    return ShardCounts(index=index, counts=counts)


@task
def mix_shard(src: str, out_dir: str, index: int, job: MixJob) -> MixShardResult:
    """Phase 2: write the sampled copies of one input shard (main part, anneal part, rejected)."""
    stats = StageStats()
    extra = extra_fields(read_schema(src)) + [REPEAT_FIELD]
    name = paths.shard_name(index)
    kept, rejected = open_shard_writers(out_dir, index, extra)
    anneal = (
        DocumentWriter(paths.join(out_dir, ANNEAL_DIR, name), extra=extra)
        if job.plan.anneal_threshold is not None
        else None
    )
    with kept, rejected, anneal if anneal is not None else nullcontext():
        for doc in process(lambda: read_documents(src), job, stats, Rejects(rejected, stats)):
            dest = anneal if anneal is not None and is_anneal(doc, job.plan) else kept
            dest.write(doc)
            if dest is anneal:
                stats.count("anneal_copies")
                stats.count("anneal_chars", len(doc.text))
    stats.bytes_out = kept.text_bytes + (anneal.text_bytes if anneal is not None else 0)
    return MixShardResult(
        index=index,
        stats=stats,
        shard=_shard_info(kept, kept_name(index)),
        rejected=_shard_info(rejected, f"rejected/{name}"),
        anneal=_shard_info(anneal, f"{ANNEAL_DIR}/{name}") if anneal is not None else None,
    )


def _shard_info(writer: DocumentWriter, name: str) -> ShardInfo:
    fs, p = paths.filesystem(writer.path)
    return ShardInfo(name=name, rows=writer.rows, bytes=int(fs.size(p)))
