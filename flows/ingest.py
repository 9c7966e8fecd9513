"""ingest_flow: raw crawl files (WARC/WET/JSONL/Parquet, local/http/s3) -> the `ingest` version.

One input file becomes one output shard. The version hashes the params and a fingerprint of the input
files (path, size, mtime/etag), so changing a file gives a new version. With no inputs configured the
flow generates the deterministic demo crawl under `<data-root>/_inputs/demo-crawl/` and ingests it, so
`pretrain run` works on a fresh machine without network.

Error budget: a partly bad file keeps its good records (`on_bad_file`); after all shards ran, the run
fails when the bad records of the whole input exceed `max_error_fraction`, naming the worst files
(`tasks.ingest.check_error_budget`), before anything is committed.
"""

import hashlib
from typing import Optional

from prefect import flow

from flows.stage import run_sharded_stage, task_runner
from storage import paths
from storage.manifest import Manifest, canonical_json
from tasks.ingest import (
    STAGE,
    STAGE_VERSION,
    IngestParams,
    check_error_budget,
    ingest_shard,
    input_fingerprint,
    resolve_inputs,
)


def demo_inputs(root: str, pages: int) -> list[str]:
    """Generate the demo crawl once per (root, pages) and return its WARC path.

    An existing crawl is reused as it is (the ground truth is renamed into place last, so its presence
    means both files are complete): a re-run on complete versions writes nothing into the data root.
    """
    from demo.crawl import GROUND_TRUTH_NAME, WARC_NAME, generate_demo_crawl

    out = paths.join(paths.demo_crawl_dir(root), f"pages-{pages}")
    fs, base = paths.filesystem(out)
    if fs.exists(paths.join(base, GROUND_TRUTH_NAME)) and fs.exists(paths.join(base, WARC_NAME)):
        return [paths.join(out, WARC_NAME)]
    result = generate_demo_crawl(out, pages=pages)
    return [str(result.warc_path)]


def report_markdown(manifest: Manifest, root: str) -> str:
    c = manifest.stats.counters
    src = sorted(((k.split(".", 1)[1], v) for k, v in c.items() if k.startswith("source.")), key=lambda kv: -kv[1])
    rows = ["| source | documents |", "|---|---|"] + [f"| {k} | {v} |" for k, v in src]
    return "## Documents by source\n\n" + "\n".join(rows) if src else ""


@flow(name="ingest", task_runner=task_runner(2))
def ingest_flow(
    params: IngestParams = IngestParams(), data_root: Optional[str] = None, force: bool = False, demo_pages: int = 400
) -> str:
    """Crawl files -> documents; returns the ingest version id."""
    root = paths.resolve_data_root(data_root)
    if not params.inputs and params.crawl is None:
        params = params.model_copy(update={"inputs": demo_inputs(root, demo_pages)})
    sources = resolve_inputs(params)
    fingerprint = input_fingerprint(sources)
    digest = hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()[:12]
    return run_sharded_stage(
        STAGE,
        STAGE_VERSION,
        params,
        ingest_shard,
        root,
        force=force,
        sources=sources,
        extra_inputs={"files": digest},
        report=report_markdown,
        max_error_fraction=params.max_error_fraction,
        extras={"files": fingerprint},
        check=lambda results: check_error_budget(results, sources, params.max_error_fraction, "ingest"),
    )
