"""The train report (`train-summary` artifact, `pretrain inspect train`) and the train stage's extra
Prefect artifacts: the `train-metrics` table and the `train-loss-curve` markdown.

Everything is read from the version's manifest (`extras["result"]`, a TrainResult whose paths are
relative to the version directory) and its files, so a reused version publishes the same artifacts.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from reports import md_table
from storage import paths
from storage.manifest import Manifest

# (row label, TrainResult field) of the report table, in order
REPORT_ROWS = (
    ("parameters", "num_params"),
    ("steps", "steps"),
    ("tokens seen", "tokens_seen"),
    ("epochs", "epochs"),
    ("val loss (nats/token)", "val_loss"),
    ("unigram baseline loss", "unigram_loss"),
    ("val bits per byte", "val_bpb"),
    ("val perplexity", "val_ppl"),
    ("tokens/s", "tokens_per_s"),
    ("MFU", "mfu"),
    ("seconds", "seconds"),
    ("resumed from step", "resumed_from"),
    ("skipped steps", "skipped_steps"),
    ("rollbacks", "rollbacks"),
)


def _result(manifest: Manifest) -> dict[str, Any]:
    return dict(manifest.extras.get("result") or {})


def _fmt(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def report(manifest: Manifest, root: str) -> str:
    """The training table (model, size, losses against the unigram baseline, throughput) and the sample."""
    r = _result(manifest)
    if not r:
        return ""
    model = f"{r.get('model')} (auto)" if r.get("requested_model") == "auto" else r.get("model")
    rows = [("model", model)] + [(label, _fmt(r.get(key))) for label, key in REPORT_ROWS]
    table = "\n".join(md_table(rows, ["metric", "value"]))
    return f"## Training\n\n{table}\n\n## Sample\n\n```\n{r.get('sample', '')}\n```"


def metrics_table(manifest: Manifest) -> list[dict[str, Any]]:
    """The `train-metrics` table artifact: every result field but the sample."""
    return [{"metric": k, "value": v} for k, v in _result(manifest).items() if k != "sample"]


def loss_curve_markdown(manifest: Manifest, root: str) -> str:
    """The `train-loss-curve` artifact: the version's loss.png inlined (or where it should have been)."""
    plot = _result(manifest).get("plot_path") or "loss.png"
    png = Path(paths.version_dir(root, manifest.stage, manifest.version)) / plot
    if not png.is_file():
        return f"loss curve: `{png}` (not found)"
    data = base64.b64encode(png.read_bytes()).decode()
    return f"# {manifest.stage}@{manifest.version} loss curve\n\n![loss curve](data:image/png;base64,{data})\n\n`{png}`"
