"""Live progress display (flows/progress.py): log lines stay whole above the bars, workers' lines too, the summary
line without a display, the training bar's rates and ETA, and the trainer's per-step callback."""

import io
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console

import flows.progress as progress
from flows.interrupt import MARKER
from flows.progress import StageProgress, TrainProgress, live_display, stage_progress, train_progress
from storage import paths
from storage.token_shards import TokenShardWriter, pack_documents
from tasks.train import TrainParams, train

REPO = Path(__file__).resolve().parents[2]
TOKEN = re.compile(r"\x1b\[(?P<arg>[0-9;?]*)(?P<cmd>[A-Za-z])|\x1b\][^\x07]*\x07|(?P<text>[^\x1b]+)")
BAR_CHARS = set("━╸╺")


def terminal_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system="standard", width=120), out


def plain_lines(raw: str) -> list[str]:
    """The lines a terminal shows (scrollback included) after printing `raw`: a tiny emulator of the
    controls rich uses (CR, LF, cursor up/down/left/right, erase line; styles ignored)."""
    screen: list[list[str]] = [[]]
    row = col = 0
    for token in TOKEN.finditer(raw):
        text, arg, cmd = token.group("text"), token.group("arg"), token.group("cmd")
        if text is not None:
            for ch in text:
                if ch == "\n":
                    row, col = row + 1, 0
                    while len(screen) <= row:
                        screen.append([])
                elif ch == "\r":
                    col = 0
                else:
                    line = screen[row]
                    line.extend(" " * (col - len(line) + 1) if col >= len(line) else "")
                    line[col] = ch
                    col += 1
            continue
        n = int(arg) if arg and arg.isdigit() else None
        if cmd == "A":
            row = max(0, row - (n or 1))
        elif cmd == "B":
            row += n or 1
            while len(screen) <= row:
                screen.append([])
        elif cmd == "C":
            col += n or 1
        elif cmd == "D":
            col = max(0, col - (n or 1))
        elif cmd == "G":
            col = (n or 1) - 1
        elif cmd == "K":
            line = screen[row]
            if n == 2:
                line.clear()
            elif n == 1:
                line[: col + 1] = [" "] * min(len(line), col + 1)
            else:
                del line[col:]
    return ["".join(line) for line in screen]


def drawn(raw: str) -> str:
    """Everything written, bars included (which a terminal erases again), without the controls."""
    return "".join(m.group("text") or "" for m in TOKEN.finditer(raw))


