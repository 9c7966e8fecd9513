"""tokenization_flow (`tokenize`): `mix` -> packed token shards, with a versioned sentencepiece tokenizer.

Steps (tasks in tasks/tokenization/__init__.py): tokenizer (the cached artifact for these training params and
mix version whose sample left out every possible val document, or sample + train + cache it, or copy
`tokenizer_path`) -> `tokenize_shard` over the mix shards (then its anneal shards) -> val check
(re-encode with a larger val threshold when val would hold no sequence; never beyond the part left out
of the tokenizer sample) -> `tokenize_tails` per split -> manifest. The tokenizer is copied into the
version (`tokenizer.model`), so a tokenize version is self-contained.

Views of a version: `tokenize_report` (Prefect summary and `pretrain inspect tokenize`),
`sample_sequences` (decoded rows with `<eos>` marks: `pretrain inspect tokenize --sample N`) and
`export_llmc` (`pretrain export-tokens --format llm.c`: 256 int32 header, magic 20240520, version 1,
token count, then uint16 tokens; uint32 vocabularies use llm.c's llama-3 header 20240801 / 7).
"""

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
from prefect import flow
from prefect.utilities.annotations import unmapped

from flows.stage import StageRun, abort_on_error, begin_stage, finish_stage, map_shards, publish, task_runner
from models.tokenizer import Tokenizer, file_sha256
from storage import paths
from storage.manifest import Manifest, compute_version
from storage.stats import StageStats
from storage.token_shards import TRAIN_DIR, VAL_DIR, TokenShards
from tasks.tokenization import (
    ANNEAL_SPLIT,
    STAGE,
    STAGE_VERSION,
    TOKENIZER_DIR,
    TOKENIZER_INFO,
    TOKENIZER_MODEL,
    TOKENIZER_VERSION,
    VAL_BUCKETS,
    VAL_MIN_TOKENS,
    WORK_DIR,
    TokenizeJob,
    TokenizeParams,
    TokenizeShardResult,
    held_out_sample_counts,
    tokenize_shard,
    tokenize_tails,
    tokenizer_sample_shard,
    train_tokenizer_task,
    val_reserve,
)

log = logging.getLogger(__name__)
LLMC_HEADERS: dict[np.dtype[Any], tuple[int, int]] = {
    np.dtype(np.uint16): (20240520, 1),
    np.dtype(np.uint32): (20240801, 7),
}


def _tokenizer_key(params: TokenizeParams, mix_version: str, reserve: Optional[float] = None) -> str:
    extra = {} if reserve is None else {"val_reserve": reserve}
    return compute_version("tokenizer", TOKENIZER_VERSION, {**params.training_params(), **extra}, {"mix": mix_version})


def _reusable(final: Path, params: TokenizeParams) -> tuple[bool, float]:
    """(whether the cached tokenizer in `final` held out every document this run may put in val, the
    val reserve this run needs); (False, -1) when nothing complete is cached there."""
    if not (final / TOKENIZER_INFO).is_file():
        return False, -1.0
    held_out = float(json.loads((final / TOKENIZER_INFO).read_text())["sample"]["val_reserve"])
    need = val_reserve(np.load(final / VAL_MIN_TOKENS), params.seq_len + 1, params.val_fraction)
    return need <= held_out, need


