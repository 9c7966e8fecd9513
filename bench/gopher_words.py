"""Gopher quality rules, paper words vs datatrove's tokens, on the real pages of ../shared/data (issue 10).

    .venv/bin/python -m bench.gopher_words [--shared ../shared/data] [--rounds 3]

Pages: every HTML response / WET record of the WARC files under `warc/` (our ingest stage: trafilatura
main text, `tasks.ingest.process`) and the 181 pages of `html_extraction/` (the same charset decoding and
extractor, `tasks.ingest.extract`), English kept by our langid stage (LID-176, default params).
Modes of the `gopher_quality` verdict (`tasks.quality.heuristics`):
  paper      GopherPaperQualityFilter: the paper's rules on whitespace-separated words (the default)
  datatrove  datatrove's GopherQualityFilter (spaCy tokens, punctuation included; `datatrove_compatible`)
Printed per mode: the verdict the stage stores (the first failing rule) as a share of the English pages,
each rule evaluated on its own (every other rule disabled), the pages datatrove drops by the alpha rule
that the paper's rule keeps, and the speed of the gopher_quality filter alone (best of `--rounds`; the
datatrove filter tokenizes with spaCy itself, as it does in a datatrove pipeline).
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections import Counter
from pathlib import Path
from typing import Any

from storage.documents import Document
from storage.stats import StageStats

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RULES: dict[str, tuple[str, ...]] = {
    "word_count": ("min_doc_words", "max_doc_words"),
    "mean_word_length": ("min_avg_word_length", "max_avg_word_length"),
    "hash_ellipsis_ratio": ("max_symbol_word_ratio",),
    "bullet_lines": ("max_bullet_lines_ratio",),
    "end_ellipsis_lines": ("max_ellipsis_lines_ratio",),
    "alpha_words": ("max_non_alpha_words_ratio",),
    "stop_words": ("min_stop_words",),
}
ALL_ARGS = [a for args in RULES.values() for a in args]


class _Rejects:
    def add(self, doc: Document, reason: str, detail: Any = None, error: bool = False) -> None:
        pass


def real_pages(shared: Path) -> list[Document]:
    """Extracted text of every real page: WARC/WET records under warc/ and the html_extraction pages."""
    from tasks.ingest import IngestParams, process
    from tasks.ingest.extract import decode_html, extract_main_text, prepare_extractor

    docs: list[Document] = []
    for f in sorted(p for p in (shared / "warc").rglob("*") if p.name.endswith((".warc.gz", ".wet.gz"))):
        params = IngestParams(inputs=[str(f)], max_error_fraction=1.0)
        docs += list(process(str(f), params, StageStats(), _Rejects()))  # type: ignore[arg-type]
    prepare_extractor("trafilatura")
    for f in sorted((shared / "html_extraction").rglob("*.html.gz")):
        html = decode_html(gzip.decompress(f.read_bytes()), None)[0]  # (text, encoding, source, ...)
        text = extract_main_text(html, "trafilatura").strip()
        if text:
            docs.append(Document(id=f.name, text=text, url=str(f), source="web"))
    return docs


def english(docs: list[Document]) -> list[Document]:
    from models.classifiers import load_lid_model
    from tasks.langid import LangidParams, process

    stats = StageStats()
    fresh = [Document(d.id, d.text, d.url, d.source) for d in docs]
    return list(process(fresh, LangidParams(), stats, _Rejects(), load_lid_model()))  # type: ignore[arg-type]


def gopher(mode: str, **options: Any) -> Any:
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from tasks.quality.heuristics import SpacyWordTokenizer, build_filter

    tok = load_word_tokenizer("en") if mode == "datatrove" else SpacyWordTokenizer("en")
    return build_filter("gopher_quality", "en", tok, options, datatrove_compatible=mode == "datatrove")


def verdict(flt: Any, text: str) -> str:
    from datatrove.data import Document as DtDocument

    try:
        r = flt.filter(DtDocument(text=text, id=""))
    except ArithmeticError:
        return "undefined"
    return "pass" if r is True else r[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    pages = real_pages(args.shared)
    docs = english(pages)
    n = len(docs)
    print(f"{len(pages)} pages extracted, {n} English after langid ({time.perf_counter() - t0:.1f} s)")
    stored: dict[str, dict[str, str]] = {}
    for mode in ("paper", "datatrove"):
        flt = gopher(mode)
        stored[mode] = {d.id: verdict(flt, d.text) for d in docs}
        first = Counter(stored[mode].values())
        print(f"\n== {mode}: gopher_quality verdicts (first failing rule, what the stage stores) ==")
        for reason, k in first.most_common():
            print(f"  {reason:<32} {k:4d}  {k / n:6.1%}")
        print("  each rule on its own (others disabled):")
        for rule, keys in RULES.items():
            only = gopher(mode, **{a: None for a in ALL_ARGS if a not in keys})
            k = sum(verdict(only, d.text) not in ("pass", "undefined") for d in docs)
            print(f"    {rule:<22} {k:4d}  {k / n:6.1%}")
    alpha = [i for i, v in stored["datatrove"].items() if v == "gopher_below_alpha_threshold"]
    rescued = [i for i in alpha if stored["paper"][i] == "pass"]
    print(
        f"\npages datatrove drops by gopher_below_alpha_threshold: {len(alpha)} ({len(alpha) / n:.1%}); "
        f"the paper rules keep {len(rescued)} of them"
    )
    by_id = {d.id: d for d in docs}
    for i in alpha[:20]:
        print(f"  {stored['paper'][i]:<30} {(by_id[i].url or i)[:90]}")
    for group in ("warc", "html_extraction"):
        ids = [
            d.id for d in docs if (d.url or "").startswith(str(args.shared / "html_extraction")) == (group != "warc")
        ]
        if ids:
            rates = {m: sum(stored[m][i] == "pass" for i in ids) / len(ids) for m in stored}
            alpha_rates = {
                m: sum(stored[m][i] == "gopher_below_alpha_threshold" for i in ids) / len(ids) for m in stored
            }
            print(
                f"{group:<16} {len(ids):4d} English pages: pass paper {rates['paper']:.1%} / datatrove "
                f"{rates['datatrove']:.1%}; alpha-rule drops paper {alpha_rates['paper']:.1%} / datatrove "
                f"{alpha_rates['datatrove']:.1%}"
            )
    changed = Counter(
        (stored["datatrove"][i], stored["paper"][i])
        for i in stored["paper"]
        if stored["paper"][i] != stored["datatrove"][i]
    )
    print("verdict changes datatrove -> paper:", dict(changed))
    texts = [d.text for d in docs]
    for mode in ("paper", "datatrove"):
        best = float("inf")
        for _ in range(args.rounds):
            flt = gopher(mode)  # fresh: no token cache carried over between rounds
            t = time.perf_counter()
            for text in texts:
                verdict(flt, text)
            best = min(best, time.perf_counter() - t)
        print(f"gopher_quality alone, {mode:<9}: {n / best:9.1f} docs/s ({best * 1000:.1f} ms for {n} pages)")


if __name__ == "__main__":
    main()
