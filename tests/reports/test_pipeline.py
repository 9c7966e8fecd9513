"""The pipeline summary artifact: attrition per stage, funnel PNG, lineage; also for a failed run."""

import base64
import io
import re
import time

import pytest

from flows.pipeline import STAGE_ORDER, SUMMARY_KEY, Stage, publish_summary
from reports.pipeline import attrition, funnel_png, lineage
from reports.pipeline import summary_markdown as _summary_markdown
from storage.artifacts import ArtifactWriter
from storage.documents import Document
from storage.manifest import ShardInfo, new_manifest
from storage.stats import StageStats


def summary_markdown(root, versions, **kw):
    return _summary_markdown(root, versions, STAGE_ORDER, **kw)


def _docs(texts):
    return [Document(id=f"d{i}", text=t, url=f"https://x/{i}") for i, t in enumerate(texts)]


@pytest.fixture
def chain(tmp_path, make_version):
    root = tmp_path / "data"
    make_version(
        root, "ingest", [_docs(["héllo wörld", "abc"]), _docs(["0123456789"])], version="i1", inputs={"files": "f00"}
    )
    make_version(root, "langid", [_docs(["héllo wörld", "abc"])], version="l1", inputs={"ingest": "i1"})
    return root


def test_attrition_counts_documents_and_exact_characters(chain):
    rows = attrition(str(chain), {"ingest": "i1", "langid": "l1"}, STAGE_ORDER, started=0.0)
    assert [(r.stage, r.version, r.status, r.documents) for r in rows] == [
        (Stage.INGEST, "i1", "computed", 3),
        (Stage.LANGID, "l1", "computed", 2),
    ]
    # characters, not bytes: "héllo wörld" is 11 characters, 13 UTF-8 bytes
    assert [r.characters for r in rows] == [11 + 3 + 10, 11 + 3]
    assert not any(r.chars_estimated or r.tokens for r in rows)


def test_status_reused_when_made_before_the_run_and_on_disk_when_not_run(chain):
    rows = attrition(str(chain), {"langid": "l1"}, STAGE_ORDER, started=time.time())
    assert [r.status for r in rows] == ["on disk", "reused"]


def test_lineage_follows_manifest_inputs(chain):
    assert [(m.stage, m.version) for m in lineage(str(chain), (Stage.LANGID, "l1"), STAGE_ORDER)] == [
        (Stage.INGEST, "i1"),
        (Stage.LANGID, "l1"),
    ]


def test_failed_stage_row_and_header(chain):
    md = summary_markdown(
        str(chain),
        {"ingest": "i1", "langid": "l1"},
        started=time.time(),
        failed=(Stage.QUALITY, FileNotFoundError("/x/model.bin does not exist")),
    )
    assert "# pretrain: FAILED at stage `quality`" in md
    assert "| quality | - | FAILED |" in md and "FileNotFoundError: /x/model.bin does not exist" in md
    assert "| ingest | i1 | reused | 3 | 100.0% | 24 |" in md and "| langid | l1 | reused | 2 | 66.7% | 14 |" in md
    assert "`ingest@i1` -> `langid@l1`" in md


def test_failed_first_selected_stage_still_shows_its_upstream(chain):
    md = summary_markdown(str(chain), {}, started=time.time(), failed=(Stage.QUALITY, ValueError("bad")), image=False)
    assert "| langid | l1 | on disk |" in md and "| quality | - | FAILED |" in md


