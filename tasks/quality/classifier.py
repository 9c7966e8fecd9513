"""The quality classifier: DCLM's fastText recipe -> the `quality_classifier/<version>/` artifact.

A supervised fastText model (word bigrams, `wordNgrams=2`) separates high-quality text (label `hq`)
from ordinary crawl text (`lq`); `quality_score` = P(hq). DCLM (Li et al. 2024) trained it on
OpenHermes/ELI5 positives against random RefinedWeb documents. Labels here:
  positives  the `positive` reference files (JSONL/Parquet with a `text` field, or `.txt` where blank
             lines separate documents; WikiText's tokenized files with `detokenize_wikitext`), or, when
             none are given, *bootstrapped*: crawl documents that pass every heuristic filter that
             applies to them (`tasks.quality.heuristics`).
  negatives  the `negative` files, or crawl documents: a seeded random sample when positives come
             from files (DCLM), the documents failing a heuristic when bootstrapping.
Crawl documents are the `langid` version's kept documents in `languages`, at most
`max_examples_per_class` per class (the smallest hash64(seed, id), a uniform seeded sample).
A bootstrapped classifier can only learn what the heuristics already encode; its report says so.

Every class is split by a hash of its text into train and a held-out `test_fraction`; the manifest's
extras hold precision / recall / accuracy at P(hq) >= 0.5 and the ROC AUC on the held-out split, and
`examples_per_class` (train + held-out). The quality stage lets a classifier drop documents only if
those pass its validation bar (`QualityParams.classifier_min_auc`, default 0.8, and
`classifier_min_examples`, default 200 per class: `classifier_shortfall`); otherwise its scores are
stored and nothing is dropped by them. A bootstrapped classifier rarely passes: on small crawls it sees
a few dozen documents (held-out AUC 0.5-0.7, every score near 0.5), so the stage skips training it when
the crawl cannot supply `classifier_min_examples` per class (`TooFewExamples`).

Training a real classifier (DCLM-style, on labelled files; the held-out split is taken from them):
    pretrain train-quality-classifier --positive good.jsonl --negative bad.jsonl --data-root DIR
then set `quality.classifier_version: <printed version>`. JSONL/Parquet files need a `text` field
(`.txt`: blank-line separated documents). Without `--negative`, negatives are a random sample of the
latest langid version's documents; without either, labels are bootstrapped from the heuristics.
Text the model sees (training and scoring alike, `classifier_text`): the first `max_chars`
characters, NFKC-lowercased, words and punctuation separated by single spaces, on one line.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import json
import logging
import math
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from models.classifiers import load_quality_model, train_supervised
from storage import paths
from storage.documents import read_documents
from storage.params import StageParams
from tasks.quality.heuristics import (
    FILTER_NAMES,
    FilterName,
    HeuristicLayer,
    check_options,
    failures,
)
from tasks.text import hash64, normalise

log = logging.getLogger(__name__)

STAGE = "quality_classifier"
STAGE_VERSION = 3  # 2: bootstrap labels use Gopher's paper words; 3: ids from file content, not paths
MODEL_FILE = "model.bin"
HQ, LQ = "hq", "lq"
_TOKEN = re.compile(r"\w+|[^\w\s]")
FIX_HINT = (
    "set `quality.use_classifier: false` to run the heuristics only, or train a classifier on labelled "
    "files (`pretrain train-quality-classifier --positive good.jsonl --negative bad.jsonl`) and set "
    "`quality.classifier_version` to the version it prints"
)


class TooFewExamples(ValueError):
    """A class has fewer labelled examples than training (or the validation bar) needs."""

    def __init__(self, counts: dict[str, int], needed: int, bootstrap: bool):
        self.counts, self.needed = counts, needed
        short = {("positives" if k == HQ else "negatives"): n for k, n in counts.items() if n < needed}
        where = (
            "bootstrapped from the heuristic layer (positives pass every filter, negatives fail one)"
            if bootstrap
            else "from the reference files and the crawl sample"
        )
        super().__init__(
            f"only {', '.join(f'{n} {what}' for what, n in short.items())} for the quality classifier "
            f"(need >= {needed} per class; labels {where}): {FIX_HINT}"
        )


class QualityClassifierParams(StageParams):
    positive: list[str] = Field(
        default_factory=list,
        description=(
            "High-quality reference files (JSONL/Parquet with a `text` field, or .txt with blank-line separated "
            "documents). Empty: bootstrap positives from the heuristic layer (crawl documents passing all filters)."
        ),
    )
    negative: list[str] = Field(
        default_factory=list,
        description=(
            "Low-quality files; empty: crawl documents (a random sample, or those failing the heuristics when "
            "bootstrapping)."
        ),
    )
    detokenize_wikitext: bool = Field(
        False,
        description=(
            "Undo WikiText's tokenization (` @-@ `, spaces before punctuation, `<unk>`) in positive .txt files."
        ),
    )
    languages: list[str] = Field(["en"], description="Crawl documents of these languages (langid labels) are used.")
    max_examples_per_class: int = Field(20_000, ge=2, le=10_000_000, description="Cap per class (seeded sample).")
    min_chars: int = Field(200, ge=0, le=100_000, description="Shorter reference documents are skipped.")
    max_chars: int = Field(100_000, ge=100, le=10_000_000, description="Characters of a document the model sees.")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Held-out share of each class for the metrics.")
    balance: bool = Field(
        True,
        description=(
            "Downsample the larger class to the size of the smaller (DCLM trains on balanced classes; an imbalanced "
            "fastText model puts P(hq) near the class prior and 0.5 stops being a useful threshold)."
        ),
    )
    seed: int = Field(0, description="Sampling and split seed.")
    epoch: int = Field(10, ge=1, le=1000, description="fastText epochs.")
    lr: float = Field(0.1, gt=0.0, le=10.0, description="fastText learning rate.")
    dim: int = Field(32, ge=2, le=1024, description="fastText vector size.")
    word_ngrams: int = Field(2, ge=1, le=5, description="fastText wordNgrams (DCLM: 2, word bigrams).")
    min_count: int = Field(1, ge=1, description="fastText minCount.")
    bucket: int = Field(
        200_000,
        ge=1000,
        le=10_000_000,
        description=(
            "fastText hash buckets for n-grams; the model file is about (vocabulary + bucket) * dim * 4 bytes."
        ),
    )
    filters: list[FilterName] = Field(list(FILTER_NAMES), description="Heuristic filters used for bootstrapped labels.")
    filter_options: dict[FilterName, dict[str, Any]] = Field(
        default_factory=dict,
        description=("Constructor overrides of the datatrove filters used for bootstrapped labels."),
    )
    datatrove_compatible: bool = Field(
        False,
        description=(
            "Bootstrapped labels from datatrove's exact Gopher quality verdicts (spaCy tokens as words) instead of "
            "the paper's whitespace words (see tasks.quality.heuristics)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> QualityClassifierParams:
        check_options(dict(self.filter_options))
        return self

    @property
    def bootstrap(self) -> bool:
        return not self.positive

    def version_params(self) -> dict[str, Any]:
        """The reference files' locations are left out: their content fingerprint (per class, root-relative
        names) is an input of the version, so a moved data root or copied files reuse the classifier; which
        classes have files (bootstrap or not) stays in."""
        out = self.model_dump(mode="json", exclude={"positive", "negative"})
        out["has_files"] = {"positive": bool(self.positive), "negative": bool(self.negative)}
        return out


def classifier_text(text: str, max_chars: int = 100_000) -> str:
    """The one-line, lowercased, punctuation-split text the classifier trains and predicts on."""
    return " ".join(_TOKEN.findall(normalise(text[:max_chars])))


_WIKI_FIXES = [
    (re.compile(r" @(.)@ "), r"\1"),
    (re.compile(r"<unk>"), ""),
    (re.compile(r" ([.,;:!?)\]}'])"), r"\1"),
    (re.compile(r"([(\[{]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'m|'ll|'d)\b"), r"\1"),
    (re.compile(r"^ *= .*= *$", re.MULTILINE), ""),
    (re.compile(r"[ \t]{2,}"), " "),
]


def detokenize_wikitext(text: str) -> str:
    """WikiText's tokenized form back to plain text (headings removed)."""
    for pattern, repl in _WIKI_FIXES:
        text = pattern.sub(repl, text)
    return text.strip()


