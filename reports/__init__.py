"""Report rendering for Prefect artifacts and `pretrain inspect`: the one markdown table helper and the
version summary every artifact shares.

Each stage's own report is `report(manifest, root) -> str` in `tasks/<stage>/report.py`, built from
the helpers here; the pipeline's attrition summary is `reports.pipeline`. Plots are PNGs written with
matplotlib's headless backend (`save_plot`). Nothing here talks to Prefect: flows/stage.py publishes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from storage import paths
from storage.documents import read_documents
from storage.manifest import Manifest

ReportFn = Callable[[Manifest, str], str]


def md_table(
    rows: Sequence[dict[str, Any]] | Sequence[Sequence[Any]], header: Sequence[str] | None = None
) -> list[str]:
    """Markdown table lines: rows as dicts (columns from the first row, or `header`) or as sequences under
    `header`. Integers get thousands separators; `|` in cells is escaped."""
    if not rows and header is None:
        return []
    if rows and isinstance(rows[0], dict):
        cols = list(header or rows[0])
        cells = [[r.get(c, "") for c in cols] for r in rows]  # type: ignore[union-attr]
    else:
        cols = list(header or [])
        cells = [list(r) for r in rows]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in cells]


def _cell(v: Any) -> str:
    text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
    return text.replace("|", "\\|")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@contextmanager
def save_plot(path: str, size: tuple[float, float] = (5, 3.2)) -> Iterator[Any]:
    """`with save_plot(path) as ax:` draw on a matplotlib Axes; the figure is saved to `path` (PNG) and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        yield ax
        fig.tight_layout()
        fs, p = paths.filesystem(path)
        with fs.open(p, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)


def sample_documents(
    root: str, manifest: Manifest, n: int = 5, rejected: bool = False, reason: str | None = None
) -> list[dict[str, Any]]:
    """First n (rejected) documents of a version, as dicts; for artifacts and `pretrain inspect`."""
    out: list[dict[str, Any]] = []
    base = paths.version_dir(root, manifest.stage, manifest.version)
    for s in manifest.rejected if rejected else manifest.shards:
        if not s.rows or not s.name.endswith(".parquet"):
            continue
        for d in read_documents(paths.join(base, s.name)):
            if reason is not None and d.meta.get("reason") != reason:
                continue
            out.append({"id": d.id, "url": d.url, "source": d.source, "text": d.text, **d.meta})
            if len(out) >= n:
                return out
    return out


def version_summary(manifest: Manifest, root: str, report: ReportFn | None = None, reused: bool = False) -> str:
    """The `<stage>-summary` markdown: where the version is, its counts, the stage's report, sample documents."""
    path = paths.version_dir(root, manifest.stage, manifest.version)
    s = manifest.stats
    lines = [
        f"# {manifest.stage}@{manifest.version}" + (" (reused)" if reused else ""),
        "",
        f"- directory: `{path}`",
        f"- inputs: {manifest.inputs or 'raw files'}",
        f"- documents: {s.docs_in} in, {s.docs_out} out, {s.docs_dropped} dropped {dict(s.dropped)}",
        f"- created: {manifest.created_at}, code {manifest.code_version}",
        "",
    ]
    if report is not None:
        lines += [report(manifest, root), ""]
    samples = (
        sample_documents(root, manifest) if manifest.shards and manifest.shards[0].name.endswith(".parquet") else []
    )
    if samples:
        lines += ["## Sample documents", ""]
        for d in samples:
            text = " ".join(d["text"][:300].split())
            lines.append(f"- `{d['id']}` {d['url']} [{d['source']}]: {text}...")
    return "\n".join(lines)
