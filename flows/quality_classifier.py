"""train_quality_classifier_flow (`pretrain train-quality-classifier`): -> `quality_classifier/<version>/`.

Trains the fastText quality classifier (`tasks.quality.classifier`) and stores it as a versioned
artifact: `model.bin` plus a manifest whose extras hold the held-out precision / recall / accuracy /
AUC, where the labels came from (files, crawl sample, or bootstrapped from the heuristic layer) and
the example counts. `min_examples_per_class` (the quality stage passes its `classifier_min_examples`)
refuses, before any fastText training, labels that could never pass the quality stage's validation bar
(`TooFewExamples`: nothing is committed). The version hashes the params, the langid version the crawl
documents came from (when any are used) and a content fingerprint of the reference files, per class and
in order (`tasks.ingest.sources.input_fingerprint`: names relative to the data root or bare file names,
sizes, content digests; no absolute path, no mtime), so a rerun, also on a copied or moved data root,
reuses it (the params still hold the `positive`/`negative` paths as written in the config).
The quality stage references a classifier by this version id. The report is
`tasks.quality.report.classifier_report`.
"""

from pathlib import Path
from typing import Any, Optional

from prefect import flow, task

from flows.stage import StageOutput, StageRun, run_stage, task_runner
from storage import paths
from storage.manifest import ShardInfo, content_id
from storage.stats import StageStats
from tasks.ingest.sources import input_fingerprint
from tasks.quality.classifier import MODEL_FILE, STAGE, STAGE_VERSION, QualityClassifierParams, train_classifier
from tasks.quality.report import classifier_report


@task(task_run_name="train-quality-classifier")
def train_task(
    params: QualityClassifierParams, crawl_shards: list[str], out_dir: str, min_examples_per_class: int = 2
) -> dict[str, Any]:
    return train_classifier(params, crawl_shards, Path(out_dir), min_examples_per_class)


def reference_files(params: QualityClassifierParams, data_root: Optional[str]) -> dict[str, str]:
    """The version's `files` input: the content fingerprint of each class's reference files (location-free)."""
    root = paths.resolve_data_root(data_root)
    fingerprint = {
        "positive": input_fingerprint(params.positive, root),
        "negative": input_fingerprint(params.negative, root),
    }
    return {"files": content_id(fingerprint)}


@flow(name="train-quality-classifier", task_runner=task_runner(1))
def train_quality_classifier_flow(
    params: QualityClassifierParams = QualityClassifierParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
    min_examples_per_class: int = 2,
) -> str:
    """Train (or reuse) a quality classifier; returns its version id. Raises `TooFewExamples` (a ValueError)
    when a class has fewer than `min_examples_per_class` examples (at least 2 are always needed)."""
    crawl = not (params.positive and params.negative)  # crawl documents are needed for one class at least
    files = params.positive + params.negative

    def phases(run: StageRun) -> StageOutput:
        assert run.writer is not None
        shards = run.input_shard_paths() if crawl else []
        facts = train_task(params, shards, run.writer.local_path(), min_examples_per_class)
        n = facts["n_examples"]
        stats = StageStats(docs_in=n, docs_out=n, counters={f"examples.{k}": v for k, v in facts["counts"].items()})
        return StageOutput([ShardInfo(name=MODEL_FILE, rows=n, bytes=facts["model_bytes"])], stats, extras=facts)

    return run_stage(
        STAGE,
        STAGE_VERSION,
        params,
        phases,
        data_root,
        input_version,
        force,
        extra_inputs=reference_files(params, data_root) if files else None,
        upstream="langid" if crawl else None,
        report=classifier_report,
    )