def _cached_tokenizer(run: StageRun, params: TokenizeParams, sources: list[str], n_main: int) -> Path:
    """Directory of the trained tokenizer for these training params and mix version (trained if missing).

    Its sample leaves out every document this run's val can hold (`val_reserve`). A cached tokenizer whose
    left-out part is too small for this run (a tiny mix with a larger seq_len or val_fraction) is not
    reused: one keyed also by the needed reserve is used or trained instead."""
    mix = run.input_manifest
    assert mix is not None
    key = _tokenizer_key(params, mix.version)
    final = Path(paths.join(run.root, str(STAGE), TOKENIZER_DIR, key))
    ok, need = _reusable(final, params)
    if need >= 0 and not ok:
        key = _tokenizer_key(params, mix.version, need)
        final = Path(paths.join(run.root, str(STAGE), TOKENIZER_DIR, key))
        ok, _ = _reusable(final, params)
    if ok:
        log.info("reused tokenizer %s (%s)", key, final)
        return final
    tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        unique = int((mix.extras.get("chars") or {}).get("unique") or mix.stats.bytes_out or 1)
        threshold = min(1.0, params.sample_chars / unique)
        counts: list[dict[str, Any]] = [
            f.result()
            for f in tokenizer_sample_shard.map(
                sources,
                unmapped(str(tmp)),
                list(range(len(sources))),
                unmapped(threshold),
                unmapped(params.seed),
                [i < n_main for i in range(len(sources))],
            )
        ]
        sample = {k: sum(c[k] for c in counts) for k in ("docs", "empty_docs", "lines", "chars", "bytes")}
        if sample["docs"] == 0:
            raise ValueError(
                f"tokenize: the tokenizer sample of mix@{mix.version} has no text ({sample['empty_docs']} sampled "
                f"documents are empty or whitespace-only); check the upstream stages' reports, or set "
                f"tokenize.tokenizer_path to an existing sentencepiece model"
            )
        hist = np.sum([c["val_min_tokens"] for c in counts[:n_main]], axis=0).astype(np.int64)
        reserve = val_reserve(hist, params.seq_len + 1, params.val_fraction)
        assert need < 0 or reserve == need, f"val reserve {reserve} != {need} computed from the cached histogram"
        held = held_out_sample_counts(str(tmp), reserve)
        if held["docs"] == 0:
            raise ValueError(
                f"tokenize: mix@{mix.version} is too small to hold out a val split of one sequence of seq_len + 1 = "
                f"{params.seq_len + 1} tokens from the tokenizer sample (every one of its {sample['docs']} sampled "
                f"documents could be needed for val); lower tokenize.seq_len, add data, or set "
                f"tokenize.tokenizer_path to an existing sentencepiece model"
            )
        facts = train_tokenizer_task(str(tmp), params, reserve)
        for f in [*tmp.glob("sample-*.txt"), *tmp.glob("sample-*.npz")]:
            f.unlink()
        np.save(tmp / VAL_MIN_TOKENS, hist)
        info = {
            "version": key,
            **facts,
            "training_params": params.training_params(),
            "inputs": {"mix": mix.version},
            "sample": {**held, "empty_docs": sample["empty_docs"], "key_threshold": threshold, "val_reserve": reserve},
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (tmp / TOKENIZER_INFO).write_text(json.dumps(info, indent=2))
        if (final / TOKENIZER_INFO).is_file():  # trained concurrently by an identical run: same content
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(final, ignore_errors=True)  # a leftover without its info file is incomplete
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "trained tokenizer %s on %d documents (%d chars; %d left out as possible val) -> %s",
        key,
        held["docs"],
        held["chars"],
        held["val_excluded_docs"],
        final,
    )
    return final


def prepare_tokenizer(
    run: StageRun, params: TokenizeParams, sources: list[str], n_main: int
) -> tuple[Tokenizer, dict[str, Any]]:
    """Put `tokenizer.model` into the version directory; returns it loaded plus its provenance."""
    out = Path(run.out_dir)
    if params.tokenizer_path:
        shutil.copyfile(params.tokenizer_path, out / TOKENIZER_MODEL)
        info: dict[str, Any] = {"source": "file", "given_path": params.tokenizer_path}
    else:
        cached = _cached_tokenizer(run, params, sources, n_main)
        shutil.copyfile(cached / TOKENIZER_MODEL, out / TOKENIZER_MODEL)
        shutil.copyfile(cached / "tokenizer.vocab", out / "tokenizer.vocab")
        info = {"source": "trained", "cache_dir": str(cached), **json.loads((cached / TOKENIZER_INFO).read_text())}
    tok = Tokenizer(out / TOKENIZER_MODEL)
    if tok.eos_id < 0:
        raise ValueError(
            f"tokenize.tokenizer_path={params.tokenizer_path}: the model has no end-of-sequence piece "
            f"(eos_id=-1); use a model with <eos> or leave tokenizer_path empty to train one"
        )
    return tok, info


def val_threshold_for(bucket_tokens: np.ndarray, row_len: int, version: str) -> float:
    """Smallest val-key bucket boundary under which first copies hold at least one row of tokens."""
    cum = np.cumsum(bucket_tokens)
    if not len(cum) or cum[-1] < 2 * row_len:
        raise ValueError(
            f"tokenize: mix@{version} encodes to {int(cum[-1]) if len(cum) else 0:,} tokens (of first "
            f"copies), fewer than one train and one val sequence of seq_len + 1 = {row_len} tokens "
            f"each; lower tokenize.seq_len or add data"
        )
    return (int(np.searchsorted(cum, row_len)) + 1) / VAL_BUCKETS


