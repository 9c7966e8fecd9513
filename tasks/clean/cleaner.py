"""One document through the clean stage's three rules (URL filter, line dedup, PII), with every count kept.

`Cleaner.clean(doc, stats)` edits `doc` in place and returns None (keep it) or (reason, detail) to drop it;
it also keeps a few before/after samples per rule and the text of the top removed lines for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.documents import Document
from storage.stats import StageStats
from tasks.clean.lines import frequent_mask, line_key
from tasks.clean.pii import PiiConfig, masked, redact
from tasks.clean.urls import UrlFilter

URL_BLOCKED = "url_blocked"
TOO_SHORT_AFTER_CLEAN = "too_short_after_clean"
PII_DENSE = "pii_dense"
SAMPLES_PER_RULE = 3
EXCERPT = 160  # characters of context on each side of the first change in a sample
LINE_TEXT_MAX = 200


@dataclass(frozen=True)
class LineDedup:
    frequent: np.ndarray  # sorted keys of the lines to remove
    top_keys: frozenset[int]  # the report's top lines: their text is collected


def _excerpt(before: str, after: str) -> dict[str, str]:
    """The two texts around their first difference."""
    i = 0
    step = 256
    while i < min(len(before), len(after)) and before[i : i + step] == after[i : i + step]:
        i += step
    while i < min(len(before), len(after)) and before[i] == after[i]:
        i += 1
    lo = max(0, i - EXCERPT)
    return {"before": before[lo : i + 2 * EXCERPT], "after": after[lo : i + 2 * EXCERPT]}


@dataclass
class Cleaner:
    urls: UrlFilter
    lines: LineDedup | None
    pii: PiiConfig
    min_words: int
    pii_drop_density: float | None
    samples: list[dict[str, Any]] = field(default_factory=list)
    _top: dict[int, str] = field(default_factory=dict)
    _sampled: dict[str, int] = field(default_factory=dict)

    def top_texts(self) -> dict[str, str]:
        return {str(k): v for k, v in self._top.items()}

    def _sample(self, rule: str, doc: Document, before: str, after: str) -> None:
        if self._sampled.get(rule, 0) < SAMPLES_PER_RULE:
            self._sampled[rule] = self._sampled.get(rule, 0) + 1
            self.samples.append({"rule": rule, "id": doc.id, "url": doc.url, **_excerpt(before, after)})

    def clean(self, doc: Document, stats: StageStats) -> tuple[str, dict[str, Any]] | None:
        doc.meta.update(clean_lines_removed=0, clean_pii=0)
        hit = self.urls.blocked(doc.url)
        if hit is not None:
            stats.count(f"url_blocked.{hit[0]}")
            stats.count(f"chars_removed.{URL_BLOCKED}", len(doc.text))
            return URL_BLOCKED, {"rule": hit[0], "match": hit[1]}
        if self.lines is not None:
            dropped = self._dedup_lines(doc, stats)
            if dropped is not None:
                return dropped
        return self._redact(doc, stats)

    def _dedup_lines(self, doc: Document, stats: StageStats) -> tuple[str, dict[str, Any]] | None:
        assert self.lines is not None
        lines = doc.text.split("\n")
        keys = [line_key(x) for x in lines]
        mask = frequent_mask(self.lines.frequent, [k or 0 for k in keys]) & np.asarray([k is not None for k in keys])
        removed = int(mask.sum())
        if not removed:
            return None
        kept, chars = [], 0
        for line, key, gone in zip(lines, keys, mask.tolist()):
            if not gone:
                kept.append(line)
                continue
            chars += len(line) + 1
            if key in self.lines.top_keys and key not in self._top:
                self._top[key] = " ".join(line.split())[:LINE_TEXT_MAX]
        text = "\n".join(kept).strip()
        stats.count("lines_removed", removed)
        doc.meta["clean_lines_removed"] = removed
        words = len(text.split())
        if words < self.min_words:
            stats.count("chars_removed.line_dedup", len(doc.text) - len(text))
            stats.count(f"chars_removed.{TOO_SHORT_AFTER_CLEAN}", len(text))
            return TOO_SHORT_AFTER_CLEAN, {"lines_removed": removed, "words_left": words}
        stats.count("chars_removed.line_dedup", len(doc.text) - len(text))
        stats.count("docs_changed.line_dedup")
        self._sample("line_dedup", doc, doc.text, text)
        doc.text = text
        return None

    def _redact(self, doc: Document, stats: StageStats) -> tuple[str, dict[str, Any]] | None:
        if not self.pii.kinds:
            return None
        r = redact(doc.text, self.pii)
        for kind, n in r.allowed.items():
            stats.count(f"pii_allowed.{kind}", n)
        if not r.total:
            return None
        density = 1000.0 * r.total / max(len(doc.text), 1)
        if self.pii_drop_density is not None and density > self.pii_drop_density:
            stats.count(f"chars_removed.{PII_DENSE}", len(doc.text))
            doc.text = r.text
            return PII_DENSE, {"found": r.found, "density": round(density, 3)}
        for kind, n in r.found.items():
            stats.count(f"pii.{kind}", n)
        stats.count("chars_removed.pii", r.chars)
        stats.count("docs_changed.pii")
        self._sample("pii", doc, masked(doc.text, r.replaced), r.text)
        doc.text = r.text
        doc.meta["clean_pii"] = r.total
        return None
