"""pipeline_flow (`pretrain`): runs the stage flows in order, passing each output version on.

Stages run in `STAGE_ORDER` (ingest -> langid -> quality -> clean -> dedup -> decontaminate -> mix -> tokenize ->
train -> eval), restricted by `only` / `from_stage` / `to_stage`. A stage that is not selected is not run; the
next selected stage reads its upstream's `latest` complete version from disk. Each stage reuses its
version when it is already complete, so re-running after a failure recomputes only from the failed
stage on. `force` recomputes that stage even if complete, and everything after it in the selection.
"""

import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Optional

from prefect import Flow, flow, get_run_logger
from pydantic import Field, create_model

import tasks.clean.report
import tasks.decontaminate.report
import tasks.dedup.report
import tasks.eval.report
import tasks.ingest.report
import tasks.langid.report
import tasks.mix.report
import tasks.quality.report
import tasks.tokenization.report
import tasks.train.report
from flows.clean import clean_flow
from flows.config import ConfigBase, load_config
from flows.decontaminate import decontaminate_flow
from flows.dedup import dedup_flow
from flows.eval import eval_flow
from flows.ingest import ingest_flow
from flows.interrupt import note_stage
from flows.langid import langid_flow
from flows.mix import mix_flow
from flows.quality import quality_flow
from flows.stage import SHARD_NOTE, ReportFn, task_runner
from flows.tokenization import tokenization_flow
from flows.train import train_flow
from reports.pipeline import summary_markdown
from storage import paths
from storage.errors import describe_os_error
from storage.manifest import list_versions, load_manifest
from storage.params import StageParams
from tasks import clean, decontaminate, dedup, ingest, langid, mix, quality, tokenization, train
from tasks import eval as eval_stage
from tasks.quality import classifier
from tasks.tokenization import TokenizeParams


@dataclass(frozen=True)
class StageRow:
    """One stage of the pipeline: its name, its flow, its report, and how the pipeline calls it. The config
    section `<stage>` has the type and default of the flow's `params` (or `config_default`)."""

    stage: str  # output directory, CLI word, config section, Prefect parameter value
    flow: Flow[..., str]  # `<stage>_flow(params, data_root, input_version, force, **config_extra)`
    report: ReportFn  # `pretrain inspect <stage>` and the `<stage>-summary` artifact
    description: str  # the config section's help (Prefect form, `configs/default.yaml`)
    when_empty: Optional[str] = None  # the fix to print when it keeps no document (None: no such check)
    pool: bool = True  # shard maps on `config.workers` processes (False: the flow's own process, training)
    config_extra: tuple[str, ...] = ()  # top-level config fields passed on as flow keywords
    artifacts: dict[str, ReportFn] = field(default_factory=dict)  # side artifacts it builds -> their report
    config_default: Optional[StageParams] = None  # the pipeline's default when it differs from the flow's
    # inside a deployment run of the pipeline, start this deployment (another pool, e.g. the GPU machine)
    # instead of calling the flow in-process; None: always in-process (`pretrain run`, tests)
    deployment: Optional[str] = None

    @property
    def params_type(self) -> type[StageParams]:
        annotation: type[StageParams] = inspect.signature(self.flow.fn).parameters["params"].annotation
        return annotation

    def default_params(self) -> StageParams:
        return self.config_default if self.config_default is not None else self.params_type()


