"""quality_flow: `langid` -> `quality` (documents passing the heuristic filters and the classifier threshold).

Phases (`tasks.quality`): resolve the classifier (an explicit version, `latest`, or, by default, the
bootstrap classifier trained on this langid version by `train_quality_classifier_flow`: trained once,
then reused as its own versioned artifact; not trained at all when the langid version cannot supply
`classifier_min_examples` documents per class) -> check it against the validation bar (below it, the
classifier annotates only: no score threshold) -> score every shard into the score cache
`quality/_scores/<scores version>/`, or reuse it -> with `keep_top_fraction`, one global threshold over
the cached scores -> map the cheap filter over the shards. Changing only thresholds reuses the scores.
The report (`quality-summary` artifact, `pretrain inspect quality`): score histogram, drops by filter.
"""

import json
import logging
import uuid
from typing import Any, Optional

from prefect import flow
from prefect.futures import wait
from prefect.utilities.annotations import unmapped

from flows.quality_classifier import train_quality_classifier_flow
from flows.stage import (
    abort_on_error,
    begin_stage,
    finish_stage,
    map_shards,
    publish,
    task_runner,
)
from storage import paths
from storage.documents import iter_batches
from storage.manifest import (
    Manifest,
    canonical_json,
    compute_version,
    load_manifest,
)
from storage.stats import StageStats
from tasks.quality import (
    SCORES_DIR,
    SCORES_META,
    SCORES_VERSION,
    STAGE,
    STAGE_VERSION,
    FilterPlan,
    QualityParams,
    ScorePlan,
    quality_filter_shard,
    quality_score_shard,
    top_fraction_threshold,
)
from tasks.quality.classifier import (
    FIX_HINT,
    MODEL_FILE,
    QualityClassifierParams,
    TooFewExamples,
    classifier_shortfall,
)
from tasks.quality.heuristics import FILTER_NAMES

log = logging.getLogger(__name__)


def candidate_documents(root: str, langid: Manifest, languages: list[str]) -> int:
    """Documents of the langid version in `languages` (the bootstrap's pool; reads one column)."""
    keep, n = set(languages), 0
    base = paths.version_dir(root, langid.stage, langid.version)
    for shard in langid.shards:
        for batch in iter_batches(paths.join(base, shard.name), columns=["language"]):
            n += sum(1 for lang in batch.column(0).to_pylist() if lang in keep)
    return n


def resolve_classifier(root: str, params: QualityParams, langid: Manifest) -> tuple[Optional[Manifest], Optional[str]]:
    """The classifier manifest the stage scores with, or None (use_classifier off, or bootstrapping skipped:
    then the second value says why)."""
    if not params.use_classifier:
        return None, None
    if params.classifier_version is None:
        n = candidate_documents(root, langid, params.classifier_languages)
        if n < 2 * params.classifier_min_examples:
            return None, (
                f"bootstrap classifier not trained: langid@{langid.version} has {n} documents in "
                f"{params.classifier_languages}, fewer than the {2 * params.classifier_min_examples} "
                f"needed for classifier_min_examples={params.classifier_min_examples} per class; "
                f"heuristics only. To silence this, {FIX_HINT}"
            )
        boot = QualityClassifierParams(
            languages=params.classifier_languages,
            filters=params.filters,
            filter_options=params.filter_options,
            datatrove_compatible=params.datatrove_compatible,
        )
        try:
            version = train_quality_classifier_flow(
                params=boot,
                data_root=root,
                input_version=langid.version,
                min_examples_per_class=params.classifier_min_examples,
            )
        except TooFewExamples as err:
            return None, f"bootstrap classifier not trained, heuristics only: {err}"
        return load_manifest(root, "quality_classifier", version), None
    try:
        return load_manifest(root, "quality_classifier", params.classifier_version), None
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"quality.classifier_version={params.classifier_version!r}: {err}; {FIX_HINT}"
        ) from None


def ensure_scores(
    root: str, scores_version: str, sources: list[str], plan: ScorePlan, force: bool
) -> tuple[str, bool, dict[str, int]]:
    """Score every shard into the cache, or reuse a complete one; returns (directory, reused, counters)."""
    fs, _ = paths.filesystem(root)
    base = paths.join(root, str(STAGE), SCORES_DIR)
    final = paths.join(base, scores_version)
    if fs.exists(paths.join(final, SCORES_META)) and not force:
        with fs.open(paths.join(final, SCORES_META), "r") as f:
            meta = json.load(f)
        assert len(meta["shards"]) == len(sources), (
            f"score cache {final} has {len(meta['shards'])} shards, input {len(sources)}"
        )
        log.info("reused quality scores %s (%d documents)", scores_version, sum(meta["shards"]))
        return final, True, meta["counters"]
    tmp = paths.join(base, f".tmp-{scores_version}-{uuid.uuid4().hex[:8]}")
    fs.makedirs(tmp, exist_ok=True)
    futures = quality_score_shard.map(sources, unmapped(tmp), list(range(len(sources))), unmapped(plan))
    try:
        results = sorted((f.result() for f in futures), key=lambda r: r.index)
        counters = StageStats.merge_all([StageStats(counters=r.counters) for r in results]).counters
        meta = {
            "scores_version": scores_version,
            "shards": [r.rows for r in results],
            "counters": counters,
            "seconds": sum(r.seconds for r in results),
            "plan": plan.model_dump(mode="json"),
        }
        with fs.open(paths.join(tmp, SCORES_META), "w") as f:
            f.write(canonical_json(meta))  # written last: the cache is complete only with it
        if fs.exists(final):  # forced rescore
            fs.rm(final, recursive=True)
        fs.mv(tmp, final, recursive=True)
    except BaseException:
        wait(futures)
        fs.rm(tmp, recursive=True)
        raise
    return final, False, counters


