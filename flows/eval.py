"""eval_flow: a `train` version -> the `eval` version (bits per byte, zero-shot accuracy, CORE; tasks/eval).

Not sharded: one `eval_run` task loads each chosen checkpoint on the training device (`eval.device`) and
scores it in batches; `results.json` and the manifest's extras hold the scores, the `eval-scores` table
artifact shows them in the UI, `pretrain inspect eval` prints tasks/eval/report.py's table. The content id of the
configured task and held-out files is an input (`files`, as ingest's), so editing a file gives a new version.
"""

import json
from typing import Optional

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.stage import StageOutput, StageRun, run_stage
from flows.train import GPU_TAG
from storage import paths
from storage.files import write_atomic
from storage.manifest import Manifest, ShardInfo
from tasks.eval import RESULTS, STAGE, STAGE_VERSION, EvalParams, evaluate, files_version
from tasks.eval.report import report, table


@task(task_run_name="eval-run", tags=[GPU_TAG])
def eval_run(params: EvalParams, root: str, train: Manifest, out_dir: str) -> StageOutput:
    """Score the checkpoints and write `results.json` (deterministic compute: no retries)."""
    extras, stats = evaluate(root, train, params, out_dir)
    data = json.dumps(extras["checkpoints"], indent=2).encode()
    fs, path = paths.filesystem(paths.join(out_dir, RESULTS))
    write_atomic(fs, path, data)
    shard = ShardInfo(name=RESULTS, rows=stats.docs_out, bytes=len(data))
    return StageOutput(shards=[shard], stats=stats, extras=extras)


def publish_more(manifest: Manifest, root: str) -> None:
    """The `eval-scores` table artifact (called by the frame in a flow run)."""
    create_table_artifact(key="eval-scores", table=table(manifest), description=f"eval@{manifest.version}")


@flow(name="eval")
def eval_flow(
    params: EvalParams = EvalParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Score a train version's final checkpoint (and `steps`); returns the eval version id."""

    def phases(run: StageRun) -> StageOutput:
        assert run.input_manifest is not None
        return eval_run(params, run.root, run.input_manifest, run.out_dir)

    files = files_version(params)  # a missing file fails here, before the stage starts
    return run_stage(
        STAGE,
        STAGE_VERSION,
        params,
        phases,
        data_root,
        input_version,
        force,
        extra_inputs={"files": files} if files else None,
        report=report,
        publish_more=publish_more,
    )
