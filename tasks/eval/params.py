"""The eval stage's params and constants (no torch: `pretrain config`, the pipeline table and reports read them)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.params import StageParams
from tasks.eval.heldout import CONTINUATION_TASK
from tasks.eval.tasks import task_name

STAGE = "eval"
STAGE_VERSION = 1
RESULTS = "results.json"
VAL_TEXT = "tokenize_val"
NO_SPANS = (
    "the val documents hold fewer than 2 spans of 56 plain words; raise tokenize.val_fraction "
    "(or set eval.val_continuation_items: 0 to stop asking)"
)  # the bits-per-byte row of the tokenize version's val documents


class TaskFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str = Field(description="A .jsonl or .jsonl.gz evaluation file (llm-foundry, HellaSwag or MMLU format).")
    name: str | None = Field(None, description="Task name in the tables; default: the file name without suffixes.")
    limit: int | None = Field(None, ge=1, description="Score only the first N items; default: eval.limit.")
    delimiter: str | None = Field(
        None, description="Text between an llm-foundry query and each choice; default: by file name (tasks.py)."
    )


class HeldOutFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str = Field(description="Held-out text: .txt (one document), .jsonl/.jsonl.gz or .parquet (`text`).")
    name: str | None = Field(None, description="Row name in the bits-per-byte table; default: the file name.")
    limit: int | None = Field(None, ge=1, description="Only the first N documents of the file.")


class EvalParams(StageParams):
    tasks: list[TaskFile] = Field(
        default_factory=list,
        description="Multiple-choice / LAMBADA files to score zero-shot, e.g. {path: "
        "../shared/data/evals/llm_foundry_local_data/arc_easy.jsonl, limit: 500}; a missing file is an error.",
    )
    heldout: list[HeldOutFile] = Field(
        default_factory=list,
        description="Text files for bits per byte (e.g. WikiText-2's valid.txt); a missing file is an error.",
    )
    val_documents: int = Field(
        200,
        ge=0,
        description="Bits per byte on up to N documents of the tokenize version's val split (the pipeline's own "
        "held-out text, read back from its mix version); 0: off.",
    )
    val_continuation_items: int = Field(
        200,
        ge=0,
        description="Items of the generated `heldout_continuation` task: spans of 56 words of the val documents, "
        "pick the last 8 after the first 48 among the last 8 of up to 3 other spans (chance 1/4); 0: off.",
    )
    steps: list[int] = Field(
        default_factory=list,
        description="Checkpoint steps to score besides the final one (milestones the train run kept); a step "
        "it did not keep is an error listing the kept steps.",
    )
    limit: int | None = Field(None, ge=1, description="Items per task file when its own limit is not set.")
    batch_size: int = Field(32, ge=1, le=4096, description="Sequences per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available (the training device), else CPU."
    )
    seed: int = Field(0, ge=0, description="Seed of the heldout_continuation task's wrong choices and order.")

    @model_validator(mode="after")
    def _check(self) -> EvalParams:
        names = [t.name or task_name(t.path) for t in self.tasks] + (
            [CONTINUATION_TASK] * bool(self.val_continuation_items)
        )
        texts = [heldout_name(h) for h in self.heldout] + [VAL_TEXT] * bool(self.val_documents)
        for key, found in (("tasks", names), ("heldout", texts)):
            dup = sorted({n for n in found if found.count(n) > 1})
            if dup:
                raise ValueError(f"eval.{key}: names {dup} repeat; give each entry its own `name`")
        if self.val_continuation_items > self.val_documents:
            raise ValueError("eval.val_continuation_items must be <= eval.val_documents (its items come from them)")
        if not (self.tasks or self.heldout or self.val_documents):
            raise ValueError("eval has nothing to score: set eval.tasks, eval.heldout or eval.val_documents")
        return self

    def version_params(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d.pop("batch_size")  # batching does not change the scores (tests/tasks/test_eval.py)
        d.pop("device")
        return d


def heldout_name(h: HeldOutFile) -> str:
    return h.name or task_name(os.path.basename(h.path)).removesuffix(".txt").removesuffix(".parquet")
