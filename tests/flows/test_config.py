"""Config validation: defaults file in sync, unknown keys and bad values named before any stage runs."""

from pathlib import Path

import pytest
import yaml

from flows.config import HEADER, ConfigError, apply_overrides, config_schema, config_yaml, load_config, parse_config
from flows.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]


def test_default_yaml_is_the_default_config():
    assert load_config(ROOT / "configs" / "default.yaml") == PipelineConfig()


def test_default_yaml_is_generated_with_every_description():
    """configs/default.yaml is `pretrain config show` of the defaults, byte for byte (regenerate it with
    `pretrain config show > configs/default.yaml` after changing a param), and every key has a description."""
    text = (ROOT / "configs" / "default.yaml").read_text()
    assert text == config_yaml(PipelineConfig(), header=HEADER), (
        "regenerate: pretrain config show > configs/default.yaml"
    )

    def undocumented(model, prefix=""):
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if not field.description:
                yield prefix + name
            if hasattr(value, "model_fields"):
                yield from undocumented(value, f"{prefix}{name}.")

    assert list(undocumented(PipelineConfig())) == []
    # a non-default config round-trips through the commented YAML too
    config = apply_overrides(PipelineConfig(), ["langid.languages=[de, fr]", "dedup.bands=20", "workers=3"])
    assert load_config_text(config_yaml(config)) == config


def load_config_text(text):
    return parse_config(yaml.safe_load(text))


def test_set_overrides_and_their_errors():
    config = apply_overrides(PipelineConfig(), ["langid.threshold=0.7", "runner.kind=dask", "train.max_steps=500"])
    assert (config.langid.threshold, config.runner.kind, config.train.max_steps) == (0.7, "dask", 500)
    with pytest.raises(ConfigError, match=r"langid\.nope: unknown key; allowed keys here: .*threshold"):
        apply_overrides(PipelineConfig(), ["langid.nope=1"])
    with pytest.raises(ConfigError, match=r"langid\.threshold: Input should be a valid number"):
        apply_overrides(PipelineConfig(), ["langid.threshold=high"])
    with pytest.raises(ConfigError, match=r"nope is not a config section; sections here: .*langid"):
        apply_overrides(PipelineConfig(), ["nope.x=1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        apply_overrides(PipelineConfig(), ["langid.threshold"])


def test_config_schema_describes_every_section():
    schema = config_schema()
    assert {"ingest", "langid", "dedup", "train", "runner"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_cli_config_show_and_run_set(capsys, cli_run_config):
    from flows import cli

    assert cli.main(["config", "show", "--set", "langid.threshold=0.5"]) == 0
    out = capsys.readouterr().out
    assert "threshold: 0.5" in out and "# The effective pipeline config: the defaults + --set" in out
    assert load_config_text(out).langid.threshold == 0.5
    assert cli.main(["config", "show", "--set", "langid.thresold=0.5"]) == 2
    assert "langid.thresold: unknown key" in capsys.readouterr().err
    seen = cli_run_config
    assert cli.main(["run", "--set", "mix.seed=7", "--to", "langid"]) == 0
    assert seen["config"].mix.seed == 7