def test_tokens_from_tokenize_extras_and_estimates_upstream(chain, tmp_path):
    root = str(chain)
    # hand-made chain langid -> ... -> tokenize is not needed: tokenize's upstream is whatever Stage says
    up = Stage.MIX
    w = ArtifactWriter(root, up, "m1")
    from storage.documents import DocumentWriter

    with DocumentWriter(f"{w.path}/part-00000.parquet") as dw:
        for d in _docs(["a" * 100, "b" * 100]):
            dw.write(d)
    w.commit(
        new_manifest(
            up,
            1,
            "m1",
            {},
            {},
            [ShardInfo(name="part-00000.parquet", rows=2, bytes=1)],
            [],
            StageStats(docs_in=2, docs_out=2),
        )
    )
    w = ArtifactWriter(root, Stage.TOKENIZE, "t1")
    w.commit(
        new_manifest(
            Stage.TOKENIZE,
            1,
            "t1",
            {},
            {"mix": "m1"},
            [ShardInfo(name="train/tokens-00000.arrow", rows=10, bytes=1)],
            [],
            StageStats(docs_in=2, docs_out=2),
            extras={"tokens": 50},
        )
    )
    rows = attrition(root, {"tokenize": "t1"}, STAGE_ORDER, started=0.0)
    by = {r.stage: r for r in rows}
    assert by[Stage.TOKENIZE].tokens == 50 and not by[Stage.TOKENIZE].tokens_estimated
    assert by[Stage.MIX].tokens == 50 and by[Stage.MIX].tokens_estimated  # 200 chars at 0.25 tokens/char


def test_funnel_png_is_a_real_image(chain):
    import matplotlib.image as mpimg

    rows = attrition(
        str(chain), {"ingest": "i1", "langid": "l1"}, STAGE_ORDER, started=0.0, failed=(Stage.QUALITY, ValueError("x"))
    )
    png = funnel_png(rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(png))
    assert img.shape[0] > 100 and img.shape[1] > 500


def test_markdown_embeds_the_funnel_as_data_uri(chain):
    md = summary_markdown(str(chain), {"ingest": "i1", "langid": "l1"})
    m = re.search(r"!\[attrition funnel\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert m and base64.b64decode(m.group(1))[:4] == b"\x89PNG"


def test_publish_creates_the_artifact_in_a_flow_run(chain, prefect_backend):
    import httpx
    from prefect import flow
    from prefect.settings import PREFECT_API_URL

    @flow
    def report() -> None:
        publish_summary(str(chain), {"ingest": "i1", "langid": "l1"}, started=0.0)

    state = report(return_state=True)
    api = PREFECT_API_URL.value()
    # REST directly: this client's read_artifacts sends nulls the 3.8.8 server rejects (422)
    arts = httpx.post(
        f"{api}/artifacts/filter",
        json={
            "artifacts": {
                "key": {"any_": [SUMMARY_KEY]},
                "flow_run_id": {"any_": [str(state.state_details.flow_run_id)]},
            }
        },
    ).json()
    assert len(arts) == 1 and arts[0]["type"] == "markdown" and "`ingest@i1` -> `langid@l1`" in arts[0]["data"]


def test_publish_logs_instead_of_raising(chain, monkeypatch, caplog):
    # a broken summary must not replace the run's own outcome (e.g. hide the stage that failed)
    import reports.pipeline as summary

    def boom(rows):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(summary, "funnel_png", boom)
    with caplog.at_level("ERROR", logger="flows.pipeline"):
        assert publish_summary(str(chain), {"ingest": "i1"}, failed=(Stage.LANGID, ValueError("x"))) is None
    assert "matplotlib exploded" in caplog.text


def test_tokens_from_split_counters_and_repeated_documents(tmp_path, make_version):
    from reports.pipeline import manifest_documents, manifest_tokens
    from storage.manifest import load_manifest

    root = tmp_path / "data"
    make_version(root, "mix", [_docs(["a", "b", "a"])], version="m1")
    m = load_manifest(str(root), "mix", "m1").model_copy(deep=True)
    m.stats.docs_out = 2  # two distinct documents, one written twice (upsampling)
    assert manifest_documents(m) == (3, 2)
    m.stats.counters = {"tokens.train": 30, "tokens.val": 5, "sequences.train": 2}
    assert manifest_tokens(m) == 35
