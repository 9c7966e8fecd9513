"""mix and tokenize flows under a Prefect test server: manifests, exact packing across shards,
determinism, the val guarantee, the tokenizer artifact and its lineage, bad input, llm.c export and
`pretrain inspect`."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.cli import main as cli
from flows.mix import mix_flow
from flows.pipeline import Stage
from flows.stage import task_runner
from flows.tokenization import tokenization_flow
from models.tokenizer import Tokenizer, train_tokenizer
from storage.documents import Document, read_documents, read_schema
from storage.manifest import compute_version, is_complete, list_versions, load_manifest
from storage.token_shards import TokenShards
from tasks.mix import MixParams
from tasks.mix.report import report as mix_report
from tasks.text import sample_key
from tasks.tokenization import STAGE_VERSION, TOKENIZER_KIND, TokenizeJob, TokenizeParams, route
from tasks.tokenization.llmc import read_llmc
from tasks.tokenization.report import report as tokenize_report

REPEAT = pa.field("repeat", pa.int32())
QUALITY = pa.field("quality_score", pa.float64())
WORDS = (
    "river stone light garden market paper window silver number engine forest letter music winter "
    "bridge school doctor island summer mountain table yellow orange theory signal random"
).split()


def _docs(n, seed=0, sources=("web", "news", "code"), quality=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = [WORDS[int(j)] for j in rng.integers(0, len(WORDS), int(rng.integers(5, 120)))]
        text = " ".join(words).capitalize() + f". Item {int(rng.integers(0, 999))}.\n" + " ".join(words[:7])
        meta = {"quality_score": float(rng.random())} if quality else {}
        out.append(
            Document(
                id=f"doc-{seed}-{i}",
                text=text,
                source=sources[i % len(sources)],
                url=f"http://example.org/{i}",
                meta=meta,
            )
        )
    return out


def _mix(root, params=None):
    return mix_flow.with_options(task_runner=task_runner(1))(
        params=params or MixParams(weights={"web": 0.5, "news": 0.3, "code": 0.2}), data_root=str(root)
    )


def _tokenize(root, workers=1, **kw):
    params = TokenizeParams(**{"vocab_size": 400, "seq_len": 31, "val_fraction": 0.1, **kw})
    return tokenization_flow.with_options(task_runner=task_runner(workers))(params=params, data_root=str(root))


def _mix_version(make_version, root, shards, version="mix1"):
    for shard in shards:
        for d in shard:
            d.meta.setdefault("repeat", 0)
    return make_version(root, "mix", shards, extra=[REPEAT], version=version)


def test_mix_flow_writes_the_plan_and_report_and_is_reused(prefect_backend, data_root, make_version):
    make_version(data_root, "decontaminate", [_docs(150, 1), _docs(150, 2)])
    v = _mix(data_root)
    m = load_manifest(str(data_root), Stage.MIX)
    assert m.version == v and m.stats.docs_in == 300 == m.stats.docs_out + sum(m.stats.dropped.values())
    assert sum(s.rows for s in m.shards) == m.stats.counters["copies"]
    assert read_schema(f"{data_root}/mix/{v}/data/part-00000.parquet").field("repeat").type == pa.int32()
    report = mix_report(m, str(data_root))
    assert "| source | weight | docs_available |" in report and "| code |" in report
    shares = {
        r.split("|")[1].strip(): float(r.split("|")[10])
        for r in report.splitlines()
        if r.startswith("| ") and r.split("|")[1].strip() in ("web", "news", "code")
    }
    assert shares == pytest.approx({"web": 0.5, "news": 0.3, "code": 0.2}, abs=0.03)
    assert _mix(data_root) == v and load_manifest(str(data_root), Stage.MIX).created_at == m.created_at


def test_mix_shortfall_fails_the_flow_and_leaves_no_version(prefect_backend, data_root, make_version):
    make_version(data_root, "decontaminate", [_docs(60, 1)])
    with pytest.raises(ValueError, match="source 'code' is short by"):
        _mix(data_root, MixParams(weights={"web": 0.5, "code": 0.5}, budget_chars=10**7, max_repeats=2))
    assert list_versions(str(data_root), Stage.MIX) == []


def test_mix_report_shows_absent_and_capped_sources_and_keeps_every_document(prefect_backend, data_root, make_version):
    docs = _docs(120, 5, sources=("web", "web", "web", "news", "news", "code"))
    docs += [Document(id="scarce-0", text="One short forum post about a river.", source="forum")]
    make_version(data_root, "decontaminate", [docs])
    _mix(data_root, MixParams(weights={"web": 0.4, "news": 0.2, "code": 0.2, "forum": 0.1, "wikipedia": 0.1}))
    m = load_manifest(str(data_root), Stage.MIX)
    assert m.stats.docs_out == m.stats.docs_in == len(docs) and not m.stats.dropped
    plan = m.extras["plan"]
    assert plan["redistributed"] == {"wikipedia": pytest.approx(0.1)} and plan["capped"] == ["forum"]
    assert plan["sources"]["web"]["share_target"] == pytest.approx(0.4 / 0.9)
    report = mix_report(m, str(data_root))
    assert "kept 100.0% of the 121 input documents" in report
    assert "Absent sources (weighted, no documents in the input): wikipedia (10.0%)" in report
    assert "Capped at max_repeats 4.0 (would need more epochs to reach their target characters): forum" in report
    rows = {
        r.split("|")[1].strip(): [c.strip() for c in r.split("|")[1:-1]]
        for r in report.splitlines()
        if r.startswith("| ") and not r.startswith("| source")
    }
    assert rows["wikipedia"][-1] == "absent" and rows["forum"][-1] == "capped" and rows["web"][-1] == "ok"
    assert float(rows["forum"][9]) < float(rows["forum"][5])  # achieved share below the target share


def _expected_streams(tok, shards, job):
    """Per split, per shard: the token stream (documents + <eos>) and document starts, in order."""
    out = {}
    for shard in shards:
        per = {}
        for d in shard:
            split, _ = route(d, job) if d.text.strip() else (None, -1)
            if split is not None:
                tokens, starts = per.setdefault(split, ([], []))
                starts.append(len(tokens))
                tokens += tok.encode([d.text])[0] + [tok.eos_id]
        for split, stream in per.items():
            out.setdefault(split, []).append(stream)
    return out


def test_exact_packing_across_shards_with_tails(prefect_backend, data_root, make_version):
    shards = [_docs(90, 3), _docs(70, 4)]
    shards[1] += [Document(id=f"{d.id}#r1", text=d.text, meta={"repeat": 1}) for d in shards[1][:30]]
    _mix_version(make_version, data_root, shards)
    v = _tokenize(data_root, shuffle=False)
    m = load_manifest(str(data_root), Stage.TOKENIZE, v)
    base = f"{data_root}/tokenize/{v}"
    tok = Tokenizer(f"{base}/{m.extras['tokenizer_path']}")
    job = TokenizeJob(params=TokenizeParams(), tokenizer_file="", val_threshold=m.extras["val_threshold"])
    row = 32
    for split, streams in _expected_streams(tok, shards, job).items():
        # shard i keeps its full rows; the leftovers of all shards are packed into the last file
        full, tails, tail_starts, starts = [], [], [], []
        for tokens, st in streams:
            k = len(tokens) // row * row
            starts += [len(full) + s for s in st if s < k]
            tail_starts += [len(tails)] + [len(tails) + s - k for s in st if s >= k]
            full, tails = full + tokens[:k], tails + tokens[k:]
        kept = len(tails) // row * row
        shards_ = TokenShards(f"{base}/{split}")
        got = shards_.get(range(len(shards_))).reshape(-1).tolist()
        assert got == full + tails[:kept]
        assert m.extras["tail_dropped"][split] == len(tails) - kept
        assert m.extras["sequences"][split] == len(shards_) == (len(full) + kept) // row
        offsets = [i * row + int(o) for i, offs in enumerate(shards_.offsets(range(len(shards_)))) for o in offs]
        assert offsets == starts + sorted({len(full) + s for s in tail_starts if s < kept})
    assert m.stats.dropped == {"val_repeat_copy": m.stats.docs_in - m.stats.docs_out}
    e = m.extras
    assert e["vocab_size"] == 400 and e["dtype"] == "uint16" and e["seq_len"] == 31 and e["eos_id"] == 2
    assert e["tokenizer_sha256"] == tok.sha256 and e["bytes_per_token"] > 1
    names = [s.name for s in m.shards]
    assert names == sorted(names) and "train/tokens-00000.arrow" in names and "train/tokens-00001.arrow" in names
    assert set(names) <= {f"{split}/tokens-{i:05d}.arrow" for split in ("train", "val") for i in range(3)}
    assert not os.path.exists(f"{base}/_work")
    assert "| train |" in tokenize_report(m, str(data_root))


def test_same_input_and_seed_give_identical_shards_and_shuffle_permutes_rows(prefect_backend, tmp_path, make_version):
    versions = []
    for name, shuffle, workers in (("a", True, 1), ("b", True, 1), ("b", False, 1)):
        root = tmp_path / name
        if not (root / "mix").exists():
            _mix_version(make_version, root, [_docs(80, 5), _docs(80, 6)])
        versions.append((root, _tokenize(root, workers=workers, shuffle=shuffle)))
    files = [
        sorted(p.relative_to(r / "tokenize" / v) for p in (r / "tokenize" / v).rglob("*.arrow")) for r, v in versions
    ]
    assert files[0] == files[1] and files[0]
    for f in files[0]:
        assert (versions[0][0] / "tokenize" / versions[0][1] / f).read_bytes() == (
            versions[1][0] / "tokenize" / versions[1][1] / f
        ).read_bytes()
    for split in ("train", "val"):
        rows = [TokenShards(str(r / "tokenize" / v / split)) for r, v in versions[1:]]
        shuffled, plain = (s.get(range(len(s))) for s in rows)
        assert shuffled.tolist() != plain.tolist() or len(plain) < 3
        assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, plain.tolist()))


@pytest.mark.slow
def test_two_worker_processes_write_the_same_bytes_as_one_thread(prefect_backend, tmp_path, make_version):
    """The process pool (pickled jobs and results, per-process tokenizer) changes nothing in the output."""
    out = []
    for name, workers in (("one", 1), ("two", 2)):
        _mix_version(make_version, tmp_path / name, [_docs(40, 5), _docs(40, 6), _docs(40, 7)])
        v = _tokenize(tmp_path / name, workers=workers)
        base = tmp_path / name / "tokenize" / v
        out.append({p.relative_to(base): p.read_bytes() for p in base.rglob("*.arrow")})
    assert out[0] == out[1] and len(out[0]) >= 4


def test_val_gets_a_sequence_on_tiny_input_and_the_tokenizer_is_cached(prefect_backend, data_root, make_version):
    _mix_version(make_version, data_root, [_docs(40, 7)])
    v1 = _tokenize(data_root, val_fraction=0.005, seq_len=255)  # 0.5% of 40 documents cannot fill 256 tokens
    m1 = load_manifest(str(data_root), Stage.TOKENIZE, v1)
    assert m1.extras["sequences"]["val"] >= 1 and m1.extras["val_threshold"] > 0.005
    assert "val key threshold was raised" in tokenize_report(m1, str(data_root))
    cache = data_root / TOKENIZER_KIND
    info = next(cache.glob("*/manifest.json"))
    stamp = info.stat().st_mtime_ns
    v2 = _tokenize(data_root, val_fraction=0.005, seq_len=127)  # packing change only: same tokenizer, not retrained
    m2 = load_manifest(str(data_root), Stage.TOKENIZE, v2)
    assert v2 != v1 and m2.extras["tokenizer_sha256"] == m1.extras["tokenizer_sha256"]
    assert _tokenizers(data_root) == [info.parent.name] and info.stat().st_mtime_ns == stamp
    # the sample left out every document val can hold (val threshold of either run <= the reserve)
    sample = json.loads(info.read_text())["extras"]["sample"]
    ids = [d.id for d in _docs(40, 7)]
    assert max(m1.extras["val_threshold"], m2.extras["val_threshold"]) <= sample["val_reserve"] < 1
    assert sample["docs"] == sum(sample_key("val", 0, i) >= sample["val_reserve"] for i in ids) < 40
    assert sample["docs"] + sample["val_excluded_docs"] == 40
    # a longer seq_len needs more val than the cached tokenizer left out: another tokenizer is trained
    v4 = _tokenize(data_root, val_fraction=0.005, seq_len=1023)
    m4 = load_manifest(str(data_root), Stage.TOKENIZE, v4)
    reserve4 = m4.extras["tokenizer"]["sample"]["val_reserve"]
    assert sample["val_reserve"] < reserve4 < 1 and m4.extras["val_threshold"] <= reserve4
    assert len(_tokenizers(data_root)) == 2 and m4.extras["tokenizer_sha256"] != m1.extras["tokenizer_sha256"]
    # a given model file is used as is
    v3 = _tokenize(
        data_root, val_fraction=0.005, seq_len=255, tokenizer_path=str(data_root / "tokenize" / v1 / "tokenizer.model")
    )
    m3 = load_manifest(str(data_root), Stage.TOKENIZE, v3)
    assert m3.extras["tokenizer"]["source"] == "file" and m3.extras["tokenizer_sha256"] == m1.extras["tokenizer_sha256"]
    assert (data_root / "tokenize" / v3 / "train" / "tokens-00000.arrow").read_bytes() == (
        data_root / "tokenize" / v1 / "train" / "tokens-00000.arrow"
    ).read_bytes()


def _tokenizers(root, complete=True):
    """Version directories of the `tokenizer` artifact (complete ones: with a manifest)."""
    d = root / TOKENIZER_KIND
    return sorted(p.name for p in d.glob("*") if p.is_dir() and (not complete or (p / "manifest.json").is_file()))


def test_tokenize_manifest_names_its_tokenizer_artifact(prefect_backend, data_root, make_version):
    """The trained tokenizer is a versioned artifact (`tokenizer/<key>/`, manifest last) and the tokenize
    manifest's inputs name it, for lineage and gc; the tokenize version id does not depend on it."""
    _mix_version(make_version, data_root, [_docs(60, 11)])
    v = _tokenize(data_root)
    m = load_manifest(str(data_root), Stage.TOKENIZE, v)
    key = m.inputs[TOKENIZER_KIND]
    assert m.inputs == {"mix": "mix1", TOKENIZER_KIND: key} and m.extras["tokenizer_cache"] == key
    assert is_complete(str(data_root), TOKENIZER_KIND, key) and _tokenizers(data_root) == [key]
    t = load_manifest(str(data_root), TOKENIZER_KIND, key)
    assert t.stage == TOKENIZER_KIND and t.version == key and t.inputs == {"mix": "mix1"}
    assert {s.name for s in t.shards} == {"tokenizer.model", "tokenizer.vocab", "val_min_tokens.npy"}
    assert all((data_root / TOKENIZER_KIND / key / s.name).is_file() for s in t.shards)
    assert t.extras["sha256"] == m.extras["tokenizer_sha256"] and t.extras["version"] == key
    assert t.params == TokenizeParams(vocab_size=400).training_params()
    assert not list((data_root / TOKENIZER_KIND / key).glob("sample-*"))
    assert not (data_root / TOKENIZER_KIND / key / "tokenizer.json").exists()
    # the version id is the same as a version computed without the tokenizer in its inputs
    params = TokenizeParams(vocab_size=400, seq_len=31, val_fraction=0.1)
    assert v == compute_version(Stage.TOKENIZE, STAGE_VERSION, params.version_params(), {"mix": "mix1"})


