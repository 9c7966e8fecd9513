"""Base class for every stage's parameters: frozen, strict pydantic models.

Each stage declares `<Stage>Params(StageParams)` in its `tasks/<stage>.py` with bounds and a
description on every field; `model_dump(mode="json")` of the validated params is what goes into the
version hash, so a changed knob gives a new version of that stage and of everything downstream.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class StageParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def version_params(self) -> dict[str, Any]:
        """The params that define the output (hashed into the version id). Override to leave knobs out
        that do not change the output (e.g. worker counts)."""
        return self.model_dump(mode="json")
