"""Exact-duplicate keys, global grouping by the keep rule, and the keep-rule ranking."""

import numpy as np
import pyarrow as pa
import pytest

from storage.documents import Document, DocumentWriter
from tasks.dedup import DedupParams, check_inputs, keep_rank
from tasks.dedup.exact import exact_digests, exact_kept, group_sizes
from tasks.text import text_digest, text_hash


def test_digest_ignores_case_whitespace_and_compatibility_forms():
    d = exact_digests(["Hello   World\n", "hello world", "ＨＥＬＬＯ\u00a0world", "hello worlds", ""])
    assert d.shape == (5, 2) and d.dtype == np.uint64
    assert (d[0] == d[1]).all() and (d[1] == d[2]).all()
    assert not (d[1] == d[3]).all() and not (d[1] == d[4]).all()


def test_text_digest_is_text_hash():
    odd = ["", " a\u00a0b\u3000c\x1c\x85 d\u2028e ", "Ｆｕｌｌ width ﬁ İ", "tabs\t\tand\n\nnewlines", "x" * 1000]
    for t in odd:
        assert text_digest(t) == bytes.fromhex(text_hash(t)), repr(t)


def test_exact_kept_picks_best_rank_per_group():
    texts = ["a b c", "x y", "A  B C", "a b c", "z"]
    rank = np.array([2, 0, 1, 3, 4])  # doc 2 ranks best among the three copies of "a b c"
    kept = exact_kept(exact_digests(texts), rank)
    assert kept.tolist() == [2, 1, 2, 2, 4]
    assert group_sizes(kept).tolist() == [3]
    assert exact_kept(exact_digests(["only"]), np.array([0])).tolist() == [0]


def _keys(ids, key, kind):
    return pa.table({"id": pa.array(ids, pa.string()), "key": pa.array(key, kind)})


def test_keep_rank_earliest_with_missing_dates_last_and_ties_by_id():
    keys = _keys(
        ["d", "c", "b", "a"],
        ["2024-03-01T00:00:00Z", None, "2024-01-01T00:00:00Z", "2024-03-01T00:00:00Z"],
        pa.string(),
    )
    rank = keep_rank(keys, "earliest")
    # b (Jan) first, then a and d (same date, by id), the undated c last
    assert rank.tolist() == [2, 3, 0, 1]


def test_keep_rank_highest_quality_descending_ties_by_id():
    keys = _keys(["a", "b", "c", "d"], [0.5, 0.9, None, 0.9], pa.float64())
    assert keep_rank(keys, "highest_quality").tolist() == [2, 0, 3, 1]


def test_highest_quality_needs_the_column(tmp_path):
    src = str(tmp_path / "part-00000.parquet")
    with DocumentWriter(src) as w:
        w.write(Document(id="a", text="t"))
    check_inputs([src], DedupParams(keep="earliest"))
    with pytest.raises(ValueError, match=r"keep='highest_quality' needs a 'quality_score' column.*part-00000"):
        check_inputs([src], DedupParams(keep="highest_quality"))


def test_missing_xxhash_fails_before_any_shard_with_the_fix(tmp_path, monkeypatch):
    import importlib.util

    src = str(tmp_path / "part-00000.parquet")
    with DocumentWriter(src) as w:
        w.write(Document(id="a", text="t", crawl_date="2024-01-01"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xxhash" else real(name, *a))
    assert DedupParams().hash_function == "xxhash"
    with pytest.raises(ImportError, match=r"pip install xxhash, or set dedup.hash_function='sha1'"):
        check_inputs([src], DedupParams())
    check_inputs([src], DedupParams(hash_function="sha1"))
    check_inputs([src], DedupParams(near=False))


def test_params_validation():
    with pytest.raises(ValueError, match="exact and near are both off"):
        DedupParams(exact=False, near=False)
    with pytest.raises(ValueError):
        DedupParams(keep="latest")
    assert DedupParams().num_perm == 112
    assert "keep_work" not in DedupParams(keep_work=True).version_params()
