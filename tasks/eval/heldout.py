"""Held-out text for the eval stage: the pipeline's own val documents and configured text files.

- `val_documents`: the documents the `tokenize` version put in its val split, read back from its input `mix`
  version with the tokenize stage's own routing (`tasks.tokenization.route`: first copies whose val key is
  below the version's `val_threshold`). Training never saw them (the train split and the tokenizer sample
  exclude them), so they are the demo pipeline's held-out text with no file to configure.
- `read_texts`: a held-out file as documents: `.txt` is one document (WikiText-2's `valid.txt` as a whole),
  `.jsonl` / `.jsonl.gz` one document per line from its `text` field, `.parquet` our document shards.
- `continuation_task`: a 4-way multiple-choice task made from held-out documents, cut into consecutive spans
  of `CONTEXT_WORDS` + `CHOICE_WORDS` words: the context is a span's first 48 words, the right choice its
  last 8, the wrong ones the last 8 of three other spans (seeded; any document, so one long val document is
  enough; fewer wrong choices when there are fewer other spans); only spans whose 8 words are plain (ASCII,
  mostly letters). Chance is the mean of 1 / choices (1/4 with 4+ spans); a model that learned
  the domain picks the coherent continuation. It is in-domain (web text like the
  training data), unlike the public benchmarks.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

from storage import paths
from storage.documents import read_documents
from storage.manifest import Manifest, load_manifest
from tasks.eval.tasks import EvalTask, Item
from tasks.text import sample_key

CONTEXT_WORDS, CHOICE_WORDS, CHOICES, MAX_WORD_CHARS = 48, 8, 4, 15
CONTINUATION_TASK = "heldout_continuation"


def val_documents(root: str, tokenize: Manifest, limit: int) -> list[str]:
    """The text of up to `limit` documents of tokenize@version's val split, in the mix version's order."""
    from tasks.tokenization import original_id

    mix_version = tokenize.inputs.get("mix")
    threshold = tokenize.extras.get("val_threshold")
    if mix_version is None or threshold is None:
        raise ValueError(
            f"tokenize@{tokenize.version} records no mix input or val_threshold, so its val documents cannot be "
            "read back; set eval.val_documents: 0 and eval.val_continuation_items: 0 (and configure eval.heldout)"
        )
    mix = load_manifest(root, "mix", mix_version)
    seed = int(tokenize.params.get("seed", 0))
    out: list[str] = []
    for shard in mix.shards:
        for doc in read_documents(paths.join(paths.version_dir(root, "mix", mix.version), shard.name)):
            repeat = int(doc.meta.get("repeat") or 0)
            if repeat or not doc.text.strip():
                continue
            if sample_key("val", seed, original_id(doc.id, repeat)) < float(threshold):
                out.append(doc.text)
                if len(out) >= limit:
                    return out
    return out


def _jsonl_texts(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ValueError(f"{path}:{n}: expected a JSON object with a `text` string")
                yield row["text"]


def read_texts(path: str, key: str, limit: int | None = None) -> list[str]:
    """The documents of one held-out file (the first `limit`); `key` names the config entry in errors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}: held-out file {path} does not exist; fix the path or remove the entry")
    if p.suffix == ".txt":
        texts: list[str] = [p.read_text(encoding="utf-8")]
    elif p.name.endswith((".jsonl", ".jsonl.gz")):
        texts = list(_jsonl_texts(p))
    elif p.suffix == ".parquet":
        texts = [d.text for d in read_documents(str(p))]
    else:
        raise ValueError(f"{key}: {path}: held-out files are .txt, .jsonl, .jsonl.gz or .parquet (a `text` field)")
    texts = [t for t in texts if t.strip()][:limit]
    if not texts:
        raise ValueError(f"{key}: held-out file {path} holds no text")
    return texts


def _plain_word(word: str) -> bool:
    """A short ASCII word, mostly letters: a choice of 8 of them stays far below any model's seq_len in tokens
    (code, tables and URLs in web text would not)."""
    return word.isascii() and len(word) <= MAX_WORD_CHARS and 2 * sum(c.isalpha() for c in word) >= len(word)


def continuation_task(texts: list[str], n_items: int, seed: int) -> EvalTask:
    """The `heldout_continuation` task from documents long enough for a context and a continuation."""
    spans = []
    span = CONTEXT_WORDS + CHOICE_WORDS
    for text in texts:
        words = text.split()
        for start in range(0, len(words) - span + 1, span):
            choice = words[start + CONTEXT_WORDS : start + span]
            if all(map(_plain_word, choice)):
                spans.append((" ".join(words[start : start + CONTEXT_WORDS]), " " + " ".join(choice)))
    task = EvalTask(CONTINUATION_TASK, "choice", source="tokenize val documents")
    rng = random.Random(seed)
    for k, (context, right) in enumerate(spans[:n_items]):
        others = sorted({s[1] for j, s in enumerate(spans) if j != k and s[1] != right})
        if not others:
            continue
        choices = rng.sample(others, min(CHOICES - 1, len(others)))
        gold = rng.randrange(len(choices) + 1)
        choices.insert(gold, right)
        task.items.append(Item([context] * len(choices), choices, gold))
    return task
