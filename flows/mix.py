"""mix_flow: `decontaminate` -> `mix`: count the sources, plan the mixture, sample every shard.

The phases (`tasks.mix`): a map of `mix_count_shard` over the input shards (characters and key
histograms per source) -> `plan_mix` (targets, rates, key thresholds; fails naming the short source
unless `allow_shortfall`) -> a map of `mix_shard` (writes the copies). The plan is stored in the
manifest extras (`plan`: per source the configured weight, the target share after absent sources'
shares were redistributed, the planned share and a status ok/absent/capped), with `anneal_shards` when
annealing; the report is `tasks.mix.report`.
"""

from typing import Optional

from prefect import flow, get_run_logger

from flows.stage import Phases, StageOutput, StageRun, map_shards, run_stage, task_runner
from tasks.mix import STAGE, STAGE_VERSION, MixJob, MixParams, merge_counts, mix_count_shard, mix_shard, plan_mix
from tasks.mix.report import report


def _phases(params: MixParams) -> Phases:
    def phases(run: StageRun) -> StageOutput:
        m = run.input_manifest
        assert m is not None
        if not any(s.rows for s in m.shards):
            raise ValueError(
                f"{m.stage}@{m.version} has no documents, so there is nothing to mix; see "
                f"`pretrain inspect {m.stage}` for what it dropped"
            )
        sources = run.input_shard_paths()
        plan = plan_mix(merge_counts(r.counts for r in map_shards(run, mix_count_shard, sources, params)), params)
        get_run_logger().info(
            "mix plan: budget %.0f chars; rates %s; absent (redistributed) %s; capped %s; excluded %s",
            plan.budget_chars,
            {s: round(sp.rate, 3) for s, sp in plan.sources.items()},
            plan.redistributed,
            plan.capped,
            plan.excluded,
        )
        results = map_shards(run, mix_shard, sources, MixJob(params=params, plan=plan))
        out = StageOutput.of(results)
        out.extras = {
            "plan": plan.model_dump(mode="json"),
            "anneal_shards": [r.anneal.model_dump() for r in results if r.anneal is not None],
            "chars": {
                "total": sum(v for k, v in out.stats.counters.items() if k.startswith("chars_out.")),
                "unique": out.stats.counters.get("chars_unique", 0),
            },
        }
        return out

    return phases


@flow(name="mix", task_runner=task_runner(2))
def mix_flow(
    params: MixParams = MixParams(), data_root: Optional[str] = None, input_version: str = "latest", force: bool = False
) -> str:
    """Weighted, seeded sampling across sources; returns the mix version id."""
    return run_stage(STAGE, STAGE_VERSION, params, _phases(params), data_root, input_version, force, report=report)
