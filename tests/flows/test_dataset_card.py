"""Issue 15 item 1: a document version directory loads in one line with the tools users already have. Kept
documents are alone in `data/`, the rejected ones in `rejected/`, and the version's README.md (a Hugging Face
dataset card) points `datasets.load_dataset(<version dir>)` at them; manifest, plots and work files stay beside."""

import importlib.util

import pytest

from flows.langid import langid_flow
from flows.stage import task_runner
from storage.documents import Document
from storage.manifest import load_manifest
from tasks.langid import LangidParams

EN = [
    "The museum reopened after the long renovation of its east wing, and visitors returned in large numbers.",
    "Rain is expected across the northern valleys tomorrow, with clearer skies arriving late in the evening.",
    "The committee approved the budget for the new library after a long debate about its opening hours.",
]
DE = "Das Museum wurde nach der langen Renovierung des Ostflügels wieder eröffnet und viele Besucher kamen."


@pytest.fixture
def version_dir(prefect_backend, tmp_path, make_version):
    docs = [Document(id=f"en{i}", text=t, url=f"https://x.example/{i}") for i, t in enumerate(EN)]
    make_version(tmp_path, "ingest", [docs[:2], [docs[2], Document(id="de", text=DE)]], version="ing1")
    v = langid_flow.with_options(task_runner=task_runner(1))(params=LangidParams(), data_root=str(tmp_path))
    m = load_manifest(str(tmp_path), "langid", v)
    assert [s.name for s in m.shards] == ["data/part-00000.parquet", "data/part-00001.parquet"]
    return tmp_path / "langid" / v


def test_the_version_loads_in_one_line(version_dir):
    """One flow run, every reader (the flow is the slow part)."""
    import datasets
    import pandas as pd
    import pyarrow.dataset as ds
    from datatrove.pipeline.readers import ParquetReader

    card = (version_dir / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n") and "path: data/*.parquet" in card
    assert sorted(p.name for p in (version_dir / "data").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(pd.read_parquet(version_dir / "data")["id"]) == ["en0", "en1", "en2"]
    assert ds.dataset(str(version_dir / "data")).count_rows() == 3
    rejected = pd.read_parquet(version_dir / "rejected")
    assert list(rejected["id"]) == ["de"] and list(rejected["reason"]) == ["language_not_kept"]
    # Hugging Face datasets reads the card's configs
    kept = datasets.load_dataset(str(version_dir), split="train")
    assert sorted(kept["id"]) == ["en0", "en1", "en2"] and "text" in kept.column_names
    assert datasets.load_dataset(str(version_dir), "rejected", split="train")["reason"] == ["language_not_kept"]
    # datatrove's default Parquet reader
    assert sorted(d.id for d in ParquetReader(str(version_dir / "data"))()) == ["en0", "en1", "en2"]
    if importlib.util.find_spec("duckdb") is None:
        pytest.skip("duckdb is not installed: the other readers passed")
    import duckdb

    assert duckdb.sql(f"SELECT count(*) FROM '{version_dir}/data/*.parquet'").fetchall() == [(3,)]
    reasons = duckdb.sql(f"SELECT reason, count(*) FROM '{version_dir}/rejected/*.parquet' GROUP BY 1").fetchall()
    assert reasons == [("language_not_kept", 1)]
    root = version_dir.parent.parent
    stages = duckdb.sql(f"SELECT stage, version FROM read_json_auto('{root}/*/*/manifest.json') ORDER BY 1").fetchall()
    assert stages == [("ingest", "ing1"), ("langid", version_dir.name)]
