"""The eval report (`eval-summary` artifact, `pretrain inspect eval`, `pretrain compare`): tables of tasks x
checkpoint steps (accuracy, length-normalised accuracy, centred), bits per byte per held-out text, CORE.

Everything is read from the manifest's extras (`checkpoints`, one entry per scored step), so a reused version
publishes the same tables.
"""

from __future__ import annotations

from typing import Any

from reports import md_table
from storage.manifest import Manifest


def _f(v: Any, digits: int = 3) -> str:
    return "" if v is None else f"{float(v):.{digits}f}"


def _checkpoints(manifest: Manifest) -> list[dict[str, Any]]:
    return list(manifest.extras.get("checkpoints") or [])


def score_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per (metric, task or text) with one column per step: `step N` (`final` marks the last)."""
    cps = _checkpoints(manifest)
    cols = [f"step {c['step']}" + (" (final)" if c.get("final") else "") for c in cps]
    rows: list[dict[str, Any]] = []
    tasks = list(cps[0]["tasks"]) if cps else []
    for name in tasks:
        first = cps[0]["tasks"][name]
        for metric in ("acc", "acc_norm", "centered"):
            row = {"metric": metric, "task": name, "n": int(first["n"]), "chance": _f(first["chance"])}
            rows.append(row | {col: _f(c["tasks"][name][metric]) for col, c in zip(cols, cps)})
    for name in list(cps[0]["bpb"]) if cps else []:
        row = {"metric": "bits/byte", "task": name, "n": int(cps[0]["bpb"][name]["bytes"]), "chance": ""}
        rows.append(row | {col: _f(c["bpb"][name]["bpb"], 4) for col, c in zip(cols, cps)})
    if cps:
        rows.append(
            {"metric": "CORE", "task": "(mean centred)", "n": len(tasks), "chance": "0.000"}
            | {col: _f(c.get("core")) for col, c in zip(cols, cps)}
        )
    return rows


def table(manifest: Manifest) -> list[dict[str, Any]]:
    """The `eval-scores` table artifact: one row per (step, task or text), the same columns in every row."""
    rows = []
    for c in _checkpoints(manifest):
        base = {"step": c["step"], "final": bool(c.get("final"))}
        for name, s in c["tasks"].items():
            scores = {k: round(float(s[k]), 4) for k in ("acc", "acc_norm", "centered", "chance")}
            rows.append(base | {"task": name, **scores, "bpb": None, "n": int(s["n"])})
        for name, b in c["bpb"].items():
            none = dict.fromkeys(("acc", "acc_norm", "centered", "chance"))
            rows.append(base | {"task": name, **none, "bpb": round(float(b["bpb"]), 4), "n": int(b["bytes"])})
        core = None if c.get("core") is None else round(float(c["core"]), 4)
        rows.append(
            base
            | {"task": "CORE", "acc": None, "acc_norm": None, "centered": core, "chance": 0.0}
            | {"bpb": None, "n": len(c["tasks"])}
        )
    return rows


def report(manifest: Manifest, root: str) -> str:
    """Markdown: what was scored, then the task x step table."""
    x = manifest.extras
    cps = _checkpoints(manifest)
    if not cps:
        return ""
    head = (
        f"train@{x.get('train_version')} (tokenizer of tokenize@{x.get('tokenize_version')}), device "
        f"{x.get('device')}; steps {[c['step'] for c in cps]}; "
        f"{sum(c.get('seconds', 0.0) for c in cps):.1f}s scoring"
    )
    skipped = [f"Not scored: {n} ({s['skipped']})" for n, s in (x.get("sources") or {}).items() if s.get("skipped")]
    return "\n".join([head, *skipped, "", "## Scores", "", *md_table(score_rows(manifest))])


def final_scores(manifest: Manifest) -> dict[str, float]:
    """{"<metric> <task>": value} of the final checkpoint (the last scored step when none is marked)."""
    cps = _checkpoints(manifest)
    if not cps:
        return {}
    c = next((c for c in cps if c.get("final")), cps[-1])
    out = {f"{m} {name}": float(s[m]) for name, s in c["tasks"].items() for m in ("acc", "acc_norm", "centered")}
    out |= {f"bits/byte {name}": float(b["bpb"]) for name, b in c["bpb"].items()}
    if c.get("core") is not None:
        out["CORE"] = float(c["core"])
    return out


DIFFERENT_ITEMS = (
    "\n* scored on different items or text in A and B (each run's own val split, or another file); for a like-"
    "for-like comparison configure the same eval.tasks / eval.heldout files in both runs"
)


def compare_rows(a: Manifest, b: Manifest) -> list[dict[str, Any]]:
    """The two final checkpoints' scores side by side, with B - A (metrics either side lacks stay blank)."""
    sa, sb = final_scores(a), final_scores(b)
    src_a, src_b = a.extras.get("sources") or {}, b.extras.get("sources") or {}
    rows = []
    for key in list(sa) + [k for k in sb if k not in sa]:
        metric, _, task = key.partition(" ")
        if task in src_a and task in src_b and src_a[task] != src_b[task]:
            task += " *"
        va, vb = sa.get(key), sb.get(key)
        diff = f"{vb - va:+.4f}" if va is not None and vb is not None else ""
        rows.append({"metric": metric, "task": task, "A": _f(va, 4), "B": _f(vb, 4), "B - A": diff})
    return rows


