"""Training checkpoints: `step-NNNNNN/` directories, valid only once their `meta.json` exists.

A checkpoint is a directory of `torch.save` files (`model.pt`, `optimizer.pt`, `rng.pt`, ...) plus a
JSON `meta.json` (model config, step, tokens seen, data position, validation loss, tokenize version,
tokenizer sha256, counters). Commit protocol, the artifacts' one (storage.artifacts): files are
written into `step-NNNNNN/` itself and `meta.json` last (a step saved again after a rollback loses its
`meta.json` first); readers ignore directories without `meta.json`, so a run killed mid-save never
resumes from half a checkpoint, and `prune_checkpoints` removes such leftovers. The train stage keeps
its checkpoints in the train version's own directory (written in place; flows/train.py), so a failed
run's checkpoints are where the next run of that version resumes from.

Retention (`prune_checkpoints`): keep the last K valid steps, the step with the lowest `val_loss` in
its meta, and milestones (steps divisible by M); everything else, and step directories without `meta.json`, is
deleted. Files are read with `torch.load(weights_only=True)`: only tensors and plain containers.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from storage import paths
from storage.artifacts import commit_marker_dir, finish_marker_dir
from storage.errors import reraise_os_error

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

META = "meta.json"
PREFIX = "step-"
_STEP_RE = re.compile(r"^step-(\d{6,})$")


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def step_dir(out_dir: str, step: int) -> str:
    return paths.join(out_dir, step_dir_name(step))


def save_checkpoint(out_dir: str, step: int, objects: dict[str, Any], meta: dict[str, Any]) -> str:
    """Write objects (name -> torch-saveable) as `<name>.pt` into `step-NNNNNN/` itself, then meta.json last."""
    fs, base = paths.filesystem(out_dir)
    final = paths.join(base, step_dir_name(step))
    import torch

    commit_marker_dir(fs, final, META)  # a rollback replayed past this step: the newer save wins
    for name, obj in objects.items():
        target = paths.join(final, f"{name}.pt")
        try:
            with fs.open(target, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as err:  # torch hides ENOSPC as "[enforce fail at inline_container.cc] unexpected pos"
            reraise_os_error(err, target)
    finish_marker_dir(fs, final, META, json.dumps({**meta, "step": step}, indent=2, sort_keys=True, default=str))
    return step_dir(out_dir, step)


def list_checkpoints(out_dir: str) -> list[int]:
    """Steps of the valid checkpoints (those with meta.json), ascending."""
    fs, base = paths.filesystem(out_dir)
    if not fs.exists(base):
        return []
    steps = []
    for entry in fs.ls(base, detail=False):
        m = _STEP_RE.match(entry.rstrip("/").rsplit("/", 1)[-1])
        if m and fs.exists(paths.join(entry, META)):
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_step(out_dir: str) -> int | None:
    steps = list_checkpoints(out_dir)
    return steps[-1] if steps else None


def load_meta(out_dir: str, step: int) -> dict[str, Any]:
    fs, base = paths.filesystem(out_dir)
    with fs.open(paths.join(base, step_dir_name(step), META), "r") as f:
        meta: dict[str, Any] = json.loads(f.read())
    return meta


def load_object(out_dir: str, step: int, name: str, map_location: str | torch.device = "cpu") -> Any:
    """One `<name>.pt` of a valid checkpoint."""
    import torch

    fs, base = paths.filesystem(out_dir)
    if not fs.exists(paths.join(base, step_dir_name(step), META)):
        raise FileNotFoundError(f"{step_dir(out_dir, step)} is not a complete checkpoint (no {META})")
    with fs.open(paths.join(base, step_dir_name(step), f"{name}.pt"), "rb") as f:
        return torch.load(f, map_location=map_location, weights_only=True)


def best_step(out_dir: str, metric: str = "val_loss") -> int | None:
    """Valid step with the lowest finite `metric` in its meta (None when no checkpoint has one)."""
    best: tuple[float, int] | None = None
    for step in list_checkpoints(out_dir):
        value = load_meta(out_dir, step).get(metric)
        if isinstance(value, (int, float)) and value == value and (best is None or value < best[0]):
            best = (float(value), step)
    return best[1] if best else None


def remove_checkpoints_after(out_dir: str, step: int) -> list[int]:
    """Delete the valid checkpoints after `step` (a rollback abandons them)."""
    fs, base = paths.filesystem(out_dir)
    removed = [s for s in list_checkpoints(out_dir) if s > step]
    for s in removed:
        fs.rm(paths.join(base, step_dir_name(s)), recursive=True)
    return removed


def prune_checkpoints(out_dir: str, keep_last: int, milestone_every: int = 0) -> list[int]:
    """Delete checkpoints other than the last `keep_last`, the best by val_loss and the milestones."""
    steps = list_checkpoints(out_dir)
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    best = best_step(out_dir)
    if best is not None:
        keep.add(best)
    if milestone_every > 0:
        keep |= {s for s in steps if s % milestone_every == 0}
    fs, base = paths.filesystem(out_dir)
    removed = [s for s in steps if s not in keep]
    for s in removed:
        fs.rm(paths.join(base, step_dir_name(s)), recursive=True)
    for entry in fs.ls(base, detail=False):  # steps a killed save left without meta.json
        if _STEP_RE.match(entry.rstrip("/").rsplit("/", 1)[-1]) and not fs.exists(paths.join(entry, META)):
            fs.rm(entry, recursive=True)
    if removed:
        log.info("pruned checkpoints %s (kept %s)", removed, sorted(keep))
    return removed


def mirror(local_dir: str, remote_dir: str, uploaded: dict[int, str] | None = None) -> dict[int, str]:
    """Make `remote_dir`'s checkpoints those of the local `local_dir`, with the checkpoint protocol on both
    sides: a valid local step the remote lacks (or holds with another `meta.json`, a step saved again after a
    rollback) is uploaded files first and `meta.json` last; a remote step gone locally (pruned, rolled back)
    loses its `meta.json` first, then its files. Every other file of `local_dir` (metrics, plots) is uploaded
    too. `uploaded` (step -> meta text) is what an earlier call of this run uploaded: those are not re-sent.
    Returns the updated map. Used while training on an object-store root, so a run killed outright on one
    machine resumes elsewhere from its last uploaded checkpoint (flows/train.py)."""
    import os

    uploaded = dict(uploaded or {})
    fs, base = paths.filesystem(remote_dir)
    local_steps = list_checkpoints(local_dir)
    for step in local_steps:
        name = step_dir_name(step)
        with open(os.path.join(local_dir, name, META)) as f:
            meta = f.read()
        target = paths.join(base, name)
        if step not in uploaded and fs.exists(paths.join(target, META)):  # already there (downloaded on resume)?
            with fs.open(paths.join(target, META), "r") as f:
                uploaded[step] = f.read()
        if uploaded.get(step) == meta:
            continue
        commit_marker_dir(fs, target, META)
        files = sorted(f for f in os.listdir(os.path.join(local_dir, name)) if f != META)
        paths.upload_dir(os.path.join(local_dir, name), paths.join(remote_dir, name), files)
        finish_marker_dir(fs, target, META, meta)
        uploaded[step] = meta
    for step in list_checkpoints(remote_dir):
        if step not in local_steps:
            target = paths.join(base, step_dir_name(step))
            fs.rm(paths.join(target, META))
            fs.rm(target, recursive=True)
            uploaded.pop(step, None)
    others = sorted(
        os.path.relpath(os.path.join(d, f), local_dir)
        for d, _, files in os.walk(local_dir)
        for f in files
        if not _STEP_RE.match(os.path.relpath(d, local_dir).split(os.sep)[0])
    )
    paths.upload_dir(local_dir, remote_dir, others)
    return uploaded


class Mirror:
    """`mirror(local_dir, remote_dir)` every `interval_s` seconds in a thread while a block runs, and once more at
    its end (success or failure). Failures of a periodic sync are logged and retried at the next one."""

    def __init__(self, local_dir: str, remote_dir: str, interval_s: float = 30.0) -> None:
        import threading

        self.local_dir, self.remote_dir, self.interval_s = local_dir, remote_dir, interval_s
        self.uploaded: dict[int, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-mirror", daemon=True)

    def sync(self) -> None:
        with self._lock:
            self.uploaded = mirror(self.local_dir, self.remote_dir, self.uploaded)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception as err:  # the next sync retries; the final one raises
                log.warning("checkpoint upload to %s failed (retried): %s", self.remote_dir, err)

    def __enter__(self) -> Mirror:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()