def only_line_with(lines: list[str], text: str) -> str:
    found = [line for line in lines if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


@pytest.fixture
def stderr_loggers():
    """A plain `logging` StreamHandler and a Prefect console handler, both on stderr."""
    fmt = logging.Formatter("%(levelname)s %(name)s | %(message)s")
    made = []
    for name, handler in (
        ("progress_test.plain", logging.StreamHandler(sys.stderr)),
        ("progress_test.prefect", PrefectConsoleHandler(stream=sys.stderr)),
    ):
        logger = logging.getLogger(name)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        made.append((logger, handler))
    yield made
    for logger, handler in made:
        logger.removeHandler(handler)


def test_log_lines_come_out_whole_above_the_bars(stderr_loggers, caplog):
    caplog.set_level(logging.INFO, logger="flows.stage")
    (plain, plain_h), (pref, pref_h) = stderr_loggers
    stderr_before, plain_stream, pref_file = sys.stderr, plain_h.stream, pref_h.console.file
    console, out = terminal_console()
    with live_display(True, console=console) as shown:
        assert shown and progress.display_active()
        with stage_progress("langid", 40) as bar:
            for i in range(40):
                bar.advance(1, docs=10 * (i + 1), kept=9 * (i + 1))
                assert progress._DISPLAY is not None
                progress._DISPLAY.progress.refresh()  # a bar render between every two log lines
                plain.info("plain line %d %s", i, "p" * 50)
                pref.warning("prefect line %d %s", i, "q" * 50)
                print(f"print line {i}.", file=sys.stderr)
    lines = plain_lines(out.getvalue())
    for i in range(40):
        for expected in (
            f"INFO progress_test.plain | plain line {i} {'p' * 50}",
            f"WARNING progress_test.prefect | prefect line {i} {'q' * 50}",
            f"print line {i}.",
        ):
            line = only_line_with(lines, expected.split(" | ")[-1])
            assert line.rstrip() == expected, line
            assert not BAR_CHARS & set(line)
    assert re.search(r"langid ━+ \d+/40 shards", drawn(out.getvalue())), "no bar was drawn"
    (summary,) = [r.getMessage() for r in caplog.records if r.name == "flows.stage"]
    assert summary.startswith("langid: 40 shards, 400 docs, 360 kept in ")
    # everything is back
    assert sys.stderr is stderr_before and not progress.display_active()
    assert plain_h.stream is plain_stream and pref_h.console.file is pref_file
    assert paths.live_pipe() is None


def test_worker_console_lines_go_through_the_display():
    """A child process joining the display (what a pool worker's initializer does) prints into its FIFO."""
    code = (
        "import sys\n"
        "from flows.console import join_live_display\n"
        "assert join_live_display()\n"
        "for i in range(30):\n"
        "    print(f'worker line {i} ' + 'w' * 60, file=sys.stderr, flush=True)\n"
    )
    console, out = terminal_console()
    with live_display(True, console=console):
        with stage_progress("dedup", 3) as bar:
            proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True, timeout=60)
            bar.advance(3)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing reached the child's own stderr
    lines = plain_lines(out.getvalue())
    for i in range(30):
        assert only_line_with(lines, f"worker line {i} ").rstrip() == f"worker line {i} " + "w" * 60
    # outside a display a child keeps its terminal
    proc = subprocess.run(
        [sys.executable, "-c", "from flows.console import join_live_display; print(join_live_display())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "False"


def test_display_restores_everything_on_ctrl_c(stderr_loggers):
    (_, plain_h), (_, pref_h) = stderr_loggers
    before = sys.stderr, plain_h.stream, pref_h.console.file
    console, _ = terminal_console()
    cleanups = len(MARKER.cleanups)
    with pytest.raises(KeyboardInterrupt), live_display(True, console=console):
        assert len(MARKER.cleanups) == cleanups + 1  # the interrupt watchdog stops the display first
        with stage_progress("clean", 5) as bar:
            bar.advance(1)
            raise KeyboardInterrupt
    assert (sys.stderr, plain_h.stream, pref_h.console.file) == before
    assert len(MARKER.cleanups) == cleanups
    assert not progress.display_active() and paths.live_pipe() is None


def test_display_defaults_off_without_a_terminal_or_with_the_env_var(monkeypatch):
    with live_display() as shown:  # pytest captures stderr: not a terminal
        assert not shown
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    monkeypatch.setenv(paths.ENV_NO_PROGRESS, "1")
    with live_display() as shown:
        assert not shown


def test_without_a_display_a_stage_logs_one_summary_line(caplog, capsys):
    now = [100.0]
    with caplog.at_level(logging.INFO, logger="flows.stage"):
        with StageProgress("quality", 3, clock=lambda: now[0]) as bar:
            for i in range(3):
                now[0] += 0.5
                bar.advance(1, docs=10 * (i + 1), kept=7 * (i + 1))
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("flows.stage", logging.INFO, "quality: 3 shards, 30 docs, 21 kept in 1.5 s")
    ]
    assert capsys.readouterr().err == ""  # no bar
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flows.stage"), pytest.raises(RuntimeError):
        with stage_progress("quality", 3) as bar:
            bar.advance(1)
            raise RuntimeError("shard failed")
    assert caplog.records == []  # a failed stage says so itself


def test_train_progress_rates_and_eta():
    bar = TrainProgress(total_steps=100, tokens_per_step=1000, window=5, clock=lambda: 0.0)
    assert bar.eta() is None and bar.tokens_per_second() is None
    bar.update(1, 5.0, tokens_per_second=1234.0, now=10.0)
    assert bar.tokens_per_second() == 1234.0 and bar.eta() is None  # one point: the trainer's figure
    for step in range(2, 11):  # 2 steps/s
        bar.update(step, 4.0, now=10.0 + 0.5 * (step - 1))
    assert bar.steps_per_second() == pytest.approx(2.0)
    assert bar.tokens_per_second() == pytest.approx(2000.0)
    assert bar.eta() == pytest.approx(45.0)  # 90 steps left at 2/s
    for step in range(11, 21):  # slows to 1 step/s: the recent window follows
        bar.update(step, 3.0, now=14.5 + (step - 10))
    assert bar.steps_per_second() == pytest.approx(1.0)
    assert bar.eta() == pytest.approx(80.0)
    bar.update(15, 3.0, now=30.0)  # a rollback restarts the window
    assert bar.steps_per_second() is None and bar.step == 15


def test_train_bar_in_a_live_display():
    console, out = terminal_console()
    t = [0.0]
    with live_display(True, console=console):
        with TrainProgress(200, 4096, clock=lambda: t[0]) as bar:
            for step in range(1, 11):
                t[0] += 0.25
                bar.on_step(step, 200, 3.5, 9999.0)
            assert progress._DISPLAY is not None
            progress._DISPLAY.progress.refresh()
    text = drawn(out.getvalue())
    assert "step 10/200" in text and "loss 3.5000" in text
    assert "16,384 tok/s" in text  # 4 steps/s x 4096
    assert "eta 0:00:48" in text  # 190 steps at 4/s = 47.5 s
    with train_progress(10, 100) as quiet:  # no display: nothing shown, nothing logged
        quiet.on_step(1, 10, 2.0, 50.0)


def write_tokens(directory: Path, n_docs: int, seed: int, seq_len: int = 64, vocab: int = 256) -> None:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, vocab, size=int(rng.integers(8, 100))).tolist() for _ in range(n_docs)]
    packed = list(pack_documents(docs, seq_len, 0))
    with TokenShardWriter(str(directory / "tokens-00000.arrow"), seq_len, vocab, eos_id=0) as w:
        w.write_sequences(np.stack([r for r, _ in packed]), [o for _, o in packed])


