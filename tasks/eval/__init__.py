"""eval: a `train` version's checkpoints -> the `eval` version (scores in its manifest and `results.json`).

Input: a committed `train` version; its final checkpoint (the step the manifest's result names) and the kept
checkpoints listed in `steps`. The tokenizer is the one of the tokenize version the run trained on (sha256
checked against the checkpoint). Output: `results.json` (one entry per checkpoint) and the same in the
manifest's extras under `checkpoints`; `sources` records each file scored with its sha256.

Per checkpoint, on `device` in batches of `batch_size` (tasks.eval.score):
1. bits per byte (total negative log2-likelihood / UTF-8 bytes, comparable across tokenizers) on held-out
   text: the tokenize version's own val documents (`val_documents`, tasks.eval.heldout) and `heldout` files;
2. zero-shot multiple choice on `tasks` files (tasks.eval.tasks: llm-foundry ARC/PIQA/COPA/BoolQ/Winogrande/
   LAMBADA, HellaSwag and MMLU public formats) and the generated `heldout_continuation` task from val
   documents (`val_continuation_items`): accuracy by summed continuation log-likelihood, length-normalised
   accuracy, centred accuracy (acc - chance) / (1 - chance);
3. CORE: the mean centred accuracy over the multiple-choice tasks (DCLM / llm-foundry gauntlet style).
Every context is scored after our EOS, the document separator training saw (tasks.eval.score.encode_pair);
`tests/tasks/test_eval_harness.py` checks the log-likelihoods and accuracies against lm-evaluation-harness.
A configured file that is missing is an error naming its config key; nothing is skipped silently (a val split too
small for `heldout_continuation` is recorded under `sources` as skipped, with the fix, and shown in the report).
Counters: `items.<task>` (items scored), `items_too_long.<task>` (items whose continuation is longer than the
model's seq_len, not scored: lm-evaluation-harness refuses those too), `heldout_documents.<name>`. No documents
flow through this stage: docs_in / docs_out stay 0 (the run summary shows `-`, as for train).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.eval.params import (
    NO_SPANS,
    RESULTS,
    STAGE,
    STAGE_VERSION,
    VAL_TEXT,
    EvalParams,
    HeldOutFile,
    TaskFile,
    heldout_name,
)

if TYPE_CHECKING:
    from tasks.eval.run import evaluate, files_version, fit_items, score_checkpoint

__all__ = [
    "NO_SPANS",
    "RESULTS",
    "STAGE",
    "STAGE_VERSION",
    "VAL_TEXT",
    "EvalParams",
    "HeldOutFile",
    "TaskFile",
    "evaluate",
    "files_version",
    "fit_items",
    "heldout_name",
    "score_checkpoint",
]


def __getattr__(name: str) -> Any:
    """The runtime (`evaluate`, ...) lives in tasks.eval.run, which imports torch (~1 s): only when asked for, so
    the params, `pretrain status`/`inspect` and the pipeline table stay light."""
    import tasks.eval.run

    try:
        return getattr(tasks.eval.run, name)
    except AttributeError:
        raise AttributeError(f"module 'tasks.eval' has no attribute {name!r}") from None
