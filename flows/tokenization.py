"""tokenization_flow (`tokenize`): `mix` -> packed token shards, with a versioned sentencepiece tokenizer.

Phases (tasks in tasks/tokenization/): tokenizer (the `tokenizer` artifact for these training params and
mix version whose sample left out every possible val document, or sample + train + commit one, or copy
`tokenizer_path`) -> `tokenize_shard` over the mix shards (then its anneal shards) -> val check
(re-encode with a larger val threshold when val would hold no sequence; never beyond the part left out
of the tokenizer sample) -> `tokenize_tails` per split -> manifest. The tokenizer is copied into the
version (`tokenizer.model`), so a tokenize version is self-contained; the `tokenizer` artifact it came
from is in the manifest's `inputs` (lineage, not part of the version id: that already covers the mix
version and training params the tokenizer was made from).

Views of a version: `tasks.tokenization.report` (`report`, `sample_sequences`) and
`tasks.tokenization.llmc` (`export_tokens`: `pretrain export-tokens --format llm.c|nanogpt`).
"""

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
from prefect import flow

from flows.stage import Phases, StageOutput, StageRun, map_shards, run_stage, task_runner
from models.tokenizer import Tokenizer, file_sha256
from storage import paths
from storage.artifacts import ArtifactWriter, ensure_artifact
from storage.manifest import Manifest, ShardInfo, compute_version, is_complete, load_manifest
from storage.stats import StageStats
from storage.token_shards import TRAIN_DIR, VAL_DIR
from tasks.tokenization import (
    ANNEAL_SPLIT,
    DROP_EMPTY,
    STAGE,
    STAGE_VERSION,
    TOKENIZER_KIND,
    TOKENIZER_MODEL,
    TOKENIZER_VERSION,
    TOKENIZER_VOCAB,
    VAL_MIN_TOKENS,
    WORK_DIR,
    TokenizeJob,
    TokenizeParams,
    TokenizerSampleJob,
    TokenizeShardResult,
    held_out_sample_counts,
    split_facts,
    tokenize_shard,
    tokenize_tails,
    tokenizer_sample_shard,
    train_tokenizer_task,
    val_reserve,
    val_threshold_for,
)
from tasks.tokenization.report import report

log = logging.getLogger(__name__)
VAL_RESERVED = "val_reserved"  # the tokenizer artifact's drop reason: sampled, but a possible val document


def _tokenizer_key(
    params: TokenizeParams, mix_version: str, reserve: Optional[float] = None
) -> tuple[str, dict[str, Any]]:
    """(version id, params) of the tokenizer artifact for these training params and mix version."""
    tparams = {**params.training_params(), **({} if reserve is None else {"val_reserve": reserve})}
    return compute_version(TOKENIZER_KIND, TOKENIZER_VERSION, tparams, {"mix": mix_version}), tparams


def _reusable(root: str, key: str, params: TokenizeParams) -> tuple[bool, float]:
    """(whether the complete tokenizer `key` held out every document this run may put in val, the val
    reserve this run needs); (False, -1) when no complete tokenizer `key` exists."""
    if not is_complete(root, TOKENIZER_KIND, key):
        return False, -1.0
    held_out = float(load_manifest(root, TOKENIZER_KIND, key).extras["sample"]["val_reserve"])
    need = val_reserve(
        np.load(paths.local_copy(paths.join(paths.version_dir(root, TOKENIZER_KIND, key), VAL_MIN_TOKENS))),
        params.seq_len + 1,
        params.val_fraction,
    )
    return need <= held_out, need


def _resolve_tokenizer(root: str, params: TokenizeParams, mix_version: str) -> tuple[str, dict[str, Any], bool, float]:
    """(key, params, reusable, needed reserve or -1): the tokenizer keyed by the training params and mix
    version; when that one's left-out part is too small for this run (a tiny mix with a larger seq_len or
    val_fraction), the one keyed also by the needed reserve."""
    key, tparams = _tokenizer_key(params, mix_version)
    ok, need = _reusable(root, key, params)
    if need >= 0 and not ok:
        key, tparams = _tokenizer_key(params, mix_version, need)
        ok, _ = _reusable(root, key, params)
    return key, tparams, ok, need


