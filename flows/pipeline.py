"""pipeline_flow (`pretrain`): runs the stage flows in order, passing each output version on.

Stages run in `STAGE_ORDER` (ingest -> langid -> quality -> dedup -> decontaminate -> mix -> tokenize ->
train), restricted by `only` / `from_stage` / `to_stage`. A stage that is not selected is not run; the
next selected stage reads its upstream's `latest` complete version from disk. Each stage reuses its
version when it is already complete, so re-running after a failure recomputes only from the failed
stage on. `force` recomputes that stage even if complete, and everything after it in the selection.
"""

import os
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Optional

from prefect import flow, get_run_logger

from flows.config import PipelineConfig, load_config
from flows.decontaminate import decontaminate_flow
from flows.decontaminate import report_markdown as decontaminate_report
from flows.dedup import dedup_flow
from flows.dedup import report_markdown as dedup_report
from flows.ingest import ingest_flow
from flows.ingest import report_markdown as ingest_report
from flows.interrupt import note_stage
from flows.langid import langid_flow
from flows.langid import report_markdown as langid_report
from flows.mix import mix_flow, mix_report
from flows.quality import quality_flow
from flows.quality import report_markdown as quality_report
from flows.quality_classifier import report_markdown as quality_classifier_report
from flows.stage import SHARD_NOTE, ReportFn, task_runner
from flows.summary import publish_summary
from flows.tokenization import tokenization_flow, tokenize_report
from flows.train import report_markdown as train_report
from flows.train import train_flow
from storage import paths
from storage.errors import describe_os_error
from storage.manifest import STAGE_ORDER, Stage, load_manifest

