"""train_quality_classifier_flow (`pretrain train-quality-classifier`): -> `quality_classifier/<version>/`.

Trains the fastText quality classifier (`tasks.quality.classifier`) and stores it as a versioned
artifact: `model.bin` plus a manifest whose extras hold the held-out precision / recall / accuracy /
AUC, where the labels came from (files, crawl sample, or bootstrapped from the heuristic layer) and
the example counts. `min_examples_per_class` (the quality stage passes its `classifier_min_examples`)
refuses, before any fastText training, labels that could never pass the quality stage's validation bar
(`TooFewExamples`: nothing is committed). The version hashes the params, the langid version the crawl documents
came from
(when any are used) and a fingerprint of the reference files, so a rerun reuses it. The quality stage
references a classifier by this version id.
"""

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from flows.stage import task_runner
from reports import version_summary as summary_markdown
from storage import paths
from storage.artifacts import ArtifactWriter as VersionWriter
from storage.manifest import (
    Manifest,
    ShardInfo,
    canonical_json,
    compute_version,
    is_complete,
    load_manifest,
    new_manifest,
    set_latest,
)
from storage.stats import StageStats
from tasks.ingest.sources import input_fingerprint
from tasks.quality import QualityParams
from tasks.quality.classifier import (
    MODEL_FILE,
    STAGE,
    STAGE_VERSION,
    QualityClassifierParams,
    classifier_shortfall,
    train_classifier,
)

log = logging.getLogger(__name__)


def report_markdown(manifest: Manifest, root: str) -> str:
    x = manifest.extras
    m = x.get("metrics", {})
    src = x.get("label_sources", {})
    lines = [f"Labels: positives from {src.get('positive')}, negatives from {src.get('negative')}."]
    if x.get("bootstrap"):
        lines.append(
            "**Bootstrapped**: no positive corpus was given, so the labels are the heuristic layer's verdicts "
            "(pass all filters = high quality). The classifier can only learn what the heuristics encode; "
            "train with `--positive` reference files for a DCLM-style classifier."
        )
    lines += ["", "## Held-out metrics (P(hq) >= 0.5 counts as high quality)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items()]
    lines += ["", "| examples | count |", "|---|---|"] + [f"| {k} | {v} |" for k, v in x.get("counts", {}).items()]
    bar = QualityParams.model_fields
    min_auc, min_n = bar["classifier_min_auc"].default, bar["classifier_min_examples"].default
    short = classifier_shortfall(x, min_auc, min_n)
    lines += [
        "",
        f"Validation bar of the quality stage (defaults: held-out AUC >= {min_auc}, >= {min_n} examples "
        f"per class): "
        + (
            f"**fails** ({short}); the quality stage will only annotate with it"
            if short
            else "passes; the quality stage may drop documents by its score"
        ),
    ]
    lines += [
        "",
        f"Model: `{MODEL_FILE}` ({x.get('model_bytes', 0) / 1e6:.1f} MB, sha256 {x.get('model_sha256', '')[:16]})",
    ]
    return "\n".join(lines)


def publish(manifest: Manifest, root: str, reused: bool = False) -> None:
    """`quality-classifier-stats` / `-summary` artifacts (artifact keys allow no underscore)."""
    if FlowRunContext.get() is None:
        return
    table = [{"metric": k, "value": v} for k, v in manifest.extras.get("metrics", {}).items()]
    table += [{"metric": "version", "value": manifest.version}, {"metric": "reused", "value": reused}]
    create_table_artifact(
        key="quality-classifier-stats",
        table=table,
        description=f"quality_classifier@{manifest.version}: held-out metrics",
    )
    create_markdown_artifact(
        key="quality-classifier-summary",
        markdown=summary_markdown(manifest, root, report_markdown, reused),
        description=f"quality_classifier@{manifest.version}: labels, metrics, model",
    )


@task(task_run_name="train-quality-classifier")
def train_task(
    params: QualityClassifierParams, crawl_shards: list[str], out_dir: str, min_examples_per_class: int = 2
) -> dict[str, Any]:
    return train_classifier(params, crawl_shards, Path(out_dir), min_examples_per_class)


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
    root = paths.resolve_data_root(data_root)
    inputs: dict[str, str] = {}
    shards: list[str] = []
    if not (params.positive and params.negative):  # crawl documents are needed for one class at least
        m = load_manifest(root, "langid", input_version)
        inputs[str("langid")] = m.version
        base = paths.version_dir(root, m.stage, m.version)
        shards = [paths.join(base, s.name) for s in m.shards]
    files = params.positive + params.negative
    if files:
        inputs["files"] = hashlib.sha256(canonical_json(input_fingerprint(files)).encode()).hexdigest()[:12]
    version = compute_version(STAGE, STAGE_VERSION, params.version_params(), inputs)
    if is_complete(root, STAGE, version) and not force:
        set_latest(root, STAGE, version)
        log.info("reused %s@%s", STAGE, version)
        publish(load_manifest(root, STAGE, version), root, reused=True)
        return version
    writer = VersionWriter(root, STAGE, version, replace=force)
    try:
        facts = train_task(params, shards, str(writer.local_tmp()), min_examples_per_class)
        n = facts["n_examples"]
        stats = StageStats(docs_in=n, docs_out=n, counters={f"examples.{k}": v for k, v in facts["counts"].items()})
        manifest = new_manifest(
            STAGE,
            STAGE_VERSION,
            version,
            params.model_dump(mode="json"),
            inputs,
            [ShardInfo(name=MODEL_FILE, rows=n, bytes=facts["model_bytes"])],
            [],
            stats,
            facts,
        )
        writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    log.info("committed %s@%s: %s", STAGE, version, facts["metrics"])
    publish(manifest, root)
    return version
