"""Version ids a user passes (issue 11): the CLI's --version / --input-version are 'latest' or 12 lowercase hex.

The hostile tester's `pretrain inspect ingest --version ../langid/<v>` printed the langid manifest: a
version was joined into a path unchecked. `check_version` is the one validator; `load_manifest` applies
its lenient form (one plain directory name, no `/`, no `..`) to every caller, flows' input_version included
(hand-made test fixtures and resolved upstream versions pass through there).
"""

import pytest

from flows import cli
from storage.manifest import check_version, load_manifest

V = "0123456789ab"
BAD = ["../langid/" + V, "..", "/etc", V.upper(), V[:-1], V + "0", "", " latest", "a/b", ".tmp-" + V]


def test_check_version_accepts_latest_and_twelve_hex():
    assert check_version("latest") == "latest" and check_version(V, "input_version") == V
    for bad in BAD:
        with pytest.raises(ValueError, match=r"^input_version: expected 'latest' or a version id \(12 lowercase hex"):
            check_version(bad, "input_version")


def test_load_manifest_refuses_paths(tmp_path, make_version):
    make_version(tmp_path, "langid", [[]], version=V)
    assert load_manifest(str(tmp_path), "langid", V).version == V
    for bad in ("../langid/" + V, "..", "/etc", "a/b", ".tmp-x", ""):
        with pytest.raises(ValueError, match="'ingest' version: expected 'latest' or a version id"):
            load_manifest(str(tmp_path), "ingest", bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "ingest", "--version"],
        ["export-tokens", "--out", "x.bin", "--version"],
        ["plan", "--version"],
        ["train-quality-classifier", "--input-version"],
    ],
)
def test_cli_version_arguments_are_checked(tmp_path, make_version, capsys, argv):
    make_version(tmp_path, "langid", [[]], version=V)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, f"../langid/{V}", "--data-root", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "expected 'latest' or a version id (12 lowercase hex" in err and "langid" not in err.split("error:")[-1]


def test_cli_inspect_with_a_valid_version_still_works(tmp_path, make_version, capsys):
    make_version(tmp_path, "ingest", [[]], version=V)
    assert cli.main(["inspect", "ingest", "--version", V, "--json", "--data-root", str(tmp_path)]) == 0
    assert f'"version": "{V}"' in capsys.readouterr().out


def test_stage_flows_refuse_a_path_as_input_version(tmp_path, make_version):
    """Flows' input_version reaches load_manifest, whose lenient check refuses anything but one plain name."""
    from flows.pipeline import Stage
    from flows.quality import quality_flow
    from flows.stage import resolve_stage
    from tasks.langid import LangidParams
    from tasks.quality import QualityParams

    make_version(tmp_path, "ingest", [[]], version=V)
    with pytest.raises(ValueError, match="^'ingest' version: expected 'latest' or a version id"):
        resolve_stage(Stage.LANGID, 1, LangidParams(), str(tmp_path), f"../ingest/{V}")
    with pytest.raises(ValueError, match="^'langid' version: expected 'latest' or a version id"):
        quality_flow.fn(params=QualityParams(), data_root=str(tmp_path), input_version=f"../ingest/{V}")