def histogram_rows(manifest: Manifest) -> list[str]:
    c = manifest.stats.counters
    bins = [c.get(f"score_bin.{i}", 0) for i in range(10)]
    top = max(bins) or 1
    rows = ["| quality_score | docs | |", "|---|---|---|"]
    return rows + [
        f"| {i / 10:.1f}-{(i + 1) / 10:.1f} | {n} | {'#' * round(30 * n / top)} |" for i, n in enumerate(bins)
    ]


def report_markdown(manifest: Manifest, root: str) -> str:
    x, c = manifest.extras, manifest.stats.counters
    lines = (
        [f"**Warning: the classifier drops nothing**: {x['classifier_warning']}", ""]
        if x.get("classifier_warning")
        else []
    )
    lines += [
        f"Classifier: {x.get('classifier_version') or 'off'}"
        + (" (bootstrapped from the heuristics)" if x.get("classifier_bootstrap") else "")
        + f"; score threshold {x.get('score_threshold')}; scores {x.get('scores_version')}"
        + (" (reused)" if x.get("scores_reused") else ""),
        "",
    ]
    if x.get("classifier_metrics"):
        m = x["classifier_metrics"]
        lines += [
            f"Classifier held-out: precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
            f"AUC {m['auc']:.3f} (n={m['n']})",
            "",
        ]
    lines += ["## Score histogram (all scored documents)", ""] + histogram_rows(manifest)
    lines += [
        "",
        "## Drops by filter",
        "",
        "| filter | reason | docs failing | dropped (first enforced failure) |",
        "|---|---|---|---|",
    ]
    for f in FILTER_NAMES:
        for key in sorted(k for k in c if k.startswith(f"heuristic.{f}.")):
            lines.append(f"| {f} | {key.split('.', 2)[2]} | {c[key]} | |")
        if manifest.stats.dropped.get(f):
            lines.append(f"| {f} | (all reasons) | | {manifest.stats.dropped[f]} |")
    for reason in ("quality_score_low", "empty_text", "text_too_long"):
        if manifest.stats.dropped.get(reason):
            lines.append(f"| {reason} | | | {manifest.stats.dropped[reason]} |")
    return "\n".join(lines)


@flow(name="quality", task_runner=task_runner(2))
def quality_flow(
    params: QualityParams = QualityParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Langid documents -> documents passing the quality layers; returns the quality version id."""
    root = paths.resolve_data_root(data_root)
    langid = load_manifest(root, "langid", input_version)
    clf, warning = resolve_classifier(root, params, langid)
    shortfall = None
    if clf is not None:
        shortfall = classifier_shortfall(clf.extras, params.classifier_min_auc, params.classifier_min_examples)
    if clf is not None and shortfall:
        warning = (
            f"quality_classifier@{clf.version} is below the validation bar ({shortfall}): it only "
            f"annotates (quality_score stored, no quality_score_low drops). {FIX_HINT[0].upper()}"
            f"{FIX_HINT[1:]}, or lower classifier_min_auc / classifier_min_examples"
        )
    if warning:
        log.warning("%s", warning)
    gates = clf is not None and not shortfall
    inputs = {str("langid"): langid.version, **({str("quality_classifier"): clf.version} if clf else {})}
    scores_version = compute_version(f"{STAGE}{SCORES_DIR}", SCORES_VERSION, params.scoring_params(), inputs)
    run = begin_stage(
        STAGE,
        STAGE_VERSION,
        params,
        root,
        langid.version,
        force,
        extra_inputs={k: v for k, v in inputs.items() if k != str("langid")},
    )
    extras: dict[str, Any] = {
        "scores_version": scores_version,
        "classifier_version": clf.version if clf else None,
        "classifier_bootstrap": bool(clf and clf.extras.get("bootstrap")),
        "classifier_metrics": clf.extras.get("metrics") if clf else None,
        "classifier_gates": gates,
        "classifier_warning": warning,
    }
    if run.reused is not None:
        publish(run.reused, root, report_markdown, reused=True)
        return run.version
    try:
        sources = run.input_shard_paths()
        clf_path = paths.join(paths.version_dir(root, clf.stage, clf.version), MODEL_FILE) if clf else None
        plan = ScorePlan(
            params=params,
            classifier_path=clf_path,
            classifier_max_chars=clf.params.get("max_chars", 100_000) if clf else 100_000,
        )
        scores_dir, reused, score_counters = ensure_scores(root, scores_version, sources, plan, force)
        score_paths = [paths.join(scores_dir, paths.shard_name(i)) for i in range(len(sources))]
        threshold = (
            None
            if not gates
            else params.min_score
            if params.keep_top_fraction is None
            else top_fraction_threshold(score_paths, params)
        )
        extras.update(scores_reused=reused, score_threshold=threshold)
        results = map_shards(
            run,
            quality_filter_shard,
            sources,
            FilterPlan(params=params, scores_dir=scores_dir, score_threshold=threshold),
        )
    except BaseException:
        abort_on_error(run)
        raise
    stats = StageStats.merge_all([r.stats for r in results] + [StageStats(counters=score_counters)])
    finish_stage(
        run, [r.shard for r in results], [r.rejected for r in results], stats, extras=extras, report=report_markdown
    )
    return run.version
