"""tokenize: mixed documents -> packed token sequences (train / val / anneal) in Arrow IPC shards.

Input: the `mix` version (documents with `repeat`; its `anneal/` shards when annealing).
Output: `tokenizer.model` (+ `.vocab`), `train/tokens-NNNNN.arrow`, `val/tokens-NNNNN.arrow`,
`anneal/tokens-NNNNN.arrow` (format: storage/token_shards.py), `rejected/part-NNNNN.parquet`.

1. Tokenizer: sentencepiece (recipe in models/tokenizer.py) trained on the first copies whose key
   hash64("tokenizer:<seed>:<id>") falls below sample_chars / (unique characters of the mix) and
   that can never be val: first copies of main shards with val key < the val reserve are left out
   (`val_reserve`: the largest val threshold step 4 can choose, from a lower bound on each document's
   tokens, len(text) // MAX_PIECE_CHARS + 1, so it is known before the tokenizer exists). Val bytes per
   token is then measured on text the tokenizer never saw (real web text, vocab 8000: in-sample val
   said 3.57 bytes/token where held-out text gave 3.28; bench/tokenize_heldout.py). Kept as its own
   versioned artifact of kind `tokenizer`, `<root>/tokenizer/<key>/` (`tokenizer.model`,
   `tokenizer.vocab`, `val_min_tokens.npy`, `manifest.json` last; storage.artifacts), keyed by the
   training params and the mix version; a tokenizer is reused while its reserve covers this run's (so
   changing only packing params reuses it unless a tiny input needs a larger val); or `tokenizer_path`.
2. Encode (`tokenize_shard`, a task per mix shard): documents encoded in batches, `<eos>` appended.
   Split by document before packing: key hash64("val:<seed>:<original id>") < val threshold -> val,
   else train; repeated copies of a val document are dropped (val holds each document once, and
   no copy of a val document is trained on). Each split's stream is cut into rows of seq_len + 1
   tokens (no padding); rows are shuffled with numpy PCG64 seeded by (seed, split, shard); the
   shard's leftover (< seq_len + 1 tokens) is saved to `_work/`.
3. Tails (`tokenize_tails`): the leftovers of all shards, in shard order, are packed into one more
   shard per split (index = number of shards); only its own leftover is dropped (`tail_dropped.<s>`).
   doc_offsets there also mark where a leftover that began mid-document starts (a segment boundary).
4. Val holds at least one row: shards report tokens per val-key bucket; when val has fewer than
   seq_len + 1 tokens the flow raises the threshold to the smallest bucket boundary giving one row
   and re-runs step 2 (tiny inputs only).

Drop reasons: `empty_text` (empty or whitespace-only), `val_repeat_copy`. Counters: `docs.<s>`,
`bytes.<s>` (UTF-8), `tokens.<s>` (encoded, `<eos>` included), `byte_fallback_tokens`. bytes per
token = text bytes / tokens including `<eos>`: the loss is averaged over every position, `<eos>`
included, so that is the ratio bits-per-byte needs. Memory: one shard's tokens (2-4 bytes each).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, Field

from models.tokenizer import MAX_PIECE_CHARS, Tokenizer, load_tokenizer, train_tokenizer, training_lines
from storage import paths
from storage.documents import (
    REJECTED_DIR,
    Document,
    DocumentWriter,
    Rejects,
    ShardResult,
    counted,
    extra_fields,
    iter_batches,
    read_documents,
    read_schema,
)
from storage.manifest import ShardInfo
from storage.params import StageParams
from storage.stats import StageStats
from storage.token_shards import SHARD_EXT, SHARD_KIND, TRAIN_DIR, VAL_DIR, TokenShardWriter, token_dtype
from tasks.lazy_task import task
from tasks.text import sample_key

STAGE = "tokenize"
STAGE_VERSION = 2  # 2: the tokenizer sample excludes every document that can be val
DROP_EMPTY = "empty_text"
DROP_VAL_REPEAT = "val_repeat_copy"
ANNEAL_SPLIT = "anneal"
SPLIT_CODES = {TRAIN_DIR: 0, VAL_DIR: 1, ANNEAL_SPLIT: 2}
VAL_BUCKETS = 4096
ENCODE_BATCH = 256
ROWS_PER_BATCH = 1024
WORK_DIR = "_work"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_VOCAB = "tokenizer.vocab"
TOKENIZER_KIND = "tokenizer"  # <root>/tokenizer/<key>/: the trained tokenizers, a versioned side artifact
TOKENIZER_VERSION = 2  # bump when the training recipe in models/tokenizer.py changes (2: val held out)
SAMPLE_INDEX = "sample-{:05d}.npz"  # per sampled document: val key, lines, chars, bytes
VAL_MIN_TOKENS = "val_min_tokens.npy"  # in a cached tokenizer: lower-bound tokens per val-key bucket


class TokenizeParams(StageParams):
    vocab_size: int = Field(
        32_000,
        ge=300,
        le=1_000_000,
        description="Pieces of the trained tokenizer (ids <= 65,536 are stored as uint16, more as uint32).",
    )
    model_type: Literal["bpe", "unigram"] = Field("bpe", description="sentencepiece model type.")
    character_coverage: float = Field(
        0.9995,
        gt=0,
        le=1,
        description="Share of sample characters given their own piece; the rarest rest are byte-encoded.",
    )
    sample_chars: int = Field(
        20_000_000,
        ge=1_000,
        description="About how many characters of mix documents "
        "(first copies, chosen by hash) the tokenizer is trained on.",
    )
    tokenizer_path: Optional[str] = Field(
        None, description="Reuse this sentencepiece .model instead of training one (it must have an <eos> piece)."
    )
    seq_len: int = Field(1024, ge=8, le=1_048_576, description="Tokens per training example; rows hold seq_len + 1.")
    val_fraction: float = Field(
        0.005,
        gt=0,
        le=0.5,
        description="Share of documents (by hash of id) held out for "
        "validation; raised automatically when needed for one val sequence.",
    )
    shuffle: bool = Field(True, description="Shuffle the packed sequences of each shard (seeded).")
    seed: int = Field(0, ge=0, description="Seed of the val split, the tokenizer sample and the shuffle.")

    def training_params(self) -> dict[str, object]:
        """The params that define a trained tokenizer (its cache key, with the mix version)."""
        return {k: getattr(self, k) for k in ("vocab_size", "model_type", "character_coverage", "sample_chars", "seed")}


class TokenizeJob(StageParams):
    """What a `tokenize_shard` task needs besides its shard: params, tokenizer file, val threshold."""

    params: TokenizeParams
    tokenizer_file: str
    val_threshold: float
    kind: Literal["main", "anneal"] = "main"


class TokenizerSampleJob(StageParams):
    """What a `tokenizer_sample_shard` task needs: the key threshold, the seed, and how many of the shards
    are main shards (the first `main_shards`; the rest are anneal shards, whose documents are never val)."""

    threshold: float
    seed: int
    main_shards: int


class TokenizerSample(BaseModel):
    """What `tokenizer_sample_shard` returns: the sample's counts of shard `index` and, for a main shard, the
    lower-bound tokens of all its first copies per val-key bucket."""

    index: int
    docs: int = 0
    empty_docs: int = 0
    lines: int = 0
    chars: int = 0
    bytes: int = 0
    val_min_tokens: list[int] = Field(default_factory=list)


class TokenizeShardResult(ShardResult):
    outputs: list[ShardInfo] = Field(default_factory=list)
    val_bucket_tokens: list[int] = Field(default_factory=list)


def splits_of(kind: str) -> tuple[str, ...]:
    return (ANNEAL_SPLIT,) if kind == "anneal" else (TRAIN_DIR, VAL_DIR)


def original_id(doc_id: str, repeat: int) -> str:
    suffix = f"#r{repeat}"
    return doc_id[: -len(suffix)] if repeat > 0 and doc_id.endswith(suffix) else doc_id


def flatten_with_eos(ids: list[list[int]], eos_id: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """One stream of every document followed by <eos>, and the position where each document starts."""
    lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    ends = np.cumsum(lens + 1)
    out = np.empty(int(ends[-1]) if len(ids) else 0, dtype=dtype)
    body = np.ones(len(out), dtype=bool)
    body[ends - 1] = False
    out[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
    out[ends - 1] = eos_id
    return out, ends - lens - 1


def pack(
    tokens: np.ndarray, starts: np.ndarray, row_len: int
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Cut a stream into rows of row_len: (rows, segment starts per row, leftover tokens, leftover starts)."""
    k = len(tokens) // row_len
    cut = k * row_len
    inside = starts[starts < cut]
    row_of = inside // row_len
    offsets = np.split((inside % row_len).astype(np.int32), np.searchsorted(row_of, np.arange(1, k))) if k else []
    return tokens[:cut].reshape(k, row_len), offsets, tokens[cut:], starts[starts >= cut] - cut


