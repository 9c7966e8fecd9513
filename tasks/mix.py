"""mix: weighted, seeded sampling across sources -> the `mix` version (documents, repeats included).

Input: the `decontaminate` version (documents with `source`; `quality_score` when annealing).
Output: `part-NNNNN.parquet` per input shard with the sampled copies, `anneal/part-NNNNN.parquet`
when `anneal_fraction > 0`, and `rejected/part-NNNNN.parquet`.

1. Count (`mix_count_shard`, a task per shard): documents and characters per source, and each
   source's characters per bucket of the document's key u = hash64("mix:<seed>:<id>") / 2^64
   (and per quality-score bin when annealing).
2. Plan (`plan_mix`, in the flow): weights normalised to w_s, budget T in characters, target
   t_s = w_s T, rate r_s = t_s / available_s (epochs over the source). A source needing
   r_s > max_repeats is short: an error naming it and by how much, or with `allow_shortfall` it is
   capped and the rest of the budget is shared among the other sources by weight (water-filling),
   reported as renormalised. A weighted source with no documents is short by its whole target.
   Default budget: the smallest total that uses every document at least once (max_s avail_s / w_s),
   capped at the largest total that no source exceeds with max_repeats (min_s max_repeats avail_s /
   w_s): scarce sources are up-sampled up to max_repeats before abundant ones are down-sampled.
3. Sample (`mix_shard`): a document gets floor(r_s) copies plus one if u < threshold_s, where the
   threshold is read off the key histogram so the extra copies hold frac(r_s) of the source's
   characters (exact up to one document). Copy k > 0 has id `<id>#r<k>` and `repeat = k`. Copies
   are written in passes (every first copy of the shard, then every second copy, ...) so repeats
   of a document do not sit next to each other in a packed sequence. No Python global RNG.

Counting: `docs_in`/`docs_out` count input documents (kept once however many copies); shard rows
count copies (`counters`: `copies`, `repeat_copies`, `chars_unique` (of first copies), `anneal_copies`,
`anneal_chars`, per source `docs_in.<s>`, `chars_in.<s>`, `docs_out.<s>`, `copies.<s>`, `chars_out.<s>`).
Column written: `repeat` (int32).
Drop reasons: `mix_downsampled` (key outside the sample), `source_not_in_mix` (no positive weight).
Annealing: documents with `quality_score` >= a threshold chosen so they hold ~`anneal_fraction` of
the mixed characters go to `anneal/` (all their copies). max_repeats 4: Muennighoff et al. 2023,
"Scaling Data-Constrained Language Models" (repeating more than ~4 epochs stops paying off).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from pydantic import BaseModel, Field, model_validator

from storage import paths
from storage.documents import Document, DocumentWriter, extra_fields, iter_batches, read_documents, read_schema
from storage.manifest import ShardInfo, Stage
from storage.params import StageParams
from storage.shards import Rejects, ShardResult, counted, open_shard_writers
from storage.stats import StageStats
from tasks.text import hash64

STAGE = Stage.MIX
STAGE_VERSION = 1
DROP_DOWNSAMPLED = "mix_downsampled"
DROP_UNWEIGHTED = "source_not_in_mix"
ANNEAL_DIR = "anneal"
REPEAT_FIELD = pa.field("repeat", pa.int32())
HASH_BUCKETS = 4096
QUALITY_BINS = 1000
# The demo crawl's sources (tasks/sources.py), weighted towards reference text over generic web pages.
DEFAULT_WEIGHTS = {"web": 0.40, "wikipedia": 0.20, "news": 0.12, "academic": 0.10, "code": 0.10, "forum": 0.08}


class MixParams(StageParams):
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Target share of the mixed characters per source (normalised to sum 1). Sources of the input "
                    "that are absent here or weighted 0 are left out (reason source_not_in_mix).")
    budget_chars: Optional[int] = Field(None, ge=1, description="Total characters of the mix. Default (with "
                                        "budget_tokens unset): use every document at least once at the target "
                                        "ratios, up-sampling scarce sources up to max_repeats.")
    budget_tokens: Optional[int] = Field(None, ge=1, description="Total budget in tokens, converted to characters "
                                         "with chars_per_token (an estimate: the tokenizer is trained later).")
    chars_per_token: float = Field(4.0, gt=0, le=100, description="Characters per token for budget_tokens.")
    max_repeats: float = Field(4.0, ge=1, le=64, description="Most epochs over any source (up-sampling limit).")
    allow_shortfall: bool = Field(False, description="When a source cannot reach its target within max_repeats "
                                  "(or is missing), cap it and share its deficit among the others instead of "
                                  "failing; the report shows the renormalised shares.")
    anneal_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the mixed characters, highest "
                                   "quality_score first, written to anneal/ for the end of training (0 = off).")
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
        q = (np.asarray(self.quality_chars or [0] * QUALITY_BINS) + np.asarray(o.quality_chars or [0] * QUALITY_BINS)
             if (self.quality_chars or o.quality_chars) else np.zeros(0, dtype=np.int64))
        return SourceCounts(docs=self.docs + o.docs, chars=self.chars + o.chars,
                            key_chars=(np.asarray(self.key_chars) + np.asarray(o.key_chars)).tolist(),
                            quality_chars=q.tolist())


class SourcePlan(BaseModel):
    weight: float = Field(description="Normalised target share.")
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
    anneal_threshold: Optional[float] = None


class MixJob(StageParams):
    """What a `mix_shard` task needs: the params and the global plan."""
    params: MixParams
    plan: MixPlan


class MixShardResult(ShardResult):
    anneal: Optional[ShardInfo] = None


def sample_key(salt: str, seed: int, doc_id: str) -> float:
    """Deterministic uniform number in [0, 1) for a document (salted per use, seeded)."""
    return hash64(f"{salt}:{seed}:{doc_id}") / 2.0**64


def count_batches(batches: Iterable[pa.RecordBatch], seed: int, with_quality: bool) -> dict[str, SourceCounts]:
    """Documents, characters and key / quality histograms per source."""
    hists: dict[str, list[np.ndarray]] = {}
    totals: dict[str, list[int]] = {}
    for b in batches:
        chars = pc.fill_null(pc.utf8_length(b.column("text")), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        keys = np.array([int(sample_key("mix", seed, i) * HASH_BUCKETS) for i in b.column("id").to_pylist()],
                        dtype=np.int64)
        quality = (np.nan_to_num(pc.fill_null(b.column("quality_score").cast(pa.float64()), -1.0).to_numpy(
            zero_copy_only=False), nan=-1.0) if with_quality else None)
        sources = np.array([s or "web" for s in b.column("source").to_pylist()], dtype=object)
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
    return {s: SourceCounts(docs=totals[s][0], chars=totals[s][1], key_chars=h[0].tolist(),
                            quality_chars=h[1].tolist() if with_quality else [])
            for s, h in sorted(hists.items())}


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
    return min(1.0, (b + (target - before) / key_chars[b]) / len(key_chars))


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


def _shortfall_error(short: dict[str, float], wanted: dict[str, float], avail: dict[str, int],
                     budget: float, params: MixParams, present: list[str]) -> ValueError:
    lines = [f"mix: the target mixture cannot be met within max_repeats={params.max_repeats:g}:"]
    for s, gap in short.items():
        if avail[s] == 0:
            lines.append(f"  - source '{s}' has weight {params.weights[s]:g} but no documents in the input "
                         f"(sources present: {', '.join(present) or 'none'})")
        else:
            lines.append(f"  - source '{s}' is short by {gap:,.0f} characters ({gap / wanted[s]:.0%} of its target "
                         f"{wanted[s]:,.0f} of a {budget:,.0f}-character budget): it has {avail[s]:,} characters, "
                         f"x max_repeats {params.max_repeats:g} = {avail[s] * params.max_repeats:,.0f}")
    names = ", ".join(f"mix.weights.{s}" for s in short)
    lines.append(f"Fix: lower mix.budget_chars/mix.budget_tokens or {names}, raise mix.max_repeats, or set "
                 f"mix.allow_shortfall: true (the deficit is then shared among the other sources and reported).")
    return ValueError("\n".join(lines))


def plan_mix(counts: dict[str, SourceCounts], params: MixParams) -> MixPlan:
    """Per-source targets, rates and key thresholds (see the module docstring)."""
    raw = {s: w for s, w in params.weights.items() if w > 0}
    w = {s: v / sum(raw.values()) for s, v in raw.items()}
    avail = {s: counts[s].chars if s in counts else 0 for s in w}
    caps = {s: params.max_repeats * avail[s] for s in w}
    present = [s for s in counts if counts[s].chars > 0]
    if not any(avail.values()):
        raise ValueError(f"mix: none of the weighted sources {sorted(w)} has any text in the input (sources "
                         f"present: {present or 'none'}); set mix.weights for the input's sources")
    budget = params.budget()
    if budget is None:
        have = {s: v for s, v in w.items() if avail[s] > 0}
        wp = {s: v / sum(have.values()) for s, v in have.items()}
        total = min(max(avail[s] / wp[s] for s in wp), min(caps[s] / wp[s] for s in wp))
        wanted = {s: w[s] * total / sum(have.values()) for s in w}
        targets = {s: wp.get(s, 0.0) * total for s in w}
    else:
        total = budget
        wanted = {s: w[s] * total for s in w}
        targets = allocate(w, caps, total)
    short = {s: wanted[s] - targets[s] for s in w if wanted[s] - targets[s] > 1e-6 * max(wanted[s], 1.0)}
    if short and not params.allow_shortfall:
        raise _shortfall_error(short, wanted, avail, total, params, present)
    sources = {}
    for s in w:
        rate = targets[s] / avail[s] if avail[s] else 0.0
        rate = float(round(rate)) if abs(rate - round(rate)) < 1e-9 else rate
        full = int(math.floor(rate))
        hist = np.asarray(counts[s].key_chars if s in counts else [0] * HASH_BUCKETS, dtype=np.int64)
        sources[s] = SourcePlan(weight=w[s], available_docs=counts[s].docs if s in counts else 0,
                                available_chars=avail[s], target_chars=targets[s], wanted_chars=wanted[s],
                                rate=rate, full_copies=full, threshold=key_threshold(hist, rate - full))
    excluded = {s: c.docs for s, c in counts.items() if s not in w}
    budget_from: Literal["budget_chars", "budget_tokens", "all_data"] = (
        "budget_tokens" if params.budget_tokens is not None else "budget_chars" if params.budget_chars else "all_data")
    plan = MixPlan(budget_chars=total, budget_from=budget_from, sources=sources, excluded=excluded,
                   renormalised=bool(short))
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
    return (b + 1 - (target - before) / expected[b]) / QUALITY_BINS


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


def process(read: Callable[[], Iterable[Document]], job: MixJob, stats: StageStats,
            rejects: Rejects) -> Iterator[Document]:
    """Copies of one shard's documents: every first copy, then every second copy, and so on."""
    plan, seed = job.plan, job.params.seed
    most = 0
    for doc in counted(read(), stats):
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
        for doc in read():
            if doc.source in plan.sources and n_copies(doc, plan, seed) > k:
                yield _copy(doc, k, stats)