def lineage(root: str, manifest: Manifest) -> dict[str, Manifest]:
    """Every artifact `manifest` was built from, by kind, following `inputs` upstream (itself included)."""
    from storage.manifest import load_manifest

    found: dict[str, Manifest] = {}
    todo = [manifest]
    while todo:
        m = todo.pop()
        if str(m.stage) in found:
            continue
        found[str(m.stage)] = m
        for kind, version in m.inputs.items():
            try:
                todo.append(load_manifest(root, kind, version))
            except FileNotFoundError:  # gc'd or written by hand (tests): the version id still compares
                found.setdefault(kind, m.model_copy(update={"stage": kind, "version": version, "params": {}}))
    return found


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): d}


def lineage_rows(root: str, a: Manifest, b: Manifest) -> list[dict[str, Any]]:
    """One row per artifact kind in either lineage: both versions and the params that differ."""
    la, lb = lineage(root, a), lineage(root, b)
    rows = []
    for kind in list(la) + [k for k in lb if k not in la]:
        ma, mb = la.get(kind), lb.get(kind)
        va, vb = ma.version if ma else "-", mb.version if mb else "-"
        if ma is None or mb is None:
            what = "only in " + ("A" if mb is None else "B")
        elif va == vb:
            what = "same"
        else:
            fa, fb = _flat(ma.params), _flat(mb.params)
            diffs = [
                f"{k}: {fa.get(k, '-')} -> {fb.get(k, '-')}"
                for k in sorted(fa.keys() | fb.keys())
                if fa.get(k) != fb.get(k)
            ]
            what = "; ".join(diffs) or "same params, other inputs"
        rows.append({"artifact": kind, "A": va, "B": vb, "difference": what})
    return rows


def compare(root: str, a: Manifest, b: Manifest) -> str:
    """`pretrain compare`: the eval tables side by side, then the lineage difference."""
    rows = compare_rows(a, b)
    head = "\n".join(f"{k}: eval@{m.version} (train@{m.extras.get('train_version')})" for k, m in (("A", a), ("B", b)))
    return "\n".join(
        [
            head,
            "",
            "## Scores (final checkpoints)",
            "",
            *md_table(rows),
            *([DIFFERENT_ITEMS] if any(r["task"].endswith(" *") for r in rows) else []),
            "",
            "## Lineage",
            "",
            *md_table(lineage_rows(root, a, b)),
        ]
    )


def compare_data(root: str, a: Manifest, b: Manifest) -> dict[str, Any]:
    """`pretrain compare --json`: what `compare` shows, as data. Each run's eval version, train version and
    scores table (`table`: one row per step and task), the final checkpoints side by side (`compare_rows`;
    `different_items`: a task was scored on other items in A and B, its name ends in " *") and the lineage
    difference (`lineage_rows`)."""
    rows = compare_rows(a, b)
    runs = {
        k: {"eval_version": m.version, "train_version": m.extras.get("train_version"), "scores": table(m)}
        for k, m in (("A", a), ("B", b))
    }
    return {
        **runs,
        "final": rows,
        "different_items": any(r["task"].endswith(" *") for r in rows),
        "lineage": lineage_rows(root, a, b),
    }