def row_order(n: int, seed: int, split: str, index: int, shuffle: bool) -> np.ndarray:
    """Order in which a shard's rows are written (a seeded permutation, or as packed)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, SPLIT_CODES[split], index]).permutation(n)


def write_rows(
    path: str,
    rows: np.ndarray,
    offsets: list[np.ndarray],
    order: np.ndarray,
    seq_len: int,
    vocab_size: int,
    eos_id: int,
) -> int:
    """Write rows in `order` as one token shard; returns its size in bytes."""
    w = TokenShardWriter(path, seq_len, vocab_size, eos_id)
    try:
        for i in range(0, len(order), ROWS_PER_BATCH):
            sel = order[i : i + ROWS_PER_BATCH]
            w.write_sequences(rows[sel], [offsets[j] for j in sel])
    except BaseException:
        w.abort()
        raise
    return w.close()


def token_shard_name(split: str, index: int) -> str:
    return f"{split}/{paths.shard_name(index, kind=SHARD_KIND, ext=SHARD_EXT)}"


def tail_path(out_dir: str, split: str, index: int) -> str:
    return paths.join(out_dir, WORK_DIR, f"tail-{split}-{index:05d}.npz")


def route(doc: Document, job: TokenizeJob) -> tuple[Optional[str], int]:
    """(split or None for a dropped val repeat, val-key bucket of a first copy or -1)."""
    if job.kind == "anneal":
        return ANNEAL_SPLIT, -1
    repeat = int(doc.meta.get("repeat") or 0)
    u = sample_key("val", job.params.seed, original_id(doc.id, repeat))
    if u < job.val_threshold:
        return (VAL_DIR, int(u * VAL_BUCKETS)) if repeat == 0 else (None, -1)
    return TRAIN_DIR, int(u * VAL_BUCKETS) if repeat == 0 else -1


def process(
    docs: Iterable[Document], job: TokenizeJob, stats: StageStats, rejects: Rejects, tok: Tokenizer
) -> Iterator[tuple[str, int, list[int]]]:
    """(split, val-key bucket or -1, token ids) of every kept document, in input order."""
    it = iter(counted(docs, stats))
    while batch := list(itertools.islice(it, ENCODE_BATCH)):
        keep: list[tuple[str, int, Document]] = []
        for d in batch:
            if not d.text.strip():
                rejects.add(d, DROP_EMPTY, {"chars": len(d.text)})
                continue
            split, bucket = route(d, job)
            if split is None:
                rejects.add(d, DROP_VAL_REPEAT, {"original_id": original_id(d.id, int(d.meta["repeat"]))})
                continue
            keep.append((split, bucket, d))
        for (split, bucket, d), ids in zip(keep, tok.encode([d.text for _, _, d in keep]), strict=True):
            n_bytes = len(d.text.encode("utf-8", "surrogatepass"))
            stats.docs_out += 1
            stats.bytes_out += n_bytes
            stats.count(f"docs.{split}")
            stats.count(f"bytes.{split}", n_bytes)
            stats.count(f"tokens.{split}", len(ids) + 1)
            yield split, bucket, ids


class SplitStream:
    """The token stream of one split of one shard, kept as numpy chunks (2-4 bytes per token)."""

    def __init__(self, dtype: np.dtype, eos_id: int):
        self.dtype, self.eos_id = dtype, eos_id
        self.chunks: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        self.pending: list[list[int]] = []
        self.n = 0

    def add(self, ids: list[int]) -> None:
        self.pending.append(ids)
        if len(self.pending) >= ENCODE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            flat, starts = flatten_with_eos(self.pending, self.eos_id, self.dtype)
            self.chunks.append(flat)
            self.starts.append(starts + self.n)
            self.n += len(flat)
            self.pending = []

    def stream(self) -> tuple[np.ndarray, np.ndarray]:
        self.flush()
        if not self.chunks:
            return np.zeros(0, self.dtype), np.zeros(0, np.int64)
        return np.concatenate(self.chunks), np.concatenate(self.starts)


def finish_split(
    tokens: np.ndarray, starts: np.ndarray, split: str, index: int, out_dir: str, job: TokenizeJob, tok: Tokenizer
) -> tuple[Optional[ShardInfo], np.ndarray, np.ndarray]:
    """Pack and write one split's full rows; returns (shard info or None, leftover tokens, leftover starts)."""
    p = job.params
    rows, offsets, tail, tail_starts = pack(tokens, starts, p.seq_len + 1)
    if not len(rows):
        return None, tail, tail_starts
    name = token_shard_name(split, index)
    size = write_rows(
        paths.join(out_dir, name),
        rows,
        offsets,
        row_order(len(rows), p.seed, split, index, p.shuffle),
        p.seq_len,
        tok.vocab_size,
        tok.eos_id,
    )
    return ShardInfo(name=name, rows=len(rows), bytes=size), tail, tail_starts


