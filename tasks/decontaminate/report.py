"""The decontaminate report (`decontaminate-summary` artifact, `pretrain inspect decontaminate`): the index,
matches per benchmark (also the `decontaminate-benchmarks` table artifact: `benchmark_rows`), cut totals
and the most matched items with their text (from the index's `items.json`)."""

from __future__ import annotations

from typing import Any

from reports import md_table
from storage import paths
from storage.manifest import Manifest
from tasks.decontaminate import index_dir
from tasks.decontaminate.ngram_index import ITEMS_FILE, read_items

TOP_ITEMS = 10
BENCHMARK_HEADER = {
    "benchmark": "benchmark",
    "items": "items",
    "items_indexed": "items indexed",
    "items_too_short": "too short (skipped)",
    "items_whole": "matched whole",
    "ngrams": "n-grams",
    "items_matched": "items matched",
    "docs_matched": "docs matched",
    "docs_removed": "docs removed",
}
NOTE = (
    "Items indexed have at least one window in the index. Too short: every text of the item has fewer "
    "than min_words words (skipped). Matched whole: every text is shorter than n, so it matches only "
    "where all its words appear contiguously. Items matched counts every item owning a matched window. "
    "A document matching several benchmarks counts for each."
)


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


def _previews(root: str, version: str, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(benchmark, item id) -> the item's text preview, from the index artifact (when it is still there)."""
    directory = index_dir(root, version)
    fs, p = paths.filesystem(directory)
    if not fs.exists(f"{p}/{ITEMS_FILE}"):
        return {}
    items = read_items(directory)
    previews: dict[tuple[str, str], str] = {}
    for name, ids, prev in zip(items["benchmarks"], items["item_ids"], items["previews"]):
        previews.update({(name, i): t for i, t in zip(ids, prev) if (name, i) in wanted})
    return previews


def _top_items(manifest: Manifest, root: str) -> list[str]:
    c = manifest.stats.counters
    top = sorted(
        ((v, k.split(".", 2)[1], k.split(".", 2)[2]) for k, v in c.items() if k.startswith("item.")),
        key=lambda t: (-t[0], t[1], t[2]),
    )[:TOP_ITEMS]
    if not top:
        return []
    version = manifest.extras.get("index", {}).get("version")
    previews = _previews(root, version, {(b, i) for _, b, i in top}) if version else {}
    rows = [[b, i, v, previews.get((b, i), "")] for v, b, i in top]
    return ["## Top matched items", "", *md_table(rows, ["benchmark", "item", "documents", "item text"])]


def report(manifest: Manifest, root: str) -> str:
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
    rows = [[r[k] for k in BENCHMARK_HEADER] for r in benchmark_rows(manifest)]
    lines = [
        f"## Benchmarks (action `{manifest.params.get('action')}`)",
        "",
        built,
        "",
        *md_table(rows, list(BENCHMARK_HEADER.values())),
        "",
        NOTE,
        "",
    ]
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


def index_report(manifest: Manifest, root: str) -> str:
    """The report of a `decontaminate_index` artifact (its manifest's extras: the build summary)."""
    x = manifest.extras
    if "benchmarks" not in x:
        return ""
    cols = ["name", "source", "n", "min_words", "items", "items_indexed", "items_too_short", "items_whole", "ngrams"]
    return "\n".join(
        [
            f"{x['ngrams']:,} windows of {x.get('lengths')} words ({x['ngrams_too_common']:,} left out as in more "
            f"than {x['max_items_per_ngram']} items), {x['bytes'] / 1e6:.1f} MB, built in {x['build_seconds']} s.",
            "",
            "## Benchmarks indexed",
            "",
            *md_table([{c: b.get(c, "") for c in cols} for b in x["benchmarks"]]),
        ]
    )
