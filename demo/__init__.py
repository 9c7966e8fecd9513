"""The generated demo crawl (not a stage): what `pretrain run` ingests when no input is configured.

`demo.crawl.generate_demo_crawl` writes a deterministic gzip WARC of generated pages plus a ground-truth
JSONL (`demo.pages` builds the pages, `demo.html` the HTML, `demo.text` the texts, from
`demo/data/demo_texts.json`). `demo_inputs(root, pages)` generates it once per data root and page count
under `<root>/_inputs/demo-crawl/pages-<N>/` and returns the WARC path for ingest.
"""

from __future__ import annotations

from storage import paths

DEMO_DIR = "_inputs/demo-crawl"


def demo_crawl_dir(root: str) -> str:
    """Where `pretrain run` on the default config writes the generated demo crawl."""
    return paths.join(root, DEMO_DIR)


def demo_inputs(root: str, pages: int) -> list[str]:
    """Generate the demo crawl once per (root, pages) and return its WARC path.

    An existing crawl is reused as it is (the ground truth is renamed into place last, so its presence
    means both files are complete): a re-run on complete versions writes nothing into the data root.
    """
    from demo.crawl import GROUND_TRUTH_NAME, WARC_NAME, generate_demo_crawl

    out = paths.join(demo_crawl_dir(root), f"pages-{pages}")
    fs, base = paths.filesystem(out)
    if fs.exists(paths.join(base, GROUND_TRUTH_NAME)) and fs.exists(paths.join(base, WARC_NAME)):
        return [paths.join(out, WARC_NAME)]
    # on an object store: generated locally, then uploaded, the ground truth last (it marks completeness)
    with paths.staged_dir(out, "demo-crawl", [WARC_NAME, GROUND_TRUTH_NAME]) as local:
        generate_demo_crawl(local, pages=pages)
    return [paths.join(out, WARC_NAME)]
