"""`pipeline_flow(config_path=...)`: the deployment form's YAML-file alternative to the inline config.

The file must be a relative path inside the working directory (a deployment's), so the tests chdir into
tmp_path, as a worker does into the deployment's directory.
"""

import os

import pytest

from flows.config import ConfigError
from flows.pipeline import PipelineConfig, config_file, pipeline_flow
from storage.manifest import load_manifest


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_config_path_is_loaded_and_used(workdir, data_root, prefect_backend):
    (workdir / "configs").mkdir()
    (workdir / "configs" / "small.yaml").write_text("workers: 1\ndemo_pages: 20\n")
    versions = pipeline_flow(config_path="configs/small.yaml", data_root=str(data_root), to_stage="ingest")
    m = load_manifest(str(data_root), "ingest", versions["ingest"])
    assert m.stats.docs_in == 20  # demo_pages from the file, not the default 400
    assert (data_root / "_inputs" / "demo-crawl" / "pages-20").is_dir()


def test_config_path_and_inline_config_together_is_an_error(workdir, data_root, prefect_backend):
    (workdir / "small.yaml").write_text("workers: 1\n")
    with pytest.raises(ValueError, match="config_path=.* and an inline config were both given"):
        pipeline_flow(
            config=PipelineConfig(workers=1, demo_pages=20), config_path="small.yaml", data_root=str(data_root)
        )


def test_bad_config_file_fails_naming_the_key(workdir, data_root, prefect_backend):
    (workdir / "bad.yaml").write_text("workers: 1\ningest:\n  extractr: trafilatura\n")
    with pytest.raises(ConfigError, match="ingest.extractr: unknown key"):
        pipeline_flow(config_path="bad.yaml", data_root=str(data_root))
    assert not (data_root / "ingest").exists()


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../outside.yaml",
        "configs/../../outside.yaml",
        "file:///etc/passwd",
        "",
        "link.yaml",
        "linkdir/outside.yaml",
    ],
)
def test_config_path_outside_the_working_directory_is_refused(workdir, path):
    """Issue 11: config_path accepted absolute and `..` paths (and its errors echoed the file's values)."""
    outside = workdir.parent / "outside.yaml"
    outside.write_text("workers: s3cr3t-token-value\n")
    (workdir / "configs").mkdir()
    (workdir / "link.yaml").symlink_to(outside)
    (workdir / "linkdir").symlink_to(workdir.parent)
    with pytest.raises(
        ValueError,
        match=r"config_path must be a relative path inside the deployment's working "
        rf"directory \({os.path.realpath(workdir)}\), without '..'",
    ) as err:
        config_file(path)
    assert "s3cr3t" not in str(err.value)


def test_config_path_refusal_fails_the_flow_before_any_stage(workdir, data_root, prefect_backend):
    (workdir.parent / "outside.yaml").write_text("workers: 1\n")
    with pytest.raises(ValueError, match="config_path must be a relative path"):
        pipeline_flow(config_path="../outside.yaml", data_root=str(data_root))
    assert not (data_root / "ingest").exists()
    assert config_file("./configs/x.yaml") == str(workdir.resolve() / "configs" / "x.yaml")