def _tokenizer(run: StageRun, params: TokenizeParams, sources: list[str], n_main: int) -> str:
    """Key of the `tokenizer` artifact for these training params and mix version, trained if missing (its
    sample leaves out every document this run's val can hold, `val_reserve`); recorded in the lineage."""
    mix = run.input_manifest
    assert mix is not None
    for _ in range(3):
        key, tparams, ok, need = _resolve_tokenizer(run.root, params, mix.version)
        run.note_input(TOKENIZER_KIND, key)
        if ok:
            log.info("reused tokenizer %s (%s)", key, paths.version_dir(run.root, TOKENIZER_KIND, key))
            return key

        def build(writer: ArtifactWriter, tparams: dict[str, Any] = tparams, need: float = need) -> Manifest:
            return _train_tokenizer(run, writer, params, sources, n_main, tparams, need)

        _, reused = ensure_artifact(run.root, TOKENIZER_KIND, key, build, {"mix": mix.version})
        if not reused:
            return key
        # committed meanwhile by a concurrent identical run: decide again whether it holds out enough
    raise AssertionError(f"tokenizer for mix@{mix.version} changed under this run three times")


def _train_tokenizer(
    run: StageRun,
    writer: ArtifactWriter,
    params: TokenizeParams,
    sources: list[str],
    n_main: int,
    tparams: dict[str, Any],
    need: float,
) -> Manifest:
    """Sample the mix and train the tokenizer into `writer` (the `tokenizer@key` artifact); its manifest.
    sentencepiece needs local files: on an object-store root the sample and the model are made in a local work
    directory and the model files uploaded into the version (storage.paths.staged_dir)."""
    files = [TOKENIZER_MODEL, TOKENIZER_VOCAB, VAL_MIN_TOKENS]
    with paths.staged_dir(writer.path, "tokenizer", files) as staged:
        out = Path(staged)
        mix, key = run.input_manifest, writer.version
        assert mix is not None
        unique = int((mix.extras.get("chars") or {}).get("unique") or mix.stats.bytes_out or 1)
        threshold = min(1.0, params.sample_chars / unique)
        job = TokenizerSampleJob(threshold=threshold, seed=params.seed, main_shards=n_main)
        counts = map_shards(run, tokenizer_sample_shard, sources, job, out_dir=str(out))
        sample = {k: sum(getattr(c, k) for c in counts) for k in ("docs", "empty_docs", "lines", "chars", "bytes")}
        if sample["docs"] == 0:
            raise ValueError(
                f"tokenize: the tokenizer sample of mix@{mix.version} has no text ({sample['empty_docs']} sampled "
                f"documents are empty or whitespace-only); check the upstream stages' reports, or set "
                f"tokenize.tokenizer_path to an existing sentencepiece model"
            )
        hist = np.sum([c.val_min_tokens for c in counts[:n_main]], axis=0).astype(np.int64)
        reserve = val_reserve(hist, params.seq_len + 1, params.val_fraction)
        assert need < 0 or reserve == need, f"val reserve {reserve} != {need} computed from the cached histogram"
        held = held_out_sample_counts(str(out), reserve)
        if held["docs"] == 0:
            raise ValueError(
                f"tokenize: mix@{mix.version} is too small to hold out a val split of one sequence of seq_len + 1 = "
                f"{params.seq_len + 1} tokens from the tokenizer sample (every one of its {sample['docs']} sampled "
                f"documents could be needed for val); lower tokenize.seq_len, add data, or set "
                f"tokenize.tokenizer_path to an existing sentencepiece model"
            )
        facts = train_tokenizer_task(str(out), params, reserve)
        for f in [*out.glob("sample-*.txt"), *out.glob("sample-*.npz")]:
            f.unlink()
        np.save(out / VAL_MIN_TOKENS, hist)
        info = {
            "version": key,
            **facts,
            "training_params": params.training_params(),
            "inputs": {"mix": mix.version},
            "sample": {**held, "empty_docs": sample["empty_docs"], "key_threshold": threshold, "val_reserve": reserve},
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        vocab = facts["vocab_size"]
        assert isinstance(vocab, int)
        rows = {TOKENIZER_MODEL: vocab, TOKENIZER_VOCAB: vocab, VAL_MIN_TOKENS: len(hist)}  # pieces, buckets
        shards = [ShardInfo(name=n, rows=r, bytes=(out / n).stat().st_size) for n, r in rows.items()]
        stats = StageStats(
            docs_in=sample["docs"] + sample["empty_docs"], docs_out=held["docs"], bytes_out=held["bytes"]
        )
        stats.drop(DROP_EMPTY, sample["empty_docs"])
        stats.drop(VAL_RESERVED, held["val_excluded_docs"])
        log.info(
            "trained tokenizer %s on %d documents (%d chars; %d left out as possible val) -> %s",
            key,
            held["docs"],
            held["chars"],
            held["val_excluded_docs"],
            writer.path,
        )
        return writer.manifest(TOKENIZER_VERSION, tparams, shards, stats, extras=info)


def prepare_tokenizer(
    run: StageRun, params: TokenizeParams, sources: list[str], n_main: int
) -> tuple[Tokenizer, dict[str, Any]]:
    """Put `tokenizer.model` into the version directory; returns it loaded plus its provenance."""
    fs, out = paths.filesystem(run.out_dir)
    if params.tokenizer_path:
        fs.put_file(params.tokenizer_path, paths.join(out, TOKENIZER_MODEL))
        info: dict[str, Any] = {"source": "file", "given_path": params.tokenizer_path}
    else:
        key = _tokenizer(run, params, sources, n_main)
        cached = paths.version_dir(run.root, TOKENIZER_KIND, key)
        for name in (TOKENIZER_MODEL, TOKENIZER_VOCAB):
            fs.copy(paths.join(paths.filesystem(cached)[1], name), paths.join(out, name))
        info = {"source": "trained", "cache_dir": cached, **load_manifest(run.root, TOKENIZER_KIND, key).extras}
    tok = Tokenizer(paths.local_copy(paths.join(run.out_dir, TOKENIZER_MODEL)))
    if tok.eos_id < 0:
        raise ValueError(
            f"tokenize.tokenizer_path={params.tokenizer_path}: the model has no end-of-sequence piece "
            f"(eos_id=-1); use a model with <eos> or leave tokenizer_path empty to train one"
        )
    return tok, info


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
            _remove(run.out_dir, d)
        results = map_shards(
            run, tokenize_shard, sources, TokenizeJob(params=params, tokenizer_file=tok_file, val_threshold=threshold)
        )
    return results, threshold


def _remove(out_dir: str, name: str) -> None:
    """Remove the directory `name` of the version at `out_dir` (a local path or a URL), if there."""
    fs, base = paths.filesystem(paths.join(out_dir, name))
    if fs.exists(base):
        fs.rm(base, recursive=True)


def _phases(params: TokenizeParams) -> Phases:
    def phases(run: StageRun) -> StageOutput:
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
        tok_file = paths.join(run.out_dir, TOKENIZER_MODEL)  # shard tasks load it via storage.paths.local_copy
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
            facts[split] = split_facts(stats, split, seqs, dropped, row_len)
        if facts[TRAIN_DIR]["sequences"] == 0:
            raise ValueError(
                f"tokenize: the train split has {facts[TRAIN_DIR]['tokens_encoded']:,} tokens, less than "
                f"one sequence of seq_len + 1 = {row_len}; lower tokenize.seq_len or add data"
            )
        _remove(run.out_dir, WORK_DIR)
        tokens = sum(f["tokens_encoded"] for f in facts.values())
        extras = {
            "vocab_size": tok.vocab_size,
            "seq_len": params.seq_len,
            "dtype": "uint16" if tok.vocab_size <= 65_536 else "uint32",
            "bytes_per_token": sum(f["bytes"] for f in facts.values()) / tokens,
            "tokenizer_path": TOKENIZER_MODEL,
            "tokenizer_sha256": tok.sha256,
            "tokenizer": tok_info,
            # the `tokenizer` artifact this version's model comes from (also in the manifest's inputs)
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
        return StageOutput(
            shards=sorted(shards, key=lambda s: s.name),
            stats=stats,
            rejected=[r.rejected for r in results + anneal_results],
            extras=extras,
        )

    return phases


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
    return run_stage(
        STAGE, STAGE_VERSION, params, _phases(params), data_root, input_version, force, extra, report=report
    )
