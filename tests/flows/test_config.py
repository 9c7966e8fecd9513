"""Config validation: defaults file in sync, unknown keys and bad values named before any stage runs."""

from pathlib import Path

import pytest
import yaml

from flows.config import ConfigError, PipelineConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_default_yaml_is_the_default_config():
    assert load_config(ROOT / "configs" / "default.yaml") == PipelineConfig()


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError, match=r"ingest\.inptus: unknown key; allowed keys here: .*inputs"):
        parse_config({"ingest": {"inptus": ["x"]}})
    with pytest.raises(ConfigError, match=r"ingestt: unknown key; allowed keys here: .*ingest"):
        parse_config({"ingestt": {}})


def test_bad_value_names_key_and_constraint():
    with pytest.raises(ConfigError, match=r"workers: Input should be greater than or equal to 1 \(got 0\)"):
        parse_config({"workers": 0})
    with pytest.raises(ConfigError, match=r"ingest\.extractor: Input should be 'trafilatura' or 'resiliparse'"):
        parse_config({"ingest": {"extractor": "bs4"}})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(lst)


def test_empty_file_is_an_error_unless_explicitly_empty_mapping(tmp_path):
    """An empty or comments-only YAML used to run the defaults silently (issue 11, item 5)."""
    for text in ("", "# just a comment\n", "\n\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=r"is empty; write `\{\}` in it"):
            load_config(empty)
    explicit = tmp_path / "defaults.yaml"
    explicit.write_text("{}\n")
    assert load_config(explicit) == PipelineConfig()
