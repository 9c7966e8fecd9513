"""The pipeline config: one YAML file holding every stage's params, validated before any stage runs.

`PipelineConfig` (flows/pipeline.py, built from the pipeline table on `ConfigBase`) nests each stage's
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
    """The pipeline-wide settings; `flows.pipeline.PipelineConfig` adds one section per row of the pipeline
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
    """flows.pipeline.PipelineConfig (built from the pipeline table, which imports every stage: so, lazily)."""
    from flows.pipeline import PipelineConfig

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
