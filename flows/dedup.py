"""dedup_flow: the `quality` version -> the `dedup` version (exact + MinHash near duplicates removed).

Three phases over all shards of the input version (dedup is global, not per shard): the signature map
(exact keys, keep keys, MinHash signatures, shingle sets), one global cluster task (exact groups, LSH
band sorting, verification, union-find, kept copy per cluster) and the filter map (kept documents and
`rejected/` with reasons). Signatures and shingle sets under `_work/minhash/` are deleted before the
commit unless `keep_work`; `_work/clusters.parquet` (every member of every duplicate cluster) and
`s_curve.png` stay. `report_markdown` is the Prefect summary and `pretrain inspect dedup`;
`plan_markdown` is the dry-run estimate (`pretrain inspect dedup --plan`, and the first log line).
"""

import shutil
from typing import Optional

import numpy as np
from prefect import flow, get_run_logger

from flows.stage import abort_on_error, begin_stage, finish_stage, map_shards, publish, task_runner
from storage import paths
from flows.stage import upstream_stage as upstream_of
from storage.manifest import Manifest, load_manifest
from storage.stats import StageStats
from tasks.dedup import (
    STAGE,
    STAGE_VERSION,
    WORK,
    DedupParams,
    check_inputs,
    dedup_cluster,
    dedup_shard,
    dedup_signature_shard,
)
from tasks.dedup.minhash import human_bytes, plan_estimate, s_curve

S_CURVE_PNG = "s_curve.png"
S_POINTS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]


def s_curve_table(bands: int, rows: int) -> str:
    head = "| Jaccard s | " + " | ".join(f"{s:.2f}" for s in S_POINTS) + " |"
    sep = "|---|" + "---|" * len(S_POINTS)
    body = "| P(candidate) | " + " | ".join(f"{float(s_curve(s, bands, rows)):.3f}" for s in S_POINTS) + " |"
    return "\n".join([head, sep, body])


