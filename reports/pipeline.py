"""The pipeline summary (`pretrain-summary` artifact): attrition after each stage and the lineage of versions.

Published by `pipeline_flow` (flows/pipeline.py `publish_summary`) at the end of every run, also when a
stage failed (it then shows what completed and names the failed stage). Built only from the manifests
on disk, so it describes what the versions hold, whichever run made them:

- attrition table: per stage, its version, whether this run computed it, reused it (a complete
  version made before this run started) or read it from disk without running it, and documents,
  characters and tokens after the stage, with the share of ingest's documents left;
- attrition funnel: a PNG (matplotlib, Agg) of documents and characters per stage, embedded in the
  markdown as a base64 data URI (the Prefect UI renders it on the artifact page);
- lineage: the chain of `stage@version` from ingest to the last stage, following each manifest's
  `inputs` (the recorded lineage, not this run's arguments), with the directory of each version.

Characters are counted exactly from the Parquet `text` column (pyarrow `utf8_length`, streamed by
record batch) when a version holds at most `EXACT_CHARS_MAX_BYTES` of text; above that they are
estimated from `bytes_out` and the first shard's characters per byte and marked `~`. Tokens come from
the tokenize / train manifests (`extras`); document stages show an estimate `~N` scaled by the
characters per token that tokenize measured, when a tokenize version is in the lineage.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow.compute as pc

from storage import paths
from storage.documents import iter_batches
from storage.manifest import Manifest, is_complete, latest_version, load_manifest

EXACT_CHARS_MAX_BYTES = 1 << 30
# where tokenize / train put their token counts in `extras` (first hit wins; one level of nesting searched)
TOKEN_KEYS = ("tokens", "num_tokens", "total_tokens", "tokens_total", "train_tokens", "tokens_seen")


@dataclass
class AttritionRow:
    stage: str
    version: Optional[str]
    status: str  # computed | reused | on disk | FAILED | not run
    documents: Optional[int] = None
    unique: Optional[int] = None  # distinct documents when the output repeats some (mix upsampling)
    characters: Optional[int] = None
    chars_estimated: bool = False
    tokens: Optional[int] = None
    tokens_estimated: bool = False
    created_at: str = ""
    directory: str = ""
    error: str = ""


def parse_time(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


# a committed version never changes: its character count is read once per process (the run's summary artifact
# and the CLI's summary both count the same versions)
_CHARACTERS: dict[tuple[str, str, str], tuple[Optional[int], bool]] = {}


def count_characters(root: str, m: Manifest) -> tuple[Optional[int], bool]:
    """(characters of kept text, estimated?) for a document version; (None, False) for other outputs."""
    key = (root, str(m.stage), m.version)
    if key not in _CHARACTERS:
        _CHARACTERS[key] = _count_characters(root, m)
    return _CHARACTERS[key]


def _count_characters(root: str, m: Manifest) -> tuple[Optional[int], bool]:
    shards = [s for s in m.shards if s.name.endswith(".parquet")]
    if not shards:
        return None, False
    base = paths.version_dir(root, m.stage, m.version)

    def chars_of(name: str) -> int:
        return sum(
            int(pc.sum(pc.utf8_length(b.column(0))).as_py() or 0)
            for b in iter_batches(paths.join(base, name), columns=["text"])
        )

    if m.stats.bytes_out <= EXACT_CHARS_MAX_BYTES:
        return sum(chars_of(s.name) for s in shards if s.rows), False
    first = next((s for s in shards if s.rows), None)
    if first is None:
        return 0, False
    first_bytes = sum(
        int(pc.sum(pc.binary_length(b.column(0))).as_py() or 0)
        for b in iter_batches(paths.join(base, first.name), columns=["text"])
    )
    ratio = chars_of(first.name) / first_bytes if first_bytes else 1.0
    return int(m.stats.bytes_out * ratio), True


def manifest_documents(m: Manifest) -> tuple[Optional[int], Optional[int]]:
    """(documents in the output, distinct documents if fewer): Parquet shard rows, else stats.docs_out."""
    parquet = [s for s in m.shards if s.name.endswith(".parquet")]
    if not parquet:
        return (m.stats.docs_out if m.stats.docs_in else None), None
    rows = sum(s.rows for s in parquet)
    return rows, (m.stats.docs_out if m.stats.docs_out != rows else None)


def manifest_tokens(m: Manifest) -> Optional[int]:
    """Tokens a tokenize/train version recorded: `tokens.<split>` counters, else `extras` (TOKEN_KEYS)."""
    split_tokens = [v for k, v in m.stats.counters.items() if k.startswith("tokens.")]
    if split_tokens:
        return int(sum(split_tokens))
    scopes: list[dict[str, Any]] = [m.extras] + [v for v in m.extras.values() if isinstance(v, dict)]
    for key in TOKEN_KEYS:
        for scope in scopes:
            value = scope.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return int(value)
    return None


def _upstream(order: Sequence[str], stage: str) -> Optional[str]:
    i = list(order).index(stage)
    return order[i - 1] if i > 0 else None


def lineage(root: str, end: Optional[tuple[str, str]], order: Sequence[str]) -> list[Manifest]:
    """Manifests from the first stage of `order` to `end`, following `inputs` backwards (stops where a
    version is missing)."""
    chain: list[Manifest] = []
    current = end
    while current is not None and is_complete(root, current[0], current[1]):
        m = load_manifest(root, current[0], current[1])
        chain.append(m)
        up = _upstream(order, current[0])
        current = (up, m.inputs[up]) if up is not None and up in m.inputs else None
    return chain[::-1]


def attrition(
    root: str,
    versions: dict[str, str],
    order: Sequence[str],
    started: Optional[float] = None,
    failed: Optional[tuple[str, BaseException]] = None,
) -> list[AttritionRow]:
    """One row per stage of `order` (the pipeline's stages) from the first to the last completed (or the
    failed) stage."""
    ran = dict(versions)
    end: Optional[tuple[str, str]] = None
    if ran:
        last = max(ran, key=list(order).index)
        end = (last, ran[last])
    elif failed is not None and _upstream(order, failed[0]) is not None:
        up = _upstream(order, failed[0])
        assert up is not None
        latest = latest_version(root, up)
        end = (up, latest) if latest else None
    rows: list[AttritionRow] = []
    for m in lineage(root, end, order):
        if m.stage in ran:
            status = "reused" if started is not None and parse_time(m.created_at) < started else "computed"
        else:
            status = "on disk"
        chars, est = count_characters(root, m)
        docs, unique = manifest_documents(m)
        rows.append(
            AttritionRow(
                m.stage,
                m.version,
                status,
                documents=docs,
                unique=unique,
                characters=chars,
                chars_estimated=est,
                tokens=manifest_tokens(m),
                created_at=m.created_at,
                directory=paths.version_dir(root, m.stage, m.version),
            )
        )
    if failed is not None:
        rows.append(AttritionRow(failed[0], None, "FAILED", error=f"{type(failed[1]).__name__}: {failed[1]}"))
    _estimate_tokens(rows, order)
    return rows


def _estimate_tokens(rows: list[AttritionRow], order: Sequence[str]) -> None:
    """Fill document stages' tokens from the characters per token measured by the first stage that
    counted tokens (tokenize), over the characters of the stage before it."""
    tok = next((r for r in rows if r.tokens), None)
    up = _upstream(order, tok.stage) if tok is not None and tok.stage in order else None
    src = next((r for r in rows if r.stage == up), None)
    if tok is None or src is None or not tok.tokens or not src.characters:
        return
    per_char = tok.tokens / src.characters
    for r in rows:
        if r.tokens is None and r.characters is not None:
            r.tokens, r.tokens_estimated = int(r.characters * per_char), True


def _fmt(value: Optional[int], estimated: bool = False) -> str:
    return "-" if value is None else ("~" if estimated else "") + f"{value:,}"


def _share(value: Optional[int], base: Optional[int]) -> str:
    """A stage's share of ingest's documents; above 100% the stage repeats documents (mix upsampling)."""
    if not base or value is None:
        return "-"
    pct = 100.0 * value / base
    return f"{pct:.1f}%" + (" (upsampled)" if pct > 100.0 else "")


def attrition_rows(rows: list[AttritionRow], order: Sequence[str]) -> list[dict[str, str]]:
    """The attrition table as plain rows (`pretrain run` prints it at the end)."""
    done = [r for r in rows if r.version]
    base = done[0].documents if done and done[0].stage == order[0] else None
    return [
        {
            "stage": r.stage,
            "version": r.version or "-",
            "this run": r.status,
            "documents": _fmt(r.documents) + (f" ({r.unique:,} distinct)" if r.unique is not None else ""),
            f"% of {order[0]}": _share(r.documents, base),
            "characters": _fmt(r.characters, r.chars_estimated),
            "tokens": _fmt(r.tokens, r.tokens_estimated),
            "directory": r.directory or r.error,
        }
        for r in rows
    ]


_FUNNELS: dict[str, bytes] = {}


def funnel_png(rows: list[AttritionRow]) -> bytes:
    """Horizontal bar funnel per document stage: documents, characters and (estimated) tokens; failed in red.
    Drawn once per distinct rows in a process (the summary artifact and the CLI's summary.md show the same)."""
    key = repr(rows)
    if key not in _FUNNELS:
        _FUNNELS[key] = _funnel_png(rows)
    return _FUNNELS[key]


def _funnel_png(rows: list[AttritionRow]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.characters is not None or r.status == "FAILED"]
    labels = [f"{r.stage}" + (" (FAILED)" if r.status == "FAILED" else "") for r in shown]
    panels = [("documents", "documents"), ("characters", "characters")]
    if any(r.tokens for r in shown):
        panels.append(("tokens", "tokens (~ estimated from tokenize)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.55 * len(shown) + 1.6), sharey=True)
    for ax, (attr, title) in zip(axes, panels, strict=True):
        values = [getattr(r, attr) or 0 for r in shown]
        top = max(values) if values and max(values) > 0 else 1
        colors = [
            "#d62728" if r.status == "FAILED" else ("#9ecae1" if r.status != "computed" else "#3182bd") for r in shown
        ]
        bars = ax.barh(range(len(shown)), values, color=colors)
        for bar, r, v in zip(bars, shown, values, strict=True):
            if r.status == "FAILED":
                ax.text(0.01 * top, bar.get_y() + bar.get_height() / 2, "failed", va="center", color="#d62728")
                continue
            pct = 100.0 * v / values[0] if values[0] else 0.0
            share = (f" ({pct:.0f}%" + (": upsampled" if pct > 100.5 else "") + ")") if values[0] else ""
            ax.text(v + 0.01 * top, bar.get_y() + bar.get_height() / 2, f"{v:,}{share}", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xlim(0, top * 1.35)
        ax.tick_params(axis="x", labelsize=7)
    axes[0].set_yticks(range(len(shown)), labels)
    axes[0].invert_yaxis()
    fig.suptitle("attrition funnel (dark: computed in this run, light: reused / on disk)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def summary_markdown(
    root: str,
    versions: dict[str, str],
    order: Sequence[str],
    started: Optional[float] = None,
    failed: Optional[tuple[str, BaseException]] = None,
    image: bool = True,
    rows: Optional[list[AttritionRow]] = None,
) -> str:
    """The run summary (attrition table, funnel, lineage); `rows`: the `attrition` rows when already computed
    (they read every version's text to count characters)."""
    rows = rows if rows is not None else attrition(root, versions, order, started, failed)
    done = [r for r in rows if r.version]
    if failed is not None:
        head = (
            f"# pretrain: FAILED at stage `{failed[0]}`\n\n{rows[-1].error}\n\n"
            f"Complete upstream versions are kept; a re-run (Retry, a new run, `pretrain run`) reuses them "
            f"and starts at `{failed[0]}`."
        )
    else:
        head = f"# pretrain: completed ({len(versions)} stage(s) run)"
    ingest_docs = done[0].documents if done and done[0].stage == order[0] else None
    table = [
        f"| stage | version | this run | documents | % of {order[0]} | characters | tokens |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = _share(r.documents, ingest_docs)
        docs = _fmt(r.documents) + (f" ({r.unique:,} distinct)" if r.unique is not None else "")
        table.append(
            f"| {r.stage} | {r.version or '-'} | {r.status} | {docs} | {share} | "
            f"{_fmt(r.characters, r.chars_estimated)} | {_fmt(r.tokens, r.tokens_estimated)} |"
        )
    parts = [head, "", "## Attrition", "", *table, ""]
    if image and done:
        b64 = base64.b64encode(funnel_png(rows)).decode()
        parts += [f"![attrition funnel](data:image/png;base64,{b64})", ""]
    parts += ["## Lineage", "", " -> ".join(f"`{r.stage}@{r.version}`" for r in done) or "(no complete version)", ""]
    parts += [
        f"- `{r.stage}@{r.version}`: `{r.directory}` (created {r.created_at}); "
        f"`pretrain inspect {r.stage} --version {r.version}`"
        for r in done
    ]
    parts += [
        "",
        (
            "`~` = estimated (characters from bytes, tokens from tokenize's characters per token); "
            "`reused` = complete before this run started; `on disk` = upstream not run by this run."
        ),
    ]
    return "\n".join(parts)


RUNS_DIR = "_runs"  # under the data root: one folder per `pretrain run` (gc never looks into `_` folders)


def write_run_summary(
    root: str,
    versions: dict[str, str],
    order: Sequence[str],
    started: float,
    rows: Optional[list[AttritionRow]] = None,
) -> str:
    """`<root>/_runs/<UTC start time>/summary.md` (the attrition table and the lineage, as the Prefect
    `pretrain-summary` artifact shows them) with `funnel.png` beside it; returns the folder."""
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = paths.join(root, RUNS_DIR, stamp)
    fs, base = paths.filesystem(out)
    fs.makedirs(base, exist_ok=True)
    rows = rows if rows is not None else attrition(root, versions, order, started)
    md = summary_markdown(root, versions, order, started, image=False, rows=rows)
    if any(r.version for r in rows):
        with fs.open(paths.join(base, "funnel.png"), "wb") as f:
            f.write(funnel_png(rows))
        md = md.replace("## Lineage", "![attrition funnel](funnel.png)\n\n## Lineage", 1)
    with fs.open(paths.join(base, "summary.md"), "w") as f:
        f.write(md + "\n")
    return out