def test_bad_input_gives_errors_naming_the_param(prefect_backend, tmp_path, make_version):
    cases = {
        "empty": [[]],
        "blank": [[Document(id=f"b{i}", text=" \n\t " * i) for i in range(5)]],
        "small": [_docs(30, 8)],
    }
    errors = {
        "empty": "has no documents, so there is nothing to tokenize",
        "blank": "tokenizer sample of mix@mix1 has no text",
        "small": r"tokenize.vocab_size=20000 is larger than the training sample supports",
    }
    for name, shards in cases.items():
        root = tmp_path / name
        _mix_version(make_version, root, shards)
        with pytest.raises(ValueError, match=errors[name]):
            _tokenize(root, vocab_size=20000 if name == "small" else 400)
        assert list_versions(str(root), Stage.TOKENIZE) == []
        assert _tokenizers(root, complete=False) == []  # a failed training leaves no tokenizer directory
    with pytest.raises(ValueError, match="tokenize.tokenizer_path=.*does not exist"):
        _tokenize(tmp_path / "small", tokenizer_path=str(tmp_path / "nope.model"))
    model = train_tokenizer([d.text for d in _docs(100, 9)], tmp_path / "given.model", vocab_size=400)
    with pytest.raises(ValueError, match=r"all 5 documents of mix@mix1 are empty or whitespace-only"):
        _tokenize(tmp_path / "blank", tokenizer_path=str(model))


