"""ingest_flow: raw crawl files (WARC/WET/JSONL/Parquet, local/http/s3) -> the `ingest` version.

One input file becomes one output shard (`tasks.ingest`). The version hashes the params (without
`inputs`) and the content fingerprint of the input files in order (`files`:
`tasks.ingest.sources.input_fingerprint`: name relative to the data root or bare file name, size, content
digest or ETag), so changing a file gives a new version while a copied or moved data root reuses it; the
manifest's `extras["files"]` lists the same entries with the paths read. With no inputs configured the
flow generates the deterministic demo crawl (`demo/`) under
`<data-root>/_inputs/demo-crawl/` and ingests it, so `pretrain run` works on a machine without network.
Error budget: after all shards ran, the run fails when the bad records of the whole input exceed
`max_error_fraction`, naming the worst files (`tasks.ingest.check_error_budget`), before anything is
committed.
"""

from typing import Optional

from prefect import flow

from demo import demo_inputs
from flows.stage import run_stage, sharded, task_runner
from storage import paths
from storage.manifest import content_id
from tasks.ingest import STAGE, STAGE_VERSION, IngestParams, check_error_budget, ingest_shard, resolve_inputs
from tasks.ingest.report import report
from tasks.ingest.sources import input_fingerprint, input_record


@flow(name="ingest", task_runner=task_runner(2))
def ingest_flow(
    params: IngestParams = IngestParams(), data_root: Optional[str] = None, force: bool = False, demo_pages: int = 400
) -> str:
    """Crawl files -> documents; returns the ingest version id."""
    root = paths.resolve_data_root(data_root)
    if not params.inputs and params.crawl is None:
        params = params.model_copy(update={"inputs": demo_inputs(root, demo_pages)})
    sources = resolve_inputs(params)
    fingerprint = input_fingerprint(sources, root)
    return run_stage(
        STAGE,
        STAGE_VERSION,
        params,
        sharded(
            ingest_shard,
            sources,
            check=lambda results: check_error_budget(results, sources, params.max_error_fraction, STAGE),
            extras={"files": input_record(sources, fingerprint)},
        ),
        root,
        force=force,
        extra_inputs={"files": content_id(fingerprint)},
        report=report,
        max_error_fraction=params.max_error_fraction,
    )
