"""The pipeline config: one YAML file holding every stage's params, validated before any stage runs.

`PipelineConfig` (flows/stages.py, built from the pipeline table on `ConfigBase`) nests each stage's
`<Stage>Params` under the stage's name (strict: unknown keys and bad values fail, naming the key and the
allowed values). `pretrain run` with no `--config` uses `PipelineConfig()`: the demo
crawl, the tiny model, everything offline. `configs/default.yaml` is the same config written out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RunnerConfig(BaseModel):
    """Where the shard tasks of the CPU stages run (training always runs in the flow's own process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["process", "dask"] = Field(
        "process",
        description="process: a pool of `workers` processes on this machine; dask: a Dask cluster "
        '(needs `pip install -e ".[dask]"`).',
    )
    address: Optional[str] = Field(
        None,
        description="kind dask: the scheduler of a running Dask cluster (tcp://host:8786); empty: a temporary "
        "local cluster of `workers` processes. The data root must be reachable under the same path by every "
        "worker.",
    )


class ConfigBase(BaseModel):
    """The pipeline-wide settings; `flows.stages.PipelineConfig` adds one section per row of the pipeline
    table (the stage's params, named by the stage). Prefect renders it as the run form of `pretrain/default`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    workers: int = Field(2, ge=1, le=256, description="Worker processes per CPU stage (1 = run shards in one thread).")
    demo_pages: int = Field(
        400, ge=20, le=100_000, description="Pages of the generated demo crawl, used when ingest has no inputs."
    )
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig,
        description="Where shard tasks run: this machine's process pool, or a Dask cluster (`pretrain run --dask`).",
    )

    def section(self, stage: str) -> Any:
        """The params of `stage` (its section; the sections come from the pipeline table)."""
        return getattr(self, stage)


def pipeline_config() -> type[ConfigBase]:
    """flows.stages.PipelineConfig (built from the pipeline table, which imports every stage's params: so, lazily)."""
    from flows.stages import PipelineConfig

    return PipelineConfig


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the fix."""


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at `loc` inside `model` (for unknown-key messages)."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        current = next((a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def _kind(value: Any) -> str:
    """'a str', 'an int', 'a list', 'nothing' (for None): the type of a bad value, never the value."""
    if value is None:
        return "nothing (null)"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed(pipeline_config(), e["loc"])
            lines.append(f"  {key}: unknown key; allowed keys here: {', '.join(allowed)}")
        else:
            # the value itself is not shown: it may be a secret or a file's content (issue 11)
            lines.append(f"  {key}: {e['msg']} (got {_kind(e.get('input'))})")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = "<inline>") -> ConfigBase:
    try:
        return pipeline_config().model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path | None) -> ConfigBase:
    """Read and validate a YAML config; None gives the default config."""
    if path is None:
        return pipeline_config()()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass --config with a YAML file (see configs/default.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
    if data is None:  # an empty (or comments-only) file is more likely a mistake than a wish for the defaults
        raise ConfigError(
            f"config file {p} is empty; write `{{}}` in it to run the default config explicitly, or leave out --config"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of stage names to params, got {type(data).__name__}")
    return parse_config(data, str(p))


# ---------------------------------------------------------------- discover and override


HEADER = (
    "# The default pipeline config (what `pretrain run` uses with no --config), written out with each key's\n"
    "# description. Generated: `pretrain config show > configs/default.yaml`; tests/flows/test_config.py\n"
    "# keeps it in sync with the params. Copy it, keep the keys you change, and pass it with --config.\n"
)


def _comment(text: str, indent: str, width: int = 110) -> list[str]:
    import textwrap

    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.split()), width - len(indent) - 2)]


def _scalar_yaml(key: str, value: Any, indent: str) -> list[str]:
    dumped = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=1000).rstrip("\n")
    return [f"{indent}{line}" for line in dumped.split("\n")]


def _yaml_lines(model: BaseModel, indent: str, comments: bool) -> list[str]:
    lines: list[str] = []
    data = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if comments and field.description:
            lines += _comment(field.description, indent)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            lines += _yaml_lines(value, indent + "  ", comments)
        else:
            lines += _scalar_yaml(name, data[name], indent)
    return lines


def config_yaml(config: BaseModel, comments: bool = True, header: str = "") -> str:
    """`config` as YAML, every key preceded by its field description as a comment (`pretrain config show`);
    loads back to the same config."""
    return header + "\n".join(_yaml_lines(config, "", comments)) + "\n"


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the pipeline config (`pretrain config schema`): every key, type, default, bound and
    description, for editors and for generating run forms."""
    schema: dict[str, Any] = pipeline_config().model_json_schema()
    return schema


def apply_overrides(config: ConfigBase, overrides: list[str]) -> ConfigBase:
    """`--set stage.key=value` (repeatable): each value is read as YAML (`0.7`, `true`, `[en, de]`, `null`), the
    dotted key addresses a section's field; the result is validated like a config file, errors naming the
    `--set` that caused them."""
    data = config.model_dump(mode="json")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set langid.threshold=0.7")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {err}") from None
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                allowed = ", ".join(sorted(k for k, v in node.items() if isinstance(v, dict))) or "none"
                raise ConfigError(f"--set {item!r}: {where} is not a config section; sections here: {allowed}")
            node = child
        node[parts[-1]] = value
    return parse_config(data, "(after --set " + " ".join(overrides) + ")")
