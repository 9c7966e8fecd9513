"""The dataset card (`README.md`) of a document version, so the version directory loads in one line.

A document stage writes its kept documents under `data/` (`storage.documents.DATA_DIR`), the rejected ones under
`rejected/` (with `reason`, `reason_detail`), mix's annealing split under `anneal/`; `manifest.json`, reports,
plots and `_work/` stay beside them. The card's YAML header names those folders as Hugging Face `configs`, so:

    datasets.load_dataset("<root>/dedup/<version>")                    # kept documents (config "default")
    datasets.load_dataset("<root>/dedup/<version>", "rejected")        # what the stage dropped, and why
    pandas.read_parquet("<root>/dedup/<version>/data")
    pyarrow.dataset.dataset("<root>/dedup/<version>/data")
    duckdb: SELECT * FROM '<root>/dedup/<version>/data/*.parquet'
    datatrove ParquetReader("<root>/dedup/<version>/data")

The card's body says what the version is (stage, inputs, counts, drop reasons) and repeats those lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SPLITS = (("default", "data"), ("rejected", "rejected"), ("anneal", "anneal"))


def dataset_card(
    stage: str,
    version: str,
    inputs: dict[str, str],
    files: Sequence[str],
    docs_out: int,
    dropped: dict[str, int],
    extra: dict[str, Any] | None = None,
) -> str | None:
    """The README.md text for a version whose Parquet `files` (relative names) are in `data/` etc.; None when it
    has no such files (token shards, side artifacts)."""
    present = [(name, folder) for name, folder in SPLITS if any(f.startswith(f"{folder}/") for f in files)]
    if not any(name == "default" for name, _ in present):
        return None
    head = ["---", "configs:"]
    for name, folder in present:
        head += [
            f"- config_name: {name}",
            "  data_files:",
            "  - split: train",
            f"    path: {folder}/*.parquet",
        ]
    head.append("---")
    lineage = ", ".join(f"`{k}@{v}`" for k, v in sorted(inputs.items())) or "raw files"
    reasons = ", ".join(f"`{r}` {n:,}" for r, n in sorted(dropped.items(), key=lambda kv: -kv[1])) or "none"
    body = [
        f"# {stage}@{version}",
        "",
        f"Documents kept by the `{stage}` stage of pretrain-pipeline: {docs_out:,} (in `data/`), read from {lineage}.",
        f"Dropped (in `rejected/`, with `reason` and `reason_detail`): {reasons}.",
        "`manifest.json` holds the params, the lineage, every count and the stage's report data.",
        "",
        "Load it:",
        "",
        "```python",
        "import datasets, pandas, pyarrow.dataset",
        "datasets.load_dataset(VERSION_DIR)               # or (VERSION_DIR, 'rejected')",
        "pandas.read_parquet(f'{VERSION_DIR}/data')",
        "pyarrow.dataset.dataset(f'{VERSION_DIR}/data')",
        "# duckdb: SELECT * FROM 'VERSION_DIR/data/*.parquet'",
        "# datatrove: ParquetReader(f'{VERSION_DIR}/data')",
        "```",
    ]
    return "\n".join(head + [""] + body) + "\n"