def save_s_curve_png(path: str, bands: int, rows: int, threshold: Optional[float]) -> None:
    """The S-curve for bands x rows as a PNG (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(s, s_curve(s, bands, rows), label=f"{bands} bands x {rows} rows")
    if threshold is not None:
        ax.axvline(threshold, color="grey", linestyle="--", label=f"verify threshold {threshold}")
    ax.set_xlabel("Jaccard similarity of the shingle sets")
    ax.set_ylabel("P(candidate pair)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plan_markdown(n_docs: int, bytes_in: int, params: DedupParams, source: str = "") -> str:
    """Dry-run estimate: bytes written and held, expected candidate pairs, for this corpus size."""
    e = plan_estimate(n_docs, bytes_in, params.num_perm, params.bands, params.rows, params.verify_jaccard)
    return "\n".join(
        [
            f"## Dedup plan{' for ' + source if source else ''}",
            "",
            f"- documents: {n_docs:,} ({human_bytes(bytes_in)} of text)",
            f"- MinHash: {params.shingle_size}-word shingles, {params.bands} bands x {params.rows} rows "
            f"= {params.num_perm} permutations, seed {params.seed}, {params.hash_function}",
            f"- signatures on disk (_work/minhash): {human_bytes(e['signature_bytes'])}",
            "- shingle sets on disk for verification: "
            + (
                "none (verification off)"
                if not params.verify_jaccard
                else human_bytes(e["shingle_set_bytes"])
                if bytes_in
                else "unknown (the input manifest records no text bytes)"
            ),
            f"- memory of the global cluster step: about {human_bytes(e['cluster_step_bytes'])}",
            f"- expected candidate pairs: about {e['expected_candidate_pairs']:,.0f} (background Jaccard 0.05 and "
            f"5% near duplicates)",
            f"- 50% detection at Jaccard {e['threshold_50pct']:.2f}; P(candidate | 0.8) = {e['p_at_0.8']:.3f}",
        ]
    )


def plan_for_input(root: str, params: DedupParams, input_version: str = "latest") -> str:
    """`plan_markdown` for the upstream version dedup would read (its manifest's doc and byte counts)."""
    up = upstream_of(STAGE)
    assert up is not None
    m = load_manifest(root, up, input_version)
    return plan_markdown(m.stats.docs_out, m.stats.bytes_out, params, f"{m.stage}@{m.version}")


def _bins_table(bins: dict[str, int]) -> list[str]:
    return ["| cluster size | clusters |", "|---|---|"] + [f"| {k} | {v} |" for k, v in bins.items()]


def report_markdown(manifest: Manifest, root: str) -> str:
    """Exact and near duplicates removed, cluster sizes, the largest clusters, the S-curve."""
    x = manifest.extras
    p = manifest.params
    if "exact_duplicates" not in x:
        return ""
    joined = f"Jaccard verification (>= {p.get('jaccard_threshold')})" if p.get("verify_jaccard") else "no verification"
    lines = [
        "## Duplicates removed",
        "",
        f"- exact duplicates: {x['exact_duplicates']:,}",
        f"- near duplicates: {x['near_duplicates']:,} in {x['near_clusters']:,} clusters",
        f"- LSH candidate pairs: {x['candidate_pairs']:,}; true Jaccard checked for {x.get('checked_pairs', 0):,} "
        f"pairs (candidates + pairs inside small candidate clusters); joined after {joined}: "
        f"{x['verified_pairs']:,}",
        f"- keep rule: {p.get('keep')}; clusters: `_work/clusters.parquet`",
        "",
        "## Cluster sizes (exact + near members)",
        "",
        *_bins_table(x.get("cluster_sizes", {})),
        "",
    ]
    if x.get("largest_clusters"):
        lines += [
            "## Largest clusters",
            "",
            "| size | exact copies | near cluster | kept id | sample URL |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['size']} | {c['exact']} | {c['near_cluster_id'] if c['near_cluster_id'] >= 0 else '-'} | "
            f"`{c['kept_id']}` | {c['sample_url']} |"
            for c in x["largest_clusters"]
        ]
        lines.append("")
    if p.get("near"):
        lines += [
            f"## S-curve ({p['bands']} bands x {p['rows']} rows)",
            "",
            s_curve_table(p["bands"], p["rows"]),
            "",
            f"Plot: `{paths.join(paths.version_dir(root, manifest.stage, manifest.version), S_CURVE_PNG)}`",
        ]
    return "\n".join(lines)


@flow(name="dedup", task_runner=task_runner(2))
def dedup_flow(
    params: DedupParams = DedupParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Exact + near-duplicate removal across all shards; returns the dedup version id."""
    run = begin_stage(STAGE, STAGE_VERSION, params, data_root, input_version, force)
    if run.reused is not None:
        publish(run.reused, run.root, report_markdown, reused=True)
        return run.version
    try:
        if "://" in run.root and not run.root.startswith("file://"):
            raise ValueError(f"dedup memory-maps its signatures and needs a local data root, got {run.root}")
        sources = run.input_shard_paths()
        check_inputs(sources, params)
        m = run.input_manifest
        assert m is not None
        get_run_logger().info(plan_markdown(m.stats.docs_out, m.stats.bytes_out, params, f"{m.stage}@{m.version}"))
        map_shards(run, dedup_signature_shard, sources, params)
        summary = dedup_cluster(run.out_dir, len(sources), params)
        results = map_shards(run, dedup_shard, sources, params)
        if params.near:
            save_s_curve_png(
                paths.join(run.out_dir, S_CURVE_PNG),
                params.bands,
                params.rows,
                params.jaccard_threshold if params.verify_jaccard else None,
            )
        if not params.keep_work:
            shutil.rmtree(paths.join(run.out_dir, WORK), ignore_errors=True)
    except BaseException:
        abort_on_error(run)
        raise
    stats = StageStats.merge_all([r.stats for r in results])
    finish_stage(
        run,
        [r.shard for r in results],
        [r.rejected for r in results],
        stats,
        extras=summary.model_dump(),
        report=report_markdown,
    )
    return run.version
