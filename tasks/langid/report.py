"""The langid report (`langid-summary` artifact, `pretrain inspect langid`): the language distribution of
the input with what was kept, and a few rejected documents per drop reason."""

from __future__ import annotations

from reports import md_table, sample_documents
from storage.manifest import Manifest

SAMPLES_PER_REASON = 3


def language_rows(manifest: Manifest) -> list[dict[str, object]]:
    """One row per predicted language: documents, kept, share of the input."""
    c = manifest.stats.counters
    total = sum(v for k, v in c.items() if k.startswith("language.")) or 1
    rows = [
        {
            "language": k.split(".", 1)[1] or "(none)",
            "docs": v,
            "kept": c.get(f"kept.{k.split('.', 1)[1]}", 0),
            "share": f"{v / total:.1%}",
        }
        for k, v in c.items()
        if k.startswith("language.")
    ]
    return sorted(rows, key=lambda r: (-int(str(r["docs"])), str(r["language"])))


def report(manifest: Manifest, root: str) -> str:
    p = manifest.params
    lines = [
        f"Keep-list: {p.get('languages') or 'all languages'}; threshold {p.get('threshold')}; "
        f"model {p.get('model_path') or 'lid.176.ftz (bundled)'}",
        "",
        "## Language distribution",
        "",
        *md_table(language_rows(manifest)),
    ]
    if manifest.stats.dropped:
        lines += ["", "## Rejected samples by reason"]
    for reason, n in sorted(manifest.stats.dropped.items(), key=lambda kv: -kv[1]):
        lines += ["", f"### {reason} ({n})", ""]
        for d in sample_documents(root, manifest, n=SAMPLES_PER_REASON, rejected=True, reason=reason):
            text = " ".join(d["text"][:160].split())
            lines.append(
                f"- `{d['id']}` {d['url']} lang={d.get('language')} score={(d.get('language_score') or 0):.3f}: {text}"
            )
    return "\n".join(lines)