def save_tail(path: str, tokens: np.ndarray, starts: np.ndarray) -> None:
    fs, p = paths.filesystem(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "wb") as f:
        np.savez(f, tokens=tokens, starts=starts)


@task
def tokenize_shard(src: str, out_dir: str, index: int, job: TokenizeJob) -> TokenizeShardResult:
    """Encode one mix shard, write its packed rows per split and save the leftovers."""
    tok = load_tokenizer(paths.local_copy(job.tokenizer_file))
    stats = StageStats()
    streams = {s: SplitStream(token_dtype(tok.vocab_size), tok.eos_id) for s in splits_of(job.kind)}
    hist = np.zeros(VAL_BUCKETS, dtype=np.int64)
    rej_name = f"{REJECTED_DIR}/{'anneal' if job.kind == 'anneal' else 'part'}-{index:05d}.parquet"
    with DocumentWriter(paths.join(out_dir, rej_name), extra=extra_fields(read_schema(src)), rejected=True) as rej:
        for split, bucket, ids in process(read_documents(src), job, stats, Rejects(rej, stats), tok):
            streams[split].add(ids)
            if bucket >= 0:
                hist[bucket] += len(ids) + 1
    byte_mask = tok.byte_piece_mask()
    outputs = []
    for split, stream in streams.items():
        tokens, starts = stream.stream()
        stats.count("byte_fallback_tokens", int(np.count_nonzero(byte_mask[tokens])))
        info, tail, tail_starts = finish_split(tokens, starts, split, index, out_dir, job, tok)
        save_tail(tail_path(out_dir, split, index), tail, tail_starts)
        outputs += [info] if info is not None else []
    fs, rp = paths.filesystem(paths.join(out_dir, rej_name))
    return TokenizeShardResult(
        index=index,
        stats=stats,
        rejected=ShardInfo(name=rej_name, rows=rej.rows, bytes=int(fs.size(rp))),
        shard=outputs[0] if outputs else ShardInfo(name="", rows=0, bytes=0),
        outputs=outputs,
        val_bucket_tokens=hist.tolist(),
    )