def read_corpus(path: str, wikitext: bool = False) -> Iterator[str]:
    """Documents of a reference file: JSONL(.gz) / Parquet `text` field, or blank-line separated .txt."""
    fs, inner = paths.filesystem(path)
    if not fs.exists(inner):
        raise FileNotFoundError(f"reference file {path} does not exist; check --positive/--negative")
    if path.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        with fs.open(inner, "rb") as raw:
            stream = (
                gzip.open(raw, "rt", encoding="utf-8")
                if path.endswith(".gz")
                else (line.decode("utf-8") for line in raw)
            )
            for n, line in enumerate(stream, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise ValueError(f"{path}:{n}: expected a JSON object with a string 'text' field")
                    yield row["text"]
    elif path.endswith(".parquet"):
        with fs.open(inner, "rb") as f:
            pf = pq.ParquetFile(f)
            if "text" not in pf.schema_arrow.names:
                raise ValueError(f"{path}: no 'text' column (columns: {pf.schema_arrow.names})")
            for batch in pf.iter_batches(columns=["text"]):
                yield from (t for t in batch.column(0).to_pylist() if t)
    elif path.endswith(".txt"):
        with fs.open(inner, "r", encoding="utf-8") as f:
            text = f.read()
        for block in re.split(r"\n\s*\n", text):
            doc = detokenize_wikitext(block) if wikitext else block.strip()
            if doc:
                yield doc
    else:
        raise ValueError(f"{path}: unsupported reference format; use .jsonl, .jsonl.gz, .parquet or .txt")


def _sample_key(seed: int, key: str) -> int:
    return hash64(f"{seed}:{key}")


@dataclass
class Examples:
    """Labelled one-line texts, capped per class by the smallest sample keys."""

    cap: int
    seed: int
    heaps: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: {HQ: [], LQ: []})
    seen: dict[str, int] = field(default_factory=lambda: {HQ: 0, LQ: 0})

    def add(self, label: str, key: str, text: str) -> None:
        self.seen[label] += 1
        item = (-_sample_key(self.seed, key), text)  # max-heap on the key: keep the `cap` smallest
        heap = self.heaps[label]
        if len(heap) < self.cap:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)

    def texts(self, label: str) -> list[str]:
        return [t for _, t in sorted(self.heaps[label], reverse=True)]


