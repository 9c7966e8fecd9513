"""clean_flow under a Prefect test server: every rule over two shards, the manifest and report, `pretrain inspect
clean`, reuse, and versioning by block-list content (a changed list re-runs the stage, a moved one does not)."""

import json
import shutil

from flows.clean import clean_flow
from flows.pipeline import Stage
from flows.stage import task_runner
from storage.documents import Document, read_documents
from storage.manifest import list_versions, load_manifest
from tasks.clean import WORK, CleanParams

FLOW = clean_flow.with_options(task_runner=task_runner(1))
WORDS = " ".join(f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(80))
NAV = "Home | News | Sport | Contact us"


def corpus():
    pages = [
        Document(id=f"p{i}", text=f"{NAV}\nStory {chr(97 + i)} {WORDS}\n{NAV}", url=f"https://news.test/{i}")
        for i in range(4)
    ]
    pages[1].text += "\nReach the editor at editor@news-site.org or +1 415 555 2671; server 8.8.4.4."
    return [
        pages[:2] + [Document(id="blocked", text=WORDS, url="https://cdn.adult.test/x")],
        pages[2:] + [Document(id="nav-only", text=f"{NAV}\n{NAV}", url="https://news.test/nav")],
    ]


def test_clean_flow_rules_report_and_reuse(prefect_backend, data_root, make_version, tmp_path, capsys):
    from flows.cli import main

    make_version(data_root, Stage.QUALITY, corpus(), version="q1")
    blocklist = tmp_path / "lists" / "domains"
    blocklist.parent.mkdir()
    blocklist.write_text("adult.test\n")
    params = CleanParams(domain_lists=[str(blocklist)], max_line_repeats=4)
    v = FLOW(params=params, data_root=str(data_root))
    m = load_manifest(str(data_root), Stage.CLEAN)
    assert m.version == v and m.inputs["quality"] == "q1" and "block_lists" in m.inputs
    s = m.stats
    assert (s.docs_in, s.docs_out) == (6, 4) and s.dropped == {"url_blocked": 1, "too_short_after_clean": 1}
    assert s.counters["lines_removed"] == 10 and s.counters["pii.email"] == 1 and s.counters["pii.phone"] == 1
    assert s.counters["pii.ip"] == 1
    assert m.extras["top_removed_lines"] == [{"line": NAV, "count": 10}]
    assert m.extras["block_lists"][0]["path"] == str(blocklist)
    kept = {d.id: d for sh in m.shards for d in read_documents(f"{data_root}/clean/{v}/{sh.name}")}
    assert kept["p1"].text.endswith("editor at <EMAIL> or <PHONE>; server <IP>.") and NAV not in kept["p1"].text
    assert not (data_root / "clean" / v / WORK).exists()

    assert main(["inspect", "clean", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    for needle in ("## What each rule removed", "| 10 | Home \\| News", "### line_dedup: `p0`", "### pii: `p1`"):
        assert needle in out, needle
    assert "- after: Story a" in out and "<EMAIL>" in out
    # the samples show where PII was without publishing it
    assert "editor at edi*** or +1 ***; server 8.8***." in out and "news-site.org" not in json.dumps(m.extras)

    # same params and list content: reused; a moved list with the same content: reused too
    assert FLOW(params=params, data_root=str(data_root)) == v
    moved = tmp_path / "elsewhere.txt"
    shutil.copy(blocklist, moved)
    assert FLOW(params=params.model_copy(update={"domain_lists": [str(moved)]}), data_root=str(data_root)) == v
    assert len(list_versions(str(data_root), Stage.CLEAN)) == 1
    # the list changes: a new version, which no longer blocks the document
    blocklist.write_text("other.test\n")
    v2 = FLOW(params=params, data_root=str(data_root))
    assert v2 != v and load_manifest(str(data_root), Stage.CLEAN, v2).stats.dropped == {"too_short_after_clean": 1}
    rejected = [
        json.loads(d.meta["reason_detail"])
        for sh in m.rejected
        for d in read_documents(f"{data_root}/clean/{v}/{sh.name}")
        if d.meta["reason"] == "url_blocked"
    ]
    assert rejected == [{"rule": "domain", "match": "adult.test"}]


def test_empty_input_gives_an_empty_version(prefect_backend, data_root, make_version):
    make_version(data_root, Stage.QUALITY, [[], []])
    v = FLOW(params=CleanParams(), data_root=str(data_root))
    m = load_manifest(str(data_root), Stage.CLEAN, v)
    assert (m.stats.docs_in, m.stats.docs_out) == (0, 0) and [sh.rows for sh in m.shards] == [0, 0]
    assert m.extras["top_removed_lines"] == []
