"""The quality reports: `report` (`quality-summary` artifact, `pretrain inspect quality`: the classifier
used, its validation verdict, the score histogram and the drops by filter) and `classifier_report`
(`quality-classifier-summary`, `pretrain train-quality-classifier`: labels, held-out metrics, the
validation bar, the model file)."""

from __future__ import annotations

from typing import Any

from reports import md_table
from storage.manifest import Manifest
from tasks.quality import EMPTY_TEXT, QUALITY_SCORE_LOW, TEXT_TOO_LONG, QualityParams
from tasks.quality.classifier import MODEL_FILE, classifier_shortfall
from tasks.quality.heuristics import FILTER_NAMES

HISTOGRAM_WIDTH = 30  # characters of the longest bar


def histogram_rows(manifest: Manifest) -> list[str]:
    """The score histogram (tenths of quality_score) as a markdown table with text bars."""
    c = manifest.stats.counters
    bins = [c.get(f"score_bin.{i}", 0) for i in range(10)]
    top = max(bins) or 1
    rows = [[f"{i / 10:.1f}-{(i + 1) / 10:.1f}", n, "#" * round(HISTOGRAM_WIDTH * n / top)] for i, n in enumerate(bins)]
    return md_table(rows, header=["quality_score", "docs", ""])


def drop_rows(manifest: Manifest) -> list[list[Any]]:
    """Per filter: every failure reason with its count (enforced or not), then what the filter dropped."""
    c, dropped = manifest.stats.counters, manifest.stats.dropped
    rows: list[list[Any]] = []
    for f in FILTER_NAMES:
        for key in sorted(k for k in c if k.startswith(f"heuristic.{f}.")):
            rows.append([f, key.split(".", 2)[2], c[key], ""])
        if dropped.get(f):
            rows.append([f, "(all reasons)", "", dropped[f]])
    for reason in (QUALITY_SCORE_LOW, EMPTY_TEXT, TEXT_TOO_LONG):
        if dropped.get(reason):
            rows.append([reason, "", "", dropped[reason]])
    return rows


def report(manifest: Manifest, root: str) -> str:
    x = manifest.extras
    lines = (
        [f"**Warning: the classifier drops nothing**: {x['classifier_warning']}", ""]
        if x.get("classifier_warning")
        else []
    )
    lines += [
        f"Classifier: {x.get('classifier_version') or 'off'}"
        + (" (bootstrapped from the heuristics)" if x.get("classifier_bootstrap") else "")
        + f"; score threshold {x.get('score_threshold')}; scores {x.get('scores_version')}"
        + (" (reused)" if x.get("scores_reused") else ""),
        "",
    ]
    if x.get("classifier_metrics"):
        m = x["classifier_metrics"]
        lines += [
            f"Classifier held-out: precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
            f"AUC {m['auc']:.3f} (n={m['n']})",
            "",
        ]
    lines += ["## Score histogram (all scored documents)", "", *histogram_rows(manifest)]
    lines += [
        "",
        "## Drops by filter",
        "",
        *md_table(drop_rows(manifest), header=["filter", "reason", "docs failing", "dropped (first enforced failure)"]),
    ]
    return "\n".join(lines)


def classifier_report(manifest: Manifest, root: str) -> str:
    x = manifest.extras
    src = x.get("label_sources", {})
    lines = [f"Labels: positives from {src.get('positive')}, negatives from {src.get('negative')}."]
    if x.get("bootstrap"):
        lines.append(
            "**Bootstrapped**: no positive corpus was given, so the labels are the heuristic layer's verdicts "
            "(pass all filters = high quality). The classifier can only learn what the heuristics encode; "
            "train with `--positive` reference files for a DCLM-style classifier."
        )
    metrics = [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in x.get("metrics", {}).items()]
    lines += ["", "## Held-out metrics (P(hq) >= 0.5 counts as high quality)", ""]
    lines += md_table(metrics, header=["metric", "value"])
    lines += ["", *md_table(list(x.get("counts", {}).items()), header=["examples", "count"])]
    bar = QualityParams.model_fields
    min_auc, min_n = bar["classifier_min_auc"].default, bar["classifier_min_examples"].default
    short = classifier_shortfall(x, min_auc, min_n)
    lines += [
        "",
        f"Validation bar of the quality stage (defaults: held-out AUC >= {min_auc}, >= {min_n} examples "
        f"per class): "
        + (
            f"**fails** ({short}); the quality stage will only annotate with it"
            if short
            else "passes; the quality stage may drop documents by its score"
        ),
        "",
        f"Model: `{MODEL_FILE}` ({x.get('model_bytes', 0) / 1e6:.1f} MB, sha256 {x.get('model_sha256', '')[:16]})",
    ]
    return "\n".join(lines)
