"""Location-independent lineage: a copied or moved data root keeps every version id and reuses it.

The pipeline runs on the demo crawl (which lives under `<root>/_inputs/demo-crawl/`) up to `tokenize`
(every stage but training, ~20 s a run) on root A; the whole root is copied to B and run again there,
then B is renamed to C and run again: each run returns the same versions and rebuilds no artifact (stage
versions and side artifacts: decontaminate_index, quality_scores, tokenizer), i.e. every manifest keeps
its `created_at` and no new version directory appears.
"""

import json
import shutil
from pathlib import Path

from flows.config import parse_config
from flows.pipeline import pipeline_flow
from storage.manifest import load_manifest

SMALL = {"workers": 1, "demo_pages": 60, "tokenize": {"vocab_size": 600, "seq_len": 64}}
TO = "tokenize"


def _artifacts(root: Path) -> dict[str, str]:
    """Every complete artifact under the root (`<kind>/<version>`) with its manifest's created_at."""
    out = {}
    for m in sorted(root.glob("*/*/manifest.json")):
        out[f"{m.parent.parent.name}/{m.parent.name}"] = json.loads(m.read_text())["created_at"]
    return out


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root (relative) with its inode and mtime: equal trees mean nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_copied_and_moved_root_reuse_every_version(prefect_backend, tmp_path):
    config = parse_config(SMALL)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    versions = pipeline_flow(config=config, data_root=str(a), to_stage=TO)
    assert list(versions)[-1] == TO and (a / "_inputs" / "demo-crawl").is_dir()
    built = _artifacts(a)
    assert {k.split("/")[0] for k in built} >= set(versions)

    ingest = load_manifest(str(a), "ingest")  # the manifest still says which files were read
    assert [f["name"] for f in ingest.extras["files"]] == ["_inputs/demo-crawl/pages-60/demo-crawl.warc.gz"]
    assert ingest.extras["files"][0]["path"].startswith(str(a))

    shutil.copytree(a, b, symlinks=True)  # a copy: new paths, new mtimes
    assert pipeline_flow(config=config, data_root=str(b), to_stage=TO) == versions
    assert _artifacts(b) == built, "a stage was recomputed on the copied root"

    b.rename(c)  # a move
    before = _tree(c)
    assert pipeline_flow(config=config, data_root=str(c), to_stage=TO) == versions
    assert _artifacts(c) == built, "a stage was recomputed on the moved root"
    assert _tree(c) == before, "reusing the versions of a moved root wrote into it"

    # the original root is untouched by the runs elsewhere and still reuses its versions
    assert pipeline_flow(config=config, data_root=str(a), to_stage=TO) == versions
    assert _artifacts(a) == built


def test_benchmark_and_reference_files_count_by_content_not_place(tmp_path, monkeypatch):
    """The decontaminate index and stage versions and the quality classifier's `files` input do not change
    when a benchmark or reference file is copied elsewhere (new path, new mtime); they do with its content."""
    from flows.quality_classifier import reference_files
    from storage import paths
    from tasks.decontaminate import DecontaminateParams, index_version
    from tasks.decontaminate import benchmarks as bm
    from tasks.quality.classifier import QualityClassifierParams

    monkeypatch.setenv(paths.ENV_ALLOWED_ROOTS, str(tmp_path))
    rows = "".join(
        json.dumps({"q": f"question {i} about a topic that is long enough to index"}) + "\n" for i in range(3)
    )
    for root in ("a", "b"):
        (tmp_path / root / "bench").mkdir(parents=True)
        (tmp_path / root / "bench" / "toy.jsonl").write_text(rows)

    def params(root: str) -> DecontaminateParams:
        spec = bm.BenchmarkFile(name="toy", path=str(tmp_path / root / "bench" / "toy.jsonl"), fields=["q"])
        return DecontaminateParams(humaneval=False, benchmarks=[spec])

    assert index_version(params("a")) == index_version(params("b"))
    assert params("a").version_params() == params("b").version_params()
    (tmp_path / "b" / "bench" / "toy.jsonl").write_text(rows + rows)
    assert index_version(params("a")) != index_version(params("b"))

    def classifier(root: str) -> QualityClassifierParams:
        bench = tmp_path / root / "bench" / "toy.jsonl"
        return QualityClassifierParams(positive=[str(bench)], negative=[])

    (tmp_path / "b" / "bench" / "toy.jsonl").write_text(rows)
    a, b = reference_files(classifier("a"), str(tmp_path / "a")), reference_files(classifier("b"), str(tmp_path / "b"))
    assert a == b
    swapped = QualityClassifierParams(positive=[], negative=classifier("a").positive)
    assert reference_files(swapped, str(tmp_path / "a")) != a  # the class of a file counts
