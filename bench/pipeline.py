"""The whole command on real pages: `pretrain run --to quality` vs datatrove's FineWeb stack, same run (issue 14).

    .venv/bin/python -m bench.pipeline [--pages 4000] [--workers 2] [--files 16] [--shared ../shared/data]
                                       [--stage-docs 800] [--rounds 2] [--datatrove-timeout 60] [--keep DIR]

Corpus (real pages only): every response record of the WARC files under `<shared>/warc/` (Common Crawl and
other crawls; non-HTML responses stay in, both readers skip them) and the 181 pages of `html_extraction/`
packed as WARC responses (`bench.ingest.pack_benchmark`), copied round-robin into `--files` gzipped WARC
files until they hold `--pages` HTML responses; every copy gets its own URL (`#copy-N.I`) and record id.

Engines, each a fresh subprocess timed from its start to its exit (imports and start-up included), one
after the other on the same files with the same worker count:
  ours       `pretrain run --to quality --input <files>` with `workers: N`, the default config otherwise
             (ingest -> langid -> quality, a temporary Prefect server, Parquet outputs). Per stage: the
             wall seconds in each stage's manifest (`quality_scores`, the score cache, is built inside the
             quality stage's seconds; a `quality_classifier`, trained only when the config asks for one,
             before them). The rest of the wall time is start-up, the server, the flows and exit.
  datatrove  LocalPipelineExecutor(tasks=files, workers=N): WarcReader -> Trafilatura (`--datatrove-timeout`,
             60 wall seconds per page as in bench/ingest.py: its default of 1 s skips the pages a loaded
             machine slows down, doing less work) -> LanguageFilter(en, 0.65; the same LID-176 .ftz, loaded
             from disk instead of downloaded) -> GopherRepetitionFilter -> GopherQualityFilter ->
             C4QualityFilter -> FineWebQualityFilter -> JsonlWriter (FineWeb's stack; defaults). Workers
             start by `fork` (its default `forkserver` re-imports in every worker: fork is the cheaper start
             for the peer). Per step: the seconds in its stats.json (summed over tasks, i.e. CPU-like
             seconds; divide by the workers for a share of the wall time).
Per stage, in this process, one core, alternating rounds, best round of each, CPU seconds (the fair
number on a shared machine; datatrove's extractor runs pages in a child process, whose CPU is counted):
  ingest     `tasks.ingest.process` vs datatrove WarcReader + Trafilatura (`bench.ingest.run_ours` /
             `run_datatrove`) on the first files holding about `--stage-docs` pages.
  quality    the quality stage's scoring (`tasks.quality.score_documents`, classifier off: every verdict of
             the four filters, the default Gopher paper words and `datatrove_compatible`) vs datatrove's four
             filters chained (`bench.filters.run_datatrove`, `bench.filters.timed`), on the English documents
             of our langid output; keep/drop decisions compared document by document.
Ratios are datatrove seconds / ours (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datatrove.utils.lid import FT176LID

from storage.documents import Document

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HTML_DIR = "html_extraction/scrapinghub_article_extraction_benchmark"
STAGES = ("ingest", "langid", "quality_classifier", "quality_scores", "quality")


# ---------------------------------------------------------------- corpus


def _responses(path: str) -> Iterator[tuple[str, Any, bytes, dict[str, str]]]:
    """(url, HTTP headers, raw payload, WARC headers to keep) of every response record of a WARC file."""
    from warcio.archiveiterator import ArchiveIterator

    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            if rec.rec_type != "response" or rec.http_headers is None:
                continue
            keep = {
                k: v
                for k in ("WARC-Date", "WARC-Identified-Payload-Type")
                if (v := rec.rec_headers.get_header(k)) is not None
            }
            yield rec.rec_headers.get_header("WARC-Target-URI"), rec.http_headers, rec.raw_stream.read(), keep


def _is_html(http: Any, warc: dict[str, str]) -> bool:
    kind = warc.get("WARC-Identified-Payload-Type") or http.get_header("Content-Type") or ""
    return "html" in kind.lower()


def build_corpus(shared: Path, out: Path, pages: int, files: int) -> tuple[list[str], int, int]:
    """Write the real-page corpus; returns (WARC paths, HTML pages written, distinct real HTML pages)."""
    from warcio.warcwriter import WARCWriter

    from bench.ingest import pack_benchmark

    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(
        str(p) for p in (shared / "warc").rglob("*.warc.gz") if not p.name.endswith((".wet.gz", ".wat.gz"))
    )
    packed = str(out / "_html_extraction.warc.gz")
    pack_benchmark(str(shared / HTML_DIR), packed)
    base = [r for s in [*sources, packed] for r in _responses(s)]
    os.unlink(packed)
    distinct = sum(_is_html(r[1], r[3]) for r in base)
    assert distinct, f"no HTML responses under {shared}"
    paths = [str(out / f"real-{i:05d}.warc.gz") for i in range(files)]
    handles = [open(p, "wb") for p in paths]
    writers = [WARCWriter(h, gzip=True) for h in handles]
    written, k, copy = 0, 0, 0
    while written < pages:
        for i, (url, http, payload, warc) in enumerate(base):
            if written >= pages:
                break
            w = writers[k % files]
            headers = {**warc, "WARC-Record-ID": f"<urn:uuid:{uuid.uuid4()}>"}
            w.write_record(
                w.create_warc_record(
                    f"{url}#copy-{copy}.{i}",  # the real crawls repeat some URLs too
                    "response",
                    payload=io.BytesIO(payload),
                    http_headers=http,
                    warc_headers_dict=headers,
                )
            )
            written += _is_html(http, warc)
            k += 1
        copy += 1
    for h in handles:
        h.close()
    return paths, written, distinct


# ---------------------------------------------------------------- whole command


class LocalLID(FT176LID):  # type: ignore[misc]
    """datatrove's LID-176 reading our bundled .ftz (offline; loaded lazily in each worker, picklable)."""

    @property
    def model(self) -> Any:
        if self._model is None:
            from fasttext.FastText import _FastText

            from models.classifiers import bundled_lid_path

            self._model = _FastText(bundled_lid_path())
        return self._model


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _first_shard(root: Path, t0: float, stop: threading.Event, out: dict[str, float]) -> None:
    """Seconds from the command's start until the first ingest shard task opened its output file."""
    while not stop.is_set():
        if any((root / "ingest").glob("*/data/*")):
            out["first_shard_s"] = time.perf_counter() - t0
            return
        time.sleep(0.02)


