"""Quality classifier evaluation on human labels: DCLM's annotated Common Crawl documents.

    .venv/bin/python -m bench.quality_eval [--shared ../shared/data] [--out DIR]

Eval sets: `quality/dclm_human_annotated/majority_data.jsonl` (499 documents, majority vote of the
annotators: 272 good, 227 bad) and `agreement_data.jsonl` (281 where they agreed). None of them is
used for training. Classifiers, each trained in-process with `tasks.quality.classifier.train_classifier`:
  dclm        DCLM's recipe: positives = WikiText-2 validation paragraphs (detokenized) + the cs336
              high-quality reference text; negatives = Common Crawl / web crawl text ingested from the
              WARC/WET files under `warc/` (our ingest stage: trafilatura main text).
  bootstrap   the default of the quality stage: labels from the heuristic layer on the same crawl
              documents (pass every filter = good), as the stage does on a fresh crawl.
  heuristics  no model: "good" = passes every datatrove heuristic filter (a yes/no score, so AUC is
              that of a single threshold).
Reported per set: accuracy and precision/recall of "good" at P(good) >= 0.5, and ROC AUC; per trained
classifier, whether its held-out metrics pass the quality stage's validation bar (else it only annotates).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def ingest_crawl(shared: Path, out: Path) -> list[str]:
    """Main text of every HTML response / WET record under warc/ (our ingest stage, no Prefect)."""
    from storage.documents import read_documents
    from tasks.ingest import IngestParams, ingest_shard

    files = sorted(p for p in (shared / "warc").rglob("*") if p.name.endswith((".warc.gz", ".wet.gz")))
    texts = []
    for i, f in enumerate(files):
        res = ingest_shard.fn(str(f), str(out / "ingest"), i, IngestParams(inputs=[str(f)], max_error_fraction=1.0))
        texts += [d.text for d in read_documents(str(out / "ingest" / res.shard.name))]
    return texts


def write_langid_shard(texts: list[str], path: Path) -> str:
    """A langid-like shard (language from LID-176) so the bootstrap path reads it like the stage does."""
    from models.classifiers import load_lid_model
    from storage.documents import Document, DocumentWriter
    from tasks.langid import LANGID_FIELDS, model_input

    preds = load_lid_model().predict([model_input(t, 100_000) for t in texts], k=1)
    with DocumentWriter(str(path), extra=LANGID_FIELDS) as w:
        for i, (t, p) in enumerate(zip(texts, preds)):
            w.write(
                Document(
                    id=f"c{i}", text=t, meta={"language": p[0][0], "language_score": p[0][1], "language_top3": None}
                )
            )
    return str(path)


def evaluate(name: str, score_fn, sets: dict[str, list[dict]]) -> None:
    from tasks.quality.classifier import classification_metrics

    for set_name, rows in sets.items():
        m = classification_metrics(score_fn([r["text"] for r in rows]), [int(r["label"]) for r in rows])
        print(
            f"{name:<10} {set_name:<10} n={m['n']:<4} accuracy={m['accuracy']:.3f} precision={m['precision']:.3f} "
            f"recall={m['recall']:.3f} AUC={m['auc']:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from models.classifiers import load_quality_model
    from tasks.quality import QualityParams
    from tasks.quality.classifier import (
        QualityClassifierParams,
        classifier_shortfall,
        classifier_text,
        score_texts,
        train_classifier,
    )
    from tasks.quality.heuristics import FILTER_NAMES, HeuristicLayer, failures

    out = args.out or Path(tempfile.mkdtemp(prefix="quality-eval-"))
    dclm = args.shared / "quality" / "dclm_human_annotated"
    sets = {s: [json.loads(line) for line in open(dclm / f"{s}_data.jsonl")] for s in ("majority", "agreement")}
    crawl = ingest_crawl(args.shared, out)
    (out / "crawl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in crawl))
    print(f"crawl documents (negatives / bootstrap pool): {len(crawl)}")

    positives = [
        str(args.shared / "quality" / "wikitext2" / "valid.txt"),
        str(args.shared / "quality" / "cs336_fixtures" / "high_quality_wiki_reference.txt"),
    ]
    runs = {
        "dclm": (
            QualityClassifierParams(positive=positives, negative=[str(out / "crawl.jsonl")], detokenize_wikitext=True),
            [],
        ),
        "bootstrap": (QualityClassifierParams(), [write_langid_shard(crawl, out / "langid.parquet")]),
    }
    for name, (params, shards) in runs.items():
        model_dir = out / name
        model_dir.mkdir(exist_ok=True)
        facts = train_classifier(params, shards, model_dir)
        print(f"{name}: trained on {facts['counts']} (labels {facts['label_sources']}); held-out {facts['metrics']}")
        bar = QualityParams()
        short = classifier_shortfall(facts, bar.classifier_min_auc, bar.classifier_min_examples)
        print(
            f"{name}: quality-stage validation bar (AUC >= {bar.classifier_min_auc}, >= {bar.classifier_min_examples} "
            f"per class): {'passes: it would gate' if short is None else f'fails ({short}): it would only annotate'}"
        )
        model = load_quality_model(str(model_dir / "model.bin"))
        evaluate(name, lambda texts, m=model: score_texts(m, [classifier_text(t) for t in texts]), sets)
    layer = HeuristicLayer(list(FILTER_NAMES))
    evaluate("heuristics", lambda texts: [0.0 if failures(layer.evaluate(t, "en")) else 1.0 for t in texts], sets)


if __name__ == "__main__":
    main()
