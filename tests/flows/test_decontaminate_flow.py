"""decontaminate_flow under a Prefect test server: index artifact reuse, drop/cut runs, bad input, demo crawl."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
from prefect.client.orchestration import get_client

from flows.decontaminate import decontaminate_flow
from flows.pipeline import Stage
from flows.stage import task_runner
from storage import paths
from storage.documents import Document, extra_fields, read_documents, read_schema
from storage.manifest import list_versions, load_manifest
from tasks.decontaminate import CONTAMINATED, INDEX_KIND, DecontaminateParams, index_version
from tasks.decontaminate import benchmarks as bm
from tasks.decontaminate.report import benchmark_rows, report

Q = (
    "Question: Which gas do green plants absorb from the air to make their own food during photosynthesis? "
    "Choose the best answer from the four options given below."
)
EXTRA = [pa.field("quality_score", pa.float64())]


@pytest.fixture(autouse=True)
def allowed_roots(tmp_path, monkeypatch):
    """These tests keep benchmark files in tmp_path: make it an allowed root (storage.paths.allowed_roots)."""
    monkeypatch.setenv(paths.ENV_ALLOWED_ROOTS, str(tmp_path))


def filler(prefix, n):
    return " ".join(f"{prefix}{i}" for i in range(n))


def upstream(root, make_version):
    docs = [
        Document(id=f"s{s}-{i}", url=f"http://e/{s}/{i}", text=filler(f"c{s}x{i}y", 120), meta={"quality_score": 0.5})
        for s in range(2)
        for i in range(4)
    ]
    docs[1].text = f"{filler('pre', 100)} {Q.upper()} {filler('post', 100)}"
    docs[6].text = f"Quoted: {Q}"
    return make_version(root, "dedup", [docs[:4], docs[4:]], extra=EXTRA, version="dedup1")


def toy(tmp_path, **kw):
    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps({"id": "q1", "query": Q}) + "\n")
    spec = bm.BenchmarkFile(name="toy", path=str(path), fields=["query"], id_field="id")
    return DecontaminateParams(benchmarks=[spec], **kw)


def _artifacts(key):
    """Artifacts with this key, over plain HTTP (this Prefect client sends nulls the server refuses)."""
    with get_client(sync_client=True) as client:
        r = client._client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "limit": 50})
    r.raise_for_status()
    return r.json()


def _rows(artifact):
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def run_flow(params, root, **kw):
    return decontaminate_flow.with_options(task_runner=task_runner(1))(params=params, data_root=str(root), **kw)


def test_drop_then_cut_reuse_the_index(prefect_backend, tmp_path, make_version):
    root = tmp_path / "data"
    upstream(root, make_version)
    params = toy(tmp_path)
    v = run_flow(params, root)
    m = load_manifest(str(root), Stage.DECONTAMINATE, v)
    assert m.inputs == {"dedup": "dedup1", "decontaminate_index": index_version(params)}
    assert (m.stats.docs_in, m.stats.docs_out, m.stats.dropped) == (8, 6, {CONTAMINATED: 2})
    rejected = [d for s in m.rejected for d in read_documents(f"{root}/decontaminate/{v}/{s.name}")]
    assert sorted(d.id for d in rejected) == ["s0-1", "s1-2"]
    assert all(json.loads(d.meta["reason_detail"])["item"] == "q1" for d in rejected)
    kept = [d for s in m.shards for d in read_documents(f"{root}/decontaminate/{v}/{s.name}")]
    assert len(kept) == 6 and all(d.meta["quality_score"] == 0.5 for d in kept)
    index = m.extras["index"]
    assert index["reused"] is False and [b["name"] for b in index["benchmarks"]] == ["humaneval", "toy"]
    assert (root / "decontaminate_index" / index["version"] / "manifest.json").is_file()
    rows = {r["benchmark"]: r for r in benchmark_rows(m)}
    assert rows["toy"] == {
        "benchmark": "toy",
        "items": 1,
        "items_indexed": 1,
        "items_too_short": 0,
        "items_whole": 0,
        "ngrams": len(Q.split()) - 12,
        "items_matched": 1,
        "docs_matched": 2,
        "docs_removed": 2,
    }
    assert rows["humaneval"]["docs_matched"] == 0 and rows["humaneval"]["items_indexed"] == 164
    text = report(m, str(root))
    assert "| toy | 1 | 1 | 0 | 0 |" in text and "| toy | q1 | 2 | Question: Which gas" in text
    arts = _artifacts("decontaminate-benchmarks")
    assert any({"benchmark": "toy", "docs_removed": 2}.items() <= row.items() for a in arts for row in _rows(a))

    assert run_flow(params, root) == v  # same inputs: reused, not recomputed
    assert load_manifest(str(root), Stage.DECONTAMINATE).created_at == m.created_at

    cut = params.model_copy(update={"action": "cut", "min_piece_chars": 50})
    v2 = run_flow(cut, root)
    m2 = load_manifest(str(root), Stage.DECONTAMINATE, v2)
    assert v2 != v and m2.extras["index"]["reused"] is True and m2.extras["index"]["version"] == index["version"]
    assert (m2.stats.docs_out, m2.stats.dropped) == (7, {CONTAMINATED: 1})  # "Quoted: Q" has nothing left
    kept = {d.id: d for s in m2.shards for d in read_documents(f"{root}/decontaminate/{v2}/{s.name}")}
    assert "QUESTION" not in kept["s0-1"].text and kept["s0-1"].text.startswith("pre0 pre1")
    assert json.loads(kept["s0-1"].meta["decontaminate_cuts"])[0]["items"] == ["toy:q1"]
    assert kept["s0-0"].meta["decontaminate_cuts"] is None and "Cut: 1 documents" in report(m2, str(root))
    assert len(list_versions(str(root), Stage.DECONTAMINATE)) == 2


def test_the_index_is_a_versioned_artifact_named_in_the_lineage(prefect_backend, tmp_path, make_version):
    """The index is `decontaminate_index/<id>/` with its own manifest (written last); the stage version's
    inputs name it, and a second stage version with another action reuses it, untouched."""
    root = tmp_path / "data"
    upstream(root, make_version)
    params = toy(tmp_path, humaneval=False)
    m = load_manifest(str(root), Stage.DECONTAMINATE, run_flow(params, root))
    ident = m.inputs[INDEX_KIND]
    assert ident == index_version(params) == m.extras["index"]["version"]
    im = load_manifest(str(root), INDEX_KIND, ident)
    assert (im.stage, im.version, im.stage_version) == (INDEX_KIND, ident, 2)
    assert set(im.inputs) == {"files"} and im.params["n"] == params.n and im.params["benchmarks"][0]["name"] == "toy"
    assert sorted(s.name for s in im.shards) == sorted(
        ["hashes.npy", "length.npy", "offsets.npy", "owner_bench.npy", "owner_item.npy", "items.json"]
    )
    assert all((root / INDEX_KIND / ident / s.name).is_file() for s in im.shards)
    assert im.extras["ngrams"] == m.extras["index"]["ngrams"] == len(Q.split()) - 12
    assert m.extras["index"]["dir"] == f"{root}/{INDEX_KIND}/{ident}"
    assert not (root / "decontaminate" / m.version / "_work").exists()  # the shards got the index from the job

    m2 = load_manifest(str(root), Stage.DECONTAMINATE, run_flow(params.model_copy(update={"action": "cut"}), root))
    assert m2.version != m.version and m2.inputs[INDEX_KIND] == ident and m2.extras["index"]["reused"] is True
    assert load_manifest(str(root), INDEX_KIND, ident).created_at == im.created_at
    assert [v.version for v in list_versions(str(root), INDEX_KIND)] == [ident]


def test_cli_inspect_prints_the_benchmark_report(prefect_backend, tmp_path, make_version, capsys):
    from flows.cli import main  # its `inspect` takes the report from flows.pipeline.REPORTS

    root = tmp_path / "data"
    upstream(root, make_version)
    run_flow(toy(tmp_path), root)
    capsys.readouterr()
    assert main(["inspect", "decontaminate", "--data-root", str(root), "--rejected"]) == 0
    out = capsys.readouterr().out
    assert "| toy | q1 | 2 |" in out and "reason=contaminated" in out


def test_a_system_file_is_refused_before_anything_is_indexed(prefect_backend, tmp_path, make_version):
    """Issue 11: `path: /etc/passwd` copied its lines into the index and dropped documents; now the run fails
    at its start naming the key, the allowed roots and the variable that extends them."""
    root = tmp_path / "data"
    upstream(root, make_version)
    spec = bm.BenchmarkFile(name="passwd", path="/etc/passwd", format="csv", fields=["root:x:0:0:root:/root:/bin/bash"])
    with pytest.raises(
        ValueError,
        match=r"decontaminate.benchmarks\['passwd'\].path: /etc/passwd is outside the "
        r"allowed directories .*PRETRAIN_ALLOWED_ROOTS",
    ) as err:
        run_flow(DecontaminateParams(benchmarks=[spec]), root)
    assert "/bin/bash" not in str(err.value).split("PRETRAIN_ALLOWED_ROOTS")[-1]
    assert not list(root.rglob("items.json")) and not list(root.rglob("*.npy"))
    assert list_versions(str(root), Stage.DECONTAMINATE) == []


@pytest.mark.parametrize("case", ["missing_field", "missing_file", "no_usable_items"])
def test_bad_benchmark_fails_before_any_shard(prefect_backend, tmp_path, make_version, case):
    root = tmp_path / "data"
    upstream(root, make_version)
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps({"question": "too short" if case == "no_usable_items" else Q}) + "\n")
    spec = bm.BenchmarkFile(
        name="arc",
        path=str(tmp_path / "gone.jsonl") if case == "missing_file" else str(path),
        fields=["query" if case == "missing_field" else "question"],
    )
    message = {
        "missing_field": r"benchmark 'arc' \(.*b.jsonl\) row 0: no field 'query'",
        "missing_file": r"benchmark 'arc' \(.*gone.jsonl\): file not found",
        "no_usable_items": r"benchmark 'arc' .* would decontaminate nothing",
    }[case]
    with pytest.raises(ValueError, match=message):
        run_flow(DecontaminateParams(benchmarks=[spec]), root)
    assert list_versions(str(root), Stage.DECONTAMINATE) == [] and list_versions(str(root), INDEX_KIND) == []
    for kind in ("decontaminate", INDEX_KIND):  # nothing left behind: no version directory, no index file
        kind_dir = root / kind
        assert not [p for p in kind_dir.iterdir() if p.is_dir()] if kind_dir.exists() else True
    assert not list(root.rglob("*.npy")) and not list((root / "decontaminate").rglob("*.parquet"))


@pytest.mark.slow
def test_demo_crawl_humaneval_pages_are_removed_and_nothing_else(prefect_backend, tmp_path, make_version):
    """Ingest the generated demo crawl, decontaminate it on a process pool: exactly its HumanEval pages go."""
    from demo.crawl import generate_demo_crawl
    from flows.ingest import ingest_flow
    from tasks.ingest import IngestParams

    root = tmp_path / "data"
    crawl = generate_demo_crawl(str(tmp_path / "crawl"), pages=400)
    truth = [json.loads(line) for line in Path(crawl.ground_truth_path).read_text().split("\n") if line]
    iv = ingest_flow.with_options(task_runner=task_runner(1))(
        params=IngestParams(inputs=[crawl.warc_path]), data_root=str(root)
    )
    im = load_manifest(str(root), Stage.INGEST, iv)
    docs = [d for s in im.shards for d in read_documents(f"{root}/ingest/{iv}/{s.name}")]
    extra = extra_fields(read_schema(f"{root}/ingest/{iv}/{im.shards[0].name}"))
    make_version(root, "dedup", [docs[::2], docs[1::2]], extra=extra, version="demo")
    v = decontaminate_flow.with_options(task_runner=task_runner(2))(data_root=str(root))
    m = load_manifest(str(root), Stage.DECONTAMINATE, v)
    rejected = [d for s in m.rejected for d in read_documents(f"{root}/decontaminate/{v}/{s.name}")]
    benchmark = {t["url"]: t["benchmark"]["item_id"] for t in truth if t["benchmark"]}
    assert len(benchmark) == 12 and benchmark.keys() <= {d.url for d in docs}
    assert {d.url: json.loads(d.meta["reason_detail"])["item"] for d in rejected} == benchmark
    assert m.stats.docs_out == len(docs) - 12
