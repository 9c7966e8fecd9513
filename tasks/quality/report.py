"""INTERIM (issue 12 refactor in progress): the real report moves here."""

from flows.quality import report_markdown as report  # noqa: F401
from flows.quality_classifier import report_markdown as classifier_report  # noqa: F401