@task
def tokenize_tails(out_dir: str, split: str, n_shards: int, job: TokenizeJob) -> tuple[Optional[ShardInfo], int]:
    """Pack the leftovers of every shard of a split into shard `n_shards`; returns (info, tokens dropped)."""
    tok = load_tokenizer(paths.local_copy(job.tokenizer_file))
    parts, starts, n = [], [], 0
    for i in range(n_shards):
        fs, p = paths.filesystem(tail_path(out_dir, split, i))
        with fs.open(p, "rb") as f:
            z = np.load(f)
            t, s = z["tokens"], z["starts"]
        if len(t):
            parts.append(t)
            starts.append(np.union1d([0], s) + n)  # a leftover starting mid-document is a segment of its own
            n += len(t)
    if not parts:
        return None, 0
    tokens, seg = np.concatenate(parts), np.concatenate(starts)
    info, tail, _ = finish_split(tokens, seg, split, n_shards, out_dir, job, tok)
    return info, len(tail)


def min_tokens(text: str) -> int:
    """A lower bound on the tokens of a document under any tokenizer this stage trains (<eos> included)."""
    return len(text) // MAX_PIECE_CHARS + 1


def val_reserve(min_tokens_hist: np.ndarray, row_len: int, val_fraction: float) -> float:
    """The largest val-key threshold `val_threshold_for` can choose, from lower-bound tokens per bucket.

    Real token counts are >= the bounds, so the bucket where they first reach row_len is <= the bounds'.
    1.0 (every document may be val) when the bounds never reach row_len."""
    cum = np.cumsum(min_tokens_hist)
    if not len(cum) or cum[-1] < row_len:
        return 1.0
    return max(val_fraction, (int(np.searchsorted(cum, row_len)) + 1) / VAL_BUCKETS)