def test_export_llmc_and_inspect_show_decoded_sequences(prefect_backend, data_root, make_version, capsys):
    _mix_version(make_version, data_root, [_docs(60, 9)])
    v = _tokenize(data_root)
    out = data_root / "train.bin"
    assert (
        cli(
            ["export-tokens", "--format", "llm.c", "--split", "train", "--out", str(out), "--data-root", str(data_root)]
        )
        == 0
    )
    header = np.fromfile(out, dtype=np.int32, count=3)
    shards = TokenShards(str(data_root / "tokenize" / v / "train"))
    assert header.tolist() == [20240520, 1, shards.num_tokens]
    assert read_llmc(str(out)).tolist() == shards.get(range(len(shards))).reshape(-1).tolist()
    assert cli(["export-tokens", "--split", "dev", "--out", str(out), "--data-root", str(data_root)]) == 1
    capsys.readouterr()
    assert cli(["inspect", "tokenize", "--sample", "2", "--data-root", str(data_root)]) == 0
    text = capsys.readouterr().out
    assert "sample train sequences (2 of" in text and text.count(": 32 tokens, documents start at") == 2
    assert "<eos>" in text
    assert "| val |" in text


def test_anneal_split_is_tokenized_separately(prefect_backend, data_root, make_version):
    make_version(data_root, "decontaminate", [_docs(200, 10, quality=True)], extra=[QUALITY])
    _mix(data_root, MixParams(weights={"web": 0.5, "news": 0.3, "code": 0.2}, anneal_fraction=0.3))
    mix = load_manifest(str(data_root), Stage.MIX)
    assert [s["name"] for s in mix.extras["anneal_shards"]] == ["anneal/part-00000.parquet"]
    v = _tokenize(data_root)
    m = load_manifest(str(data_root), Stage.TOKENIZE, v)
    assert set(m.extras["sequences"]) == {"train", "val", "anneal"} and m.extras["sequences"]["anneal"] > 0
    anneal_docs = sum(1 for _ in read_documents(f"{data_root}/mix/{mix.version}/anneal/part-00000.parquet"))
    assert m.extras["splits"]["anneal"]["docs"] == anneal_docs
    assert m.stats.docs_in == sum(s.rows for s in mix.shards) + anneal_docs