# Stage -> call(config, data_root, input_version, force) -> version. Each stage issue adds its line.
StageCall = Callable[[PipelineConfig, str, str, bool], str]
STAGES: dict[Stage, StageCall] = {
    Stage.INGEST: lambda c, root, inp, force: ingest_flow.with_options(task_runner=task_runner(c.workers))(
        params=c.ingest, data_root=root, force=force, demo_pages=c.demo_pages
    ),
    Stage.LANGID: lambda c, root, inp, force: langid_flow.with_options(task_runner=task_runner(c.workers))(
        params=c.langid, data_root=root, input_version=inp, force=force
    ),
    Stage.QUALITY: lambda c, root, inp, force: quality_flow.with_options(task_runner=task_runner(c.workers))(
        params=c.quality, data_root=root, input_version=inp, force=force
    ),
    Stage.DEDUP: lambda c, root, inp, force: dedup_flow.with_options(task_runner=task_runner(c.workers))(
        params=c.dedup, data_root=root, input_version=inp, force=force
    ),
    Stage.DECONTAMINATE: lambda c, root, inp, force: decontaminate_flow.with_options(
        task_runner=task_runner(c.workers)
    )(params=c.decontaminate, data_root=root, input_version=inp, force=force),
    Stage.MIX: lambda c, root, inp, force: mix_flow.with_options(task_runner=task_runner(c.workers))(
        params=c.mix, data_root=root, input_version=inp, force=force
    ),
    Stage.TOKENIZE: lambda c, root, inp, force: tokenization_flow.with_options(task_runner=task_runner(c.workers))(
        params=c.tokenize, data_root=root, input_version=inp, force=force
    ),
    Stage.TRAIN: lambda c, root, inp, force: train_flow(params=c.train, data_root=root, input_version=inp, force=force),
}
# Stage -> markdown report used by the summary artifact and `pretrain inspect`.
REPORTS: dict[Stage, ReportFn] = {
    Stage.INGEST: ingest_report,
    Stage.LANGID: langid_report,
    Stage.QUALITY: quality_report,
    Stage.QUALITY_CLASSIFIER: quality_classifier_report,
    Stage.DEDUP: dedup_report,
    Stage.DECONTAMINATE: decontaminate_report,
    Stage.MIX: mix_report,
    Stage.TOKENIZE: tokenize_report,
    Stage.TRAIN: train_report,
}


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and the cause."""

    def __init__(self, stage: Stage, cause: BaseException, stage_dir: str | None = None):
        self.stage = stage
        shards = [n.removeprefix(SHARD_NOTE) for n in getattr(cause, "__notes__", []) if n.startswith(SHARD_NOTE)]
        where = f" on {shards[0]}" if shards else ""
        what = describe_os_error(cause, stage_dir) or f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage '{stage}' failed{where}: {what}")


# Where to look when a stage leaves no documents for the next one.
_EMPTY_HINTS: dict[Stage, str] = {
    Stage.INGEST: "check that the inputs are WARC/WET files with HTML responses (`pretrain inspect ingest --rejected`)",
    Stage.LANGID: "widen langid.languages (an empty list keeps every language) or lower langid.threshold",
    Stage.QUALITY: "add inputs, widen langid.languages, or enforce fewer filters (quality.enforce_filters)",
    Stage.DEDUP: "add inputs",
    Stage.DECONTAMINATE: "add inputs, or check the benchmark files (`pretrain inspect decontaminate --rejected`)",
    Stage.MIX: "check mix.weights against the sources present (`pretrain inspect mix`)",
}


class NothingLeft(ValueError):
    """The previous stage kept no document, so the next one has nothing to work on."""


def check_documents_left(root: str, stage: Stage, version: str, next_stage: Stage) -> None:
    """Stop before `next_stage` with the numbers and the fix when `stage@version` kept no document."""
    if stage not in _EMPTY_HINTS:
        return
    m = load_manifest(root, stage, version)
    if m.stats.docs_out > 0:
        return
    dropped = ", ".join(f"{r} {n}" for r, n in sorted(m.stats.dropped.items(), key=lambda kv: -kv[1])) or "none"
    raise NothingLeft(
        f"{stage}@{version} kept 0 of {m.stats.docs_in} documents (dropped: {dropped}), so "
        f"{next_stage} and the stages after it have nothing to work on. See what was dropped with "
        f"`pretrain inspect {stage} --rejected`; then {_EMPTY_HINTS[stage]}"
    )


def config_file(config_path: str) -> str:
    """`config_path` as a real path inside the working directory (the deployment's); it must be relative,
    without `..`, and not a link leading out, so a run's parameters cannot make the worker read any file."""
    cwd = os.path.realpath(os.getcwd())
    rule = (
        f"config_path must be a relative path inside the deployment's working directory ({cwd}), without "
        f"'..', e.g. configs/my-run.yaml"
    )
    parts = PurePosixPath(config_path.replace("\\", "/")).parts
    if not config_path.strip() or "://" in config_path or os.path.isabs(config_path) or ".." in parts:
        raise ValueError(rule)
    real = os.path.realpath(os.path.join(cwd, config_path))
    if not real.startswith(cwd.rstrip(os.sep) + os.sep):
        raise ValueError(f"{rule} (this one leads out of it through a symbolic link)")
    return real


def select_stages(
    only: Optional[Stage] = None, from_stage: Optional[Stage] = None, to_stage: Optional[Stage] = None
) -> list[Stage]:
    """The implemented stages to run, in order; errors name the allowed values."""
    available = [s for s in STAGE_ORDER if s in STAGES]
    for name, s in (("only", only), ("from_stage", from_stage), ("to_stage", to_stage)):
        if s is not None and s not in STAGES:
            raise ValueError(f"{name}={s}: stage not available; choose one of {[str(x) for x in available]}")
    if only is not None:
        if from_stage is not None or to_stage is not None:
            raise ValueError("only cannot be combined with from_stage/to_stage")
        return [only]
    lo = available.index(from_stage) if from_stage else 0
    hi = available.index(to_stage) if to_stage else len(available) - 1
    if lo > hi:
        raise ValueError(f"from_stage={from_stage} comes after to_stage={to_stage}")
    return available[lo : hi + 1]


@flow(name="pretrain", log_prints=True)
def pipeline_flow(
    config: PipelineConfig = PipelineConfig(),
    data_root: Optional[str] = None,
    only: Optional[Stage] = None,
    from_stage: Optional[Stage] = None,
    to_stage: Optional[Stage] = None,
    force: Optional[Stage] = None,
    config_path: Optional[str] = None,
) -> dict[str, str]:
    """Run the selected stages; returns {stage: version}.

    Args:
        config: Every stage's params, inline (the defaults run the demo crawl end to end).
        data_root: Where stage versions live; empty = $PRETRAIN_DATA_ROOT, else ./pretrain-data.
        only: Run just this stage, on the latest complete upstream version.
        from_stage: First stage to run (earlier stages are read from disk).
        to_stage: Last stage to run.
        force: Recompute this stage even if its version is complete, and every selected stage after it.
        config_path: A YAML config file, a relative path inside the deployment's working directory
            (no '..', no absolute path), instead of the inline config; leave the inline config at its
            defaults when you use it.
    """
    log = get_run_logger()
    note_stage(None)  # records this run, so an interrupted CLI run can mark it Cancelled
    started = time.time()
    if config_path is not None:
        if config != PipelineConfig():
            raise ValueError(
                f"config_path={config_path!r} and an inline config were both given; "
                f"pass one of them (leave config at its defaults to use the file)"
            )
        config = load_config(config_file(config_path))
    root = paths.resolve_data_root(data_root)
    selected = select_stages(only, from_stage, to_stage)
    versions: dict[str, str] = {}
    forcing = False
    previous: Optional[str] = None
    for i, stage in enumerate(selected):
        forcing = forcing or stage == force
        input_version = previous or "latest"
        try:
            if previous is not None:
                check_documents_left(root, selected[i - 1], previous, stage)
            previous = STAGES[stage](config, root, input_version, forcing)
        except Exception as exc:
            log.error("stage '%s' failed; upstream versions %s are complete and will be reused", stage, versions)
            publish_summary(root, versions, started, failed=(stage, exc))
            raise StageFailed(stage, exc, paths.stage_dir(root, str(stage))) from exc
        versions[str(stage)] = previous
    publish_summary(root, versions, started)
    log.info("pipeline done: %s", " -> ".join(f"{s}@{v}" for s, v in versions.items()))
    return versions
