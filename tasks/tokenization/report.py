"""Views of a tokenize version: `report` (the `tokenize-summary` artifact and `pretrain inspect tokenize`:
tokenizer, per-split documents / bytes / tokens / sequences) and `sample_sequences` (decoded rows with
`<eos>` marks: `pretrain inspect tokenize --sample N`)."""

from __future__ import annotations

import numpy as np

from models.tokenizer import Tokenizer
from reports import md_table
from storage import paths
from storage.manifest import Manifest
from storage.token_shards import TRAIN_DIR, TokenShards
from tasks.tokenization import TOKENIZER_MODEL

SPLIT_HEADER = [
    "split",
    "documents",
    "text bytes",
    "tokens",
    "bytes/token",
    "sequences",
    "tokens dropped at the tail",
]


def report(manifest: Manifest, root: str) -> str:
    e = manifest.extras
    if "splits" not in e:
        return ""
    t = e.get("tokenizer", {})
    c = manifest.stats.counters
    total = sum(f["tokens_encoded"] for f in e["splits"].values()) or 1
    rows = [
        [
            s,
            f["docs"],
            f["bytes"],
            f["tokens_encoded"],
            f"{f['bytes_per_token']:.3f}",
            f["sequences"],
            f["tail_dropped"],
        ]
        for s, f in e["splits"].items()
    ]
    lines = [
        "## Token shards",
        "",
        f"Tokenizer `{e['tokenizer_path']}` ({t.get('source')}{', version ' + t['version'] if 'version' in t else ''})"
        f", sha256 `{e['tokenizer_sha256'][:16]}`, vocab {e['vocab_size']:,} ({e['dtype']}), <eos> id "
        f"{e['eos_id']}; seq_len {e['seq_len']}; {e['bytes_per_token']:.3f} bytes per token; byte-fallback "
        f"tokens {c.get('byte_fallback_tokens', 0) / total:.2%}.",
        "",
        *md_table(rows, SPLIT_HEADER),
    ]
    if e["val_threshold"] > e["val_fraction"]:
        lines += [
            "",
            f"val_fraction {e['val_fraction']} gave no full val sequence; the val key threshold was raised "
            f"to {e['val_threshold']:.4f}.",
        ]
    sample = t.get("sample")
    if sample:
        lines += [
            "",
            f"Tokenizer trained on {sample['docs']:,} documents ({sample['chars']:,} chars, "
            f"{sample['lines']:,} lines; {t.get('sample_bytes_per_token', 0):.3f} bytes per token there)"
            + (
                f"; {sample['val_excluded_docs']:,} sampled documents with val key < "
                f"{sample['val_reserve']:.4f} left out, so val bytes/token is measured on held-out text."
                if "val_reserve" in sample
                else "."
            ),
        ]
    return "\n".join(lines)


def decode_row(tok: Tokenizer, row: np.ndarray) -> str:
    """Text of a packed row with each document end shown as `<eos>`."""
    out: list[str] = []
    cur: list[int] = []
    for t in row.tolist():
        if t == tok.eos_id:
            out.append(tok.decode(cur) + "<eos>")
            cur = []
        else:
            cur.append(t)
    return "".join(out) + tok.decode(cur)


def sample_sequences(manifest: Manifest, root: str, n: int, split: str = TRAIN_DIR) -> str:
    """The first n rows of a split, decoded, with document starts and `<eos>` boundaries."""
    base = paths.version_dir(root, manifest.stage, manifest.version)
    tok = Tokenizer(paths.local_copy(paths.join(base, manifest.extras.get("tokenizer_path", TOKENIZER_MODEL))))
    shards = TokenShards(paths.join(base, split))
    first = range(min(len(shards), 2_000))  # prefer rows that show a document boundary
    with_eos = [i for i, row in zip(first, shards.get(list(first))) if (row == tok.eos_id).any()]
    seen = set(with_eos)
    idx = sorted((with_eos + [i for i in first if i not in seen])[:n])
    lines = [f"sample {split} sequences ({len(idx)} of {len(shards):,}; <eos> ends a document):"]
    for i, row, offs in zip(idx, shards.get(idx), shards.offsets(idx)):
        text = decode_row(tok, row).replace("\n", "\n    ")
        lines += [f"- sequence {i}: {len(row)} tokens, documents start at {offs.tolist()}", f"    {text}"]
    return "\n".join(lines)
