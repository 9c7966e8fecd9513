"""dedup_flow: the `quality` version -> the `dedup` version (exact + MinHash near duplicates removed).

Phases over all shards of the input version (dedup is global, not per shard): the signature map (exact
keys, keep keys, one LSH band file per band, shingle sets, each grouped by hash partition), the exact map
(one task per partition: exact groups, kept copies), the band map (one task per LSH band and partition:
sort that slice's keys of every shard, write its candidate pairs), the union step (verification,
union-find over the pairs, kept copy per cluster) and the filter map (kept documents and `rejected/` with
reasons). The number of partitions follows the input's document count (`partition_docs`), so no task's
memory grows with the corpus. Every task reads and writes `_work/minhash/` of the version through fsspec
(`tasks.dedup.Work`), so on an object-store root tasks may run on any machine; it is deleted before the
commit unless `keep_work`; `_work/clusters.parquet` (every member of every duplicate cluster) and
`s_curve.png` stay.
The report and the dry-run plan are `tasks.dedup.report`.
"""

from typing import Optional

from prefect import flow, get_run_logger

from flows.stage import Phases, StageOutput, StageRun, map_shards, run_stage, task_runner
from storage import paths
from tasks.dedup import (
    STAGE,
    STAGE_VERSION,
    DedupParams,
    band_names,
    check_inputs,
    dedup_band,
    dedup_cluster,
    dedup_exact,
    dedup_shard,
    dedup_signature_shard,
    exact_names,
    finish_work,
    resolve_partitions,
    write_exact_dropped,
    write_starts,
)
from tasks.dedup.report import S_CURVE_PNG, plan_for_manifest, report, save_s_curve_png


def dedup_phases(params: DedupParams) -> Phases:
    """Signature map -> exact map -> band map -> union step -> filter map; the S-curve plot; `_work/minhash`
    removed."""

    def phases(run: StageRun) -> StageOutput:
        try:
            return run_phases(run)
        except BaseException:
            if paths.is_remote(run.out_dir):  # the work files in the object store
                finish_work(run.out_dir, keep=False)
            raise

    def run_phases(run: StageRun) -> StageOutput:
        sources = run.input_shard_paths()
        check_inputs(sources, params)
        assert run.input_manifest is not None
        job = resolve_partitions(params, run.input_manifest.stats.docs_out)
        get_run_logger().info(plan_for_manifest(run.input_manifest, job))
        signatures = map_shards(run, dedup_signature_shard, sources, job)
        write_starts(run.out_dir, [r.docs for r in signatures])
        map_shards(run, dedup_exact, exact_names(job), job)
        if job.near:
            if job.exact:
                write_exact_dropped(run.out_dir, job)
            map_shards(run, dedup_band, band_names(job), job)
        summary = dedup_cluster(run.out_dir, len(sources), job)
        results = map_shards(run, dedup_shard, sources, job)
        if job.near:
            threshold = job.jaccard_threshold if job.verify_jaccard else None
            save_s_curve_png(paths.join(run.out_dir, S_CURVE_PNG), job.bands, job.rows, threshold)
        finish_work(run.out_dir, job.keep_work)
        return StageOutput.of(results, summary.model_dump())

    return phases


@flow(name="dedup", task_runner=task_runner(2))
def dedup_flow(
    params: DedupParams = DedupParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Exact + near-duplicate removal across all shards; returns the dedup version id."""
    return run_stage(STAGE, STAGE_VERSION, params, dedup_phases(params), data_root, input_version, force, report=report)
