"""INTERIM (issue 12 refactor in progress): the real report moves here."""

from flows.tokenization import tokenize_report as report  # noqa: F401
