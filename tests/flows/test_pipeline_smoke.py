"""The whole pipeline on a small demo crawl under Prefect, and the `pretrain` CLI commands."""

import json

import pytest
import yaml

from flows.cli import main
from flows.pipeline import STAGE_ORDER
from storage.manifest import load_manifest

SMALL = {
    "workers": 1,
    "demo_pages": 80,
    "tokenize": {"vocab_size": 600, "seq_len": 64},
    "train": {
        "max_steps": 6,
        "eval_interval": 3,
        "ckpt_interval": 3,
        "warmup_steps": 2,
        "micro_batch_size": 4,
        "tokens_per_step": 512,
        "eval_tokens": 1024,
        "sample_tokens": 8,
    },
}


@pytest.fixture
def small_config(tmp_path):
    p = tmp_path / "small.yaml"
    p.write_text(yaml.safe_dump(SMALL))
    return str(p)


@pytest.mark.slow
def test_pipeline_end_to_end_then_reuse(prefect_backend, data_root, small_config, capsys):
    assert main(["run", "--config", small_config, "--data-root", str(data_root)]) == 0
    chain = [load_manifest(str(data_root), s) for s in STAGE_ORDER]
    for up, down in zip(chain, chain[1:]):
        assert down.inputs[str(up.stage)] == up.version, f"{down.stage} not built from {up.stage}@{up.version}"
    for m in chain[:-1]:
        m.stats.check_conservation(str(m.stage))
    assert chain[0].stats.docs_out > 40 and chain[STAGE_ORDER.index("train")].extras["result"]["steps"] == 6
    # eval scores the final checkpoint on the pipeline's own held-out (val) text by default
    final = chain[-1].extras["checkpoints"][-1]
    assert chain[-1].stage == "eval" and final["step"] == 6 and final["bpb"]["tokenize_val"]["bpb"] > 0
    created = [m.created_at for m in chain]
    # identical second run: every stage reused, nothing recomputed
    assert main(["run", "--config", small_config, "--data-root", str(data_root)]) == 0
    assert [load_manifest(str(data_root), s).created_at for s in STAGE_ORDER] == created
    # --force on one stage recomputes it and what follows, never what precedes
    assert (
        main(
            [
                "run",
                "--config",
                small_config,
                "--data-root",
                str(data_root),
                "--from",
                "mix",
                "--to",
                "tokenize",
                "--force",
                "mix",
            ]
        )
        == 0
    )
    after = [load_manifest(str(data_root), s).created_at for s in STAGE_ORDER]
    mix = STAGE_ORDER.index("mix")
    assert after[:mix] == created[:mix] and after[mix] != created[mix] and after[mix + 1] != created[mix + 1]
    capsys.readouterr()
    assert main(["status", "--json", "--data-root", str(data_root)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in status["stages"]] == [str(s) for s in STAGE_ORDER]


def _tree(root):
    """Every path under root with its inode and mtime: equal trees mean nothing was written."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_ingest_only_cli_commands(prefect_backend, data_root, capsys):
    root = str(data_root)
    assert main(["run", "--to", "ingest", "--data-root", root]) == 0
    m = load_manifest(root, "ingest")
    assert m.stats.docs_out > 300 and m.stats.dropped
    capsys.readouterr()
    before = _tree(data_root)
    assert main(["run", "--to", "ingest", "--data-root", root]) == 0  # reused
    assert load_manifest(root, "ingest").created_at == m.created_at
    assert _tree(data_root) == before, "reusing a complete version wrote into the data root"
    capsys.readouterr()
    assert main(["inspect", "ingest", "--json", "--data-root", root]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == m.version
    assert main(["inspect", "ingest", "--sample", "2", "--data-root", root]) == 0
    out = capsys.readouterr().out
    assert "sample documents (2)" in out and "Documents by source" in out
    assert main(["inspect", "ingest", "--rejected", "--reason", "http_status", "--data-root", root]) == 0
    assert "reason=http_status" in capsys.readouterr().out
    assert main(["inspect", "langid", "--data-root", root]) == 1
    assert "pretrain run --to langid" in capsys.readouterr().err


def test_cli_rejects_bad_config_and_stage(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: {extractor: bs4}\n")
    assert main(["run", "--config", str(bad), "--data-root", str(tmp_path)]) == 2
    assert "ingest.extractor" in capsys.readouterr().err
    # stage names are checked after the temporary server started (it comes up while the stages import)
    assert main(["run", "--only", "nonsense"]) == 2
    assert "only=nonsense: stage not available; choose one of ['ingest'" in capsys.readouterr().err
    assert main(["demo-crawl", "--out", str(tmp_path / "demo"), "--pages", "30"]) == 0
    assert (tmp_path / "demo" / "demo-crawl.warc.gz").is_file()