def val_threshold_for(bucket_tokens: np.ndarray, row_len: int, version: str) -> float:
    """Smallest val-key bucket boundary under which first copies hold at least one row of tokens (step 4)."""
    cum = np.cumsum(bucket_tokens)
    if not len(cum) or cum[-1] < 2 * row_len:
        raise ValueError(
            f"tokenize: mix@{version} encodes to {int(cum[-1]) if len(cum) else 0:,} tokens (of first "
            f"copies), fewer than one train and one val sequence of seq_len + 1 = {row_len} tokens "
            f"each; lower tokenize.seq_len or add data"
        )
    return (int(np.searchsorted(cum, row_len)) + 1) / VAL_BUCKETS


def split_facts(stats: StageStats, split: str, sequences: int, dropped: int, row_len: int) -> dict[str, Any]:
    """The manifest's facts of one split (`extras["splits"][split]`)."""
    c = stats.counters
    tokens = c.get(f"tokens.{split}", 0)
    return {
        "dir": split,
        "docs": c.get(f"docs.{split}", 0),
        "bytes": c.get(f"bytes.{split}", 0),
        "tokens_encoded": tokens,
        "sequences": sequences,
        "tokens_packed": sequences * row_len,
        "tail_dropped": dropped,
        "bytes_per_token": c.get(f"bytes.{split}", 0) / tokens if tokens else 0.0,
    }


