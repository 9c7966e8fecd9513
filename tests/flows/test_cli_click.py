"""The `pretrain` CLI on click + rich: stage choices in the help, `--version`, usage errors (exit 2 and one
`error:` line), `--json` on every command that reports (one JSON document on stdout), rich tables that grep
like the plain ones, and lazy imports (`import flows.cli` pulls in neither Prefect, torch, rich nor the
pipeline table)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows import cli
from storage.artifacts import ArtifactWriter
from storage.documents import Document, DocumentWriter
from storage.manifest import ShardInfo, new_manifest
from storage.stats import StageStats
from storage.token_shards import TokenShardWriter

REPO = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "langid", "quality", "clean", "dedup", "decontaminate", "mix", "tokenize", "train", "eval"]


def _docs(n, prefix="d"):
    return [Document(id=f"{prefix}{i}", text=f"text number {i} " * 5, url=f"https://x.example/{i}") for i in range(n)]


I1, I2, L1 = "00000000000a", "00000000000b", "00000000000c"


def _commit(root, stage, version, docs, day, inputs=None):
    """A complete version holding `docs`, made `day` days into 2026 (old enough for gc to judge)."""
    w = ArtifactWriter(str(root), stage, version)
    with DocumentWriter(f"{w.path}/part-00000.parquet") as dw:
        for d in docs:
            dw.write(d)
    shards = [ShardInfo(name="part-00000.parquet", rows=len(docs), bytes=1)]
    stats = StageStats(docs_in=len(docs), docs_out=len(docs))
    m = new_manifest(stage, 1, version, {}, inputs or {}, shards, [], stats)
    w.commit(m.model_copy(update={"created_at": f"2026-01-{day:02d}T00:00:00.000+00:00"}))


@pytest.fixture
def root(tmp_path):
    """Two ingest versions and a langid version built from the newer one."""
    _commit(tmp_path, "ingest", I1, _docs(10), 1)
    _commit(tmp_path, "ingest", I2, _docs(8), 2)
    _commit(tmp_path, "langid", L1, _docs(6), 3, inputs={"ingest": I2})
    return tmp_path


def _json_out(capsys, argv):
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.strip().splitlines()[-1]


# ---------------------------------------------------------------- help and --version


def test_help_lists_the_stages(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "stages: " + ", ".join(STAGES) in " ".join(out.split())
    for name in ("run", "config", "status", "inspect", "gc", "plan", "export-tokens", "export-hf", "compare"):
        assert f"  {name} " in out
    assert "train-quality-classifier" in out and "demo-crawl" in out


def test_run_help_lists_the_stages_for_only_from_to_force(capsys):
    assert cli.main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "STAGE: one of " + ", ".join(STAGES) in out
    for option in ("--only STAGE", "--from STAGE", "--to STAGE", "--force STAGE", "--data-root", "--debug", "--json"):
        assert option in out


def test_inspect_help_lists_stages_and_side_artifacts(capsys):
    assert cli.main(["inspect", "-h"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "STAGE: one of ingest, langid, quality, quality_classifier," in out and "decontaminate_index" in out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("pretrain ")


# ---------------------------------------------------------------- usage errors: exit 2, one `error:` line


def test_unknown_artifact_is_a_usage_error_naming_the_choices(capsys):
    last = _usage_error(capsys, ["inspect", "nope"])
    assert last.startswith("error: argument STAGE: unknown artifact 'nope'; choose one of ['ingest', 'langid'")
    assert "'quality_classifier'" in last


def test_mutually_exclusive_plan_options(capsys):
    last = _usage_error(capsys, ["plan", "--tokens", "1", "--version", "latest"])
    assert last == "error: argument --version: not allowed with argument --tokens"  # as argparse said it
    last = _usage_error(capsys, ["plan", "--version", "latest", "--tokens", "1"])
    assert last == "error: argument --tokens: not allowed with argument --version"
    last = _usage_error(capsys, ["plan", "--compute", "1e20", "--gpu-hours", "5"])
    assert last == "error: argument --gpu-hours: not allowed with argument --compute"


def test_unknown_option_missing_option_bad_value_and_no_command(capsys):
    assert "--nope" in _usage_error(capsys, ["status", "--nope"])
    assert "--out" in _usage_error(capsys, ["demo-crawl"])
    assert _usage_error(capsys, ["inspect", "ingest", "--sample", "many"]).startswith("error: argument --sample:")
    assert _usage_error(capsys, ["export-hf", "--out", "x", "--step", "last"]) == (
        "error: argument --step: --step must be final, best or a step number, not 'last'"
    )
    assert _usage_error(capsys, ["export-tokens", "--out", "x", "--format", "gguf"]) == (
        "error: argument --format: 'gguf' is not one of 'llm.c', 'nanogpt'."
    )
    last = _usage_error(capsys, ["inspect", "ingest", "--version", "../langid/x"])
    assert last.startswith("error: argument --version: expected 'latest' or a version id") and "langid" not in last
    assert _usage_error(capsys, ["nonsense"]).startswith("error: No such command")
    assert _usage_error(capsys, []) == "error: a command is required"


def test_run_checks_stage_names_itself_after_parsing(cli_run_config, capsys):
    """`run` takes any word for --only/--from/--to/--force at parse time (the check imports every stage, which
    would delay the temporary server); `_run` refuses a bad one with exit 2."""
    fn, args = cli.cli.main(["run", "--to", "nope", "--input", "a.warc.gz", "b.warc.gz"], standalone_mode=False)
    assert fn is cli.cmd_run and args.to_stage == "nope" and args.input == ["a.warc.gz", "b.warc.gz"]
    assert args.overrides == [] and args.json is False and args.data_root is None
    assert cli.main(["run", "--force", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown stage 'nope'; choose one of")


def test_greedy_options_stop_at_the_next_option():
    _, args = cli.cli.main(
        ["train-quality-classifier", "--positive", "a", "b", "--wikitext", "--languages", "en", "de"],
        standalone_mode=False,
    )
    assert args.positive == ["a", "b"] and args.negative is None and args.wikitext and args.languages == ["en", "de"]
    _, args = cli.cli.main(["train-quality-classifier"], standalone_mode=False)
    assert args.languages == ["en"] and args.input_version == "latest" and args.positive is None


# ---------------------------------------------------------------- --json: one JSON document on stdout


def test_status_json_and_table(root, capsys):
    data = _json_out(capsys, ["status", "--json", "--data-root", str(root)])
    assert [r["stage"] for r in data["stages"]] == STAGES
    assert data["stages"][1]["version"] == L1 and data["stages"][1]["inputs"] == f"ingest@{I2}"
    assert cli.main(["status", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    langid = next(line for line in out.splitlines() if line.split()[:1] == ["langid"])
    assert L1 in langid.split() and "True" in langid.split() and f"ingest@{I2}" in langid.split()
    all_ = _json_out(capsys, ["status", "--all", "--json", "--data-root", str(root)])
    assert sorted(r["version"] for r in all_["stages"]) == sorted([I1, I2, L1])


def test_gc_dry_run_json_and_table(root, capsys):
    data = _json_out(capsys, ["gc", "--keep", "1", "--dry-run", "--json", "--data-root", str(root)])
    assert data["dry_run"] is True and data["delete"] == 1 and data["kept"] == 2
    actions = {(r["stage"], r["version"]): r["action"] for r in data["versions"]}
    assert actions == {("ingest", I1): "delete", ("ingest", I2): "keep", ("langid", L1): "keep"}
    assert data["bytes_freed"] > 0 and data["stale"] == data["unknown"] == data["partial"] == []
    assert cli.main(["gc", "--keep", "1", "--dry-run", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    i1 = next(line for line in out.splitlines() if f" {I1} " in line)
    assert "ingest" in i1 and "delete" in i1 and "unreferenced" in i1
    assert "would delete 1 version(s)" in out and (root / "ingest" / I1).exists()


def test_config_show_json(capsys):
    data = _json_out(capsys, ["config", "show", "--json", "--set", "langid.threshold=0.5"])
    assert data["langid"]["threshold"] == 0.5
    assert "properties" in _json_out(capsys, ["config", "schema"])


def test_plan_json(tmp_path, capsys):
    data = _json_out(capsys, ["plan", "--tokens", "1e9", "--json", "--data-root", str(tmp_path)])
    assert isinstance(data, dict) and data


def test_inspect_json_and_stats_table(root, capsys):
    assert _json_out(capsys, ["inspect", "langid", "--json", "--data-root", str(root)])["version"] == L1
    assert cli.main(["inspect", "ingest", "--version", I1, "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ingest@{I1}  (")
    docs_out = next(line for line in out.splitlines() if "docs_out" in line)
    assert docs_out.split() == ["docs_out", "10"]


def _tokenize_version(root, version="0123456789ab"):
    w = ArtifactWriter(str(root), "tokenize", version)
    block = np.random.default_rng(0).integers(0, 1000, size=(4, 9))
    with TokenShardWriter(f"{w.path}/train/tokens-00000.arrow", 8, 1000, eos_id=0) as tw:
        tw.write_sequences(block, [[0]] * 4)
    extras = {"vocab_size": 1000, "seq_len": 8, "sequences": {"train": 4}}
    shards = [ShardInfo(name="train/tokens-00000.arrow", rows=4, bytes=1)]
    w.commit(new_manifest("tokenize", 1, version, {}, {}, shards, [], StageStats(), extras))
    return version


def test_export_tokens_json(tmp_path, capsys):
    version = _tokenize_version(tmp_path)
    out = tmp_path / "train.bin"
    argv = ["export-tokens", "--format", "nanogpt", "--out", str(out), "--json", "--data-root", str(tmp_path)]
    data = _json_out(capsys, argv)
    assert data == {"out": str(out), "format": "nanogpt", "split": "train", "tokens": 36, "tokenize_version": version}
    assert out.stat().st_size == 36 * 2


def test_demo_crawl_json(tmp_path, capsys):
    data = _json_out(capsys, ["demo-crawl", "--out", str(tmp_path / "demo"), "--pages", "20", "--json"])
    assert data["pages"] == 20 and Path(data["warc_path"]).exists() and len(data["warc_sha256"]) == 64


def test_compare_json(tmp_path, capsys):
    t1, e1, e2 = "0000000000f1", "0000000000e1", "0000000000e2"
    _commit(tmp_path, "train", t1, [], 1)
    _commit(tmp_path, "eval", e1, [], 2, inputs={"train": t1})
    _commit(tmp_path, "eval", e2, [], 3, inputs={"train": t1})
    data = _json_out(capsys, ["compare", e1, e2, "--json", "--data-root", str(tmp_path)])
    assert data["A"]["eval_version"] == e1 and data["B"]["eval_version"] == e2
    assert data["final"] == [] and data["different_items"] is False
    assert {r["artifact"]: r["difference"] for r in data["lineage"]}["train"] == "same"


def test_run_json_prints_versions_and_attrition(cli_run_config, root, monkeypatch, capsys):
    versions = {"ingest": I2, "langid": L1}
    monkeypatch.setattr("flows.pipeline.pipeline_flow", lambda config, **kw: versions)
    data = _json_out(capsys, ["run", "--to", "langid", "--json", "--data-root", str(root)])
    assert data["versions"] == versions
    assert [(r["stage"], r["version"]) for r in data["attrition"]][:2] == [("ingest", I2), ("langid", L1)]
    assert data["attrition"][1]["% of ingest"] == "75.0%"


# ---------------------------------------------------------------- rich: tables, markdown on a terminal only


def test_reports_are_plain_markdown_off_a_terminal_and_rendered_on_one(monkeypatch, capsys):
    cli._print_markdown("## Scores\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert capsys.readouterr().out.startswith("## Scores\n\n| a | b |")

    class Tty:
        def __init__(self):
            self.parts = []

        def write(self, s):
            self.parts.append(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    cli._print_markdown("## Scores\n\nsome *text*")
    text = "".join(tty.parts)
    assert "Scores" in text and "## Scores" not in text and "\x1b[" in text


def test_table_cells_are_not_wrapped_or_read_as_markup(capsys):
    long = "x" * 300
    cli._print_table([{"stage": "ingest", "inputs": "[bold]raw[/bold]", "path": long}])
    out = capsys.readouterr().out
    assert "[bold]raw[/bold]" in out and long in out and "\x1b[" not in out


# ---------------------------------------------------------------- lazy imports


def test_importing_the_cli_pulls_in_neither_prefect_torch_rich_nor_the_pipeline():
    code = (
        "import sys, flows.cli\n"
        "heavy = ('prefect', 'torch', 'rich', 'flows.stages', 'flows.pipeline', 'pydantic_settings')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_click_runner_parses_a_command_line_without_running_it():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli.cli, ["gc", "--keep", "2", "--dry-run", "--json"], standalone_mode=False)
    fn, args = result.return_value
    assert fn is cli.cmd_gc and args.keep == 2 and args.dry_run and args.json and args.data_root is None
