"""dedup_flow: the `quality` version -> the `dedup` version (exact + MinHash near duplicates removed).

Three phases over all shards of the input version (dedup is global, not per shard): the signature map
(exact keys, keep keys, MinHash signatures, shingle sets), one global cluster task (exact groups, LSH
band sorting, verification, union-find, kept copy per cluster) and the filter map (kept documents and
`rejected/` with reasons). Signatures and shingle sets under `_work/minhash/` (a local directory on an
object-store root: `tasks.dedup.work_dir`) are deleted before the commit unless `keep_work`;
`_work/clusters.parquet` (every member of every duplicate cluster) and `s_curve.png` stay.
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
    check_inputs,
    dedup_cluster,
    dedup_shard,
    dedup_signature_shard,
    finish_work,
)
from tasks.dedup.report import S_CURVE_PNG, plan_for_manifest, report, save_s_curve_png


def dedup_phases(params: DedupParams) -> Phases:
    """Signature map -> global cluster task -> filter map; the S-curve plot; `_work/minhash` removed."""

    def phases(run: StageRun) -> StageOutput:
        try:
            return run_phases(run)
        except BaseException:
            if paths.is_remote(run.out_dir):  # the local work directory of an object-store root
                finish_work(run.out_dir, keep=False)
            raise

    def run_phases(run: StageRun) -> StageOutput:
        sources = run.input_shard_paths()
        check_inputs(sources, params)
        assert run.input_manifest is not None
        get_run_logger().info(plan_for_manifest(run.input_manifest, params))
        map_shards(run, dedup_signature_shard, sources, params)
        summary = dedup_cluster(run.out_dir, len(sources), params)
        results = map_shards(run, dedup_shard, sources, params)
        if params.near:
            threshold = params.jaccard_threshold if params.verify_jaccard else None
            save_s_curve_png(paths.join(run.out_dir, S_CURVE_PNG), params.bands, params.rows, threshold)
        finish_work(run.out_dir, params.keep_work)
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