# The pipeline, in order: each stage reads the output of the row before it. Adding a stage = one row here
# (and its package under tasks/ plus its flow; see "Adding a stage" in CONTRIBUTING.md).
PIPELINE: tuple[StageRow, ...] = (
    StageRow(
        ingest.STAGE,
        ingest_flow,
        tasks.ingest.report.report,
        "Crawl ingest (stage 1).",
        "check that the inputs are WARC/WET files with HTML responses (`pretrain inspect ingest --rejected`)",
        config_extra=("demo_pages",),
    ),
    StageRow(
        langid.STAGE,
        langid_flow,
        tasks.langid.report.report,
        "fastText LID-176 language ID and keep-list (stage 2).",
        "widen langid.languages (an empty list keeps every language) or lower langid.threshold",
    ),
    StageRow(
        quality.STAGE,
        quality_flow,
        tasks.quality.report.report,
        "Heuristic filters (Gopher, C4, FineWeb) and the fastText quality classifier (stage 3).",
        "add inputs, widen langid.languages, or enforce fewer filters (quality.enforce_filters)",
        artifacts={classifier.STAGE: tasks.quality.report.classifier_report},
    ),
    StageRow(
        clean.STAGE,
        clean_flow,
        tasks.clean.report.report,
        "URL block lists, line-level dedup across all shards and PII redaction (stage 4).",
        "raise clean.max_line_repeats or lower clean.min_words_after_clean, or check the block lists "
        "(`pretrain inspect clean --rejected`)",
    ),
    StageRow(
        dedup.STAGE,
        dedup_flow,
        tasks.dedup.report.report,
        "Exact + MinHash near-duplicate removal across all shards (stage 5).",
        "add inputs",
    ),
    StageRow(
        decontaminate.STAGE,
        decontaminate_flow,
        tasks.decontaminate.report.report,
        "Benchmark 13-gram decontamination (stage 6); HumanEval by default, add benchmark files.",
        "add inputs, or check the benchmark files (`pretrain inspect decontaminate --rejected`)",
        artifacts={decontaminate.INDEX_KIND: tasks.decontaminate.report.index_report},
    ),
    StageRow(
        mix.STAGE,
        mix_flow,
        tasks.mix.report.report,
        "Weighted, seeded sampling across sources (stage 7).",
        "check mix.weights against the sources present (`pretrain inspect mix`)",
    ),
    StageRow(
        tokenization.STAGE,
        tokenization_flow,
        tasks.tokenization.report.report,
        "Tokenizer training and packed token shards (stage 8); the demo uses a 4,096-piece vocabulary and "
        "256-token sequences (the demo crawl is ~1M characters).",
        config_default=TokenizeParams(vocab_size=4096, seq_len=256),
    ),
    StageRow(
        train.STAGE,
        train_flow,
        tasks.train.report.report,
        "GPT training on the token shards (stage 9); default: the tiny preset on CPU.",
        pool=False,
        deployment="train/default",  # the gpu pool (deployments/prefect.yaml)
    ),
    StageRow(
        eval_stage.STAGE,
        eval_flow,
        tasks.eval.report.report,
        "Evaluation of the final checkpoint (and eval.steps): bits per byte on held-out text, zero-shot "
        "multiple choice, CORE (stage 10); default: the tokenize version's val documents.",
        pool=False,
        deployment="eval/default",  # the gpu pool: scores on the training device
    ),
)
ROWS: dict[str, StageRow] = {r.stage: r for r in PIPELINE}
STAGE_ORDER: list[str] = [r.stage for r in PIPELINE]
# the stages as a closed choice (Prefect renders a drop-down; the CLI validates against it)
if TYPE_CHECKING:
    Stage = str
else:
    Stage = StrEnum("Stage", [(s.upper(), s) for s in STAGE_ORDER])
# every artifact kind with a report: the stages and the side artifacts they build
REPORTS: dict[str, ReportFn] = {k: v for r in PIPELINE for k, v in {r.stage: r.report, **r.artifacts}.items()}


def _config_model(rows: tuple[StageRow, ...]) -> type[ConfigBase]:
    """`ConfigBase` plus one section per row: the stage's params under its name."""
    sections: dict[str, Any] = {
        r.stage: (r.params_type, Field(default_factory=r.default_params, description=r.description)) for r in rows
    }
    model: type[ConfigBase] = create_model("PipelineConfig", __base__=ConfigBase, **sections)
    model.__doc__ = "Every stage's params; Prefect renders this as the run form of `pretrain/default`."
    return model


# the config: pipeline-wide settings and one section per stage (configs/default.yaml writes it out)
if TYPE_CHECKING:
    PipelineConfig = ConfigBase
else:
    PipelineConfig = _config_model(PIPELINE)
SUMMARY_KEY = "pretrain-summary"
log = logging.getLogger(__name__)


def upstream_of(stage: str) -> Optional[str]:
    """The stage whose output `stage` reads (the row before it), None for the first."""
    i = STAGE_ORDER.index(stage)
    return STAGE_ORDER[i - 1] if i > 0 else None


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


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and the cause."""

    def __init__(self, stage: Stage, cause: BaseException, stage_dir: str | None = None):
        self.stage = stage
        shards = [n.removeprefix(SHARD_NOTE) for n in getattr(cause, "__notes__", []) if n.startswith(SHARD_NOTE)]
        where = f" on {shards[0]}" if shards else ""
        what = describe_os_error(cause, stage_dir) or f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage '{stage}' failed{where}: {what}")


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


def select_stages(
    only: Optional[Stage] = None, from_stage: Optional[Stage] = None, to_stage: Optional[Stage] = None
) -> list[str]:
    """The implemented stages to run, in order; errors name the allowed values."""
    available = list(STAGE_ORDER)
    for name, s in (("only", only), ("from_stage", from_stage), ("to_stage", to_stage)):
        if s is not None and s not in ROWS:
            raise ValueError(f"{name}={s}: stage not available; choose one of {available}")
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
            previous = call_stage(ROWS[stage], config, root, input_version, forcing)
        except Exception as exc:
            log.error("stage '%s' failed; upstream versions %s are complete and will be reused", stage, versions)
            publish_summary(root, versions, started, failed=(stage, exc))
            raise StageFailed(stage, exc, paths.stage_dir(root, str(stage))) from exc
        versions[str(stage)] = previous
    publish_summary(root, versions, started)
    log.info("pipeline done: %s", " -> ".join(f"{s}@{v}" for s, v in versions.items()))
    return versions
