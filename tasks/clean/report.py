"""The clean report (`clean-summary` artifact, `pretrain inspect clean`): what each rule removed (documents,
lines, characters, PII by kind), the most frequent removed lines, the block lists read, and before/after
samples of edited documents. `merge_extras` builds the manifest extras it reads from the tasks' results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reports import md_table
from storage.manifest import Manifest

RULES = ("url_blocked", "line_dedup", "too_short_after_clean", "pii", "pii_dense")
SAMPLE_CHARS = 600


def merge_extras(
    results: Sequence[Any],
    partitions: Sequence[Any],
    top: list[tuple[int, int]],
    lists: list[dict[str, Any]],
    entries: dict[str, int],
) -> dict[str, Any]:
    """Manifest extras: line statistics, the top removed lines (text + count), samples, the list files."""
    texts: dict[str, str] = {}
    for r in results:
        for k, v in r.top_lines.items():
            texts.setdefault(k, v)
    return {
        "unique_lines": sum(p.unique for p in partitions),
        "frequent_lines": sum(p.frequent for p in partitions),
        "top_removed_lines": [{"line": texts.get(str(k), "?"), "count": c} for k, c in top],
        "samples": [s for r in results for s in r.samples][:12],
        "block_lists": lists,
        "block_list_entries": entries,
    }


def rule_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per rule: documents dropped, documents edited, characters removed."""
    s = manifest.stats
    c = s.counters
    return [
        {
            "rule": rule,
            "docs dropped": s.dropped.get(rule, 0),
            "docs edited": c.get(f"docs_changed.{rule}", 0),
            "chars removed": c.get(f"chars_removed.{rule}", 0),
        }
        for rule in RULES
    ]


def _one_line(text: str) -> str:
    """Lines joined with ` / ` (so removed lines stay visible), whitespace collapsed, cut."""
    return " / ".join(" ".join(x.split()) for x in text.splitlines() if x.strip())[:SAMPLE_CHARS]


def report(manifest: Manifest, root: str) -> str:
    c = manifest.stats.counters
    x = manifest.extras
    p = manifest.params
    blocked = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("url_blocked.")}
    lines = [
        "## What each rule removed",
        "",
        *md_table(rule_rows(manifest)),
        "",
        f"- URL filter: {sum(blocked.values()):,} documents blocked {blocked or ''}; lists: "
        + (", ".join(f"{b['kind']} {b['path']}" for b in x.get("block_lists", [])) or "none")
        + f"; built-in words {'on' if p.get('builtin_words') else 'off'}",
        f"- line dedup: {c.get('lines_removed', 0):,} lines removed; {x.get('frequent_lines', 0):,} of "
        f"{x.get('unique_lines', 0):,} distinct lines seen more than {p.get('max_line_repeats')} times",
        "- PII redacted: "
        + ", ".join(
            f"{k} {c.get(f'pii.{k}', 0):,} (kept by allow-list {c.get(f'pii_allowed.{k}', 0):,})"
            for k in p.get("pii", [])
        ),
    ]
    top = x.get("top_removed_lines") or []
    if top:
        lines += [
            "",
            "## Most frequent removed lines",
            "",
            *md_table([[t["count"], _one_line(t["line"])] for t in top], ["count", "line"]),
        ]
    samples = x.get("samples") or []
    if samples:
        lines += ["", "## Before / after samples"]
    for s in samples:
        lines += [
            "",
            f"### {s['rule']}: `{s['id']}` {s['url']}",
            "",
            f"- before: {_one_line(s['before'])}",
            f"- after: {_one_line(s['after'])}",
        ]
    return "\n".join(lines)
