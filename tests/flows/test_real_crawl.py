"""The default config on real crawl files from ../shared/data, through tokenize (skips when it is absent).

This is the day-one path of a real user (issue 10): `pretrain run --input <real WARCs/WETs>` with no
config. Real pages are long, multilingual and unlabelled; the demo crawl was written to pass, these
were not. Checks: every stage commits, conservation holds, the default mixture keeps >= 90% of the
unique documents it receives, and tokenize writes train and val tokens.
"""

import json

import pytest

from flows.cli import main
from storage.manifest import STAGE_ORDER, Stage, load_manifest

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
    stages = STAGE_ORDER[:STAGE_ORDER.index(Stage.TOKENIZE) + 1]
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