def is_anneal(doc: Document, plan: MixPlan) -> bool:
    q = doc.meta.get("quality_score")
    return plan.anneal_threshold is not None and q is not None and q == q and q >= plan.anneal_threshold


@task
def mix_count_shard(src: str, params: MixParams) -> dict[str, SourceCounts]:
    """Phase 1: per-source counts of one input shard."""
    with_quality = params.anneal_fraction > 0
    if with_quality and "quality_score" not in read_schema(src).names:
        raise ValueError(f"{src}: mix.anneal_fraction={params.anneal_fraction} needs a quality_score column, which "
                         f"this shard lacks; run the quality stage upstream or set mix.anneal_fraction: 0")
    cols = ["id", "text", "source"] + (["quality_score"] if with_quality else [])
    return count_batches(iter_batches(src, columns=cols), params.seed, with_quality)


@task
def mix_shard(src: str, out_dir: str, index: int, job: MixJob) -> MixShardResult:
    """Phase 2: write the sampled copies of one input shard (main part, anneal part, rejected)."""
    stats = StageStats()
    extra = extra_fields(read_schema(src)) + [REPEAT_FIELD]
    name = paths.shard_name(index)
    kept, rejected = open_shard_writers(out_dir, index, extra)
    anneal = (DocumentWriter(paths.join(out_dir, ANNEAL_DIR, name), extra=extra)
              if job.plan.anneal_threshold is not None else None)
    with kept, rejected, (anneal if anneal is not None else nullcontext()):
        for doc in process(lambda: read_documents(src), job, stats, Rejects(rejected, stats)):
            dest = anneal if anneal is not None and is_anneal(doc, job.plan) else kept
            dest.write(doc)
            if dest is anneal:
                stats.count("anneal_copies")
                stats.count("anneal_chars", len(doc.text))
    stats.bytes_out = kept.text_bytes + (anneal.text_bytes if anneal is not None else 0)
    return MixShardResult(index=index, stats=stats, shard=_shard_info(kept, name),
                          rejected=_shard_info(rejected, f"rejected/{name}"),
                          anneal=_shard_info(anneal, f"{ANNEAL_DIR}/{name}") if anneal is not None else None)


def _shard_info(writer: DocumentWriter, name: str) -> ShardInfo:
    fs, p = paths.filesystem(writer.path)
    return ShardInfo(name=name, rows=writer.rows, bytes=int(fs.size(p)))

