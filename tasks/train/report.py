"""INTERIM (issue 12 refactor in progress): the real report moves here."""

from flows.train import report_markdown as report  # noqa: F401
