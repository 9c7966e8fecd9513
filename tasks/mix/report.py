"""The mix report (`mix-summary` artifact, `pretrain inspect mix`): the per-source table (configured weight,
available, target vs achieved share, repeat factor, status), absent / capped / short / excluded sources
and the annealing split."""

from __future__ import annotations

from typing import Any

from reports import md_table
from storage.manifest import Manifest
from tasks.mix import MixPlan


def summary_rows(plan: MixPlan, counters: dict[str, int]) -> list[dict[str, Any]]:
    """Per-source rows of the report: configured weight, available, target (characters, share after absent
    sources were redistributed), achieved (documents, characters, share), repeats, shortfall and status."""
    out_total = sum(v for k, v in counters.items() if k.startswith("chars_out.")) or 1
    rows = []
    for s, sp in plan.sources.items():
        chars_out = counters.get(f"chars_out.{s}", 0)
        rows.append(
            {
                "source": s,
                "weight": round(sp.weight, 4),
                "docs_available": sp.available_docs,
                "chars_available": sp.available_chars,
                "chars_target": round(sp.target_chars),
                "share_target": round(sp.share_target, 4),
                "docs_kept": counters.get(f"docs_out.{s}", 0),
                "copies": counters.get(f"copies.{s}", 0),
                "chars_achieved": chars_out,
                "share_achieved": round(chars_out / out_total, 4),
                "repeat_factor": round(chars_out / sp.available_chars, 3) if sp.available_chars else 0.0,
                "shortfall_chars": round(max(0.0, sp.wanted_chars - sp.target_chars)),
                "status": sp.status,
            }
        )
    return rows


def report(manifest: Manifest, root: str) -> str:
    """Per-source table (available, target, achieved, repeat factor), exclusions and annealing."""
    if "plan" not in manifest.extras:
        return ""
    plan = MixPlan.model_validate(manifest.extras["plan"])
    c = manifest.stats.counters
    p = manifest.params
    lines = [
        "## Mixture by source",
        "",
        f"Budget {plan.budget_chars:,.0f} characters (from {plan.budget_from}), max_repeats "
        f"{p.get('max_repeats')}, seed {p.get('seed')}; {c.get('copies', 0):,} copies of "
        f"{manifest.stats.docs_out:,} documents ({c.get('repeat_copies', 0):,} repeats); kept "
        f"{manifest.stats.docs_out / max(manifest.stats.docs_in, 1):.1%} of the {manifest.stats.docs_in:,} "
        f"input documents.",
        "",
        *md_table(summary_rows(plan, c)),
        "",
    ]
    if plan.redistributed:
        lines += [
            "Absent sources (weighted, no documents in the input): "
            + ", ".join(f"{s} ({share:.1%})" for s, share in plan.redistributed.items())
            + "; their share went to the present sources in proportion to their weights (share_target).",
            "",
        ]
    if plan.capped and not plan.renormalised:
        lines += [
            f"Capped at max_repeats {p.get('max_repeats')} (would need more epochs to reach their target "
            f"characters): {', '.join(plan.capped)}; the shares differ from share_target accordingly, and "
            f"every document was still used at least once (default budget).",
            "",
        ]
    if plan.renormalised:
        short = [
            f"{s} ({sp.wanted_chars - sp.target_chars:,.0f} chars short)"
            for s, sp in plan.sources.items()
            if sp.wanted_chars - sp.target_chars > 1e-6 * max(sp.wanted_chars, 1.0)
        ]
        lines += [
            f"**Shortfall (allow_shortfall: true): {', '.join(short)}; the other sources were scaled up "
            f"to fill the budget, so the achieved shares differ from the weights.**",
            "",
        ]
    if plan.excluded:
        lines += [
            "Sources left out (no positive weight, reason source_not_in_mix): "
            + ", ".join(f"{s} ({n:,} docs)" for s, n in plan.excluded.items()),
            "",
        ]
    if plan.anneal_threshold is not None:
        total = sum(v for k, v in c.items() if k.startswith("chars_out.")) or 1
        lines += [
            f"Annealing split: quality_score >= {plan.anneal_threshold:.4f}: {c.get('anneal_copies', 0):,} "
            f"copies, {c.get('anneal_chars', 0):,} chars ({c.get('anneal_chars', 0) / total:.1%} of the mix; "
            f"target {p.get('anneal_fraction')}) in anneal/ ({len(manifest.extras.get('anneal_shards', []))} "
            f"shards).",
            "",
        ]
    return "\n".join(lines)
