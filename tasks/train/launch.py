"""Multi-process training from Python: `torchrun --standalone --nproc_per_node N -m tasks.train JOB.json`.

`train_processes(job, n, log)` writes the `TrainJob` to `OUT_DIR/_work/job.json`, runs torchrun (as
`python -m torch.distributed.run`, this interpreter, the repository on PYTHONPATH) in its own session,
streams its stdout and stderr to `log` line by line, and returns the `TrainResult` rank 0 wrote to
`OUT_DIR/result.json` (tasks/train/__init__.py `main`; every file of the run is rank 0's). On success
`_work/` is removed, so the directory holds what an in-process `train(...)` leaves; after a failure the
job file stays beside the checkpoints, for a look and for `torchrun ... -m tasks.train` by hand.

Failure: a non-zero exit raises `TorchrunError` naming the exit code and the last lines of torchrun's
stderr (its error summary, which names the worker's exception: `main` is wrapped in torchrun's
`@record`). Interruption (KeyboardInterrupt, a Prefect cancellation or any other BaseException while
waiting): torchrun gets SIGTERM, which it forwards to its workers, then SIGKILL after `STOP_GRACE_S`;
torchrun also gets SIGTERM when this process dies (PR_SET_PDEATHSIG), and its workers when torchrun
dies, so no process outlives the run. Checkpoints are complete only with their meta.json, so a kill
at any point leaves the directory resumable.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from tasks.train.params import RESULT, TrainJob, TrainResult

REPO = Path(__file__).resolve().parents[2]
WORK_DIR = "_work"
JOB_FILE = "job.json"
TAIL_LINES = 25
STOP_GRACE_S = 5.0
EXCEPTION_LINE = re.compile(r"^\s*(?:\w+\.)*[A-Z]\w*: \S")  # "pyarrow.lib.ArrowInvalid: Not an Arrow file"
_SIGNALS = {s.value for s in signal.Signals}

Logger = logging.Logger | logging.LoggerAdapter[Any]


class TorchrunError(RuntimeError):
    """torchrun exited with a non-zero code."""

    def __init__(self, code: int, processes: int, tail: list[str]):
        self.code, self.tail = code, tail
        self.cause = next((line.strip() for line in reversed(tail) if EXCEPTION_LINE.match(line)), None)
        how = f" (killed by {signal.Signals(-code).name})" if code < 0 and -code in _SIGNALS else ""
        cause = f": {self.cause}" if self.cause else ""
        lines = "\n".join(tail) or "(nothing)"
        super().__init__(
            f"torchrun ({processes} training processes) exited with code {code}{how}{cause}; "
            f"the last lines of its stderr:\n{lines}"
        )


def torchrun_command(job_path: str, processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "tasks.train",
        job_path,
    ]


def _death_signal() -> Any:
    """A `preexec_fn` asking for SIGTERM when the parent dies (Linux; None elsewhere). libc is loaded here,
    in the parent: the child, forked from a threaded process, only calls it."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to torchrun's process group (torchrun forwards it to its workers), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def train_processes(job: TrainJob, processes: int, log: Logger) -> TrainResult:
    """Train with `processes` DDP processes under torchrun; returns the result rank 0 wrote."""
    out = Path(job.out_dir).resolve()
    job = job.model_copy(
        update={
            "out_dir": str(out),
            "shards_dir": str(Path(job.shards_dir).resolve()),
            "tokenizer_path": str(Path(job.tokenizer_path).resolve()) if job.tokenizer_path else None,
        }
    )
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    job_path = work / JOB_FILE
    job_path.write_text(job.model_dump_json(indent=2))
    (out / RESULT).unlink(missing_ok=True)  # only this run's result counts
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    cmd = torchrun_command(str(job_path), processes)
    log.info("launching %d training processes: %s", processes, " ".join(cmd))
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        cwd=str(REPO),
        env=env,
        start_new_session=True,  # the terminal's Ctrl-C is ours to forward; its own process group to stop
        preexec_fn=_death_signal(),  # noqa: PLW1509
    )

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip())
            log.info("%s", line.rstrip())

    reader = threading.Thread(target=pump_stderr, name="torchrun-stderr", daemon=True)
    reader.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.info("%s", line.rstrip())
        code = proc.wait()
        reader.join()
    except BaseException:
        log.warning("training interrupted: stopping torchrun (pid %d) and its workers", proc.pid)
        _stop(proc)
        raise
    finally:
        if proc.poll() is None:  # an error in this function itself
            _stop(proc)
    if code != 0:
        raise TorchrunError(code, processes, list(tail))
    result = TrainResult.model_validate_json((out / RESULT).read_text())
    shutil.rmtree(work, ignore_errors=True)
    return result
