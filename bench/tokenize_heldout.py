"""Is the tokenize stage's val bytes/token a held-out number? Compares it with truly held-out text.

    .venv/bin/python -m bench.tokenize_heldout [--vocab 2000] [--seq-len 256] [--val-fraction 0.1]

Documents: real web text from ../shared/data (the 181 news article bodies of the scrapinghub benchmark
and the DCLM human-annotated Common Crawl documents), deduplicated. A fifth of them (by hash) is held
out entirely; the rest become a mix version (a third of them with one repeat copy `<id>#r1`, as `mix`
writes them) and go through `tokenization_flow` (the tokenizer trained by the stage, default
`sample_chars`, so on small inputs the sample is every document the stage may put into it). Reported:
the stage's val and train bytes/token, the bytes/token of the held-out documents under the same
tokenizer (bytes / (tokens + 1 for <eos>), as the stage counts), how many val documents' texts were
in the tokenizer's training sample, and how many val documents' longest line (>= 80 chars) also
appears in the decoded train rows (a copy that reached train).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def real_texts() -> list[str]:
    truth = SHARED / "html_extraction/scrapinghub_article_extraction_benchmark/ground-truth.json"
    texts = [v["articleBody"] for v in json.loads(truth.read_text()).values() if v.get("articleBody")]
    for name in ("majority_data.jsonl", "agreement_data.jsonl"):
        texts += [json.loads(line)["text"] for line in open(SHARED / "quality/dclm_human_annotated" / name)]
    return list(dict.fromkeys(t.strip() for t in texts if len(t.strip()) >= 200))


def write_mix(root: str, docs: list[tuple[str, str]]) -> None:
    import pyarrow as pa

    from flows.pipeline import Stage
    from storage.artifacts import ArtifactWriter
    from storage.documents import Document, DocumentWriter
    from storage.manifest import ShardInfo, new_manifest
    from storage.stats import StageStats

    w = ArtifactWriter(root, Stage.MIX, "heldout")
    writers = [
        DocumentWriter(f"{w.path}/part-{s:05d}.parquet", extra=[pa.field("repeat", pa.int32())]) for s in range(2)
    ]
    n = chars = 0
    for i, (doc_id, text) in enumerate(docs):
        copies = 2 if i % 3 == 0 else 1
        for k in range(copies):
            writers[(i + k) % 2].write(
                Document(id=doc_id if k == 0 else f"{doc_id}#r{k}", text=text, source="web", meta={"repeat": k})
            )
            n += 1
        chars += len(text)
    infos = [ShardInfo(name=f"part-{s:05d}.parquet", rows=wr.rows, bytes=wr.close()) for s, wr in enumerate(writers)]
    w.commit(
        new_manifest(
            Stage.MIX,
            1,
            "heldout",
            {},
            {},
            infos,
            [],
            StageStats(docs_in=n, docs_out=n),
            extras={"chars": {"unique": chars, "total": chars}},
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: this benchmark needs the shared real-data kit")
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bench-prefect-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import Stage
    from flows.stage import task_runner
    from flows.tokenization import tokenization_flow
    from models.tokenizer import Tokenizer, training_lines
    from storage.manifest import load_manifest
    from storage.token_shards import TokenShards
    from tasks.text import sample_key
    from tasks.tokenization import TokenizeParams

    texts = real_texts()
    docs = [(hashlib.sha256(t.encode()).hexdigest()[:20], t) for t in texts]
    held = [t for i, t in docs if sample_key("heldout", 0, i) < 0.2]
    mixed = [(i, t) for i, t in docs if sample_key("heldout", 0, i) >= 0.2]
    root = tempfile.mkdtemp(prefix="bench-heldout-")
    write_mix(root, mixed)
    params = TokenizeParams(vocab_size=args.vocab, seq_len=args.seq_len, val_fraction=args.val_fraction)
    with prefect_test_harness(server_startup_timeout=180):
        v = tokenization_flow.with_options(task_runner=task_runner(1))(params=params, data_root=root)
    m = load_manifest(root, Stage.TOKENIZE, v)
    base = Path(root) / "tokenize" / v
    tok = Tokenizer(base / "tokenizer.model")
    held_tokens = sum(len(ids) + 1 for ids in tok.encode(held))
    held_bytes = sum(len(t.encode()) for t in held)
    threshold = m.extras["val_threshold"]
    val_texts = [t for i, t in mixed if sample_key("val", 0, i) < threshold]
    cache = m.extras["tokenizer"].get("cache_dir")
    # the sample files are deleted after training: rebuild the sampled set from the recorded rule
    sample = m.extras["tokenizer"].get("sample", {})
    excluded_below = sample.get("val_reserve", 0.0)  # absent before the fix: nothing left out
    in_sample = sum(
        1
        for i, t in mixed
        if sample_key("tokenizer", 0, i) < sample.get("key_threshold", 1.0)
        and sample_key("val", 0, i) >= excluded_below
        and sample_key("val", 0, i) < threshold
    )
    train_rows = TokenShards(str(base / "train"))
    train_text = "".join(
        tok.decode([t for t in row.tolist() if t != tok.eos_id]) for row in train_rows.get(range(len(train_rows)))
    )
    longest = [max(training_lines(t), key=len) for t in val_texts]
    val_in_train = sum(1 for line in longest if len(line) >= 80 and line in train_text)
    s = m.extras["splits"]
    print(
        json.dumps(
            {
                "documents": {
                    "mix_unique": len(mixed),
                    "held_out": len(held),
                    "val": s["val"]["docs"],
                    "train": s["train"]["docs"],
                },
                "val_threshold": threshold,
                "tokenizer_sample": sample,
                "cache": cache,
                "bytes_per_token": {
                    "val (stage report)": round(s["val"]["bytes_per_token"], 3),
                    "train (stage report)": round(s["train"]["bytes_per_token"], 3),
                    "held-out text": round(held_bytes / held_tokens, 3),
                },
                "val_docs_in_tokenizer_sample": in_sample,
                "val_docs_whose_text_reached_train": val_in_train,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