def encode_main(
    run: StageRun, params: TokenizeParams, tok_file: str, sources: list[str]
) -> tuple[list[TokenizeShardResult], float]:
    """Encode the main mix shards; re-run with a larger val threshold if val would hold no sequence."""
    threshold = params.val_fraction
    results = map_shards(
        run, tokenize_shard, sources, TokenizeJob(params=params, tokenizer_file=tok_file, val_threshold=threshold)
    )
    row_len = params.seq_len + 1
    assert run.input_manifest is not None
    if not any(r.stats.docs_out for r in results):
        raise ValueError(
            f"all {sum(r.stats.docs_in for r in results):,} documents of mix@{run.input_manifest.version} "
            f"are empty or whitespace-only; nothing to tokenize: check `pretrain inspect mix` and the "
            f"upstream stages"
        )
    if sum(r.stats.counters.get(f"tokens.{VAL_DIR}", 0) for r in results) < row_len:
        hist = np.sum([r.val_bucket_tokens for r in results], axis=0)
        threshold = val_threshold_for(hist, row_len, run.input_manifest.version)
        log.warning(
            "tokenize: val_fraction=%s gives no full val sequence; re-encoding with val threshold %.4f",
            params.val_fraction,
            threshold,
        )
        for d in (TRAIN_DIR, VAL_DIR, WORK_DIR):
            shutil.rmtree(Path(run.out_dir) / d, ignore_errors=True)
        results = map_shards(
            run, tokenize_shard, sources, TokenizeJob(params=params, tokenizer_file=tok_file, val_threshold=threshold)
        )
    return results, threshold


def _split_facts(stats: StageStats, split: str, sequences: int, dropped: int, row_len: int) -> dict[str, Any]:
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


