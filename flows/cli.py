"""The `pretrain` command line: run the Prefect pipeline, show status, inspect stage outputs.

    pretrain run [--config FILE] [--data-root DIR] [--input PATH_OR_URL ...] [--only S] [--from S] [--to S] [--force S]
                 [--dask ADDRESS] [--set KEY=VALUE ...] [--json]
    pretrain config show|schema [--config FILE] [--set KEY=VALUE ...] [--json]
    pretrain status [--json] [--all]
    pretrain inspect STAGE [--version V] [--json] [--sample N] [--rejected] [--reason R]
    pretrain inspect dedup --plan [--config FILE]
    pretrain demo-crawl --out DIR [--pages N] [--seed K] [--json]
    pretrain gc --keep N [--dry-run] [--json]
    pretrain plan [--version V | --tokens N] [--compute FLOPS | --gpu-hours H] [--gpu NAME] [--gpus K] [--mfu M]
    pretrain export-tokens --format llm.c|nanogpt [--split train|val|anneal] --out FILE [--version V] [--json]
    pretrain export-hf --out DIR [--version V] [--step final|best|N] [--json]
    pretrain compare RUN_A RUN_B [--json]

Built on click (parsing, help, `click.testing.CliRunner`) and rich (tables; stage reports rendered as markdown on
a terminal, printed as plain markdown otherwise). Every command that reports takes `--json`: one JSON document on
stdout, nothing else there. Knob documentation lives on the pydantic params (`configs/default.yaml` lists them);
this module only routes arguments. Prefect, rich and the pipeline table (`flows.stages`) are imported lazily, so
that `status`/`inspect`/`plan` and usage errors stay quick and the logging environment is set before Prefect
reads it; stage names are resolved when help is shown or a stage argument is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import click

from storage import paths
from storage.manifest import Manifest, check_version, latest_version, list_versions, load_manifest

Args = SimpleNamespace  # a command's parsed arguments, by the argparse-era names (args.from_stage, args.overrides)
Command = Callable[[Args], int]
Invocation = tuple[Command, Args]  # what a click callback returns; `main` runs it under its error handling


def _pipeline() -> Any:
    """flows.stages, the pipeline table, imported when a command needs it (it imports every stage's params)."""
    import flows.stages

    return flows.stages


def _stage(value: str) -> str:
    if value not in _pipeline().STAGE_ORDER:
        raise ValueError(f"unknown stage {value!r}; choose one of {_pipeline().STAGE_ORDER}")
    return value


# ---------------------------------------------------------------- output: rich, imported when something prints

_CONSOLES: dict[bool, tuple[Any, Any]] = {}  # stderr? -> (the stream it was made for, rich Console)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or bare stream
        return False


def _console(stderr: bool = False) -> Any:
    """One rich Console per output stream, made on first use and again when the stream was replaced (pytest's
    capsys, contextlib.redirect_stdout). Off a terminal: no colour, no wrapping (a very wide page), so the
    output greps like the plain text it is."""
    stream = sys.stderr if stderr else sys.stdout
    made = _CONSOLES.get(stderr)
    if made is not None and made[0] is stream:
        return made[1]
    from rich.console import Console

    tty = _isatty(stream)
    console = Console(
        file=stream,
        force_terminal=tty,
        width=None if tty else 100_000,
        soft_wrap=not tty,
        markup=False,
        emoji=False,
        highlight=False,
    )
    _CONSOLES[stderr] = (stream, console)
    return console


def _numeric(values: Iterable[Any]) -> bool:
    present = [v for v in values if v not in ("", None)]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Rows (dicts with the same keys) as a rich table on stdout: one column per key, numbers right-aligned;
    the cells hold the same words and numbers as the rows (so they grep the same)."""
    if not rows:
        print("(nothing)")
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = _console()
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title=title,
        title_justify="left",
        header_style="bold" if console.is_terminal else "",
    )
    cols = list(rows[0])
    for c in cols:
        # short cells (stage names, version ids, numbers) never fold on a narrow terminal; long ones (paths) do
        widest = max(len(c), *(len(str(r.get(c, ""))) for r in rows))
        table.add_column(
            c,
            justify="right" if _numeric(r.get(c) for r in rows) else "left",
            overflow="fold",
            min_width=widest if widest <= 20 else None,
        )
    for r in rows:
        table.add_row(*(Text(str(r.get(c, ""))) for c in cols))
    console.print(table)


def _print_markdown(text: str) -> None:
    """A stage report (markdown): rendered on a terminal, printed as it is otherwise (files, pipes, tests)."""
    if not _isatty(sys.stdout):
        print(text)
        return
    from rich.markdown import Markdown

    _console().print(Markdown(text))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _needs_temporary_server() -> bool:
    from prefect.settings import get_current_settings

    return not (os.environ.get("PREFECT_API_URL") or get_current_settings().api.url)


def _no_wait() -> None:
    return None


def _one_ca_certificate() -> str:
    """A new temporary CA file holding one certificate (certifi's first), for the clients of a plain-HTTP
    server, whose TLS context is never used; the caller removes it."""
    import tempfile

    import certifi

    bundle = open(certifi.where(), encoding="ascii").read()
    end = "-----END CERTIFICATE-----"
    first = bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)]
    fd, path = tempfile.mkstemp(prefix="pretrain-ca-", suffix=".pem")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(first + "\n")
    return path


@contextlib.contextmanager
def _shared_ephemeral_server(server: Any = None) -> Iterator[Callable[[], None]]:
    """Without PREFECT_API_URL, one temporary Prefect server for the whole run (`flows.server`; `server`: one
    started earlier, so it came up while the command imported the pipeline), shared with the process-pool
    workers through the environment (left alone, every worker process starts its own, ~7 s per stage).

    Yields `ready()`, which waits until the server answers: the API URL is in the environment and settings
    at once, so pool workers started before `ready()` (the prewarmed pool) inherit it. If the server had to
    move to another port, `ready()` updates both and drops the prewarmed pool (its workers have the old URL)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import (
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_URL,
        PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    if not _needs_temporary_server():  # an API URL in a Prefect profile: a server started early is not needed
        if server is not None:
            server.stop()
        yield _no_wait
        return
    if server is None:
        from flows.server import TemporaryServer

        server = TemporaryServer().start()
    from flows.interrupt import MARKER

    MARKER.cleanups.append(server.stop)  # the interrupt watchdog stops it if the run cannot unwind
    url = server.api_url
    # the server is this installation's Prefect: no client (here or in a worker) asks it for its version
    # (the first such request also costs the server ~0.3 s of FastAPI route set-up on the first task's path);
    # it speaks plain HTTP on 127.0.0.1, yet every Prefect client builds a TLS context from a CA file, the
    # whole certifi bundle by default (~18 ms, twice per task run in a pool worker): one certificate will do
    env = {"PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false"}
    ca_file = None if os.environ.get("PREFECT_API_SSL_CERT_FILE") else _one_ca_certificate()
    if ca_file is not None:
        env["PREFECT_API_SSL_CERT_FILE"] = ca_file
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ["PREFECT_API_URL"] = url
        os.environ.update(env)
        # threads that carry no settings context (Prefect's own workers among them) read the process-global
        # settings, made at import: rebuilt from the environment, else each would start its own server
        refresh_global_settings_context()
        with contextlib.ExitStack() as settings:
            # no flow-run heartbeats either: they feed crashed-run automations, which a server that lives only
            # as long as the run has none of, and each flow's end waited up to 1 s for its heartbeat thread
            settings.enter_context(
                temporary_settings(
                    {
                        PREFECT_API_URL: url,
                        PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED: False,
                        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                        PREFECT_API_SSL_CERT_FILE: os.environ["PREFECT_API_SSL_CERT_FILE"],
                    }
                )
            )

            def ready() -> None:
                server.wait_ready(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
                if server.api_url != url:  # the port was taken: started again on another one
                    from flows.stage import discard_shared_pools

                    discard_shared_pools()
                    os.environ["PREFECT_API_URL"] = server.api_url
                    refresh_global_settings_context()
                    settings.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))

            yield ready
    finally:
        # deliver queued logs and events while the server is still up (else exit waits ~60 s on retries)
        if server.ready:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
        os.environ.pop("PREFECT_API_URL", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        refresh_global_settings_context()
        server.stop()
        if ca_file is not None:
            os.unlink(ca_file)


# what Prefect imports on a flow's first call (the flow engine, the flow graph helper, and FastAPI's
# `jsonable_encoder` for the parameters: all of FastAPI, ~0.3 s with the rest on 2 cores)
FLOW_CALL_MODULES = ("prefect.flow_engine", "prefect.utilities.visualization", "fastapi.encoders", "rich._emoji_codes")


def _preload(modules: Iterable[str]) -> None:
    """Import `modules` now (a module another Prefect version lacks is skipped: it is only a head start)."""
    import importlib

    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def cmd_run(args: Args) -> int:
    paths.apply_prefect_env_defaults()
    from flows.startup import collector_paused

    with collector_paused() as resume_collector:
        from flows.server import TemporaryServer, take_early

        server = take_early()  # `pretrain` started it before importing this module (flows/__main__.py)
        if server is None and not os.environ.get("PREFECT_API_URL"):  # else now: it comes up while the pipeline imports
            server = TemporaryServer().start()
        try:
            return _run(args, server, resume_collector)
        finally:
            if server is not None:
                server.stop()


def _run(args: Args, server: Any, resume_collector: Callable[[], None] = lambda: None) -> int:
    from flows.config import ConfigError, apply_overrides, load_config

    try:
        config = load_config(args.config)
        if args.overrides:
            config = apply_overrides(config, args.overrides)
        if args.input:
            ingest = config.section("ingest").model_copy(update={"inputs": list(args.input)})
            config = config.model_copy(update={"ingest": ingest})
            config = type(config).model_validate(config.model_dump())
        if args.dask:
            config = type(config).model_validate(
                {**config.model_dump(), "runner": {"kind": "dask", "address": args.dask}}
            )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flows.stages import ROWS, StageFailed, select_stages

    try:
        selected = select_stages(args.only, args.from_stage, args.to_stage)
        if args.force is not None:
            _stage(args.force)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = paths.resolve_data_root(args.data_root)
    first = ROWS[selected[0]]
    # the first stage's shards start on workers that imported its package while the server came up
    prewarm = config.workers if first.pool and config.runner.kind == "process" else 0
    from flows.console import quiet_console_tracebacks
    from flows.interrupt import cancel_flow_runs, exit_code, guard_run
    from flows.progress import live_display
    from flows.stage import shared_process_pools

    quiet_console_tracebacks()
    started = time.time()

    with guard_run() as marker:
        try:
            with (
                _shared_ephemeral_server(server) as server_ready,
                live_display(),  # before the pool: its workers print through it (flows/progress.py)
                shared_process_pools(prewarm, [first.params_type.__module__, first.flow_ref.partition(":")[0]]),
            ):
                from flows.pipeline import pipeline_flow

                _preload(FLOW_CALL_MODULES)  # while the server comes up, not after
                server_ready()
                resume_collector()
                try:
                    versions = pipeline_flow(
                        config=config,
                        data_root=root,
                        only=args.only,
                        from_stage=args.from_stage,
                        to_stage=args.to_stage,
                        force=args.force,
                    )
                except BaseException:
                    if marker.signum is not None and (changed := cancel_flow_runs()):  # while the server is up
                        print(
                            f"marked {len(changed)} Prefect flow run(s) Cancelled: {', '.join(changed)}",
                            file=sys.stderr,
                        )
                    raise
        except StageFailed as err:
            if marker.signum is None:
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(f"error: {marker.message()}", file=sys.stderr)
            return exit_code()
        except BaseException as err:  # Ctrl-C / SIGTERM (KeyboardInterrupt, Prefect's TerminationSignal)
            if marker.signum is None and not isinstance(err, KeyboardInterrupt):
                raise
            marker.signum = marker.signum or signal.SIGINT
            print(f"error: {marker.message()}", file=sys.stderr)
            return exit_code()
    _print_run_summary(root, versions, started, as_json=args.json)
    return 0


def _print_run_summary(root: str, versions: dict[str, str], started: float, as_json: bool = False) -> None:
    """The attrition table of the run (documents, share of ingest, characters, tokens per stage) and where its
    summary (summary.md + funnel.png) was written; `as_json`: the same as one JSON object
    ({"versions": {stage: version}, "attrition": rows, "summary": path or null})."""
    from reports.pipeline import attrition, attrition_rows, write_run_summary

    order = _pipeline().STAGE_ORDER
    table: list[dict[str, Any]] | None = None
    summary = None
    try:
        rows = attrition(root, versions, order, started)
        table = attrition_rows(rows, order)
        if any(r.status == "computed" for r in rows):  # a run that only reused versions writes nothing
            summary = paths.join(write_run_summary(root, versions, order, started, rows), "summary.md")
    except Exception as err:  # noqa: BLE001 - a report; the run itself succeeded
        print(f"warning: could not write the run summary: {type(err).__name__}: {err}", file=sys.stderr)
    if as_json:
        _print_json({"versions": versions, "attrition": table, "summary": summary})
    elif table is not None:
        _print_table(table, title="attrition")
        if summary is not None:
            print(f"run summary: {summary}")
    else:
        _print_table(
            [{"stage": s, "version": v, "directory": paths.version_dir(root, s, v)} for s, v in versions.items()]
        )


def _status_row(root: str, m: Manifest, latest: str | None) -> dict[str, Any]:
    return {
        "stage": str(m.stage),
        "version": m.version,
        "latest": m.version == latest,
        "docs_in": m.stats.docs_in,
        "docs_out": m.stats.docs_out,
        "seconds": round(m.stats.seconds, 1),
        "inputs": ",".join(f"{k}@{v}" for k, v in m.inputs.items()),
        "created_at": m.created_at,
    }


def cmd_config(args: Args) -> int:
    from flows.config import HEADER, ConfigError, apply_overrides, config_schema, config_yaml, load_config

    if args.action == "schema":
        print(json.dumps(config_schema(), indent=2))
        return 0
    try:
        config = load_config(args.config)
        if args.overrides:
            config = apply_overrides(config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    if args.config is None and not args.overrides:
        header = HEADER
    else:
        source = " + ".join([args.config or "the defaults", *(f"--set {o}" for o in args.overrides)])
        header = f"# The effective pipeline config: {source}; every key with its description.\n"
    print(config_yaml(config, header=header), end="")
    return 0


def cmd_status(args: Args) -> int:
    root = paths.resolve_data_root(args.data_root)
    fs, base = paths.filesystem(root)
    if not fs.isdir(base):
        print(f"error: data root {root} does not exist; run `pretrain run` first, or pass --data-root", file=sys.stderr)
        return 1
    rows = []
    # --all also lists versioned artifacts outside the stage chain (the quality classifier), which the
    # `inputs` lineage column refers to
    pipeline = _pipeline()
    for stage in list(pipeline.REPORTS) if args.all else pipeline.STAGE_ORDER:
        latest = latest_version(root, stage)
        if args.all:
            rows += [_status_row(root, m, latest) for m in list_versions(root, stage)]
        elif latest is None:
            rows.append(
                {
                    "stage": str(stage),
                    "version": "-",
                    "latest": False,
                    "docs_in": "",
                    "docs_out": "",
                    "seconds": "",
                    "inputs": "",
                    "created_at": "",
                }
            )
        else:
            rows.append(_status_row(root, load_manifest(root, stage, latest), latest))
    if args.json:
        print(json.dumps({"data_root": root, "stages": rows}, indent=2))
    else:
        print(f"data root: {root}")
        _print_table(rows)
    return 0


def _report(stage: str) -> Any:
    return _pipeline().REPORTS.get(stage)


def _inspect_plan(args: Args, root: str) -> int:
    """`inspect dedup --plan`: the stage's dry-run size estimate for its latest input version."""
    if args.stage != "dedup":
        print(f"error: --plan is available for: dedup (got {args.stage})", file=sys.stderr)
        return 2
    from flows.config import ConfigError, load_config
    from tasks.dedup import DedupParams
    from tasks.dedup.report import plan_for_input

    try:
        params = load_config(args.config).section("dedup") if args.config else DedupParams()
        print(plan_for_input(root, params, input_kind=str(_pipeline().upstream_of("dedup"))))
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_inspect(args: Args) -> int:
    from reports import sample_documents

    root = paths.resolve_data_root(args.data_root)
    if args.plan:
        return _inspect_plan(args, root)
    try:
        m = load_manifest(root, args.stage, args.version)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(m.model_dump_json(indent=2))
        return 0
    print(f"{m.stage}@{m.version}  ({paths.version_dir(root, m.stage, m.version)})")
    print(f"created {m.created_at}  code {m.code_version}  inputs {m.inputs or 'raw files'}")
    _print_table(m.stats.table())
    report = _report(m.stage)
    if report is not None:
        print()
        _print_markdown(report(m, root))
    if args.sample and not args.rejected and m.stage == "tokenize":  # token shards: decode sample rows
        from tasks.tokenization.report import sample_sequences

        print("\n" + sample_sequences(m, root, args.sample))
        return 0
    if args.reason is not None and args.reason not in m.stats.dropped:
        known = ", ".join(sorted(m.stats.dropped)) or "none (nothing was dropped)"
        print(
            f"error: {m.stage}@{m.version} dropped no document for reason {args.reason!r}; its reasons: {known}",
            file=sys.stderr,
        )
        return 2
    if args.sample or args.rejected:
        docs = sample_documents(root, m, n=args.sample or 5, rejected=args.rejected, reason=args.reason)
        print(f"\n{'rejected' if args.rejected else 'sample'} documents ({len(docs)}):")
        for d in docs:
            why = f" reason={d.get('reason')} {d.get('reason_detail')}" if args.rejected else ""
            print(f"- {d['id']} {d['url']} [{d['source']}]{why}\n    {' '.join(d['text'][:400].split())}")
    return 0


def cmd_gc(args: Args) -> int:
    from storage.gc import gc

    root = paths.resolve_data_root(args.data_root)
    try:
        plan = gc(root, args.keep, dry_run=args.dry_run)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept = len(plan.versions) - len(plan.to_delete)
    if args.json:
        _print_json(
            {
                "data_root": root,
                "dry_run": bool(args.dry_run),
                "keep": args.keep,
                "versions": plan.rows(),
                "delete": len(plan.to_delete),
                "kept": kept,
                "bytes_freed": plan.bytes_freed,
                "bytes_kept": plan.bytes_kept,
                "stale": plan.stale,
                "unknown": plan.unknown,
                "partial": plan.partial,
            }
        )
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(f"data root: {root}")
    _print_table(plan.rows())
    for path in plan.stale:
        print(f"{verb} stale {path}")
    for path in plan.unknown:
        print(f"left alone (not an artifact version): {path}")
    for path in plan.partial:
        print(f"left alone (an unfinished run that a re-run resumes from; delete it by hand): {path}")
    print(
        f"{verb} {len(plan.to_delete)} version(s), {plan.bytes_freed / 1e6:.1f} MB; "
        f"{verb} {len(plan.stale)} stale unfinished version(s), temp file(s) and lock file(s); "
        f"keeping {kept} version(s), "
        f"{plan.bytes_kept / 1e6:.1f} MB" + ("; run without --dry-run to delete" if args.dry_run else "")
    )
    return 0


def _plan_data(args: Args, root: str) -> tuple[float | None, str, int, int]:
    """(unique tokens, where they come from, vocab_size, seq_len) for `plan`; FileNotFoundError with the fix."""
    vocab, seq = args.vocab_size or 32000, args.seq_len or 1024
    if args.tokens is not None:
        return args.tokens, "--tokens", vocab, seq
    budget = args.compute is not None or args.gpu_hours is not None
    try:
        m = load_manifest(root, "tokenize", args.version)
    except FileNotFoundError as err:
        if budget and args.version == "latest":
            return None, "", vocab, seq  # a budget alone is enough; no data size to check epochs against
        raise FileNotFoundError(f"{err}, or pass --tokens N (or a budget: --compute FLOPS, --gpu-hours H)") from None
    from tasks.train.plan import train_tokens

    return (
        float(train_tokens(m)),
        f"train split of tokenize@{m.version}",
        args.vocab_size or m.extras["vocab_size"],
        args.seq_len or m.extras["seq_len"],
    )


def cmd_plan(args: Args) -> int:
    from tasks.train.plan import format_plan, plan

    root = paths.resolve_data_root(args.data_root)
    try:
        tokens, source, vocab, seq = _plan_data(args, root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        p = plan(
            tokens=tokens,
            compute_flops=args.compute,
            gpu_hours=args.gpu_hours,
            gpu=args.gpu,
            mfu=args.mfu,
            vocab_size=vocab,
            seq_len=seq,
            inference_tokens_per_param=args.inference_ratio,
            gpus=args.gpus,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(p.model_dump_json(indent=2) if args.json else format_plan(p, source))
    return 0


def cmd_export_tokens(args: Args) -> int:
    from tasks.tokenization.llmc import export_tokens

    root = paths.resolve_data_root(args.data_root)
    try:
        m = load_manifest(root, "tokenize", args.version)
        n = export_tokens(m, root, args.split, args.out, args.format)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(
            {"out": args.out, "format": args.format, "split": args.split, "tokens": n, "tokenize_version": m.version}
        )
        return 0
    print(f"wrote {n:,} {args.split} tokens of tokenize@{m.version} to {args.out} ({args.format} format)")
    return 0


def _export_step(value: str) -> int | str:
    if value in ("final", "best"):
        return value
    if value.isdigit():
        return int(value)
    raise ValueError(f"--step must be final, best or a step number, not {value!r}")


def cmd_export_hf(args: Args) -> int:
    from tasks.train.export_hf import export_hf

    root = paths.resolve_data_root(args.data_root)
    try:
        r = export_hf(root, args.out, args.version, args.step)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        import dataclasses

        _print_json(dataclasses.asdict(r))
        return 0
    print(
        f"wrote train@{r.train_version} step {r.step} ({r.num_params:,} parameters, vocab {r.vocab_size:,}, "
        f"tokenizer of tokenize@{r.tokenize_version}) to {r.out} as LlamaForCausalLM"
    )
    return 0


def _eval_of(root: str, ref: str) -> Manifest:
    """An eval version, or the latest eval version built from a train version (`ref`: a version id)."""
    try:
        return load_manifest(root, "eval", ref)
    except FileNotFoundError:
        pass
    train = load_manifest(root, "train", ref)  # FileNotFoundError: neither an eval nor a train version
    made = [m for m in list_versions(root, "eval") if m.inputs.get("train") == train.version]
    if not made:
        raise FileNotFoundError(f"train@{train.version} has no eval version; run `pretrain run --only eval`")
    return max(made, key=lambda m: m.created_at)


def cmd_compare(args: Args) -> int:
    from tasks.eval.report import compare, compare_data

    root = paths.resolve_data_root(args.data_root)
    try:
        a, b = _eval_of(root, args.run_a), _eval_of(root, args.run_b)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(compare_data(root, a, b))
    else:
        _print_markdown(compare(root, a, b))
    return 0


def cmd_train_quality_classifier(args: Args) -> int:
    paths.apply_prefect_env_defaults()
    from pydantic import ValidationError

    try:
        from tasks.quality.classifier import QualityClassifierParams

        fasttext = {
            k: v
            for k, v in (("epoch", args.epoch), ("lr", args.lr), ("word_ngrams", args.word_ngrams), ("dim", args.dim))
            if v is not None
        }
        params = QualityClassifierParams(
            positive=args.positive or [],
            negative=args.negative or [],
            detokenize_wikitext=args.wikitext,
            languages=args.languages,
            **fasttext,
        )
    except ValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flows.quality_classifier import train_quality_classifier_flow
    from tasks.quality.report import classifier_report as report_markdown

    root = paths.resolve_data_root(args.data_root)
    try:
        version = train_quality_classifier_flow(
            params=params, data_root=root, input_version=args.input_version, force=args.force
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    m = load_manifest(root, "quality_classifier", version)
    if args.json:
        directory = paths.version_dir(root, m.stage, version)
        _print_json({"quality_classifier": version, "directory": directory, "manifest": m.model_dump(mode="json")})
        return 0
    print(f"quality_classifier@{version}  ({paths.version_dir(root, m.stage, version)})")
    _print_markdown(report_markdown(m, root))
    print(f"use it: quality.classifier_version: {version}")
    return 0


def cmd_demo_crawl(args: Args) -> int:
    from demo.crawl import generate_demo_crawl

    result = generate_demo_crawl(args.out, pages=args.pages, seed=args.seed)
    if args.json:
        _print_json(result.model_dump(mode="json"))
        return 0
    print(f"wrote {result.warc_path} and {result.ground_truth_path} ({result.pages} pages)")
    return 0


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pretrain-pipeline")
    except PackageNotFoundError:  # a checkout that was not pip-installed
        return "(not installed)"


# ---------------------------------------------------------------- the click command tree


class LazyChoice(click.Choice[str]):
    """A Choice whose values come from a function, called the first time they are needed (help, a check), so
    that parsing a command line does not import the pipeline table. `check=False`: help lists the values but
    any string passes (`run` checks its stage names itself, after it has started the temporary server)."""

    def __init__(self, load: Callable[[], Iterable[Any]], what: str, check: bool = True) -> None:
        self._load = load
        self._loaded: tuple[str, ...] | None = None
        super().__init__((), case_sensitive=True)
        self._loaded = None
        self.what = what
        self.check = check

    @property
    def choices(self) -> tuple[str, ...]:
        if self._loaded is None:
            self._loaded = tuple(str(c) for c in self._load())
        return self._loaded

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:
        self._loaded = tuple(value)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not self.check or value in self.choices:
            return str(value)
        self.fail(f"unknown {self.what} {value!r}; choose one of {list(self.choices)}", param, ctx)


STAGES = LazyChoice(lambda: _pipeline().STAGE_ORDER, "stage", check=False)
ARTIFACTS = LazyChoice(lambda: _pipeline().REPORTS, "artifact")  # the stages and side artifacts with a report


class _Version(click.ParamType[str]):
    """--version / --input-version / compare's runs: 'latest' or a 12-hex version id."""

    name = "version"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_version(value, "--version")
        except ValueError as err:
            self.fail(str(err).removeprefix("--version: "), param, ctx)


class _Step(click.ParamType[int | str]):
    name = "step"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int):
            return value
        try:
            return _export_step(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class _Words(click.ParamType[list[str]]):
    """The values of a `_Greedy` option, as a list."""

    name = "words"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


class _Greedy(click.Option):
    """An option taking one or more values (argparse's nargs="+"): `--input a.warc.gz b.warc.gz` takes every
    following word up to the next option; given twice, the last one counts (as with argparse)."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for opt in self.opts:
            option = parser._long_opt.get(opt) or parser._short_opt.get(opt)
            process = option.process

            def greedy(value: Any, state: Any, process: Any = process) -> None:
                words = [value]
                while state.rargs and not (state.rargs[0].startswith("-") and len(state.rargs[0]) > 1):
                    words.append(state.rargs.pop(0))
                process(tuple(words), state)

            option.process = greedy


def _greedy(*decls: str, **kw: Any) -> Callable[[Any], Any]:
    return click.option(*decls, cls=_Greedy, type=_Words(), **kw)


class _Command(click.Command):
    """Lists the values of its choice parameters with lazily loaded values (stage names) after the options."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        seen: dict[str, str] = {}
        for p in self.params:
            if isinstance(p.type, LazyChoice):
                name = p.metavar or p.human_readable_name
                seen.setdefault(name, ", ".join(p.type.choices))
        for name, values in seen.items():
            formatter.write_paragraph()
            formatter.write_text(f"{name}: one of {values}")
        super().format_epilog(ctx, formatter)


class _Group(click.Group):
    """Commands in the order they are defined; the help ends with the stage names."""

    command_class = _Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        stages = STAGES.choices
        side = [a for a in ARTIFACTS.choices if a not in stages]
        formatter.write_paragraph()
        formatter.write_text(f"stages: {', '.join(stages)}")
        formatter.write_text(f"side artifacts (inspect, status --all): {', '.join(side)}")
        super().format_epilog(ctx, formatter)


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"pretrain {_package_version()}")
        ctx.exit()


def _common(f: Any) -> Any:
    """--data-root and --debug, on every subcommand."""
    f = click.option(
        "--debug", is_flag=True, help="print tracebacks on the console (they are always in the Prefect logs)"
    )(f)
    return click.option(
        "--data-root", metavar="DIR", help="data root (else $PRETRAIN_DATA_ROOT, else ./pretrain-data)"
    )(f)


def _json(what: str, help: str | None = None) -> Callable[[Any], Any]:
    return click.option("--json", is_flag=True, help=help or f"print {what} as JSON (stdout holds nothing else)")


def _invocation(fn: Command, kw: dict[str, Any]) -> Invocation:
    return fn, Args(**{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})


def _exclusive(ctx: click.Context, *names: str) -> None:
    """A usage error when more than one of these options is on the command line (argparse's wording)."""
    from click.core import ParameterSource

    by_name = {p.name: p for p in ctx.command.params}
    # ctx.params: the parameters in the order they were processed, those on the command line first, as given
    given = [
        by_name[n] for n in ctx.params if n in names and ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE
    ]
    if len(given) > 1:
        first, second = ("/".join(p.opts) for p in given[:2])
        raise click.UsageError(f"argument {second}: not allowed with argument {first}", ctx)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=_Group, context_settings=CONTEXT, help="Web crawl -> trained LM, as versioned Prefect stages.")
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version, help="show the version"
)
def cli() -> None:
    pass


def _help(text: str) -> dict[str, str]:
    return {"help": text, "short_help": text}


@cli.command("run", **_help("run the pipeline (default config: demo crawl -> tiny model)"))
@click.option("--config", metavar="FILE", help="YAML config (see configs/default.yaml)")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override one config key, e.g. --set langid.threshold=0.7 (repeatable; values are YAML)",
)
@_greedy("--input", metavar="PATH...", help="ingest inputs (paths, globs, http(s)/s3 URLs); overrides the config")
# stage names are checked by `run` itself, after it has started the temporary server (checking them here imports
# every stage, which would delay the server by seconds): STAGES lists them in the help, checks nothing
@click.option("--only", type=STAGES, metavar="STAGE", help="run just this stage on the latest upstream versions")
@click.option("--from", "from_stage", type=STAGES, metavar="STAGE", help="first stage to run")
@click.option("--to", "to_stage", type=STAGES, metavar="STAGE", help="last stage to run")
@click.option(
    "--force", type=STAGES, metavar="STAGE", help="recompute this stage even if complete (and what follows it)"
)
@click.option(
    "--dask",
    metavar="ADDRESS",
    help="run shard tasks on the Dask cluster at ADDRESS (tcp://host:8786); overrides the config's runner",
)
@_json(
    "",
    help="at the end, print the {stage: version} map and the attrition rows as JSON instead of the table "
    "(stdout holds nothing else)",
)
@_common
def _cli_run(**kw: Any) -> Invocation:
    return _invocation(cmd_run, kw)


@cli.command(
    "config",
    help="Show the effective config with each key's description (show: YAML with comments), or its JSON Schema "
    "(schema).",
    short_help="show the effective config with each key's description, or its JSON Schema",
)
@click.argument("action", type=click.Choice(["show", "schema"]))
@click.option("--config", metavar="FILE", help="YAML config to start from (default: the built-in defaults)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="as for run")
@_json("show: the config, without comments")
@_common
def _cli_config(**kw: Any) -> Invocation:
    return _invocation(cmd_config, kw)


@cli.command("status", **_help("latest version of every stage"))
@_json("the table")
@click.option("--all", is_flag=True, help="every complete version, with lineage")
@_common
def _cli_status(**kw: Any) -> Invocation:
    return _invocation(cmd_status, kw)


@cli.command("inspect", **_help("a stage version's manifest, report and samples"))
@click.argument("stage", type=ARTIFACTS, metavar="STAGE")
@click.option("--version", type=_Version(), default="latest", show_default=True, help="version id")
@_json("the manifest")
@click.option("--sample", type=int, default=0, metavar="N", help="show N sample documents")
@click.option("--rejected", is_flag=True, help="show rejected documents with reasons")
@click.option("--reason", metavar="REASON", help="only rejected documents with this reason")
@click.option("--plan", is_flag=True, help="dry-run size estimate from the stage's input (dedup)")
@click.option("--config", metavar="FILE", help="YAML config whose params --plan uses (default: the built-in defaults)")
@_common
def _cli_inspect(**kw: Any) -> Invocation:
    return _invocation(cmd_inspect, kw)


@cli.command("demo-crawl", **_help("write the generated demo crawl (WARC + ground truth)"))
@click.option("--out", required=True, metavar="DIR", help="output directory")
@click.option("--pages", type=int, default=400, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_json("what was written")
@_common
def _cli_demo_crawl(**kw: Any) -> Invocation:
    return _invocation(cmd_demo_crawl, kw)


@cli.command("gc", **_help("delete old versions that no kept version was built from"))
@click.option(
    "--keep",
    type=int,
    required=True,
    help="newest versions to keep per stage (latest and inputs of kept versions are always kept)",
)
@click.option("--dry-run", is_flag=True, help="show what would be deleted, delete nothing")
@_json("the plan (every version with its action and why, stale/unknown/partial paths, bytes)")
@_common
def _cli_gc(**kw: Any) -> Invocation:
    return _invocation(cmd_gc, kw)


@cli.command("plan", **_help("model size, tokens, FLOPs and wall-clock per preset (Chinchilla planner)"))
@click.option(
    "--version", type=_Version(), default="latest", help="tokenize version whose train tokens are the data size"
)
@click.option("--tokens", type=float, help="data size in tokens instead of a tokenize version")
@click.option("--compute", type=float, help="compute budget in FLOPs (e.g. 1e21)")
@click.option("--gpu-hours", type=float, help="compute budget in GPU-hours on --gpu at --mfu")
@click.option("--gpu", default="H100", help="GPU kind for wall-clock and --gpu-hours (default H100)")
@click.option("--gpus", type=int, default=1, help="GPUs the wall-clock assumes (linear scaling)")
@click.option("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
@click.option(
    "--inference-ratio",
    type=float,
    default=150.0,
    help="tokens per parameter of the inference-optimal alternative (100-200)",
)
@click.option("--vocab-size", type=int, help="vocabulary (default: the tokenize version's, else 32000)")
@click.option("--seq-len", type=int, help="sequence length (default: the tokenize version's, else 1024)")
@_json("the plan")
@_common
@click.pass_context
def _cli_plan(ctx: click.Context, /, **kw: Any) -> Invocation:
    _exclusive(ctx, "version", "tokens")
    _exclusive(ctx, "compute", "gpu_hours")
    return _invocation(cmd_plan, kw)


@cli.command("export-tokens", **_help("write a tokenize split as an llm.c or nanoGPT .bin token file"))
@click.option(
    "--format",
    type=click.Choice(["llm.c", "nanogpt"]),
    default="llm.c",
    show_default=True,
    help="llm.c: 256 int32 header (magic 20240520, version 1, count), then uint16 tokens; "
    "nanogpt: the bare uint16 tokens (nanoGPT's np.memmap(dtype=uint16))",
)
@click.option("--split", default="train", show_default=True, help="train, val or anneal")
@click.option("--out", required=True, metavar="FILE", help="output .bin file")
@click.option("--version", type=_Version(), default="latest", show_default=True, help="tokenize version")
@_json("what was written")
@_common
def _cli_export_tokens(**kw: Any) -> Invocation:
    return _invocation(cmd_export_tokens, kw)


@cli.command("export-hf", **_help("write a train checkpoint as a Hugging Face Llama model + tokenizer"))
@click.option("--out", required=True, metavar="DIR", help="output directory (from_pretrained reads it)")
@click.option("--version", type=_Version(), default="latest", show_default=True, help="train version")
@click.option(
    "--step",
    type=_Step(),
    default="final",
    help="final (default: the run's last step), best (lowest val loss) or a kept step number",
)
@_json("what was written")
@_common
def _cli_export_hf(**kw: Any) -> Invocation:
    return _invocation(cmd_export_hf, kw)


@cli.command(
    "compare",
    help="Two runs' eval tables side by side and the params their lineages differ in. RUN_A, RUN_B: an eval "
    "version, or a train version (its latest eval).",
    short_help="two runs' eval tables side by side and the params their lineages differ in",
)
@click.argument("run_a", type=_Version())
@click.argument("run_b", type=_Version())
@_json("both runs' score tables, the side-by-side rows and the lineage difference")
@_common
def _cli_compare(**kw: Any) -> Invocation:
    return _invocation(cmd_compare, kw)


@cli.command(
    "train-quality-classifier",
    short_help="train the fastText quality classifier (DCLM recipe)",
    help="Train the fastText quality classifier (DCLM recipe) and store it as a quality_classifier version.\n\n"
    "\b\nA held-out share of each class (test_fraction 0.2) is kept out of training; its precision/recall/AUC go "
    "into the manifest.\nThe quality stage drops documents by the score only if the classifier passes its "
    "validation bar\n(quality.classifier_min_auc 0.8, quality.classifier_min_examples 200 per class); otherwise it "
    "only annotates.",
    epilog="\b\nexamples:\n"
    "  # labelled files (JSONL/Parquet with a `text` field, or blank-line separated .txt):\n"
    "  pretrain train-quality-classifier --positive good.jsonl --negative bad.jsonl --data-root DIR\n"
    "  # then, in the config:  quality: {classifier_version: <printed version>}\n"
    "  # positives only: negatives are a random sample of the latest langid version's documents\n"
    "  pretrain train-quality-classifier --positive good.jsonl --data-root DIR\n"
    "  # no classifier at all: quality: {use_classifier: false}",
)
@_greedy(
    "--positive",
    metavar="FILE...",
    help="high-quality reference files (.jsonl/.parquet with text, .txt); "
    "none: bootstrap labels from the heuristic filters",
)
@_greedy("--negative", metavar="FILE...", help="low-quality files; none: sample the crawl (langid documents)")
@click.option("--wikitext", is_flag=True, help="undo WikiText tokenization in positive .txt files")
@_greedy(
    "--languages", metavar="LANG...", default=["en"], show_default=True, help="crawl languages used (langid labels)"
)
@click.option(
    "--input-version",
    type=_Version(),
    default="latest",
    show_default=True,
    help="langid version the crawl documents come from",
)
@click.option("--force", is_flag=True, help="retrain even if this version exists")
@click.option("--epoch", type=int, help="fastText epochs (default 10)")
@click.option("--lr", type=float, help="fastText learning rate (default 0.1)")
@click.option("--word-ngrams", type=int, help="fastText wordNgrams (default 2, DCLM's bigrams)")
@click.option("--dim", type=int, help="fastText vector size (default 32)")
@_json("the new version, its directory and manifest")
@_common
def _cli_train_quality_classifier(**kw: Any) -> Invocation:
    return _invocation(cmd_train_quality_classifier, kw)


# ---------------------------------------------------------------- the entry point


def _usage_message(err: click.UsageError) -> str:
    if isinstance(err, click.BadParameter) and not isinstance(err, click.MissingParameter) and err.param:
        p = err.param
        name = "/".join(p.opts) if isinstance(p, click.Option) else p.human_readable_name
        return f"argument {name}: {err.message}"
    return err.format_message()


def _usage_error(err: click.UsageError) -> None:
    """Usage and one `error:` line on stderr, exit status 2 (SystemExit, as argparse did)."""
    if isinstance(err, click.exceptions.NoArgsIsHelpError):  # a bare `pretrain`: the help, then the error
        print(err.ctx.get_help(), file=sys.stderr)
        print("error: a command is required", file=sys.stderr)
    else:
        if err.ctx is not None:
            print(err.ctx.get_usage(), file=sys.stderr)
            print(f"Try '{err.ctx.command_path} --help' for help.", file=sys.stderr)
        print(f"error: {_usage_message(err)}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """`pretrain`: parse with click (usage errors exit 2, --help/--version return 0), then run the command with
    one readable `error:` line for what fails (the traceback with --debug)."""
    try:
        parsed = cli.main(args=argv, prog_name="pretrain", standalone_mode=False)
    except click.UsageError as err:
        _usage_error(err)
        return 2
    except click.ClickException as err:
        print(f"error: {err.format_message()}", file=sys.stderr)
        return err.exit_code
    except click.Abort:  # Ctrl-C while parsing
        print("error: interrupted", file=sys.stderr)
        return 130
    if not isinstance(parsed, tuple):  # --help, --version: click's exit code
        return int(parsed or 0)
    fn: Command = parsed[0]
    args: Args = parsed[1]
    if getattr(args, "debug", False):
        paths.set_debug(True)
    try:
        return fn(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pretrain config show | head`: the reader is gone, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as err:  # one readable line; the traceback with --debug
        if paths.debug_enabled():
            raise
        from storage.errors import describe_os_error

        print(
            f"error: {describe_os_error(err) or f'{type(err).__name__}: {err}'} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
