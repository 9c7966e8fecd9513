"""`pipeline_flow(config_path=...)`: the deployment form's YAML-file alternative to the inline config."""

import pytest

from flows.config import ConfigError, PipelineConfig
from flows.pipeline import pipeline_flow
from storage.manifest import load_manifest


def test_config_path_is_loaded_and_used(tmp_path, data_root, prefect_backend):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("workers: 1\ndemo_pages: 20\n")
    versions = pipeline_flow(config_path=str(cfg), data_root=str(data_root), to_stage="ingest")
    m = load_manifest(str(data_root), "ingest", versions["ingest"])
    assert m.stats.docs_in == 20  # demo_pages from the file, not the default 400
    assert (data_root / "_inputs" / "demo-crawl" / "pages-20").is_dir()


def test_config_path_and_inline_config_together_is_an_error(tmp_path, data_root, prefect_backend):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("workers: 1\n")
    with pytest.raises(ValueError, match="config_path=.* and an inline config were both given"):
        pipeline_flow(config=PipelineConfig(workers=1, demo_pages=20), config_path=str(cfg), data_root=str(data_root))


def test_bad_config_file_fails_naming_the_key(tmp_path, data_root, prefect_backend):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("workers: 1\ningest:\n  extractr: trafilatura\n")
    with pytest.raises(ConfigError, match="ingest.extractr: unknown key"):
        pipeline_flow(config_path=str(cfg), data_root=str(data_root))
    assert not (data_root / "ingest").exists()
