"""langid_flow: `ingest` -> `langid` (documents whose language is in the keep-list, scored by LID-176).

One input shard becomes one output shard (`tasks.langid`); the report is `tasks.langid.report`.
"""

from typing import Optional

from prefect import flow

from flows.stage import run_stage, sharded, task_runner
from tasks.langid import STAGE, STAGE_VERSION, LangidParams, langid_shard
from tasks.langid.report import report


@flow(name="langid", task_runner=task_runner(2))
def langid_flow(
    params: LangidParams = LangidParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Ingest documents -> documents in the kept languages; returns the langid version id."""
    return run_stage(
        STAGE, STAGE_VERSION, params, sharded(langid_shard), data_root, input_version, force, report=report
    )
