"""`pretrain` (the console script) and `python -m flows`: the command line of flows/cli.py, with one head start.

`pretrain run` without PREFECT_API_URL needs a temporary Prefect server, the longest part of its start-up
(~3 s of one core, flows/server.py). This entry starts it before anything else is imported (the CLI's own
imports, click and pydantic among them, take ~0.2 s), then runs the CLI, whose `run` takes that server over.
A server that no command took over (a usage error, `run --help`) is stopped before exit.
"""

from __future__ import annotations

import sys

from flows import server, startup

if "__mp_main__" in sys.modules:
    # a process-pool worker spawned by `pretrain`: multiprocessing imports the parent's main module (this one,
    # or the console script that imports it) as __mp_main__ first, then Prefect and the stage's modules; the
    # pool's initializer sets the collector back (flows.stage._init_pool_worker)
    startup.lazy_collector()


def main() -> int:
    startup.lazy_collector()  # the command's imports (`run` pauses the collector while it starts up)
    server.start_early(sys.argv[1:])
    try:
        from flows.cli import main as cli

        return cli()
    finally:
        server.stop_early()


if __name__ == "__main__":
    sys.exit(main())
