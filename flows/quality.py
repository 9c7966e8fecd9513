"""quality_flow: `langid` -> `quality` (documents passing the heuristic filters and the classifier threshold).

Phases (`tasks.quality`): resolve the classifier (none by default; an explicit version, `latest`, or
`bootstrap`: the classifier trained on this langid version by `train_quality_classifier_flow`, trained
once, then reused as its own versioned artifact; not trained at all when the langid version cannot supply
`classifier_min_examples` documents per class) -> check it against the validation bar (below it, the
classifier annotates only: no score threshold) -> score every shard into the score cache, the side
artifact `quality_scores/<scores version>/` (its own manifest; named in the quality manifest's `inputs`),
or reuse it -> with `keep_top_fraction`, one global threshold over the cached scores -> map the cheap
filter over the shards. Changing only thresholds reuses the scores. The report is `tasks.quality.report`.
"""

import logging
import time
from typing import Any, Optional

from prefect import flow

from flows.quality_classifier import train_quality_classifier_flow
from flows.stage import StageOutput, StageRun, map_shards, run_stage, task_runner
from storage import paths
from storage.artifacts import ArtifactWriter, ensure_artifact
from storage.documents import ShardResult
from storage.manifest import Manifest, ShardInfo, compute_version, load_manifest
from storage.stats import StageStats
from tasks.quality import (
    BOOTSTRAP,
    SCORES_KIND,
    SCORES_VERSION,
    STAGE,
    STAGE_VERSION,
    FilterJob,
    QualityParams,
    ScoreFilterJob,
    ScoreJob,
    below_bar_warning,
    candidate_documents,
    quality_filter_shard,
    quality_score_filter_shard,
    quality_score_shard,
    top_fraction_threshold,
)
from tasks.quality.classifier import FIX_HINT, MODEL_FILE, QualityClassifierParams, TooFewExamples
from tasks.quality.report import report

log = logging.getLogger(__name__)


def resolve_classifier(root: str, params: QualityParams, langid: Manifest) -> tuple[Optional[Manifest], Optional[str]]:
    """The classifier manifest the stage scores with, or None (use_classifier off, or bootstrapping skipped:
    then the second value says why)."""
    if not params.use_classifier or params.classifier_version is None:
        return None, None  # no classifier asked for: nothing is trained (issue 14: 17 s for an idle classifier)
    if params.classifier_version == BOOTSTRAP:
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
    run: StageRun,
    version: str,
    inputs: dict[str, str],
    sources: list[str],
    job: ScoreJob,
    force: bool,
    filter_job: Optional[FilterJob] = None,
) -> tuple[str, bool, dict[str, int], Optional[list[ShardResult]]]:
    """Score every shard into the `quality_scores` artifact `version`, or reuse it when complete; returns
    (its directory, reused, the score counters, the filtered shards). With `filter_job` (a threshold known
    before scoring) a fresh score cache is built by the fused task, which filters each shard in the same
    pass: the filtered shards come back with it (None when the cache was reused: filter it then)."""
    directory = paths.version_dir(run.root, SCORES_KIND, version)
    filtered: list[ShardResult] = []

    def build(writer: ArtifactWriter) -> Manifest:
        t0 = time.perf_counter()
        if filter_job is None:
            results = map_shards(run, quality_score_shard, sources, job, out_dir=directory)
        else:
            fused = map_shards(run, quality_score_filter_shard, sources, ScoreFilterJob(score=job, filter=filter_job))
            results = [r.score for r in fused]
            filtered.extend(r.result for r in fused)
        rows = sum(r.rows for r in results)
        counters = StageStats.merge_all([StageStats(counters=r.counters) for r in results]).counters
        stats = StageStats(docs_in=rows, docs_out=rows, seconds=time.perf_counter() - t0, counters=counters)
        shards = [ShardInfo(name=paths.shard_name(r.index), rows=r.rows, bytes=r.bytes) for r in results]
        extras = {"job": job.model_dump(mode="json"), "seconds": sum(r.seconds for r in results)}
        return writer.manifest(SCORES_VERSION, job.params.scoring_params(), shards, stats, extras=extras)

    m, reused = ensure_artifact(run.root, SCORES_KIND, version, build, inputs, force)
    assert len(m.shards) == len(sources), f"score cache {directory} has {len(m.shards)} shards, input {len(sources)}"
    log.info("%s %s@%s (%d documents)", "reused" if reused else "built", SCORES_KIND, version, m.stats.docs_in)
    return directory, reused, m.stats.counters, (filtered if filtered else None)


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
    below_bar = below_bar_warning(clf, params) if clf is not None else None
    warning = below_bar or warning
    if warning:
        log.warning("%s", warning)
    gates = clf is not None and below_bar is None
    classifier = {"quality_classifier": clf.version} if clf else {}
    scores_inputs = {"langid": langid.version, **classifier}
    scores_version = compute_version(SCORES_KIND, SCORES_VERSION, params.scoring_params(), scores_inputs)
    extras: dict[str, Any] = {
        "scores_version": scores_version,
        "classifier_version": clf.version if clf else None,
        "classifier_bootstrap": bool(clf and clf.extras.get("bootstrap")),
        "classifier_metrics": clf.extras.get("metrics") if clf else None,
        "classifier_gates": gates,
        "classifier_warning": warning,
    }

    def phases(run: StageRun) -> StageOutput:
        sources = run.input_shard_paths()
        job = ScoreJob(
            params=params,
            classifier_path=paths.join(paths.version_dir(root, clf.stage, clf.version), MODEL_FILE) if clf else None,
            classifier_max_chars=clf.params.get("max_chars", 100_000) if clf else 100_000,
        )
        scores_dir = paths.version_dir(root, SCORES_KIND, scores_version)
        # a threshold known before scoring: score and filter in one pass over the shards (issue 14)
        early = None if params.keep_top_fraction is not None else (params.min_score if gates else None)
        fused = (
            None
            if params.keep_top_fraction is not None
            else FilterJob(params=params, scores_dir=scores_dir, score_threshold=early)
        )
        scores_dir, reused, score_counters, results = ensure_scores(
            run, scores_version, scores_inputs, sources, job, force, fused
        )
        run.note_input(SCORES_KIND, scores_version)  # lineage only: the version id already covers its inputs
        threshold = early
        if results is None:  # scores reused, or keep_top_fraction: filter from the cache
            score_paths = [paths.join(scores_dir, paths.shard_name(i)) for i in range(len(sources))]
            if params.keep_top_fraction is not None and gates:
                threshold = top_fraction_threshold(score_paths, params)
            filter_job = FilterJob(params=params, scores_dir=scores_dir, score_threshold=threshold)
            results = map_shards(run, quality_filter_shard, sources, filter_job)
        stats = StageStats.merge_all([r.stats for r in results] + [StageStats(counters=score_counters)])
        return StageOutput(
            shards=[r.shard for r in results],
            stats=stats,
            rejected=[r.rejected for r in results],
            extras={**extras, "scores_reused": reused, "score_threshold": threshold},
        )

    return run_stage(
        STAGE,
        STAGE_VERSION,
        params,
        phases,
        root,
        langid.version,
        force,
        extra_inputs=classifier,
        report=report,
    )