def run_ours(files: list[str], workers: int, root: Path) -> dict[str, float]:
    """`pretrain run --to quality` in a fresh process: wall and CPU seconds, the largest process's peak RSS
    (the run's own process or a pool worker; MB) and the seconds until the first shard task ran."""
    config = root.parent / f"bench-config-{root.name}.yaml"
    config.write_text(f"workers: {workers}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    cmd = [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "flows", "run", "--to", "quality"]
    cmd += ["--data-root", str(root), "--config", str(config), "--input", *files]
    found: dict[str, float] = {}
    stop = threading.Event()
    t0, c0 = time.perf_counter(), _children_cpu()
    watcher = threading.Thread(target=_first_shard, args=(root, t0, stop, found), daemon=True)
    watcher.start()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    stop.set()
    if done.returncode:
        sys.exit(f"pretrain run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rss = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return {
        "wall_s": seconds,
        "cpu_s": _children_cpu() - c0,
        "peak_rss_mb": rss / 1024,
        "first_shard_s": found.get("first_shard_s", float("nan")),
    }


def our_stages(root: Path) -> dict[str, Any]:
    """Manifest facts per stage of the run under `root` (absent side artifacts are left out)."""
    from storage.manifest import load_manifest

    out: dict[str, Any] = {}
    for stage in STAGES:
        try:
            m = load_manifest(str(root), stage)
        except FileNotFoundError:
            continue
        out[stage] = m
    return out


def datatrove_run(files: list[str], workers: int, out: str, timeout: float = 60.0) -> None:
    """datatrove's FineWeb stack over `files` (run in its own process by `run_datatrove`)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    from bench.filters import datatrove_steps

    folder = Path(files[0]).parent
    pipeline = [
        WarcReader(str(folder), glob_pattern="*.warc.gz"),
        Trafilatura(timeout=timeout),  # wall seconds per page
        *datatrove_steps(),
        JsonlWriter(f"{out}/output"),
    ]
    pipeline[2].model = LocalLID(["en"])  # `datatrove_steps` loaded the model here: unpicklable
    LocalPipelineExecutor(
        pipeline, tasks=len(files), workers=workers, logging_dir=f"{out}/logs", start_method="fork"
    ).run()


def run_datatrove(files: list[str], workers: int, out: str, timeout: float) -> tuple[float, float]:
    """datatrove's stack (`datatrove_run`) in a fresh process; returns its (wall, CPU) seconds."""
    code = f"from bench.pipeline import datatrove_run; datatrove_run({files!r}, {workers}, {out!r}, {timeout!r})"
    t0, c0 = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"datatrove failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, _children_cpu() - c0


def datatrove_step_seconds(out: str) -> dict[str, float]:
    """Seconds per pipeline step from datatrove's stats.json (summed over tasks)."""
    stats = json.loads(Path(out, "logs", "stats.json").read_text())
    return {
        s["name"]: s["stats"]["total_time"] if "total_time" in s["stats"] else s["time_stats"]["total"] for s in stats
    }


# ---------------------------------------------------------------- per stage, in process


def ingest_stage(files: list[str], docs: int, pages_per_file: float, rounds: int) -> None:
    from bench import ingest

    subset = files[: max(1, round(docs / pages_per_file))]
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _ in range(rounds):
        for name, fn in (
            ("ours", lambda: ingest.run_ours(subset, {}, 5.0)),
            ("datatrove", lambda: ingest.run_datatrove(subset, 60.0)),
        ):
            r = ingest._timed(name, fn)
            best[name] = min(best.get(name, float("inf")), r.cpu)
            counts[name] = r.docs
    print(f"\n## ingest, one process, {len(subset)} files, best of {rounds} (CPU seconds)\n")
    for name in best:
        print(f"  {name:<10} {best[name]:7.2f} s  {counts[name]:5d} docs  {counts[name] / best[name]:7.1f} docs/s")
    print(f"  ratio datatrove/ours (WarcReader + Trafilatura vs tasks.ingest): {best['datatrove'] / best['ours']:.2f}x")


def english_docs(root: Path, limit: int) -> list[Document]:
    from storage import paths
    from storage.documents import read_documents
    from storage.manifest import load_manifest

    m = load_manifest(str(root), "langid")
    base = paths.version_dir(str(root), m.stage, m.version)
    docs = [
        d
        for s in m.shards
        for d in read_documents(paths.join(base, s.name), columns=["id", "text", "url", "source", "language"])
    ]
    return [d for d in docs if d.meta.get("language") == "en"][:limit]


def score_ours(docs: list[Document], datatrove_compatible: bool) -> set[str]:
    """The quality stage's scoring over `docs` (classifier off); ids of the documents passing every filter."""
    from storage.stats import StageStats
    from tasks.quality import QualityParams, ScoreJob, heuristic_layer, score_documents
    from tasks.quality.heuristics import FILTER_NAMES, failures

    p = QualityParams(use_classifier=False, datatrove_compatible=datatrove_compatible)
    layer = heuristic_layer(tuple(p.filters), "{}", datatrove_compatible)
    kept = set()
    for row in score_documents(docs, ScoreJob(params=p), StageStats(), layer, None):
        verdicts = {f: row[f"heuristic_{f}"] for f in FILTER_NAMES}
        if row["input_error"] is None and not failures(verdicts):
            kept.add(row["id"])
    return kept


def quality_stage(docs: list[Document], rounds: int) -> None:
    from bench.filters import datatrove_steps, run_datatrove, timed

    four = datatrove_steps()[1:]
    score_ours(docs[:20], False), score_ours(docs[:20], True), run_datatrove(docs[:20], four)  # warm-up
    engines = {
        "ours (paper words, default)": lambda: score_ours(docs, False),
        "ours (datatrove_compatible)": lambda: score_ours(docs, True),
        "datatrove (4 filters)": lambda: run_datatrove(docs, four),
    }
    best: dict[str, float] = {}
    kept: dict[str, set[str]] = {}
    for _ in range(rounds):
        for name, fn in engines.items():
            t, kept[name] = timed(fn, time.process_time)
            best[name] = min(best.get(name, float("inf")), t)
    n, dt = len(docs), best["datatrove (4 filters)"]
    print(f"\n## quality, one process, {n} English documents (our langid output), best of {rounds} (CPU seconds)\n")
    for name, t in best.items():
        agree = sum((d.id in kept[name]) == (d.id in kept["datatrove (4 filters)"]) for d in docs)
        print(
            f"  {name:<28} {t:7.2f} s  {n / t:8.1f} docs/s  {dt / t:5.2f}x datatrove  kept {len(kept[name]):5d}  "
            f"decisions equal to datatrove's {agree}/{n}"
        )


# ---------------------------------------------------------------- report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED, help="the real data kit (../shared/data)")
    ap.add_argument("--pages", type=int, default=4000, help="HTML pages in the corpus (copies of the real ones)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of both engines")
    ap.add_argument("--files", type=int, default=16, help="WARC files the pages are spread over")
    ap.add_argument("--stage-docs", type=int, default=800, help="documents of the in-process per-stage benches")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the in-process per-stage benches")
    ap.add_argument(
        "--datatrove-timeout",
        type=float,
        default=60.0,
        help="datatrove's per-page extraction limit, wall seconds (its default, 1, drops pages on a loaded machine)",
    )
    ap.add_argument("--keep", type=Path, help="build the corpus and data roots here and keep them")
    ap.add_argument(
        "--no-rss-scale",
        dest="rss_scale",
        action="store_false",
        help="skip the second run of ours on a quarter of the pages (peak RSS flat in corpus size)",
    )
    args = ap.parse_args()
    if not (args.shared / "warc").is_dir():
        sys.exit(f"{args.shared}/warc not found: pass --shared with the real data kit")
    logging.disable(logging.CRITICAL)
    try:
        import datatrove.pipeline.extractors  # noqa: F401  (installs its loguru handler on import)
        from loguru import logger

        logger.remove()
    except ImportError as e:
        sys.exit(f"bench/pipeline.py needs datatrove and its WARC reader dependencies ({e}): pip install -e .[bench]")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-pipeline-"))
    files, pages, distinct = build_corpus(args.shared, work / "corpus", args.pages, args.files)
    size = sum(os.path.getsize(f) for f in files) / 1e6
    print(
        f"# bench/pipeline.py: {pages} HTML pages ({distinct} distinct real pages, copied) in {len(files)} WARC files "
        f"({size:.1f} MB), {args.workers} workers; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    ours = run_ours(files, args.workers, work / "ours")
    ours_s, ours_cpu = ours["wall_s"], ours["cpu_s"]
    dt_s, dt_cpu = run_datatrove(files, args.workers, str(work / "datatrove"), args.datatrove_timeout)
    stages = our_stages(work / "ours")
    print(f"\n## whole command, {args.workers} workers, from process start to exit (CPU: the process tree's)\n")
    print(f"  ours       {ours_s:7.1f} s wall  {ours_cpu:7.1f} s CPU  (pretrain run --to quality)")
    print(f"  datatrove  {dt_s:7.1f} s wall  {dt_cpu:7.1f} s CPU  (LocalPipelineExecutor, FineWeb stack)")
    print(f"  ratio datatrove/ours: {dt_s / ours_s:.2f}x wall, {dt_cpu / ours_cpu:.2f}x CPU (target >= 2.0x wall)")
    print(f"  ours: first shard task running {ours['first_shard_s']:.1f} s after the command started (target <= 5 s)")
    if args.rss_scale:
        small_files, small_pages, _ = build_corpus(args.shared, work / "corpus-small", args.pages // 4, args.files)
        small = run_ours(small_files, args.workers, work / "ours-small")
        print(
            f"  ours: largest process peak RSS {small['peak_rss_mb']:.0f} MB at {small_pages} pages, "
            f"{ours['peak_rss_mb']:.0f} MB at {pages} pages: x{ours['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
            "(target <= 1.2)"
        )
    inside = sum(m.stats.seconds for s, m in stages.items() if s != "quality_scores")  # scores: inside quality
    print(f"\n  ours per stage (manifest wall seconds); start-up, server, flows and exit: {ours_s - inside:.1f} s")
    for stage, m in stages.items():
        st = m.stats
        rate = st.docs_in / st.seconds if st.seconds else 0.0
        print(f"    {stage:<19} {st.seconds:7.1f} s  {st.docs_in:6d} in  {st.docs_out:6d} out  {rate:8.1f} docs/s")
    dt_steps = datatrove_step_seconds(str(work / "datatrove"))
    print(f"\n  datatrove per step (stats.json seconds summed over tasks; / {args.workers} workers for a wall share)")
    for name, sec in dt_steps.items():
        print(f"    {name:<40} {sec:7.1f} s  ({sec / args.workers:6.1f} s)")
    ingest_stage(files, args.stage_docs, pages / len(files), args.rounds)
    quality_stage(english_docs(work / "ours", args.stage_docs), args.rounds)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
