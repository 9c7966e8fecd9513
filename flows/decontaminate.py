"""decontaminate_flow: `dedup` -> `decontaminate` (documents sharing a 13-gram, or all of a shorter item, with a
benchmark removed).

Phases: (1) the index version is derived from n, min_words, max_items_per_ngram and the benchmarks' specs and
content hashes (a missing benchmark file fails here, before anything runs); it is an input of the stage
version (`decontaminate_index`), so a changed benchmark file gives a new stage version while a changed
`action` reuses the index. (2) One task builds the index, the side artifact
`<data-root>/decontaminate_index/<index version>/`, or reuses it; a benchmark that is unparseable, lacks a
named field or has no usable item fails here, before any shard runs. (3) The filter is mapped over the
input shards, each loading the index the job names. The report is `tasks.decontaminate.report` (the
`decontaminate-summary` markdown, `pretrain inspect decontaminate`) and the `decontaminate-benchmarks`
table artifact.
"""

from typing import Optional

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.stage import Phases, StageOutput, StageRun, map_shards, run_stage, task_runner
from storage.manifest import Manifest
from tasks.decontaminate import (
    INDEX_KIND,
    STAGE,
    STAGE_VERSION,
    DecontaminateJob,
    DecontaminateParams,
    decontaminate_index,
    decontaminate_shard,
    index_version,
)
from tasks.decontaminate.report import benchmark_rows, report


def decontaminate_phases(params: DecontaminateParams, version: str) -> Phases:
    """Build or reuse the index `version`, then filter every input shard against it."""

    def phases(run: StageRun) -> StageOutput:
        summary = decontaminate_index(params, run.root, version)
        job = DecontaminateJob(params=params, index_dir=summary["dir"])
        results = map_shards(run, decontaminate_shard, run.input_shard_paths(), job)
        return StageOutput.of(results, {"index": summary})

    return phases


def publish_benchmarks(manifest: Manifest, root: str) -> None:
    """The `decontaminate-benchmarks` table artifact (run_stage's `publish_more`: only inside a flow run)."""
    create_table_artifact(
        key="decontaminate-benchmarks",
        table=benchmark_rows(manifest),
        description=f"decontaminate@{manifest.version}: matches per benchmark",
    )


@flow(name="decontaminate", task_runner=task_runner(2))
def decontaminate_flow(
    params: DecontaminateParams = DecontaminateParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Build/reuse the benchmark n-gram index, then filter every shard; returns the version id."""
    version = index_version(params)
    return run_stage(
        STAGE,
        STAGE_VERSION,
        params,
        decontaminate_phases(params, version),
        data_root,
        input_version,
        force,
        extra_inputs={INDEX_KIND: version},
        report=report,
        publish_more=publish_benchmarks,
    )
