"""`StageStats`: the counters every stage keeps, merged across shards and stored in the manifest.

Keys: `docs_in`, `docs_out`, `dropped[<reason>]` (snake_case reasons declared as constants in the stage
module), `errors` (the subset of drops caused by bad input: decode/parse failures, used for the
`max_error_fraction` check), bytes of text in and out, seconds, and free-form integer `counters` for
stage-specific histograms (e.g. `language.en`). The invariant `docs_in == docs_out + sum(dropped)` is
checked before a manifest is committed, so nothing is lost silently.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StageStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    docs_in: int = 0
    docs_out: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    errors: int = Field(0, description="Drops caused by unreadable/corrupt input (subset of dropped).")
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    counters: dict[str, int] = Field(default_factory=dict)

    def drop(self, reason: str, n: int = 1, error: bool = False) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        if error:
            self.errors += n

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    @property
    def docs_dropped(self) -> int:
        return sum(self.dropped.values())

    def merge(self, other: StageStats) -> StageStats:
        """Sum of two shard stats; seconds add up (CPU time), the flow overwrites with wall time."""
        return StageStats(
            docs_in=self.docs_in + other.docs_in,
            docs_out=self.docs_out + other.docs_out,
            dropped=dict(Counter(self.dropped) + Counter(other.dropped)),
            errors=self.errors + other.errors,
            bytes_in=self.bytes_in + other.bytes_in,
            bytes_out=self.bytes_out + other.bytes_out,
            seconds=self.seconds + other.seconds,
            counters=dict(Counter(self.counters) + Counter(other.counters)),
        )

    @classmethod
    def merge_all(cls, items: list[StageStats]) -> StageStats:
        total = cls()
        for s in items:
            total = total.merge(s)
        return total

    def check_conservation(self, where: str) -> None:
        assert self.docs_in == self.docs_out + self.docs_dropped, (
            f"{where}: docs_in={self.docs_in} != docs_out={self.docs_out} + dropped={self.docs_dropped} "
            f"({self.dropped}); a document was lost"
        )

    def check_error_fraction(self, max_error_fraction: float, where: str) -> None:
        """Fail the stage when too many records were unreadable (user error: ValueError with the fix)."""
        if self.docs_in and self.errors / self.docs_in > max_error_fraction:
            raise ValueError(
                f"{where}: {self.errors} of {self.docs_in} records failed "
                f"({self.errors / self.docs_in:.1%} > max_error_fraction={max_error_fraction}); "
                f"reasons: { {k: v for k, v in self.dropped.items()} }. Fix or remove the bad inputs, or raise "
                f"max_error_fraction in the config"
            )

    def table(self) -> list[dict[str, Any]]:
        """Rows for the `<stage>-stats` Prefect table artifact and `pretrain inspect`."""
        rate = self.docs_in / self.seconds if self.seconds else 0.0
        rows: list[dict[str, Any]] = [
            {"metric": "docs_in", "value": self.docs_in},
            {"metric": "docs_out", "value": self.docs_out},
            {"metric": "docs_dropped", "value": self.docs_dropped},
        ]
        rows += [{"metric": f"dropped.{k}", "value": v} for k, v in sorted(self.dropped.items())]
        rows += [
            {"metric": "errors", "value": self.errors},
            {"metric": "bytes_in", "value": self.bytes_in},
            {"metric": "bytes_out", "value": self.bytes_out},
            {"metric": "seconds", "value": round(self.seconds, 3)},
            {"metric": "docs_per_s", "value": round(rate, 1)},
        ]
        return rows
