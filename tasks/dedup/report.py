"""The dedup report (`dedup-summary` artifact, `pretrain inspect dedup`): duplicates removed, cluster sizes,
the largest clusters and the LSH S-curve (table, and `s_curve.png` in the version, drawn by
`save_s_curve_png`); and the dry-run plan (`plan_markdown`, `plan_for_input`: `pretrain inspect dedup
--plan`, and the first log line of a run)."""

from __future__ import annotations

from typing import Any

import numpy as np

from reports import human_bytes, md_table, save_plot
from storage import paths
from storage.manifest import Manifest, load_manifest
from tasks.dedup import DedupParams
from tasks.dedup.minhash import plan_estimate, s_curve

S_CURVE_PNG = "s_curve.png"
S_POINTS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]


def s_curve_table(bands: int, rows: int) -> str:
    """P(candidate pair) at a few Jaccard similarities, as one markdown table row."""
    values = [f"{float(s_curve(s, bands, rows)):.3f}" for s in S_POINTS]
    return "\n".join(md_table([["P(candidate)", *values]], ["Jaccard s", *(f"{s:.2f}" for s in S_POINTS)]))


def save_s_curve_png(path: str, bands: int, rows: int, threshold: float | None) -> None:
    """The S-curve for bands x rows as a PNG (reports.save_plot: matplotlib, headless)."""
    s = np.linspace(0, 1, 201)
    with save_plot(path) as ax:
        ax.plot(s, s_curve(s, bands, rows), label=f"{bands} bands x {rows} rows")
        if threshold is not None:
            ax.axvline(threshold, color="grey", linestyle="--", label=f"verify threshold {threshold}")
        ax.set_xlabel("Jaccard similarity of the shingle sets")
        ax.set_ylabel("P(candidate pair)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")


def plan_markdown(n_docs: int, bytes_in: int, params: DedupParams, source: str = "") -> str:
    """Dry-run estimate: bytes written and held, expected candidate pairs, for this corpus size."""
    k = params.partitions or max(1, -(-n_docs // params.partition_docs))
    e = plan_estimate(n_docs, bytes_in, params.num_perm, params.bands, params.rows, params.verify_jaccard, partitions=k)
    return "\n".join(
        [
            f"## Dedup plan{' for ' + source if source else ''}",
            "",
            f"- documents: {n_docs:,} ({human_bytes(bytes_in)} of text)",
            f"- MinHash: {params.shingle_size}-word shingles, {params.bands} bands x {params.rows} rows "
            f"= {params.num_perm} permutations, seed {params.seed}, {params.hash_function}",
            f"- signatures on disk (_work/minhash, as {params.bands} band files of 16-byte keys): "
            f"{human_bytes(e['band_bytes'])}",
            "- shingle sets on disk for verification: "
            + (
                "none (verification off)"
                if not params.verify_jaccard
                else human_bytes(e["shingle_set_bytes"])
                if bytes_in
                else "unknown (the input manifest records no text bytes)"
            ),
            f"- hash partitions: {k} (about {params.partition_docs:,} documents each at most: `partition_docs`)",
            f"- memory of one exact task ({k} of them) about {human_bytes(e['exact_task_bytes'])}; of one band "
            f"task ({params.bands * k} of them, on any workers) about {human_bytes(e['band_task_bytes'])}",
            "- memory of the union step: about 16 bytes per candidate pair and 64 per document in a pair, "
            "plus one shard's exact-group members",
            f"- expected candidate pairs: about {e['expected_candidate_pairs']:,.0f} (background Jaccard 0.05 and "
            f"5% near duplicates)",
            f"- 50% detection at Jaccard {e['threshold_50pct']:.2f}; P(candidate | 0.8) = {e['p_at_0.8']:.3f}",
        ]
    )


def plan_for_manifest(m: Manifest, params: DedupParams) -> str:
    """`plan_markdown` for an input version (its manifest's doc and byte counts)."""
    return plan_markdown(m.stats.docs_out, m.stats.bytes_out, params, f"{m.stage}@{m.version}")


def plan_for_input(root: str, params: DedupParams, input_kind: str, input_version: str = "latest") -> str:
    """`plan_markdown` for the `input_kind` version dedup would read (the caller names dedup's upstream in the
    pipeline table, `flows.pipeline.upstream_of("dedup")`: tasks know no stage order)."""
    return plan_for_manifest(load_manifest(root, input_kind, input_version), params)


def _largest_rows(clusters: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            c["size"],
            c["exact"],
            c["near_cluster_id"] if c["near_cluster_id"] >= 0 else "-",
            f"`{c['kept_id']}`",
            c["sample_url"],
        ]
        for c in clusters
    ]


def report(manifest: Manifest, root: str) -> str:
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
        *md_table(list(x.get("cluster_sizes", {}).items()), ["cluster size", "clusters"]),
        "",
    ]
    if x.get("largest_clusters"):
        lines += [
            "## Largest clusters",
            "",
            *md_table(
                _largest_rows(x["largest_clusters"]), ["size", "exact copies", "near cluster", "kept id", "sample URL"]
            ),
            "",
        ]
    if p.get("near"):
        lines += [
            f"## S-curve ({p['bands']} bands x {p['rows']} rows)",
            "",
            s_curve_table(p["bands"], p["rows"]),
            "",
            f"Plot: `{paths.join(paths.version_dir(root, manifest.stage, manifest.version), S_CURVE_PNG)}`",
        ]
    return "\n".join(lines)
