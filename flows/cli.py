"""The `pretrain` command line: run the Prefect pipeline, show status, inspect stage outputs.

    pretrain run [--config FILE] [--data-root DIR] [--input PATH_OR_URL ...] [--only S] [--from S] [--to S] [--force S]
                 [--dask ADDRESS] [--set KEY=VALUE ...]
    pretrain config show|schema [--config FILE] [--set KEY=VALUE ...] [--json]
    pretrain status [--json] [--all]
    pretrain inspect STAGE [--version V] [--json] [--sample N] [--rejected] [--reason R]
    pretrain inspect dedup --plan [--config FILE]
    pretrain demo-crawl --out DIR [--pages N] [--seed K]
    pretrain gc --keep N [--dry-run]
    pretrain plan [--version V | --tokens N] [--compute FLOPS | --gpu-hours H] [--gpu NAME] [--gpus K] [--mfu M]
    pretrain export-tokens --format llm.c|nanogpt [--split train|val|anneal] --out FILE [--version V]
    pretrain export-hf --out DIR [--version V] [--step final|best|N]
    pretrain compare RUN_A RUN_B

Knob documentation lives on the pydantic params (`configs/default.yaml` lists them); this module only
routes arguments. Prefect is imported lazily so that `status`/`inspect` stay quick and the logging
environment is set before Prefect reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from storage import paths
from storage.manifest import Manifest, check_version, latest_version, list_versions, load_manifest

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def deco(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return deco


def _pipeline() -> Any:
    """flows.stages, the pipeline table, imported when a command needs it (it imports every stage's params)."""
    import flows.stages

    return flows.stages


def _stage(value: str) -> str:
    if value not in _pipeline().STAGE_ORDER:
        raise argparse.ArgumentTypeError(f"unknown stage {value!r}; choose one of {_pipeline().STAGE_ORDER}")
    return value


def _artifact(value: str) -> str:
    """A stage or a side artifact with a report (`quality_classifier`)."""
    if value not in _pipeline().REPORTS:
        raise argparse.ArgumentTypeError(f"unknown artifact {value!r}; choose one of {list(_pipeline().REPORTS)}")
    return value


def _version(value: str) -> str:
    """argparse type of --version / --input-version: 'latest' or a 12-hex version id."""
    try:
        return check_version(value, "--version")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--version: ")) from None


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    head = "  ".join(c.ljust(width[c]) for c in cols)
    body = ["  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join([head, "  ".join("-" * width[c] for c in cols), *body])


def _needs_temporary_server() -> bool:
    from prefect.settings import get_current_settings

    return not (os.environ.get("PREFECT_API_URL") or get_current_settings().api.url)


@contextlib.contextmanager
def _shared_ephemeral_server(server: Any = None) -> Iterator[None]:
    """Without PREFECT_API_URL, one temporary Prefect server for the whole run (`flows.server`; `server`: one
    started earlier, so it came up while the command imported the pipeline), shared with the process-pool
    workers through the environment (left alone, every worker process starts its own, ~7 s per stage)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not _needs_temporary_server():  # an API URL in a Prefect profile: a server started early is not needed
        if server is not None:
            server.stop()
        yield
        return
    if server is None:
        from flows.server import TemporaryServer

        server = TemporaryServer().start()
    from flows.interrupt import MARKER

    MARKER.cleanups.append(server.stop)  # the interrupt watchdog stops it if the run cannot unwind
    try:
        server.wait_ready(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
        os.environ["PREFECT_API_URL"] = server.api_url
        # threads that carry no settings context (Prefect's own workers among them) read the process-global
        # settings, made at import: rebuilt from the environment, else each would start its own server
        refresh_global_settings_context()
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        # deliver queued logs and events while the server is still up (else exit waits ~60 s on retries)
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        server.stop()


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    paths.apply_prefect_env_defaults()
    server = None
    if not os.environ.get("PREFECT_API_URL"):  # start one now: it comes up while the pipeline's modules import
        from flows.server import TemporaryServer

        server = TemporaryServer().start()
    try:
        return _run(args, server)
    finally:
        if server is not None:
            server.stop()


def _run(args: argparse.Namespace, server: Any) -> int:
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
    from flows.console import quiet_console_tracebacks
    from flows.pipeline import StageFailed, pipeline_flow, select_stages
    from flows.stage import shared_process_pools

    quiet_console_tracebacks()
    try:
        select_stages(args.only, args.from_stage, args.to_stage)
        if args.force is not None:
            _stage(args.force)
    except (ValueError, argparse.ArgumentTypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = paths.resolve_data_root(args.data_root)
    from flows.interrupt import cancel_flow_runs, exit_code, guard_run

    started = time.time()

    with guard_run() as marker:
        try:
            with _shared_ephemeral_server(server), shared_process_pools():
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
    _print_run_summary(root, versions, started)
    return 0


def _print_run_summary(root: str, versions: dict[str, str], started: float) -> None:
    """The attrition table of the run (documents, share of ingest, characters, tokens per stage) and where its
    summary (summary.md + funnel.png) was written."""
    from reports.pipeline import attrition, attrition_rows, write_run_summary

    order = _pipeline().STAGE_ORDER
    try:
        rows = attrition(root, versions, order, started)
        print(_table(attrition_rows(rows, order)))
        if any(r.status == "computed" for r in rows):  # a run that only reused versions writes nothing
            print(f"run summary: {paths.join(write_run_summary(root, versions, order, started, rows), 'summary.md')}")
    except Exception as err:  # noqa: BLE001 - a report; the run itself succeeded
        print(
            _table(
                [{"stage": s, "version": v, "directory": paths.version_dir(root, s, v)} for s, v in versions.items()]
            )
        )
        print(f"warning: could not write the run summary: {type(err).__name__}: {err}", file=sys.stderr)


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


@command("config")
def cmd_config(args: argparse.Namespace) -> int:
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


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
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
        print(_table(rows))
    return 0


def _report(stage: str) -> Any:
    return _pipeline().REPORTS.get(stage)


def _inspect_plan(args: argparse.Namespace, root: str) -> int:
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


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
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
    print(_table(m.stats.table()))
    report = _report(m.stage)
    if report is not None:
        print()
        print(report(m, root))
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


@command("gc")
def cmd_gc(args: argparse.Namespace) -> int:
    from storage.gc import gc

    root = paths.resolve_data_root(args.data_root)
    try:
        plan = gc(root, args.keep, dry_run=args.dry_run)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "would delete" if args.dry_run else "deleted"
    print(f"data root: {root}")
    print(_table(plan.rows()))
    for path in plan.stale:
        print(f"{verb} stale {path}")
    for path in plan.unknown:
        print(f"left alone (not an artifact version): {path}")
    for path in plan.partial:
        print(f"left alone (an unfinished run that a re-run resumes from; delete it by hand): {path}")
    kept = len(plan.versions) - len(plan.to_delete)
    print(
        f"{verb} {len(plan.to_delete)} version(s), {plan.bytes_freed / 1e6:.1f} MB; "
        f"{verb} {len(plan.stale)} stale unfinished version(s), temp file(s) and lock file(s); "
        f"keeping {kept} version(s), "
        f"{plan.bytes_kept / 1e6:.1f} MB" + ("; run without --dry-run to delete" if args.dry_run else "")
    )
    return 0


def _plan_data(args: argparse.Namespace, root: str) -> tuple[float | None, str, int, int]:
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


@command("plan")
def cmd_plan(args: argparse.Namespace) -> int:
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


@command("export-tokens")
def cmd_export_tokens(args: argparse.Namespace) -> int:
    from tasks.tokenization.llmc import export_tokens

    root = paths.resolve_data_root(args.data_root)
    try:
        m = load_manifest(root, "tokenize", args.version)
        n = export_tokens(m, root, args.split, args.out, args.format)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {n:,} {args.split} tokens of tokenize@{m.version} to {args.out} ({args.format} format)")
    return 0


def _export_step(value: str) -> int | str:
    if value in ("final", "best"):
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"--step must be final, best or a step number, not {value!r}")


@command("export-hf")
def cmd_export_hf(args: argparse.Namespace) -> int:
    from tasks.train.export_hf import export_hf

    root = paths.resolve_data_root(args.data_root)
    try:
        r = export_hf(root, args.out, args.version, args.step)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
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


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    from tasks.eval.report import compare

    root = paths.resolve_data_root(args.data_root)
    try:
        a, b = _eval_of(root, args.run_a), _eval_of(root, args.run_b)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(compare(root, a, b))
    return 0


@command("train-quality-classifier")
def cmd_train_quality_classifier(args: argparse.Namespace) -> int:
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
    print(f"quality_classifier@{version}  ({paths.version_dir(root, m.stage, version)})")
    print(report_markdown(m, root))
    print(f"use it: quality.classifier_version: {version}")
    return 0


@command("demo-crawl")
def cmd_demo_crawl(args: argparse.Namespace) -> int:
    from demo.crawl import generate_demo_crawl

    result = generate_demo_crawl(args.out, pages=args.pages, seed=args.seed)
    print(f"wrote {result.warc_path} and {result.ground_truth_path} ({result.pages} pages)")
    return 0


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pretrain-pipeline")
    except PackageNotFoundError:  # a checkout that was not pip-installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain", description="Web crawl -> trained LM, as versioned Prefect stages.")
    p.add_argument("--version", action="version", version=f"pretrain {_package_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-root", help="data root (else $PRETRAIN_DATA_ROOT, else ./pretrain-data)")
    common.add_argument(
        "--debug", action="store_true", help="print tracebacks on the console (they are always in the Prefect logs)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    r = sub.add_parser("run", help="run the pipeline (default config: demo crawl -> tiny model)")
    r.add_argument("--config", help="YAML config (see configs/default.yaml)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set langid.threshold=0.7 (repeatable; values are YAML)",
    )
    r.add_argument("--input", nargs="+", help="ingest inputs (paths, globs, http(s)/s3 URLs); overrides the config")
    # stage names are checked by `run` itself, after it has started the temporary server (checking them here
    # imports every stage, which would delay the server by seconds)
    r.add_argument("--only", help="run just this stage on the latest upstream versions")
    r.add_argument("--from", dest="from_stage", help="first stage to run")
    r.add_argument("--to", dest="to_stage", help="last stage to run")
    r.add_argument("--force", help="recompute this stage even if complete (and what follows it)")
    r.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run shard tasks on the Dask cluster at ADDRESS (tcp://host:8786); overrides the config's runner",
    )
    c = sub.add_parser("config", help="show the effective config with each key's description, or its JSON Schema")
    c.add_argument("action", choices=["show", "schema"], help="show: YAML with comments; schema: JSON Schema")
    c.add_argument("--config", help="YAML config to start from (default: the built-in defaults)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="as for run")
    c.add_argument("--json", action="store_true", help="show: the config as JSON, without comments")
    s = sub.add_parser("status", help="latest version of every stage")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="every complete version, with lineage")
    i = sub.add_parser("inspect", help="a stage version's manifest, report and samples")
    i.add_argument("stage", type=_artifact)
    i.add_argument("--version", type=_version, default="latest", help="version id (default: latest)")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--sample", type=int, default=0, help="show N sample documents")
    i.add_argument("--rejected", action="store_true", help="show rejected documents with reasons")
    i.add_argument("--reason", help="only rejected documents with this reason")
    i.add_argument("--plan", action="store_true", help="dry-run size estimate from the stage's input (dedup)")
    i.add_argument("--config", help="YAML config whose params --plan uses (default: the built-in defaults)")
    d = sub.add_parser("demo-crawl", help="write the generated demo crawl (WARC + ground truth)")
    d.add_argument("--out", required=True)
    d.add_argument("--pages", type=int, default=400)
    d.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("gc", help="delete old versions that no kept version was built from")
    g.add_argument(
        "--keep",
        type=int,
        required=True,
        help="newest versions to keep per stage (latest and inputs of kept versions are always kept)",
    )
    g.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    pl = sub.add_parser("plan", help="model size, tokens, FLOPs and wall-clock per preset (Chinchilla planner)")
    data = pl.add_mutually_exclusive_group()
    data.add_argument(
        "--version", type=_version, default="latest", help="tokenize version whose train tokens are the data size"
    )
    data.add_argument("--tokens", type=float, help="data size in tokens instead of a tokenize version")
    budget = pl.add_mutually_exclusive_group()
    budget.add_argument("--compute", type=float, help="compute budget in FLOPs (e.g. 1e21)")
    budget.add_argument("--gpu-hours", type=float, help="compute budget in GPU-hours on --gpu at --mfu")
    pl.add_argument("--gpu", default="H100", help="GPU kind for wall-clock and --gpu-hours (default H100)")
    pl.add_argument("--gpus", type=int, default=1, help="GPUs the wall-clock assumes (linear scaling)")
    pl.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    pl.add_argument(
        "--inference-ratio",
        type=float,
        default=150.0,
        help="tokens per parameter of the inference-optimal alternative (100-200)",
    )
    pl.add_argument("--vocab-size", type=int, help="vocabulary (default: the tokenize version's, else 32000)")
    pl.add_argument("--seq-len", type=int, help="sequence length (default: the tokenize version's, else 1024)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    x = sub.add_parser("export-tokens", help="write a tokenize split as an llm.c or nanoGPT .bin token file")
    x.add_argument(
        "--format",
        choices=["llm.c", "nanogpt"],
        default="llm.c",
        help="llm.c: 256 int32 header (magic 20240520, version 1, count), then uint16 tokens; "
        "nanogpt: the bare uint16 tokens (nanoGPT's np.memmap(dtype=uint16))",
    )
    x.add_argument("--split", default="train", help="train, val or anneal")
    x.add_argument("--out", required=True, help="output .bin file")
    x.add_argument("--version", type=_version, default="latest", help="tokenize version")
    h = sub.add_parser("export-hf", help="write a train checkpoint as a Hugging Face Llama model + tokenizer")
    h.add_argument("--out", required=True, help="output directory (from_pretrained reads it)")
    h.add_argument("--version", type=_version, default="latest", help="train version")
    h.add_argument(
        "--step",
        type=_export_step,
        default="final",
        help="final (default: the run's last step), best (lowest val loss) or a kept step number",
    )
    cmp = sub.add_parser("compare", help="two runs' eval tables side by side and the params their lineages differ in")
    cmp.add_argument("run_a", type=_version, help="eval version, or train version (its latest eval)")
    cmp.add_argument("run_b", type=_version, help="eval version, or train version (its latest eval)")
    q = sub.add_parser(
        "train-quality-classifier",
        help="train the fastText quality classifier (DCLM recipe)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the fastText quality classifier (DCLM recipe) and store it as a quality_classifier "
        "version.\nA held-out share of each class (test_fraction 0.2) is kept out of training; its "
        "precision/recall/AUC go into the manifest.\nThe quality stage drops documents by the score "
        "only if the classifier passes its validation bar\n(quality.classifier_min_auc 0.8, "
        "quality.classifier_min_examples 200 per class); otherwise it only annotates.",
        epilog="examples:\n"
        "  # labelled files (JSONL/Parquet with a `text` field, or blank-line separated .txt):\n"
        "  pretrain train-quality-classifier --positive good.jsonl --negative bad.jsonl --data-root DIR\n"
        "  # then, in the config:  quality: {classifier_version: <printed version>}\n"
        "  # positives only: negatives are a random sample of the latest langid version's documents\n"
        "  pretrain train-quality-classifier --positive good.jsonl --data-root DIR\n"
        "  # no classifier at all: quality: {use_classifier: false}",
    )
    q.add_argument(
        "--positive",
        nargs="+",
        help="high-quality reference files (.jsonl/.parquet with text, .txt); "
        "none: bootstrap labels from the heuristic filters",
    )
    q.add_argument("--negative", nargs="+", help="low-quality files; none: sample the crawl (langid documents)")
    q.add_argument("--wikitext", action="store_true", help="undo WikiText tokenization in positive .txt files")
    q.add_argument("--languages", nargs="+", default=["en"], help="crawl languages used (langid labels)")
    q.add_argument(
        "--input-version", type=_version, default="latest", help="langid version the crawl documents come from"
    )
    q.add_argument("--force", action="store_true", help="retrain even if this version exists")
    q.add_argument("--epoch", type=int, help="fastText epochs (default 10)")
    q.add_argument("--lr", type=float, help="fastText learning rate (default 0.1)")
    q.add_argument("--word-ngrams", type=int, help="fastText wordNgrams (default 2, DCLM's bigrams)")
    q.add_argument("--dim", type=int, help="fastText vector size (default 32)")
    for name, attach in EXTRA_PARSERS.items():
        attach(sub.add_parser(name))
    return p


# Subcommands added by stage modules: name -> function that adds its arguments (and registers via @command).
EXTRA_PARSERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "debug", False):
        paths.set_debug(True)
    try:
        return COMMANDS[args.command](args)
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
