"""The local download cache of object-store files (`storage.paths.local_copy`) stays under its size limit,
evicting the least recently used entries, never one used within the last `min_age_s`."""

import os
import time
import uuid

import fsspec
import pytest

from storage import paths


def test_the_download_cache_evicts_least_recently_used_beyond_its_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_CACHE_DIR, str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    base = f"memory://cache-{uuid.uuid4().hex}"
    urls = [f"{base}/f{i}.bin" for i in range(4)]
    for url in urls:
        fs.pipe_file(url, b"x" * 1000)
    copies = [paths.local_copy(url) for url in urls]  # 4 x 1000 bytes, under the default limit: all kept
    assert all(os.path.isfile(c) for c in copies)
    assert paths.local_copy(urls[0]) == copies[0]  # a hit: the same file, marked used now
    old = time.time() - 7200
    for c in copies[1:]:
        os.utime(os.path.dirname(c), (old, old))  # used two hours ago
    os.utime(os.path.dirname(copies[3]), (old + 60, old + 60))  # the most recent of the old ones
    removed = paths.prune_cache(max_bytes=2500)
    assert sorted(removed) == sorted(os.path.dirname(c) for c in copies[1:3])
    assert os.path.isfile(copies[0]) and os.path.isfile(copies[3])
    # entries used within min_age_s stay even over the limit
    assert paths.prune_cache(max_bytes=0) == [os.path.dirname(copies[3])] and os.path.isfile(copies[0])


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(paths.ENV_CACHE_MAX_GB, "0.5")
    assert paths.cache_limit() == 2**29
    monkeypatch.delenv(paths.ENV_CACHE_MAX_GB)
    assert paths.cache_limit() == 50 * 2**30
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv(paths.ENV_CACHE_MAX_GB, bad)
        with pytest.raises(ValueError, match="PRETRAIN_CACHE_MAX_GB=.*expected a number of GB >= 0"):
            paths.cache_limit()