@flow(name="tokenize", task_runner=task_runner(2))
def tokenization_flow(
    params: TokenizeParams = TokenizeParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Train/reuse the tokenizer, encode and pack the mix; returns the tokenize version id."""
    extra = None
    if params.tokenizer_path:
        if not os.path.isfile(params.tokenizer_path):
            raise ValueError(
                f"tokenize.tokenizer_path={params.tokenizer_path} does not exist; give a sentencepiece "
                f".model file or leave it empty to train one"
            )
        extra = {"tokenizer_file": file_sha256(params.tokenizer_path)[:16]}
    run = begin_stage(STAGE, STAGE_VERSION, params, data_root, input_version, force, extra_inputs=extra)
    if run.reused is not None:
        publish(run.reused, run.root, tokenize_report, reused=True)
        return run.version
    try:
        manifest = _run(run, params)
    except BaseException:
        abort_on_error(run)
        raise
    return manifest.version


def _run(run: StageRun, params: TokenizeParams) -> Manifest:
    mix = run.input_manifest
    assert mix is not None
    mix_dir = paths.version_dir(run.root, mix.stage, mix.version)
    anneal = [paths.join(mix_dir, s["name"]) for s in mix.extras.get("anneal_shards", [])]
    if not any(s.rows for s in mix.shards) and not any(s["rows"] for s in mix.extras.get("anneal_shards", [])):
        raise ValueError(
            f"mix@{mix.version} has no documents, so there is nothing to tokenize; see "
            f"`pretrain inspect mix` (weights, budget)"
        )
    main = run.input_shard_paths()
    tok, tok_info = prepare_tokenizer(run, params, main + anneal, len(main))
    tok_file = str(Path(run.out_dir) / TOKENIZER_MODEL)
    results, val_threshold = encode_main(run, params, tok_file, main)
    if tok_info["source"] == "trained":  # guaranteed by val_reserve's lower bound on tokens
        assert val_threshold <= tok_info["sample"]["val_reserve"], (
            f"val threshold {val_threshold} > {tok_info['sample']['val_reserve']}, the part left out of the "
            f"tokenizer sample: val documents were in it"
        )
    job = TokenizeJob(params=params, tokenizer_file=tok_file, val_threshold=val_threshold)
    anneal_results = (
        map_shards(run, tokenize_shard, anneal, job.model_copy(update={"kind": "anneal"})) if anneal else []
    )
    stats = StageStats.merge_all([r.stats for r in results + anneal_results])
    splits = [(TRAIN_DIR, len(main)), (VAL_DIR, len(main))] + ([(ANNEAL_SPLIT, len(anneal))] if anneal else [])
    tails = {s: tokenize_tails.submit(run.out_dir, s, n, job) for s, n in splits}
    shards = [o for r in results + anneal_results for o in r.outputs]
    row_len = params.seq_len + 1
    facts = {}
    for split, fut in tails.items():
        info, dropped = fut.result()
        shards += [info] if info is not None else []
        seqs = sum(s.rows for s in shards if s.name.startswith(f"{split}/"))
        stats.count(f"sequences.{split}", seqs)
        stats.count(f"tail_dropped.{split}", dropped)
        facts[split] = _split_facts(stats, split, seqs, dropped, row_len)
    if facts[TRAIN_DIR]["sequences"] == 0:
        raise ValueError(
            f"tokenize: the train split has {facts[TRAIN_DIR]['tokens_encoded']:,} tokens, less than "
            f"one sequence of seq_len + 1 = {row_len}; lower tokenize.seq_len or add data"
        )
    shutil.rmtree(Path(run.out_dir) / WORK_DIR, ignore_errors=True)
    tokens = sum(f["tokens_encoded"] for f in facts.values())
    extras = {
        "vocab_size": tok.vocab_size,
        "seq_len": params.seq_len,
        "dtype": "uint16" if tok.vocab_size <= 65_536 else "uint32",
        "bytes_per_token": sum(f["bytes"] for f in facts.values()) / tokens,
        "tokenizer_path": TOKENIZER_MODEL,
        "tokenizer_sha256": tok.sha256,
        "tokenizer": tok_info,
        # the `_tokenizer/<id>` cache this version was trained into (storage.gc keeps it while this version is kept)
        "tokenizer_cache": tok_info.get("version") if tok_info["source"] == "trained" else None,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
        "pad_id": tok.pad_id,
        "unk_id": tok.unk_id,
        "sequences": {s: f["sequences"] for s, f in facts.items()},
        "tail_dropped": {s: f["tail_dropped"] for s, f in facts.items()},
        "splits": facts,
        "val_threshold": val_threshold,
        "val_fraction": params.val_fraction,
    }
    return finish_stage(
        run,
        sorted(shards, key=lambda s: s.name),
        [r.rejected for r in results + anneal_results],
        stats,
        extras=extras,
        report=tokenize_report,
    )


# ---------------------------------------------------------------- views: report, decoded samples, llm.c export


def tokenize_report(manifest: Manifest, root: str) -> str:
    e = manifest.extras
    if "splits" not in e:
        return ""
    t = e.get("tokenizer", {})
    c = manifest.stats.counters
    total = sum(f["tokens_encoded"] for f in e["splits"].values()) or 1
    lines = [
        "## Token shards",
        "",
        f"Tokenizer `{e['tokenizer_path']}` ({t.get('source')}{', version ' + t['version'] if 'version' in t else ''})"
        f", sha256 `{e['tokenizer_sha256'][:16]}`, vocab {e['vocab_size']:,} ({e['dtype']}), <eos> id "
        f"{e['eos_id']}; seq_len {e['seq_len']}; {e['bytes_per_token']:.3f} bytes per token; byte-fallback "
        f"tokens {c.get('byte_fallback_tokens', 0) / total:.2%}.",
        "",
        "| split | documents | text bytes | tokens | bytes/token | sequences | tokens dropped at the tail |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, f in e["splits"].items():
        lines.append(
            f"| {s} | {f['docs']:,} | {f['bytes']:,} | {f['tokens_encoded']:,} | {f['bytes_per_token']:.3f} "
            f"| {f['sequences']:,} | {f['tail_dropped']:,} |"
        )
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
    tok = Tokenizer(paths.join(base, manifest.extras.get("tokenizer_path", TOKENIZER_MODEL)))
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


def write_llmc(directory: str, out: str) -> int:
    """Write the rows of a split directory, in order, as an llm.c `.bin` file; returns the token count."""
    shards = TokenShards(directory)
    n = shards.num_tokens
    if n >= 2**31:
        raise ValueError(f"{directory}: {n:,} tokens do not fit the llm.c header (int32 count); export fewer shards")
    magic, version = LLMC_HEADERS[shards.dtype]
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, version, n)
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        for chunk in shards.iter_chunks():
            f.write(np.ascontiguousarray(chunk).tobytes())
    os.replace(tmp, out)
    return n


def read_llmc(path: str) -> np.ndarray:
    """Tokens of an llm.c `.bin` file (memory-mapped), checking magic, version and length."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    dtypes = {mv: dt_ for dt_, mv in LLMC_HEADERS.items()}
    key = (int(header[0]), int(header[1]))
    if len(header) < 256 or key not in dtypes:
        raise ValueError(f"{path}: not an llm.c token file (magic/version {key})")
    n, dtype = int(header[2]), dtypes[key]
    if os.path.getsize(path) != 1024 + n * dtype.itemsize:
        raise ValueError(f"{path}: size {os.path.getsize(path)} does not match {n} tokens in the header")
    tokens: np.ndarray = np.memmap(path, dtype=dtype, mode="r", offset=1024, shape=(n,))
    return tokens


def export_llmc(manifest: Manifest, root: str, split: str, out: str) -> int:
    if split not in manifest.extras.get("sequences", {}):
        raise ValueError(
            f"tokenize@{manifest.version} has no split {split!r}; it has {sorted(manifest.extras.get('sequences', {}))}"
        )
    return write_llmc(paths.version_dir(root, manifest.stage, manifest.version) + f"/{split}", out)
