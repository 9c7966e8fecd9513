"""langid + quality heuristics vs datatrove's LanguageFilter + Gopher/C4/FineWeb filters, same documents.

    .venv/bin/python -m bench.filters [--data-root DIR] [--ingest-version latest] [--repeat N] [--rounds 2]

Documents: every document of an ingest version (`--data-root`, else $PRETRAIN_DATA_ROOT); without one,
the 400-page demo crawl is generated and ingested into a temporary root. `--repeat` multiplies them.
Engines, one process, one core, timed in alternating rounds (ours, datatrove, ours, ...; the best
round of each is reported, so a busy machine hurts both alike):
  ours       tasks.langid.process (LID-176 .ftz, batched predict, keep-list [en], threshold 0.65), then
             tasks.quality.heuristics.HeuristicLayer on the kept documents: all four filters evaluated on
             every document (the stage stores every verdict), spaCy tokens computed once per line, Gopher
             quality on the paper's whitespace words (the default; timed). The agreement is printed for
             the default and for `datatrove_compatible` (datatrove's Gopher quality: must agree exactly).
  datatrove  LanguageFilter(languages=[en], language_threshold=0.65) with the same .ftz model loaded into
             its FT176LID, then GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter,
             FineWebQualityFilter with defaults, chained through their `run` generators (each stops at the
             first failure; stock English tokenizer: spaCy via datatrove's SpaCyTokenizer).
Printed: docs/s of each and the ratio; the keep/drop agreement (all documents, and the heuristic layer
alone on documents both engines' LID kept). Also, with a `quality_classifier` version in the data root,
the classifier's extra cost. Language ID accuracy: labelled sentences from spaCy's per-language example
sentences (`spacy.lang.<code>.examples`, written by people, offline) and multi-line documents built from
them, our langid stage vs calling the fastText model directly (`predict(text)` one at a time).
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.documents import Document, read_documents
from storage.stats import StageStats


class CountingRejects:
    def __init__(self, stats: StageStats):
        self.stats = stats

    def add(self, doc: Document, reason: str, detail: Any = None, error: bool = False) -> None:
        self.stats.drop(reason)


def load_documents(root: str | None, version: str) -> list[Document]:
    from flows.pipeline import Stage
    from storage import paths
    from storage.manifest import load_manifest

    if root is None:
        root = tempfile.mkdtemp(prefix="bench-filters-")
        from demo.crawl import generate_demo_crawl
        from storage.artifacts import ArtifactWriter
        from storage.manifest import new_manifest
        from tasks.ingest import IngestParams, ingest_shard

        crawl = generate_demo_crawl(f"{root}/_inputs", pages=400)
        w = ArtifactWriter(root, Stage.INGEST, "demo400")
        res = ingest_shard.fn(str(crawl.warc_path), w.path, 0, IngestParams(inputs=[str(crawl.warc_path)]))
        w.commit(new_manifest(Stage.INGEST, 1, "demo400", {}, {}, [res.shard], [res.rejected], res.stats))
    m = load_manifest(root, Stage.INGEST, version)
    base = paths.version_dir(root, m.stage, m.version)
    print(f"documents: ingest@{m.version} under {root}")
    return [
        d for s in m.shards for d in read_documents(paths.join(base, s.name), columns=["id", "text", "url", "source"])
    ]


def run_ours(docs: list[Document], datatrove_compatible: bool = False) -> set[str]:
    from models.classifiers import load_lid_model
    from tasks.langid import LangidParams, process
    from tasks.quality import heuristic_layer
    from tasks.quality.heuristics import FILTER_NAMES, failures

    stats = StageStats()
    fresh = [Document(d.id, d.text, d.url, d.source) for d in docs]
    kept = process(fresh, LangidParams(), stats, CountingRejects(stats), load_lid_model())  # type: ignore[arg-type]
    layer = heuristic_layer(tuple(FILTER_NAMES), "{}", datatrove_compatible)
    return {d.id for d in kept if not failures(layer.evaluate(d.text, d.meta["language"]))}


def datatrove_steps() -> list[Any]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.utils import _import_utils
    from fasttext.FastText import _FastText

    from models.classifiers import bundled_lid_path

    # datatrove insists on the `fasttext-numpy2-wheel` distribution; `fasttext-numpy2` ships the same module
    available = _import_utils._is_distribution_available
    _import_utils._is_distribution_available = lambda name: available(  # type: ignore[assignment]
        "fasttext-numpy2" if name == "fasttext-numpy2-wheel" else name
    )
    lang = LanguageFilter(languages=["en"], language_threshold=0.65)
    lang.model._model = _FastText(bundled_lid_path())  # offline: the same .ftz instead of a download
    return [lang, GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]


def run_datatrove(docs: list[Document], steps: list[Any], lid_only: bool = False) -> set[str]:
    from datatrove.data import Document as DtDocument

    data: Any = (DtDocument(text=d.text, id=d.id) for d in docs)
    for step in steps[:1] if lid_only else steps:
        data = step.run(data)
    return {d.id for d in data}


def timed(fn: Callable[[], set[str]], clock: Callable[[], float] = time.perf_counter) -> tuple[float, set[str]]:
    """Seconds of `fn` by `clock` (wall by default; `time.process_time` for CPU on a busy machine), its result."""
    t0 = clock()
    out = fn()
    return clock() - t0, out


def speed_and_agreement(docs: list[Document], rounds: int) -> None:
    steps = datatrove_steps()
    run_ours(docs[:20]), run_datatrove(docs[:20], steps)  # warm-up: models, tokenizers
    best = {"ours": float("inf"), "datatrove": float("inf")}
    kept: dict[str, set[str]] = {}
    for _ in range(rounds):
        for name, fn in (("ours", lambda: run_ours(docs)), ("datatrove", lambda: run_datatrove(docs, steps))):
            t, kept[name] = timed(fn)
            best[name] = min(best[name], t)
    n = len(docs)
    rate = {k: n / v for k, v in best.items()}
    print(f"\n{n} documents, best of {rounds} rounds")
    print(f"  ours       {best['ours']:8.2f} s  {rate['ours']:8.1f} docs/s  (langid + all 4 heuristic verdicts)")
    print(
        f"  datatrove  {best['datatrove']:8.2f} s  {rate['datatrove']:8.1f} docs/s  "
        "(LanguageFilter + 4 filters, chained)"
    )
    print(f"  ratio ours/datatrove: {rate['ours'] / rate['datatrove']:.2f}x")
    ids = [d.id for d in docs]
    agree = sum((i in kept["ours"]) == (i in kept["datatrove"]) for i in ids)
    print(
        f"  keep/drop agreement (default: Gopher paper words): {agree}/{n} = {agree / n:.2%} (kept: ours "
        f"{len(kept['ours'])}, datatrove {len(kept['datatrove'])})"
    )
    kept["ours"] = run_ours(docs, datatrove_compatible=True)
    agree = sum((i in kept["ours"]) == (i in kept["datatrove"]) for i in ids)
    print(
        f"  keep/drop agreement (datatrove_compatible): {agree}/{n} = {agree / n:.2%} (kept: ours {len(kept['ours'])})"
    )
    lid_ours = run_lid_ours(docs)
    lid_dt = run_datatrove(docs, steps, lid_only=True)
    both = lid_ours & lid_dt
    heur = sum((i in kept["ours"]) == (i in kept["datatrove"]) for i in both)
    print(
        f"  langid agreement: {sum((i in lid_ours) == (i in lid_dt) for i in ids)}/{n}; heuristic layer agreement "
        f"(datatrove_compatible) "
        f"on the {len(both)} documents both LIDs kept: {heur}/{len(both)}"
    )


def run_lid_ours(docs: list[Document]) -> set[str]:
    from models.classifiers import load_lid_model
    from tasks.langid import LangidParams, process

    stats = StageStats()
    fresh = [Document(d.id, d.text) for d in docs]
    return {d.id for d in process(fresh, LangidParams(), stats, CountingRejects(stats), load_lid_model())}  # type: ignore[arg-type]


def classifier_cost(docs: list[Document], root: str | None) -> None:
    from storage import paths
    from storage.manifest import load_manifest

    try:
        m = load_manifest(paths.resolve_data_root(root), "quality_classifier")
    except FileNotFoundError:
        print("\n(no quality_classifier version in the data root: classifier cost not measured)")
        return
    from models.classifiers import load_quality_model
    from tasks.quality.classifier import classifier_text, score_texts

    model = load_quality_model(
        paths.join(paths.version_dir(paths.resolve_data_root(root), m.stage, m.version), "model.bin")
    )
    t0 = time.perf_counter()
    score_texts(model, [classifier_text(d.text) for d in docs])
    t = time.perf_counter() - t0
    print(f"\nquality classifier {m.version}: {len(docs) / t:.0f} docs/s on its own ({t:.2f} s)")


def labelled_sentences() -> list[tuple[str, str]]:
    """(language, sentence) from spaCy's example sentences, for languages LID-176 knows."""
    import spacy.lang

    from models.classifiers import load_lid_model

    labels = set(load_lid_model().labels)  # type: ignore[attr-defined]
    rename = {"nb": "no"}
    out = []
    for code in sorted(p.name for p in Path(spacy.lang.__file__).parent.iterdir() if (p / "examples.py").exists()):
        lang = rename.get(code, code)
        if lang not in labels:
            continue
        try:
            sentences = importlib.import_module(f"spacy.lang.{code}.examples").sentences
        except ImportError:
            continue
        out += [(lang, s) for s in sentences if len(s.split()) >= 3 or lang in ("zh", "ja", "th", "ko")]
    return out


