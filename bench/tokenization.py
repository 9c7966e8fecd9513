"""Tokenize benchmark: the tokenize stage's tokens/s against a plain sentencepiece encode loop (the floor
for overhead) and datatrove's DocumentTokenizer with a Hugging Face tokenizer, same documents, same run.

    .venv/bin/python -m bench.tokenization [--mb 16] [--shards 4] [--vocab 8192] [--skip-flow] [--skip-datatrove]
                                       [--data-root DIR --mix-version V]

Documents: the documents of an existing mix version (`--data-root`, `--mix-version`), or real text from
../shared/data (DCLM Common Crawl documents, WikiText-2 articles, news article bodies; without it, the
generated demo crawl's page texts), repeated under new ids up to `--mb` MB and written as a mix version
of `--shards` shards. A sentencepiece BPE tokenizer (`--vocab`) is trained once with the stage's recipe.
Tokens are the tokenizer's ids without `<eos>`, so every engine counts the same thing.
Engines (one core unless said):
  spm loop      `sp.encode(text)` per document: the floor (no I/O, no packing).
  stage         `tokenize_shard` over every shard in this process, then `tokenize_tails`: Parquet read,
                encode, val split, eos, packing, shuffle, Arrow IPC write.
  stage x2      the same shard task in a 2-process pool (speed-up over the 1-core stage).
  flow x1 / x2  `tokenization_flow` under a temporary Prefect server with 1 and 2 workers and the same
                tokenizer (`tokenizer_path`, so no training): what a user sees, Prefect overhead included.
  HF loop       `tokenizers` byte-level BPE (same vocab size, trained in-process on the same sample),
                `encode_batch` in batches of 1,000 with TOKENIZERS_PARALLELISM=false.
  datatrove     ParquetReader -> DocumentTokenizer (that HF tokenizer, eos appended, shuffled output),
                LocalPipelineExecutor with 1 task. Different tokenizer: compare MB/s of text too.
Target: stage >= 0.85 x spm loop per core; stage x2 close to 2x the stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def real_texts() -> list[str]:
    """Real documents from ../shared/data, else the demo crawl's page texts."""
    texts: list[str] = []
    if SHARED.is_dir():
        for name in ("majority_data.jsonl", "agreement_data.jsonl"):
            texts += [json.loads(line)["text"] for line in open(SHARED / "quality/dclm_human_annotated" / name)]
        wiki = (SHARED / "quality/wikitext2/valid.txt").read_text()
        texts += [a for a in wiki.split("\n = ") if len(a) > 500]
        truth = SHARED / "html_extraction/scrapinghub_article_extraction_benchmark/ground-truth.json"
        texts += [v["articleBody"] for v in json.loads(truth.read_text()).values() if v.get("articleBody")]
    else:
        from demo.crawl import generate_demo_crawl

        out = generate_demo_crawl(tempfile.mkdtemp(prefix="bench-demo-"), pages=400)
        texts = [g["text"] for g in map(json.loads, open(out.ground_truth_path)) if g.get("text")]
    return [t for t in texts if t.strip()]


def write_mix(root: str, texts: list[str], mb: float, shards: int) -> str:
    """A mix version of `shards` shards holding the texts repeated (new ids) up to `mb` MB."""
    import pyarrow as pa

    from flows.pipeline import Stage
    from storage.artifacts import ArtifactWriter
    from storage.documents import Document, DocumentWriter
    from storage.manifest import ShardInfo, new_manifest
    from storage.stats import StageStats

    w = ArtifactWriter(root, Stage.MIX, "bench")
    target, size, i = mb * 1e6, 0, 0
    writers = [
        DocumentWriter(f"{w.path}/part-{s:05d}.parquet", extra=[pa.field("repeat", pa.int32())]) for s in range(shards)
    ]
    while size < target:
        t = texts[i % len(texts)]
        writers[i % shards].write(Document(id=f"doc-{i}", text=t, source="web", meta={"repeat": 0}))
        size += len(t.encode())
        i += 1
    infos = [ShardInfo(name=f"part-{s:05d}.parquet", rows=wr.rows, bytes=wr.close()) for s, wr in enumerate(writers)]
    w.commit(
        new_manifest(
            Stage.MIX,
            1,
            "bench",
            {},
            {},
            infos,
            [],
            StageStats(docs_in=i, docs_out=i, bytes_out=size),
            extras={"chars": {"unique": size, "total": size}},
        )
    )
    return "bench"