def collect_examples(params: QualityClassifierParams, crawl_shards: list[str]) -> tuple[Examples, dict[str, str]]:
    """Labelled examples from the reference files and crawl shards; returns them and the label sources."""
    ex = Examples(params.max_examples_per_class, params.seed)
    for label, files in ((HQ, params.positive), (LQ, params.negative)):
        for path in files:
            for text in read_corpus(path, wikitext=params.detokenize_wikitext and label == HQ):
                if len(text) >= params.min_chars:
                    ex.add(label, text[:10_000], classifier_text(text, params.max_chars))  # keyed by content, not path
    sources = {
        "positive": "files" if params.positive else "heuristics",
        "negative": "files" if params.negative else ("heuristics" if params.bootstrap else "crawl_sample"),
    }
    if params.positive and params.negative:
        return ex, sources
    layer = (
        HeuristicLayer(params.filters, dict(params.filter_options), params.datatrove_compatible)
        if params.bootstrap
        else None
    )
    keep = set(params.languages)
    for shard in crawl_shards:
        for doc in read_documents(shard, columns=["id", "text", "language"]):
            if doc.meta.get("language") not in keep or not doc.text.strip():
                continue
            label = LQ
            if layer is not None:
                label = LQ if failures(layer.evaluate(doc.text[:1_000_000], doc.meta.get("language"))) else HQ
            if (label == HQ and params.positive) or (label == LQ and params.negative):
                continue
            ex.add(label, doc.id, classifier_text(doc.text, params.max_chars))
    return ex, sources


