"""INTERIM (issue 12 refactor in progress): the real report moves here."""

from flows.mix import mix_report as report  # noqa: F401