@pytest.mark.usefixtures("torch_one_thread")
def test_train_calls_on_step_once_per_optimizer_step(tmp_path):
    write_tokens(tmp_path / "tok" / "train", 200, seed=1)
    write_tokens(tmp_path / "tok" / "val", 20, seed=2)
    p = TrainParams(
        model="tiny",
        micro_batch_size=4,
        tokens_per_step=512,  # accumulation 2
        max_steps=6,
        warmup_steps=2,
        eval_interval=6,
        ckpt_interval=6,
        eval_tokens=256,
        device="cpu",
        sample_tokens=2,
    )
    calls: list[tuple[int, int, float, float]] = []
    train(p, tmp_path / "tok", tmp_path / "out", 3.0, on_step=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5, 6]
    assert {c[1] for c in calls} == {6}
    assert all(math.isfinite(c[2]) and c[3] > 0 for c in calls)


def test_train_run_drives_the_training_bar(monkeypatch):
    """flows/train.py `train_run` (one process) hands the trainer an `on_step` that moves the training bar."""
    import flows.train as train_module

    def fake_train(params, *a, on_step=None, **kw):
        for step in range(1, params.max_steps + 1):
            on_step(step, params.max_steps, 2.5, 1000.0)
            assert progress._DISPLAY is not None
            progress._DISPLAY.progress.refresh()
        return "result"

    monkeypatch.setattr(train_module, "train", fake_train)
    p = TrainParams(model="tiny", max_steps=5, warmup_steps=1, micro_batch_size=4, tokens_per_step=512, device="cpu")
    console, out = terminal_console()
    with live_display(True, console=console):
        assert train_module.train_run.fn(p, "shards", "out", {"bytes_per_token": 3.0, "seq_len": 64}, "v1") == "result"
    text = drawn(out.getvalue())
    assert "train" in text and "step 5/5" in text and "loss 2.5000" in text
    assert train_module._tokens_per_step(p, {"seq_len": 64}) == 512  # 2 micro-batches of 4 x 64