def split(texts: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/test split by text hash; at least one example on each side when n >= 2."""
    ordered = sorted(texts, key=lambda t: _sample_key(seed + 1, t))
    n_test = min(max(1, math.ceil(len(ordered) * test_fraction)), len(ordered) - 1) if len(ordered) >= 2 else 0
    return ordered[n_test:], ordered[:n_test]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    pos, neg = int(labels.sum()), int(len(labels) - labels.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def classification_metrics(scores: list[float], labels: list[int], threshold: float = 0.5) -> dict[str, float]:
    """Precision / recall / accuracy of `score >= threshold` as hq, and ROC AUC."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    pred = s >= threshold
    tp, fp, fn = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
    return {
        "n": len(y),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": float((pred == (y == 1)).mean()) if len(y) else 0.0,
        "auc": roc_auc(s, y),
    }


def score_texts(model: Any, texts: list[str]) -> list[float]:
    """P(hq) for one-line classifier texts."""
    out = []
    for top in model.predict(texts, k=2):
        probs = dict(top)
        out.append(float(probs.get(HQ, 1.0 - probs.get(LQ, 1.0))))
    return out


def examples_per_class(facts: dict[str, Any]) -> dict[str, int]:
    """Labelled examples per class (train + held-out) of a classifier's manifest extras."""
    counts = facts.get("counts", {})
    return {label: int(counts.get(f"train.{label}", 0)) + int(counts.get(f"test.{label}", 0)) for label in (HQ, LQ)}


def classifier_shortfall(facts: dict[str, Any], min_auc: float, min_examples: int) -> str | None:
    """Why a classifier (its manifest extras) fails the validation bar, or None when it passes."""
    metrics = facts.get("metrics") or {}
    auc = metrics.get("auc")
    per_class = examples_per_class(facts)
    problems = []
    if auc is None or not math.isfinite(auc) or auc < min_auc:
        problems.append(f"held-out AUC {auc if auc is None else round(auc, 3)} < {min_auc}")
    small = {("positives" if k == HQ else "negatives"): n for k, n in per_class.items() if n < min_examples}
    if small:
        problems.append(f"{', '.join(f'{n} {what}' for what, n in small.items())} < {min_examples} per class")
    return "; ".join(problems) or None


def train_classifier(
    params: QualityClassifierParams, crawl_shards: list[str], out_dir: Path, min_examples_per_class: int = 2
) -> dict[str, Any]:
    """Collect examples, train, evaluate on the held-out split, save `model.bin`; returns the facts.
    Raises `TooFewExamples` before training when a class has fewer than `min_examples_per_class` (>= 2)."""
    ex, sources = collect_examples(params, crawl_shards)
    train_rows: list[tuple[str, str]] = []
    test_texts: list[str] = []
    test_labels: list[int] = []
    per_class = {label: ex.texts(label) for label in (HQ, LQ)}
    needed = max(2, min_examples_per_class)
    if any(len(t) < needed for t in per_class.values()):
        raise TooFewExamples({label: len(t) for label, t in per_class.items()}, needed, params.bootstrap)
    if params.balance:
        n = min(len(t) for t in per_class.values())
        per_class = {label: texts[:n] for label, texts in per_class.items()}  # texts are in sample-key order
    for label in (HQ, LQ):
        texts = per_class[label]
        tr, te = split(texts, params.test_fraction, params.seed)
        train_rows += [(label, t) for t in tr]
        test_texts += te
        test_labels += [int(label == HQ)] * len(te)
    train_rows.sort(key=lambda r: _sample_key(params.seed + 2, r[1]))  # interleave the classes
    with tempfile.TemporaryDirectory(prefix="quality-clf-") as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("".join(f"__label__{label} {text}\n" for label, text in train_rows), encoding="utf-8")
        model, lr = None, params.lr
        for _ in range(4):
            try:
                model = train_supervised(
                    str(train_file),
                    epoch=params.epoch,
                    lr=lr,
                    dim=params.dim,
                    wordNgrams=params.word_ngrams,
                    minCount=params.min_count,
                    bucket=params.bucket,
                    thread=1,
                    seed=params.seed,
                )
                break
            except RuntimeError as err:  # fastText's "Encountered NaN": the usual fix is a lower learning rate
                if "NaN" not in str(err):
                    raise
                log.warning("fastText diverged at lr=%s; retrying with lr=%s", lr, lr / 2)
                lr /= 2
        if model is None:
            raise RuntimeError(f"fastText diverged (NaN) down to lr={lr * 2}; lower lr or raise dim/bucket")
    model_path = out_dir / MODEL_FILE
    model.save_model(str(model_path))
    clf = load_quality_model.__wrapped__(str(model_path))  # fresh load: the file just written
    metrics = classification_metrics(score_texts(clf, test_texts), test_labels)
    counts = {
        f"{split_name}.{label}": n
        for split_name, rows in (("train", train_rows),)
        for label in (HQ, LQ)
        for n in [sum(1 for r in rows if r[0] == label)]
    }
    counts.update({f"test.{HQ}": sum(test_labels), f"test.{LQ}": len(test_labels) - sum(test_labels)})
    per_class_n = {HQ: counts[f"train.{HQ}"] + counts[f"test.{HQ}"], LQ: counts[f"train.{LQ}"] + counts[f"test.{LQ}"]}
    return {
        "metrics": metrics,
        "label_sources": sources,
        "bootstrap": params.bootstrap,
        "counts": counts,
        "examples_per_class": per_class_n,
        "candidates": dict(ex.seen),
        "model_file": MODEL_FILE,
        "model_bytes": model_path.stat().st_size,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "languages": params.languages,
        "n_examples": len(train_rows) + len(test_texts),
        "lr": lr,
    }