@task
def tokenizer_sample_shard(src: str, out_dir: str, index: int, job: TokenizerSampleJob) -> TokenizerSample:
    """Write the tokenizer training lines of one mix shard (first copies with key < threshold) and each
    sampled document's val key (`SAMPLE_INDEX`: the trainer leaves out the val reserve); counts, and for a
    main shard (index < job.main_shards) the lower-bound tokens of all its first copies per val-key bucket."""
    threshold, seed, val_split = job.threshold, job.seed, index < job.main_shards
    counts = {"docs": 0, "empty_docs": 0, "lines": 0, "chars": 0, "bytes": 0}
    hist = np.zeros(VAL_BUCKETS, dtype=np.int64)
    index_rows: list[tuple[float, int, int, int]] = []
    cols = ["id", "text"] + (["repeat"] if "repeat" in read_schema(src).names else [])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"sample-{index:05d}.txt"), "w", encoding="utf-8", newline="\n") as f:
        for b in iter_batches(src, columns=cols):
            reps = b.column("repeat").to_pylist() if "repeat" in cols else itertools.repeat(0)
            for doc_id, text, rep in zip(b.column("id").to_pylist(), b.column("text").to_pylist(), reps):
                if rep:
                    continue
                val_key = sample_key("val", seed, doc_id) if val_split else 2.0  # anneal documents are never val
                if val_split and text and text.strip():
                    hist[int(val_key * VAL_BUCKETS)] += min_tokens(text)
                if sample_key("tokenizer", seed, doc_id) >= threshold:
                    continue
                if not text or not text.strip():
                    counts["empty_docs"] += 1
                    continue
                n_lines = 0
                for line in training_lines(text):
                    f.write(line + "\n")
                    n_lines += 1
                n_bytes = len(text.encode("utf-8", "surrogatepass"))
                index_rows.append((val_key, n_lines, len(text), n_bytes))
                counts["docs"] += 1
                counts["lines"] += n_lines
                counts["chars"] += len(text)
                counts["bytes"] += n_bytes
    cols_np = np.array(index_rows, dtype=np.float64).reshape(-1, 4)
    np.savez(
        os.path.join(out_dir, SAMPLE_INDEX.format(index)),
        val_key=cols_np[:, 0],
        lines=cols_np[:, 1].astype(np.int64),
        chars=cols_np[:, 2].astype(np.int64),
        bytes=cols_np[:, 3].astype(np.int64),
    )
    return TokenizerSample(index=index, **counts, val_min_tokens=hist.tolist() if val_split else [])


def _sample_files(sample_dir: str) -> list[tuple[str, str]]:
    names = sorted(f for f in os.listdir(sample_dir) if f.startswith("sample-") and f.endswith(".txt"))
    return [(os.path.join(sample_dir, n), os.path.join(sample_dir, n[:-4] + ".npz")) for n in names]


def held_out_sample_counts(sample_dir: str, reserve: float) -> dict[str, int]:
    """Documents, lines, chars and bytes of the sample once documents with val key < reserve are left out."""
    out = {"docs": 0, "lines": 0, "chars": 0, "bytes": 0, "val_excluded_docs": 0}
    for _, index in _sample_files(sample_dir):
        z = np.load(index)
        keep = z["val_key"] >= reserve
        out["docs"] += int(keep.sum())
        out["val_excluded_docs"] += int((~keep).sum())
        for k in ("lines", "chars", "bytes"):
            out[k] += int(z[k][keep].sum())
    return out


def held_out_sample_lines(sample_dir: str, reserve: float) -> Iterator[str]:
    """The sample's training lines, leaving out the documents whose val key is below `reserve`."""
    for text_file, index in _sample_files(sample_dir):
        z = np.load(index)
        with open(text_file, encoding="utf-8", newline="\n") as f:
            for val_key, n_lines in zip(z["val_key"].tolist(), z["lines"].tolist()):
                lines = [f.readline().rstrip("\n") for _ in range(n_lines)]
                if val_key >= reserve:
                    yield from lines


@task
def train_tokenizer_task(sample_dir: str, params: TokenizeParams, reserve: float) -> dict[str, object]:
    """Train the tokenizer on the sample files in sample_dir, without the documents whose val key is below
    `reserve`; returns its facts and sample bytes per token."""
    tok = Tokenizer(
        train_tokenizer(
            held_out_sample_lines(sample_dir, reserve),
            os.path.join(sample_dir, TOKENIZER_MODEL),
            params.vocab_size,
            params.model_type,
            params.character_coverage,
        )
    )
    # bytes per token of (up to) the first 20k sample lines
    measured = list(itertools.islice(held_out_sample_lines(sample_dir, reserve), 20_000))
    n_tokens = sum(len(ids) for ids in tok.encode(measured))
    n_bytes = sum(len(line.encode("utf-8")) for line in measured)
    return {
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "pad_id": tok.pad_id,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "unk_id": tok.unk_id,
        "sample_bytes_per_token": n_bytes / max(n_tokens, 1),
    }
