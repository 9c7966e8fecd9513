"""Versioned stage artifacts: paths, manifests, documents, stats, token shards, checkpoints, gc."""

import logging as _logging

# Our library loggers reach the console and the Prefect UI through PREFECT_LOGGING_EXTRA_LOGGERS,
# which adds Prefect's handlers but no level: left NOTSET they inherit the root's WARNING and every
# INFO line (per-shard counts, training progress) is dropped. Every entry point imports storage.
for _name in ("tasks", "storage", "models", "flows"):
    if _logging.getLogger(_name).level == _logging.NOTSET:
        _logging.getLogger(_name).setLevel(_logging.INFO)
