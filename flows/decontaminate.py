"""decontaminate_flow: `dedup` -> `decontaminate` (documents sharing a 13-gram, or all of a shorter item, with a
benchmark removed).

Phases: (1) the index version is derived from n, min_words, max_items_per_ngram and the benchmarks' specs and
content hashes (a missing benchmark file fails here, before anything runs); it is an input of the stage
version, so a changed benchmark file gives a new stage version while a changed `action` reuses the
index. (2) One task builds the index under `<data-root>/decontaminate/_index/<index version>/`, or
reuses it; a benchmark that is unparseable, lacks a named field or has no usable item fails here,
before any shard runs. (3) The filter is mapped over the input shards. The per-benchmark report is the
`decontaminate-summary` markdown, the `decontaminate-benchmarks` table artifact and
`pretrain inspect decontaminate`.
"""

from typing import Any, Optional

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext

from flows.stage import abort_on_error, begin_stage, finish_stage, map_shards, publish, task_runner
from storage import paths
from storage.manifest import Manifest
from storage.stats import StageStats
from tasks.decontaminate import (
    STAGE,
    STAGE_VERSION,
    DecontaminateParams,
    decontaminate_index,
    decontaminate_shard,
    index_version,
    write_index_ref,
)
from tasks.decontaminate.ngram_index import read_items

TOP_ITEMS = 10


def benchmark_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per indexed benchmark: items, items indexed, items matched, documents matched/removed."""
    c = manifest.stats.counters
    rows = []
    for b in manifest.extras.get("index", {}).get("benchmarks", []):
        name = b["name"]
        rows.append(
            {
                "benchmark": name,
                "items": b["items"],
                "items_indexed": b["items_indexed"],
                "items_too_short": b.get("items_too_short", 0),
                "items_whole": b.get("items_whole", 0),
                "ngrams": b["ngrams"],
                "items_matched": sum(1 for k in c if k.startswith(f"item.{name}.")),
                "docs_matched": c.get(f"matched.{name}", 0),
                "docs_removed": c.get(f"removed.{name}", 0),
            }
        )
    return rows


def _top_items(manifest: Manifest, root: str) -> list[str]:
    c = manifest.stats.counters
    top = sorted(
        ((v, k.split(".", 2)[1], k.split(".", 2)[2]) for k, v in c.items() if k.startswith("item.")),
        key=lambda t: (-t[0], t[1], t[2]),
    )[:TOP_ITEMS]
    if not top:
        return []
    previews: dict[tuple[str, str], str] = {}
    index = manifest.extras.get("index", {})
    fs, p = paths.filesystem(paths.join(root, str(STAGE), "_index", index.get("version", "-")))
    if fs.exists(f"{p}/items.json"):
        items = read_items(paths.join(root, str(STAGE), "_index", index["version"]))
        wanted = {(b, i) for _, b, i in top}
        for name, ids, prev in zip(items["benchmarks"], items["item_ids"], items["previews"]):
            previews.update({(name, i): t for i, t in zip(ids, prev) if (name, i) in wanted})
    lines = ["## Top matched items", "", "| benchmark | item | documents | item text |", "|---|---|---|---|"]
    for v, b, i in top:
        text = previews.get((b, i), "").replace("|", "\\|")
        lines.append(f"| {b} | {i} | {v} | {text} |")
    return lines


def report_markdown(manifest: Manifest, root: str) -> str:
    index = manifest.extras.get("index", {})
    if not index:
        return ""
    c = manifest.stats.counters
    built = (
        f"Index `{index['version']}`: {index['ngrams']:,} windows of {index.get('lengths', [index['n']])} words "
        f"(n = {index['n']}, whole items from {index.get('min_words', index['n'])} words; "
        f"{index['ngrams_too_common']:,} left out as in more than {index['max_items_per_ngram']} items), "
        f"{index['bytes'] / 1e6:.1f} MB, "
        f"built in {index['build_seconds']} s; `{index['dir']}`."
    )
    lines = [
        f"## Benchmarks (action `{manifest.params.get('action')}`)",
        "",
        built,
        "",
        "| benchmark | items | items indexed | too short (skipped) | matched whole | n-grams | items matched "
        "| docs matched | docs removed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in benchmark_rows(manifest):
        lines.append(
            f"| {r['benchmark']} | {r['items']} | {r['items_indexed']} | {r['items_too_short']} | "
            f"{r['items_whole']} | {r['ngrams']} | {r['items_matched']} | {r['docs_matched']} | "
            f"{r['docs_removed']} |"
        )
    note = (
        "Items indexed have at least one window in the index. Too short: every text of the item has fewer "
        "than min_words words (skipped). Matched whole: every text is shorter than n, so it matches only "
        "where all its words appear contiguously. Items matched counts every item owning a matched window. "
        "A document matching several benchmarks counts for each."
    )
    lines += ["", note, ""]
    if c.get("cut.documents") or manifest.params.get("action") == "cut":
        lines += [
            (
                f"Cut: {c.get('cut.documents', 0)} documents, {c.get('cut.spans', 0)} spans, "
                f"{c.get('cut.chars_removed', 0):,} characters removed, "
                f"{c.get('cut.pieces_too_short', 0)} leftover pieces too short."
            ),
            "",
        ]
    return "\n".join(lines + _top_items(manifest, root))


def publish_benchmarks(manifest: Manifest) -> None:
    if FlowRunContext.get() is not None:
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
    root = paths.resolve_data_root(data_root)
    version = index_version(params)
    run = begin_stage(
        STAGE, STAGE_VERSION, params, root, input_version, force, extra_inputs={"decontaminate_index": version}
    )
    if run.reused is not None:
        publish(run.reused, root, report_markdown, reused=True)
        publish_benchmarks(run.reused)
        return run.version
    try:
        summary = decontaminate_index(params, root, version)
        write_index_ref(run.out_dir, summary)
        results = map_shards(run, decontaminate_shard, run.input_shard_paths(), params)
    except BaseException:
        abort_on_error(run)
        raise
    stats = StageStats.merge_all([r.stats for r in results])
    manifest = finish_stage(
        run,
        [r.shard for r in results],
        [r.rejected for r in results],
        stats,
        extras={"index": summary},
        report=report_markdown,
    )
    publish_benchmarks(manifest)
    return run.version
