"""Everyday CLI behaviour (issue 15): --version, clear errors for a missing root and an unknown reason, and the
attrition table + run summary (summary.md, funnel.png) at the end of `pretrain run`."""

import time

from flows import cli
from reports.pipeline import _share
from storage.documents import Document


def _docs(n, prefix="d"):
    return [Document(id=f"{prefix}{i}", text=f"text number {i} " * 5, url=f"https://x.example/{i}") for i in range(n)]


def test_version_flag(capsys):
    try:
        cli.main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.startswith("pretrain ")


def test_status_on_a_missing_root_is_an_error(tmp_path, capsys):
    assert cli.main(["status", "--data-root", str(tmp_path / "nowhere")]) == 1
    assert "does not exist; run `pretrain run` first" in capsys.readouterr().err


def test_inspect_with_an_unknown_reason_names_the_known_ones(tmp_path, capsys, make_version):
    from storage.manifest import load_manifest

    make_version(tmp_path, "ingest", [_docs(3)], version="i1")
    m = load_manifest(str(tmp_path), "ingest", "i1")
    assert m.stats.dropped == {}
    assert cli.main(["inspect", "ingest", "--data-root", str(tmp_path), "--rejected", "--reason", "nope"]) == 2
    assert "dropped no document for reason 'nope'; its reasons: none" in capsys.readouterr().err


def test_run_ends_with_the_attrition_table_and_a_summary_on_disk(tmp_path, capsys, make_version):
    make_version(tmp_path, "ingest", [_docs(10)], version="i1")
    make_version(tmp_path, "langid", [_docs(6)], version="l1", inputs={"ingest": "i1"})
    cli._print_run_summary(str(tmp_path), {"ingest": "i1", "langid": "l1"}, time.time() - 60)
    out = capsys.readouterr().out
    assert "% of ingest" in out and "60.0%" in out and "run summary:" in out
    runs = list((tmp_path / "_runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "funnel.png").read_bytes().startswith(b"\x89PNG")
    summary = (runs[0] / "summary.md").read_text()
    assert "| langid | l1 | computed | 6 | 60.0% |" in summary and "![attrition funnel](funnel.png)" in summary


def test_upsampling_is_labelled():
    assert _share(102, 100) == "102.0% (upsampled)" and _share(50, 100) == "50.0%" and _share(5, None) == "-"
