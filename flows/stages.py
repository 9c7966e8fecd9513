"""The pipeline table: the stages in order, each with its params type, flow, report and config section.

Light on purpose: it imports each stage's params (pydantic) and nothing of Prefect, torch or the stage
runtimes, so `pretrain status`/`inspect`/`config` and config errors answer in well under a second. A row
names its flow and report as "module:name" references, imported on first use; `flows.pipeline` (the
`pretrain` flow) runs the rows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field, create_model

from flows.config import ConfigBase
from storage.errors import SHARD_NOTE, describe_os_error
from storage.manifest import Manifest
from storage.params import StageParams
from tasks import clean, decontaminate, dedup, ingest, langid, mix, quality, tokenization, train
from tasks import eval as eval_stage
from tasks.quality import classifier
from tasks.tokenization import TokenizeParams

if TYPE_CHECKING:
    from prefect import Flow

ReportFn = Callable[[Manifest, str], str]


def resolve(ref: str) -> Any:
    """The object named by "package.module:name" (imports the module)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Ref:
    """A function named by "module:name", imported when first called (a report, in the pipeline table)."""

    ref: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return resolve(self.ref)(*args, **kwargs)


@dataclass(frozen=True)
class StageRow:
    """One stage of the pipeline: its name, its flow, its report, and how the pipeline calls it. The config
    section `<stage>` has the type and default of the flow's `params` (or `config_default`)."""

    stage: str  # output directory, CLI word, config section, Prefect parameter value
    params_type: type[StageParams]  # the flow's `params` (the config section's type)
    flow_ref: str  # "module:name" of `<stage>_flow(params, data_root, input_version, force, **config_extra)`
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
    def flow(self) -> Flow[..., str]:
        """The stage's Prefect flow (imports Prefect and the flow module on first use)."""
        flow: Flow[..., str] = resolve(self.flow_ref)
        return flow

    def default_params(self) -> StageParams:
        return self.config_default if self.config_default is not None else self.params_type()


# The pipeline, in order: each stage reads the output of the row before it. Adding a stage = one row here
# (and its package under tasks/ plus its flow; see "Adding a stage" in CONTRIBUTING.md).
PIPELINE: tuple[StageRow, ...] = (
    StageRow(
        ingest.STAGE,
        ingest.IngestParams,
        "flows.ingest:ingest_flow",
        Ref("tasks.ingest.report:report"),
        "Crawl ingest (stage 1).",
        "check that the inputs are WARC/WET files with HTML responses (`pretrain inspect ingest --rejected`)",
        config_extra=("demo_pages",),
    ),
    StageRow(
        langid.STAGE,
        langid.LangidParams,
        "flows.langid:langid_flow",
        Ref("tasks.langid.report:report"),
        "fastText LID-176 language ID and keep-list (stage 2).",
        "widen langid.languages (an empty list keeps every language) or lower langid.threshold",
    ),
    StageRow(
        quality.STAGE,
        quality.QualityParams,
        "flows.quality:quality_flow",
        Ref("tasks.quality.report:report"),
        "Heuristic filters (Gopher, C4, FineWeb) and the fastText quality classifier (stage 3).",
        "add inputs, widen langid.languages, or enforce fewer filters (quality.enforce_filters)",
        artifacts={classifier.STAGE: Ref("tasks.quality.report:classifier_report")},
    ),
    StageRow(
        clean.STAGE,
        clean.CleanParams,
        "flows.clean:clean_flow",
        Ref("tasks.clean.report:report"),
        "URL block lists, line-level dedup across all shards and PII redaction (stage 4).",
        "raise clean.max_line_repeats or lower clean.min_words_after_clean, or check the block lists "
        "(`pretrain inspect clean --rejected`)",
    ),
    StageRow(
        dedup.STAGE,
        dedup.DedupParams,
        "flows.dedup:dedup_flow",
        Ref("tasks.dedup.report:report"),
        "Exact + MinHash near-duplicate removal across all shards (stage 5).",
        "add inputs",
    ),
    StageRow(
        decontaminate.STAGE,
        decontaminate.DecontaminateParams,
        "flows.decontaminate:decontaminate_flow",
        Ref("tasks.decontaminate.report:report"),
        "Benchmark 13-gram decontamination (stage 6); HumanEval by default, add benchmark files.",
        "add inputs, or check the benchmark files (`pretrain inspect decontaminate --rejected`)",
        artifacts={decontaminate.INDEX_KIND: Ref("tasks.decontaminate.report:index_report")},
    ),
    StageRow(
        mix.STAGE,
        mix.MixParams,
        "flows.mix:mix_flow",
        Ref("tasks.mix.report:report"),
        "Weighted, seeded sampling across sources (stage 7).",
        "check mix.weights against the sources present (`pretrain inspect mix`)",
    ),
    StageRow(
        tokenization.STAGE,
        tokenization.TokenizeParams,
        "flows.tokenization:tokenization_flow",
        Ref("tasks.tokenization.report:report"),
        "Tokenizer training and packed token shards (stage 8); the demo uses a 4,096-piece vocabulary and "
        "256-token sequences (the demo crawl is ~1M characters).",
        config_default=TokenizeParams(vocab_size=4096, seq_len=256),
    ),
    StageRow(
        train.STAGE,
        train.TrainParams,
        "flows.train:train_flow",
        Ref("tasks.train.report:report"),
        "GPT training on the token shards (stage 9); default: the tiny preset on CPU.",
        pool=False,
        deployment="train/default",  # the gpu pool (deployments/prefect.yaml)
    ),
    StageRow(
        eval_stage.STAGE,
        eval_stage.EvalParams,
        "flows.eval:eval_flow",
        Ref("tasks.eval.report:report"),
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


def upstream_of(stage: str) -> Optional[str]:
    """The stage whose output `stage` reads (the row before it), None for the first."""
    i = STAGE_ORDER.index(stage)
    return STAGE_ORDER[i - 1] if i > 0 else None


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


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and the cause."""

    def __init__(self, stage: Stage, cause: BaseException, stage_dir: str | None = None):
        self.stage = stage
        shards = [n.removeprefix(SHARD_NOTE) for n in getattr(cause, "__notes__", []) if n.startswith(SHARD_NOTE)]
        where = f" on {shards[0]}" if shards else ""
        what = describe_os_error(cause, stage_dir) or f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage '{stage}' failed{where}: {what}")
