"""The ingest report (`ingest-summary` artifact, `pretrain inspect ingest`): documents by source."""

from __future__ import annotations

from reports import md_table
from storage.manifest import Manifest


def report(manifest: Manifest, root: str) -> str:
    c = manifest.stats.counters
    src = sorted(((k.split(".", 1)[1], v) for k, v in c.items() if k.startswith("source.")), key=lambda kv: -kv[1])
    return "\n".join(["## Documents by source", "", *md_table(src, ["source", "documents"])]) if src else ""
