"""Downstream evaluation sets from local files: multiple-choice, schema and LAMBADA-style items.

Every item becomes `choices` (context, continuation) pairs and a gold index; a model picks the choice whose
continuation has the highest log-likelihood given its context (`tasks.eval.score`). Formats, recognised by
their keys (one JSON object per line; `.jsonl` or `.jsonl.gz`):

- llm-foundry multiple choice (`query`, `choices`, `gold`): ARC-Easy/Challenge, PIQA, COPA, BoolQ, SIQA,
  OpenBookQA, CommonsenseQA, llm-foundry's HellaSwag and MMLU. Context = query + the task's delimiter.
- llm-foundry schema (`context_options`, `continuation`, `gold`): Winogrande, WSC. One context per option,
  the same continuation after each (partial scoring).
- llm-foundry language modelling (`context`, `continuation`): LAMBADA. One choice; correct when every
  continuation token is the model's greedy choice.
- HellaSwag's public format (`ctx_a`, `ctx_b`, `endings`, `label`, `activity_label`), with lm-evaluation-
  harness's preprocessing (`preprocess_hellaswag`).
- MMLU's public format (`question`, `choices`, `answer`), with lm-evaluation-harness's prompt
  (`question\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:`, continuations " A" ... " D").

Delimiters (`DELIMITERS`, by file stem): llm-foundry's gauntlet puts "\\nAnswer: " between question and
choice for the QA sets and a space for sentence completions; lm-evaluation-harness puts its
`target_delimiter` " " before the continuation. Chance accuracy (for the CORE-style centred score) is the
mean of 1 / number of choices over the items, 0 for LAMBADA.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["choice", "greedy"]

# file stem -> text placed between an llm-foundry `query` and each choice
DELIMITERS: dict[str, str] = {
    "arc_easy": "\nAnswer: ",
    "arc_challenge": "\nAnswer: ",
    "piqa": "\nAnswer: ",
    "piqa_small": "\nAnswer: ",
    "boolq": "\nAnswer: ",
    "siqa": "\nAnswer: ",
    "openbook_qa": " ",
    "commonsense_qa": "\nAnswer: ",
    "copa": " ",
    "hellaswag": " ",
    "hellaswag_small": "",
    "mmlu_small": "Answer: ",
    "mmlu": "Answer: ",
}
DEFAULT_DELIMITER = " "


@dataclass
class Item:
    """One evaluation item: choice k is (contexts[k], continuations[k]); `gold` the right one."""

    contexts: list[str]
    continuations: list[str]
    gold: int


@dataclass
class EvalTask:
    name: str
    kind: Kind
    items: list[Item] = field(default_factory=list)
    source: str = ""

    @property
    def chance(self) -> float:
        if self.kind == "greedy" or not self.items:
            return 0.0
        return sum(1.0 / len(i.contexts) for i in self.items) / len(self.items)


def _lines(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON object ({err}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness `hellaswag.utils.preprocess`."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _item(row: dict[str, Any], delimiter: str, where: str) -> tuple[Kind, Item]:
    def gold(key: str, n: int) -> int:
        g = row.get(key)
        if not isinstance(g, int) or not 0 <= g < n:
            raise ValueError(f"{where}: `{key}` must be an index into the {n} choices, got {g!r}")
        return g

    if {"query", "choices"} <= row.keys():
        choices = [str(c) for c in row["choices"]]
        return "choice", Item([str(row["query"]) + delimiter] * len(choices), choices, gold("gold", len(choices)))
    if {"context_options", "continuation"} <= row.keys():
        options = [str(c) for c in row["context_options"]]
        cont = " " + str(row["continuation"]).lstrip()
        return "choice", Item(options, [cont] * len(options), gold("gold", len(options)))
    if {"ctx_a", "ctx_b", "endings"} <= row.keys():
        ctx = row["ctx_a"] + " " + str(row["ctx_b"]).capitalize()
        query = _hellaswag_text(f"{row.get('activity_label', '')}: {ctx}")
        endings = [" " + _hellaswag_text(e) for e in row["endings"]]
        label = int(row["label"]) if str(row.get("label", "")).strip() != "" else -1
        row = {**row, "label": label}
        return "choice", Item([query] * len(endings), endings, gold("label", len(endings)))
    if {"question", "choices", "answer"} <= row.keys():
        letters = "ABCDEFGHIJ"[: len(row["choices"])]
        prompt = str(row["question"]).strip() + "".join(f"\n{k}. {c}" for k, c in zip(letters, row["choices"]))
        return "choice", Item(
            [prompt + "\nAnswer:"] * len(letters), [f" {k}" for k in letters], gold("answer", len(letters))
        )
    if {"context", "continuation"} <= row.keys():
        return "greedy", Item([str(row["context"]).rstrip()], [" " + str(row["continuation"]).strip()], 0)
    raise ValueError(
        f"{where}: unknown item format (keys {sorted(row)}); expected query/choices/gold, "
        "context_options/continuation/gold, context/continuation, HellaSwag's ctx_a/ctx_b/endings/label or "
        "MMLU's question/choices/answer"
    )


def task_name(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def load_task(
    path: str | Path, name: str | None = None, limit: int | None = None, delimiter: str | None = None
) -> EvalTask:
    """The items of one evaluation file (the first `limit`); the format is read from the keys of each line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"evaluation file {p} does not exist; fix eval.tasks (a path to a .jsonl file)")
    name = name or task_name(p)
    delim = delimiter if delimiter is not None else DELIMITERS.get(name, DEFAULT_DELIMITER)
    task: EvalTask | None = None
    for n, row in enumerate(_lines(p)[:limit] if limit else _lines(p), 1):
        kind, item = _item(row, delim, f"{p}:{n}")
        if task is None:
            task = EvalTask(name, kind, source=str(p))
        elif kind != task.kind:
            raise ValueError(f"{p}:{n}: a {kind} item in a file of {task.kind} items; one format per file")
        task.items.append(item)
    if task is None:
        raise ValueError(f"evaluation file {p} holds no items")
    return task