def mix_texts(root: str, version: str) -> tuple[list[str], list[str]]:
    from flows.pipeline import Stage
    from storage import paths
    from storage.documents import iter_batches
    from storage.manifest import load_manifest

    m = load_manifest(root, Stage.MIX, version)
    files = [paths.join(paths.version_dir(root, Stage.MIX, m.version), s.name) for s in m.shards]
    texts = [t for f in files for b in iter_batches(f, columns=["text"]) for t in b.column("text").to_pylist()]
    return files, texts


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process and its reaped children, result)."""

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    out = fn()
    return time.perf_counter() - t0, cpu() - c0, out


def _warm(model: str) -> None:
    from models.tokenizer import load_tokenizer

    load_tokenizer(model)
    time.sleep(1.0)  # so that each warm-up call lands on its own worker


def run_stage(files: list[str], out: str, job: Any, pool: ProcessPoolExecutor | None) -> int:
    """tokenize_shard over every file (+ tails), in this process or on a warm pool; tokens without <eos>."""
    from tasks.tokenization import tokenize_shard, tokenize_tails

    shutil.rmtree(out, ignore_errors=True)
    args = [(f, out, i, job) for i, f in enumerate(files)]
    results = [tokenize_shard.fn(*a) for a in args] if pool is None else list(pool.map(_shard, args))
    for split in ("train", "val"):
        tokenize_tails.fn(out, split, len(files), job)
    c = [r.stats.counters for r in results]
    return sum(
        x.get("tokens.train", 0) + x.get("tokens.val", 0) - x.get("docs.train", 0) - x.get("docs.val", 0) for x in c
    )


def _shard(a: tuple[Any, ...]) -> Any:
    from tasks.tokenization import tokenize_shard

    return tokenize_shard.fn(*a)


def run_flows(root: str, version: str, model: str, seq_len: int) -> dict[str, float]:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bench-prefect-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from flows.stage import task_runner
    from flows.tokenization import tokenization_flow
    from tasks.tokenization import TokenizeParams

    out = {}
    with prefect_test_harness(server_startup_timeout=180):
        for workers in (1, 2):
            params = TokenizeParams(tokenizer_path=model, seq_len=seq_len)
            flow = tokenization_flow.with_options(task_runner=task_runner(workers))
            out[f"flow x{workers}"], _, _ = timed(
                lambda: flow(params=params, data_root=root, input_version=version, force=True)  # noqa: B023
            )
    return out


def hf_tokenizer(lines: list[str], vocab: int, path: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.save(path)
    return tok


def run_datatrove(mix_dir: str, hf_path: str, out: str) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    shutil.rmtree(out, ignore_errors=True)
    ex = LocalPipelineExecutor(
        pipeline=[
            ParquetReader(mix_dir, glob_pattern="part-*.parquet"),
            DocumentTokenizer(f"{out}/tokens", hf_path, eos_token="<eos>", seed=0),
        ],
        tasks=1,
        workers=1,
        logging_dir=f"{out}/logs",
        skip_completed=False,
    )
    ex.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=16.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--data-root")
    ap.add_argument("--mix-version")
    ap.add_argument("--skip-flow", action="store_true")
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()

    from models.tokenizer import Tokenizer, train_tokenizer, training_lines
    from tasks.tokenization import TokenizeJob, TokenizeParams

    work = tempfile.mkdtemp(prefix="bench-tokenize-")
    root = args.data_root or f"{work}/data"
    version = args.mix_version or write_mix(root, real_texts(), args.mb, args.shards)
    files, texts = mix_texts(root, version)
    n_bytes = sum(len(t.encode()) for t in texts)
    print(
        f"{len(texts):,} documents, {n_bytes / 1e6:.1f} MB of text in {len(files)} shards; cpu cores: {os.cpu_count()}"
    )
    lines = [x for t in texts[: max(1, len(texts) // 4)] for x in training_lines(t)]
    t_train, _, model = timed(lambda: train_tokenizer(lines, f"{work}/tokenizer.model", args.vocab))
    sp = Tokenizer(model)
    print(f"sentencepiece BPE vocab {args.vocab} trained on {sum(map(len, lines)) / 1e6:.1f} M chars in {t_train:.1f}s")
    job = TokenizeJob(params=TokenizeParams(seq_len=args.seq_len), tokenizer_file=str(model), val_threshold=0.005)

    rows: list[tuple[str, float, float | None, int]] = []
    sp.encode(texts[:50])  # warm-up
    t, c, n = timed(lambda: sum(len(sp.sp.encode(x)) for x in texts))
    rows.append(("spm loop", t, c, n))
    t, c, n1 = timed(lambda: run_stage(files, f"{work}/stage1", job, None))
    rows.append(("stage", t, c, n1))
    pool = ProcessPoolExecutor(2)
    t_start, _, _ = timed(lambda: list(pool.map(_warm, [str(model)] * 2)))
    t, _, n2 = timed(lambda: run_stage(files, f"{work}/stage2", job, pool))
    _, c, _ = timed(lambda: pool.shutdown())  # workers' CPU time is counted once they are reaped
    rows.append(("stage x2", t, c, n2))
    assert n == n1 == n2, (n, n1, n2)
    if not args.skip_flow:
        for name, t in run_flows(root, version, str(model), args.seq_len).items():
            rows.append((name, t, None, n))
    if not args.skip_datatrove:
        hf = hf_tokenizer(lines, args.vocab, f"{work}/hf-tokenizer.json")
        batches = [texts[i : i + 1000] for i in range(0, len(texts), 1000)]
        t, c, n_hf = timed(lambda: sum(len(e.ids) for b in batches for e in hf.encode_batch(b)))
        rows.append(("HF loop", t, c, n_hf))
        mix_dir = f"{root}/mix/{version}"
        t, c, _ = timed(lambda: run_datatrove(mix_dir, f"{work}/hf-tokenizer.json", f"{work}/datatrove"))
        rows.append(("datatrove", t, c, n_hf))

    base_t, base_c = rows[0][1], rows[0][2]
    print(
        f"\n{'engine':<12} {'wall s':>8} {'CPU s':>8} {'tokens':>12} {'tokens/s':>12} {'MB/s':>7} "
        f"{'x spm (wall)':>13} {'x spm (CPU)':>12}"
    )
    for name, t, c, toks in rows:
        cpu = f"{c:8.2f}" if c is not None else f"{'-':>8}"
        vs_cpu = f"{base_c / c:12.3f}" if c else f"{'-':>12}"
        print(
            f"{name:<12} {t:8.2f} {cpu} {toks:12,} {toks / t:12,.0f} {n_bytes / t / 1e6:7.2f} {base_t / t:13.3f} "
            f"{vs_cpu}"
        )
    r = {row[0]: row for row in rows}
    print(f"\nload average during the run: {os.getloadavg()}; process pool start-up {t_start:.1f}s (not timed)")
    print(
        f"stage per core vs spm loop: {base_t / r['stage'][1]:.3f} wall, {base_c / r['stage'][2]:.3f} CPU "
        f"(target >= 0.85)"
    )
    print(
        f"stage on 2 processes: {r['stage'][1] / r['stage x2'][1]:.2f}x wall speed-up; CPU time "
        f"{r['stage x2'][2]:.1f}s vs {r['stage'][2]:.1f}s on one (target ~2x)"
    )
    if "flow x2" in r:
        print(f"flow 1 -> 2 workers: {r['flow x1'][1] / r['flow x2'][1]:.2f}x (Prefect overhead included)")
    if "datatrove" in r:
        print(
            f"stage vs datatrove DocumentTokenizer, text MB/s: {r['datatrove'][1] / r['stage'][1]:.2f}x wall, "
            f"{r['datatrove'][2] / r['stage'][2]:.2f}x CPU"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
