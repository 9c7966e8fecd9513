"""pipeline_flow (`pretrain`): runs the stage flows in order, passing each output version on.

Stages run in `STAGE_ORDER` (ingest -> langid -> quality -> clean -> dedup -> decontaminate -> mix -> tokenize ->
train -> eval), restricted by `only` / `from_stage` / `to_stage`. A stage that is not selected is not run; the
next selected stage reads its upstream's `latest` complete version from disk. Each stage reuses its
version when it is already complete, so re-running after a failure recomputes only from the failed
stage on. `force` recomputes that stage even if complete, and everything after it in the selection.
"""

import logging
import os
import time
from pathlib import PurePosixPath
from typing import Any, Optional

from prefect import flow, get_run_logger

from flows.config import load_config
from flows.interrupt import note_stage
from flows.stage import task_runner
from flows.stages import (
    PIPELINE,
    REPORTS,
    ROWS,
    STAGE_ORDER,
    PipelineConfig,
    Stage,
    StageFailed,
    StageRow,
    select_stages,
    upstream_of,
)
from reports.pipeline import summary_markdown
from storage import paths
from storage.manifest import list_versions, load_manifest

__all__ = [
    "PIPELINE",
    "REPORTS",
    "ROWS",
    "STAGE_ORDER",
    "PipelineConfig",
    "Stage",
    "StageFailed",
    "StageRow",
    "pipeline_flow",
    "select_stages",
    "upstream_of",
]


SUMMARY_KEY = "pretrain-summary"
log = logging.getLogger(__name__)


def in_deployment_run() -> bool:
    """True inside a flow run started from a deployment (a worker runs it), False in-process."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None and ctx.flow_run.deployment_id is not None


class DeploymentRunFailed(RuntimeError):
    """A stage's deployment run ended in another state than Completed."""


def run_stage_deployment(row: StageRow, config: PipelineConfig, root: str, input_version: str, force: bool) -> str:
    """Start `row.deployment` for this stage, wait for it, and return the version it made or reused."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    assert row.deployment is not None
    upstream = upstream_of(row.stage)
    if upstream is not None and input_version == "latest":  # pin it: the run and the check below read the same
        input_version = load_manifest(root, upstream).version
    parameters: dict[str, Any] = {
        "params": config.section(row.stage).model_dump(mode="json"),
        "data_root": root,
        "force": force,
    }
    if upstream is not None:
        parameters["input_version"] = input_version
    get_run_logger().info("stage '%s': starting deployment %s and waiting for it", row.stage, row.deployment)
    run = run_deployment(name=row.deployment, parameters=parameters, timeout=None)
    assert isinstance(run, FlowRun), run
    state = run.state
    if state is None or not state.is_completed():
        what = f"{state.name}: {state.message}" if state is not None else "no state"
        raise DeploymentRunFailed(f"deployment {row.deployment} run '{run.name}' ({run.id}) ended {what}")
    # the flow's return value is only retrievable with persisted results; else read the committed version
    try:
        version = state.result(raise_on_failure=True)
        if isinstance(version, str) and version:
            return version
    except Exception:  # noqa: BLE001 - MissingResult and the like: fall back to the manifest on disk
        pass
    made = [
        m
        for m in list_versions(root, row.stage)
        if m.params == parameters["params"] and (upstream is None or m.inputs.get(upstream) == input_version)
    ]
    if not made:
        raise DeploymentRunFailed(
            f"deployment {row.deployment} run '{run.name}' ({run.id}) completed, but {root} holds no complete "
            f"{row.stage} version with these params built from {upstream}@{input_version}"
        )
    return max(made, key=lambda m: m.created_at).version


def call_stage(row: StageRow, config: PipelineConfig, root: str, input_version: str, force: bool) -> str:
    """Run one row's flow with its config section; returns the version it made or reused. Inside a
    deployment run, a row with a `deployment` runs as that deployment's flow run (its own pool and worker)."""
    if row.deployment is not None and in_deployment_run():
        return run_stage_deployment(row, config, root, input_version, force)
    fn = row.flow.with_options(task_runner=task_runner(config.workers, config.runner)) if row.pool else row.flow
    kw: dict[str, Any] = {k: getattr(config, k) for k in row.config_extra}
    if upstream_of(row.stage) is not None:
        kw["input_version"] = input_version
    return str(fn(params=config.section(row.stage), data_root=root, force=force, **kw))


def publish_summary(
    root: str,
    versions: dict[str, str],
    started: Optional[float] = None,
    failed: Optional[tuple[str, BaseException]] = None,
) -> Optional[str]:
    """Create the `pretrain-summary` markdown artifact (inside a flow run; reports.pipeline renders it);
    returns the markdown. A broken summary must not hide the run's real outcome: errors are logged."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    try:
        md = summary_markdown(root, versions, STAGE_ORDER, started, failed)
        if FlowRunContext.get() is not None:
            state = f"failed at {failed[0]}" if failed else "completed"
            create_markdown_artifact(
                key=SUMMARY_KEY, markdown=md, description=f"pipeline {state}: attrition per stage and version lineage"
            )
        return md
    except Exception:  # noqa: BLE001 - the summary is a report; the stages' own outcome decides the run
        log.exception("could not build the pipeline summary artifact")
        return None


class NothingLeft(ValueError):
    """The previous stage kept no document, so the next one has nothing to work on."""


def check_documents_left(root: str, stage: str, version: str, next_stage: str) -> None:
    """Stop before `next_stage` with the numbers and the fix when `stage@version` kept no document."""
    hint = ROWS[stage].when_empty
    if hint is None:
        return
    m = load_manifest(root, stage, version)
    if m.stats.docs_out > 0:
        return
    dropped = ", ".join(f"{r} {n}" for r, n in sorted(m.stats.dropped.items(), key=lambda kv: -kv[1])) or "none"
    raise NothingLeft(
        f"{stage}@{version} kept 0 of {m.stats.docs_in} documents (dropped: {dropped}), so "
        f"{next_stage} and the stages after it have nothing to work on. See what was dropped with "
        f"`pretrain inspect {stage} --rejected`; then {hint}"
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
            previous = call_stage(ROWS[stage], config, root, input_version, forcing)
        except Exception as exc:
            log.error("stage '%s' failed; upstream versions %s are complete and will be reused", stage, versions)
            publish_summary(root, versions, started, failed=(stage, exc))
            raise StageFailed(stage, exc, paths.stage_dir(root, str(stage))) from exc
        versions[str(stage)] = previous
    publish_summary(root, versions, started)
    log.info("pipeline done: %s", " -> ".join(f"{s}@{v}" for s, v in versions.items()))
    return versions
