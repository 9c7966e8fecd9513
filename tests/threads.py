"""A flow run in a thread, for tests that need two runs at once (flock locks conflict between open files of one
process too, so threads are enough)."""

import contextvars
import threading

WAIT_S = 60.0


class Run(threading.Thread):
    """Calls `fn()` in a thread with this thread's context (the Prefect test harness settings)."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.ctx = fn, contextvars.copy_context()
        self.result, self.error = None, None

    def run(self) -> None:
        try:
            self.result = self.ctx.run(self.fn)
        except BaseException as err:  # reported by the test
            self.error = err

    def value(self, timeout_s: float = WAIT_S):
        self.join(timeout_s)
        assert not self.is_alive(), "run did not finish"
        if self.error is not None:
            raise self.error
        return self.result