def lid_accuracy() -> None:
    from models.classifiers import load_lid_model
    from tasks.langid import LangidParams, process

    model = load_lid_model()
    raw = model.model  # type: ignore[attr-defined]
    pairs = labelled_sentences()
    by_lang: dict[str, list[str]] = {}
    for lang, s in pairs:
        by_lang.setdefault(lang, []).append(s)
    docs_ml = [(lang, "\n".join(ss[i : i + 3])) for lang, ss in by_lang.items() for i in range(0, len(ss), 3)]
    for name, items in (("sentences", pairs), ("3-line documents", docs_ml)):
        direct = sum(raw.predict(t.replace("\n", " "))[0][0] == f"__label__{lang}" for lang, t in items)
        stats = StageStats()
        docs = [Document(str(i), t) for i, (_, t) in enumerate(items)]
        ours_docs = {
            d.id: d.meta["language"]
            for d in process(docs, LangidParams(languages=[], threshold=0.0), stats, CountingRejects(stats), model)
        }  # type: ignore[arg-type]
        ours = sum(ours_docs.get(str(i)) == lang for i, (lang, _) in enumerate(items))
        print(
            f"  {name:<17} n={len(items):<5} languages={len(by_lang)}  direct fastText {direct / len(items):.2%}  "
            f"langid stage {ours / len(items):.2%}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ingest-version", default="latest")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    docs = load_documents(args.data_root, args.ingest_version)
    docs = [Document(f"{d.id}-{r}", d.text, d.url, d.source) for r in range(args.repeat) for d in docs]
    speed_and_agreement(docs, args.rounds)
    classifier_cost(docs, args.data_root)
    print("\nlanguage ID accuracy (spaCy example sentences, labels = their language):")
    lid_accuracy()


if __name__ == "__main__":
    main()
