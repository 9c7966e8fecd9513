"""INTERIM (issue 12 refactor in progress): the real report moves here."""

from flows.dedup import report_markdown as report  # noqa: F401
