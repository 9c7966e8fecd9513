"""clean_flow: the `quality` version -> the `clean` version (blocked URLs dropped, repeated lines and PII removed).

Phases (`tasks.clean`): compile the block lists (one task, when lists are given: hash arrays and JSON) ->
line count map (per shard, partitioned by line hash) -> one task per partition (sums, frequent lines, top
lines) -> the filter map (URL filter, line removal, PII redaction; kept + `rejected/`). Work files live under
the version's `_work/clean/` (fsspec: any task may run on any machine of an object-store root) and are removed
before the commit unless `keep_work`. The block lists' contents (sha256 per kind, in order) are an input of
the version (`extra_inputs`), so editing a list gives a new version while moving it does not. The report is
`tasks.clean.report`.
"""

from typing import Any, Optional

from prefect import flow

from flows.stage import Phases, StageOutput, StageRun, map_shards, run_stage, task_runner
from storage import paths
from storage.manifest import content_id
from tasks.clean import (
    STAGE,
    STAGE_VERSION,
    WORK,
    CleanJob,
    CleanParams,
    clean_compile_lists,
    clean_count_shard,
    clean_line_partition,
    clean_shard,
    top_lines,
)
from tasks.clean.report import merge_extras, report
from tasks.clean.urls import describe_lists


def finish_work(out_dir: str, keep: bool) -> None:
    """Remove the version's `_work/clean/` (or keep it, for debugging)."""
    if keep:
        return
    fs, target = paths.filesystem(paths.join(out_dir, WORK))
    if fs.exists(target):
        fs.rm(target, recursive=True)


def clean_phases(params: CleanParams, lists: list[dict[str, Any]]) -> Phases:
    """Compile lists -> line count map -> partition sums -> filter map."""

    def phases(run: StageRun) -> StageOutput:
        try:
            return run_phases(run)
        except BaseException:
            finish_work(run.out_dir, keep=False)
            raise

    def run_phases(run: StageRun) -> StageOutput:
        sources = run.input_shard_paths()
        entries = clean_compile_lists(run.out_dir, params) if lists else {}
        job = CleanJob(params=params, shards=len(sources))
        partitions = []
        if params.line_dedup:
            map_shards(run, clean_count_shard, sources, job)
            names = [f"p-{p:03d}" for p in range(params.line_partitions)]
            partitions = map_shards(run, clean_line_partition, names, job)
        top = top_lines(partitions)
        job = job.model_copy(update={"top_keys": [k for k, _ in top]})
        results = map_shards(run, clean_shard, sources, job)
        finish_work(run.out_dir, params.keep_work)
        extras = merge_extras(results, partitions, top, lists, entries)
        return StageOutput.of(results, extras)

    return phases


@flow(name="clean", task_runner=task_runner(2))
def clean_flow(
    params: CleanParams = CleanParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """URL filter, line dedup and PII redaction; returns the clean version id."""
    lists = describe_lists(params.lists())
    blocks = {"block_lists": content_id([{"kind": x["kind"], "sha256": x["sha256"]} for x in lists])} if lists else None
    return run_stage(
        STAGE,
        STAGE_VERSION,
        params,
        clean_phases(params, lists),
        data_root,
        input_version,
        force,
        extra_inputs=blocks,
        report=report,
    )
