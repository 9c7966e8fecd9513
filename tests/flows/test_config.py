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


def test_cli_config_show_and_run_set(capsys, monkeypatch):
    from flows import cli

    assert cli.main(["config", "show", "--set", "langid.threshold=0.5"]) == 0
    out = capsys.readouterr().out
    assert "threshold: 0.5" in out and "# The effective pipeline config: the defaults + --set" in out
    assert load_config_text(out).langid.threshold == 0.5
    assert cli.main(["config", "show", "--set", "langid.thresold=0.5"]) == 2
    assert "langid.thresold: unknown key" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr("flows.pipeline.pipeline_flow", lambda config, **kw: seen.setdefault("config", config) and {})
    monkeypatch.setattr(cli, "_shared_ephemeral_server", _nothing)
    monkeypatch.setattr(cli, "_needs_temporary_server", lambda: False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no temporary server started
    monkeypatch.setattr(cli.paths, "apply_prefect_env_defaults", lambda: None)
    assert cli.main(["run", "--set", "mix.seed=7", "--to", "langid"]) == 0
    assert seen["config"].mix.seed == 7


class _nothing:
    def __init__(self, *server):
        pass

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def test_runner_section_default_and_validation():
    """Issue 13: `runner` picks the process pool (default) or a Dask cluster; the file writes the default out."""
    written = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert written["runner"] == PipelineConfig().runner.model_dump(mode="json") == {"kind": "process", "address": None}
    config = parse_config({"runner": {"kind": "dask", "address": "tcp://10.0.0.5:8786"}})
    assert (config.runner.kind, config.runner.address) == ("dask", "tcp://10.0.0.5:8786")
    assert parse_config({"runner": {"kind": "dask"}}).runner.address is None  # a temporary local cluster
    with pytest.raises(ConfigError, match=r"runner\.kind: Input should be 'process' or 'dask' \(got a str\)"):
        parse_config({"runner": {"kind": "ray"}})
    with pytest.raises(ConfigError, match=r"runner\.adress: unknown key; allowed keys here: address, kind"):
        parse_config({"runner": {"adress": "tcp://x:8786"}})
    for name, field in type(config.runner).model_fields.items():
        assert field.description, f"runner.{name} has no description"


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError, match=r"ingest\.inptus: unknown key; allowed keys here: .*inputs"):
        parse_config({"ingest": {"inptus": ["x"]}})
    with pytest.raises(ConfigError, match=r"ingestt: unknown key; allowed keys here: .*ingest"):
        parse_config({"ingestt": {}})


def test_bad_value_names_key_and_constraint():
    with pytest.raises(ConfigError, match=r"workers: Input should be greater than or equal to 1 \(got an int\)"):
        parse_config({"workers": 0})
    with pytest.raises(ConfigError, match=r"ingest\.extractor: Input should be 'trafilatura' or 'resiliparse'"):
        parse_config({"ingest": {"extractor": "bs4"}})


SECRET = "s3cr3t-token-value"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"workers": SECRET}, r"workers: Input should be a valid integer.* \(got a str\)"),
        ({"workers": None}, r"workers: .* \(got nothing \(null\)\)"),
        (
            {"ingest": {"extractor": SECRET}},
            r"ingest.extractor: Input should be 'trafilatura' or 'resiliparse' \(got a str\)",
        ),
        ({"ingest": {"crawl_base_url": SECRET}}, r"ingest: Value error, crawl_base_url must be a URL"),
        ({"langid": {"languages": [f"{SECRET} x"]}}, r"langid.languages: Value error, languages has 1 empty or blank"),
        (
            {"decontaminate": {"benchmarks": [{"name": "b", "path": "x.jsonl", "fields": [{"k": SECRET}]}]}},
            r"decontaminate.benchmarks.0.fields.0: Input should be a valid string \(got a dict\)",
        ),
    ],
)
def test_errors_name_the_key_and_the_type_never_the_value(data, message):
    """Issue 11: a config value (a token typed in the wrong field, a file's content) is not echoed."""
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(data)
    assert SECRET not in str(err.value)


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


def _config_error(filter_options: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config({"quality": {"filter_options": filter_options}})
    return str(err.value)


def test_filter_option_values_are_type_checked_before_any_stage():
    """A string for an int threshold passed validation and failed in the quality stage with a TypeError
    naming no key (issue 11, defect 5); the error names the full key and the type, never the value."""
    msg = _config_error({"gopher_quality": {"min_doc_words": "abc"}})
    assert "quality.filter_options.gopher_quality.min_doc_words: expected int or null, got str" in msg
    assert "default: 50" in msg and "abc" not in msg
    bad = [  # (filter, option, value, what the datatrove constructor's annotation asks for)
        ("gopher_quality", "min_stop_words", True, "int or null, got bool"),
        ("gopher_quality", "max_doc_words", 1e5, "int or null, got float"),
        ("gopher_quality", "stop_words", "the", "list of (str) or null, got str"),
        ("c4_quality", "filter_policy", 1, "bool, got int"),
        ("c4_quality", "min_num_sentences", None, "int, got null"),
        ("fineweb_quality", "line_punct_thr", "0.1", "float, got str"),
        ("gopher_repetition", "top_n_grams", [[2, "0.2"]], "list of ([int, float]), got list"),
        ("gopher_repetition", "dup_n_grams", [[5, 0.1, 3]], "list of ([int, float]), got list"),
    ]
    for name, key, value, expected in bad:
        assert f"quality.filter_options.{name}.{key}: expected {expected}" in _config_error({name: {key: value}})
    msg = _config_error({"gopher_quality": {"min_doc_wordz": 5}, "c4_quality": {"language": "de"}})
    assert "gopher_quality.min_doc_wordz: GopherQualityFilter has no such argument; allowed: min_doc_words" in msg
    assert "c4_quality.language: set by the stage" in msg
    ok = {
        "gopher_quality": {"min_doc_words": None, "max_symbol_word_ratio": 1, "stop_words": ["the", "of"]},
        "gopher_repetition": {"top_n_grams": [[2, 0.3], [3, 0.2]], "dup_line_frac": None},
        "c4_quality": {"filter_no_terminal_punct": False, "min_num_sentences": 3},
        "fineweb_quality": {"stop_chars": [".", "!"], "short_line_length": 20},
    }
    assert parse_config({"quality": {"filter_options": ok}}).quality.filter_options == ok
