"""The default config on real crawl files from ../shared/data, through tokenize (skips when it is absent).

This is the day-one path of a real user (issue 10): `pretrain run --input <real WARCs/WETs>` with no
config. Real pages are long, multilingual and unlabelled; the demo crawl was written to pass, these
were not. Checks: every stage commits, conservation holds, the default mixture keeps >= 90% of the
unique documents it receives, and tokenize writes train and val tokens.
"""

import json

import pytest

from flows.cli import main
from flows.pipeline import STAGE_ORDER, PipelineConfig, Stage, StageFailed, pipeline_flow
from storage.manifest import load_manifest
from tasks.ingest import IngestParams

CRAWL_GLOBS = ("warc/commoncrawl/*.warc.gz", "warc/commoncrawl/*.warc.wet.gz", "warc/other_crawls/*.warc.gz")


def real_inputs(shared_data) -> list[str]:
    files = sorted(str(p) for g in CRAWL_GLOBS for p in shared_data.glob(g))
    if not files:
        pytest.skip(f"no crawl files under {shared_data}/warc")
    return files


@pytest.mark.slow
def test_default_config_on_real_crawl_through_tokenize(prefect_backend, data_root, shared_data, capsys):
    root = str(data_root)
    assert main(["run", "--input", *real_inputs(shared_data), "--to", "tokenize", "--data-root", root]) == 0
    stages = STAGE_ORDER[: STAGE_ORDER.index(Stage.TOKENIZE) + 1]
    chain = [load_manifest(root, s) for s in stages]
    for up, down in zip(chain, chain[1:]):
        assert down.inputs[str(up.stage)] == up.version
    for m in chain[:-1]:
        m.stats.check_conservation(str(m.stage))
    by_stage = {str(m.stage): m for m in chain}
    decon, mix, tok = by_stage["decontaminate"], by_stage["mix"], by_stage["tokenize"]
    assert decon.stats.docs_out >= 20, f"too few clean real documents reach mix: {decon.stats.docs_out}"
    # mix counts input documents once however many copies it writes: the default never drops clean data
    assert mix.stats.docs_out >= 0.9 * mix.stats.docs_in, (mix.stats.docs_out, mix.stats.docs_in, mix.stats.dropped)
    splits = tok.extras["splits"]
    assert splits["train"]["sequences"] > 0 and splits["val"]["sequences"] > 0, splits
    capsys.readouterr()
    assert main(["inspect", "mix", "--json", "--data-root", root]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == mix.version


@pytest.mark.slow
def test_crawl_with_no_keepable_document_stops_with_the_numbers_and_the_fix(prefect_backend, data_root, shared_data):
    """The three Common Crawl WARCs alone: 20 pages, 4 of them English, all four navigation or EXIF pages
    that quality drops. The run stops before clean naming the counts and the fix (dedup used to crash
    with FileNotFoundError on its empty decisions file)."""
    files = sorted(str(p) for p in shared_data.glob("warc/commoncrawl/*.warc.gz"))
    if not files:
        pytest.skip("no Common Crawl WARCs in shared data")
    config = PipelineConfig(ingest=IngestParams(inputs=files))
    with pytest.raises(StageFailed) as err:
        pipeline_flow(config=config, data_root=str(data_root), to_stage=Stage.MIX)
    msg = str(err.value)
    assert "stage 'clean' failed: NothingLeft: quality@" in msg and "kept 0 of 4 documents" in msg, msg
    assert "pretrain inspect quality --rejected" in msg and "langid.languages" in msg
