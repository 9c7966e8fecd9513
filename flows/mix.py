"""mix_flow: `decontaminate` -> `mix`: count the sources, plan the mixture, sample every shard.

Two maps over the input shards with one global step between them: `mix_count_shard` (characters
and key histograms per source) -> `plan_mix` (targets, rates, key thresholds; fails naming the short
source unless `allow_shortfall`) -> `mix_shard` (writes the copies). The plan is stored in the
manifest extras (`plan`: per source the configured weight, the target share after absent sources'
shares were redistributed, the planned share and a status ok/absent/capped), with `anneal_shards` when
annealing; `mix_report` renders the per-source table (target vs achieved share) for the Prefect summary
artifact and `pretrain inspect mix`.
"""

from typing import Any, Optional

from prefect import flow, get_run_logger
from prefect.utilities.annotations import unmapped

from flows.stage import abort_on_error, begin_stage, finish_stage, map_shards, publish, task_runner
from storage.manifest import Manifest
from storage.stats import StageStats
from tasks.mix import (
    STAGE,
    STAGE_VERSION,
    MixJob,
    MixParams,
    MixPlan,
    merge_counts,
    mix_count_shard,
    mix_shard,
    plan_mix,
)


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


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def mix_report(manifest: Manifest, root: str) -> str:
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
        _md_table(summary_rows(plan, c)),
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


@flow(name="mix", task_runner=task_runner(2))
def mix_flow(
    params: MixParams = MixParams(), data_root: Optional[str] = None, input_version: str = "latest", force: bool = False
) -> str:
    """Weighted, seeded sampling across sources; returns the mix version id."""
    run = begin_stage(STAGE, STAGE_VERSION, params, data_root, input_version, force)
    if run.reused is not None:
        publish(run.reused, run.root, mix_report, reused=True)
        return run.version
    try:
        m = run.input_manifest
        assert m is not None
        if not any(s.rows for s in m.shards):
            raise ValueError(
                f"{m.stage}@{m.version} has no documents, so there is nothing to mix; see "
                f"`pretrain inspect {m.stage}` for what it dropped"
            )
        sources = run.input_shard_paths()
        counts = merge_counts(f.result() for f in mix_count_shard.map(sources, unmapped(params)))
        plan = plan_mix(counts, params)
        get_run_logger().info(
            "mix plan: budget %.0f chars; rates %s; absent (redistributed) %s; capped %s; excluded %s",
            plan.budget_chars,
            {s: round(sp.rate, 3) for s, sp in plan.sources.items()},
            plan.redistributed,
            plan.capped,
            plan.excluded,
        )
        results = map_shards(run, mix_shard, sources, MixJob(params=params, plan=plan))
        stats = StageStats.merge_all([r.stats for r in results])
        extras = {
            "plan": plan.model_dump(mode="json"),
            "anneal_shards": [r.anneal.model_dump() for r in results if r.anneal is not None],
            "chars": {
                "total": sum(v for k, v in stats.counters.items() if k.startswith("chars_out.")),
                "unique": stats.counters.get("chars_unique", 0),
            },
        }
    except BaseException:
        abort_on_error(run)
        raise
    finish_stage(
        run, [r.shard for r in results], [r.rejected for r in results], stats, extras=extras, report=mix_report
    )
    return run.version