@pytest.mark.slow
def test_demo_crawl_through_mix_and_tokenize(prefect_backend, data_root, make_version):
    """The real demo crawl, ingested, mixed with the default weights and tokenized with the demo config."""
    from flows.ingest import ingest_flow
    from flows.pipeline import PipelineConfig

    ing = ingest_flow.with_options(task_runner=task_runner(1))(data_root=str(data_root), demo_pages=400)
    m = load_manifest(str(data_root), Stage.INGEST, ing)
    base = Path(data_root) / "ingest" / ing
    extra = [
        f
        for f in read_schema(str(base / m.shards[0].name))
        if f.name not in ("id", "url", "text", "source", "crawl_date")
    ]
    make_version(data_root, "decontaminate", [list(read_documents(str(base / s.name))) for s in m.shards], extra=extra)
    mix_params = PipelineConfig.model_fields["mix"].default_factory()
    tokenize_params = PipelineConfig.model_fields["tokenize"].default_factory()
    mix_flow.with_options(task_runner=task_runner(1))(params=mix_params, data_root=str(data_root))
    mix = load_manifest(str(data_root), Stage.MIX)
    report = mix_report(mix, str(data_root))
    for source, weight in mix_params.weights.items():
        row = next(r for r in report.splitlines() if r.startswith(f"| {source} |"))
        assert float(row.split("|")[10]) == pytest.approx(weight, abs=0.02), row
    v = tokenization_flow.with_options(task_runner=task_runner(1))(params=tokenize_params, data_root=str(data_root))
    t = load_manifest(str(data_root), Stage.TOKENIZE, v)
    assert t.extras["vocab_size"] == 4096 and t.extras["seq_len"] == 256 and t.extras["sequences"]["val"] >= 1
    assert 2.5 < t.extras["bytes_per_token"] < 6
    tok = Tokenizer(str(data_root / "tokenize" / v / "tokenizer.model"))
    first = next(read_documents(f"{data_root}/mix/{mix.version}/{mix.shards[0].name}"))
    assert tok.decode(tok.encode([first.text])[0]) == first.text
