"""train_flow: the `tokenize` version's token shards -> the `train` version (checkpoints, metrics, plot).

Training is not sharded: one `train_run` task trains (or resumes) in-process on one device, writing
`step-NNNNNN/` checkpoints, `metrics.jsonl`, `loss.png` and a text sample into the version's temporary
directory; the manifest (written last) holds the `TrainResult` (val loss, bits-per-byte, unigram
baseline, tokens/s, MFU) in its extras. Multi-GPU runs use `python -m tasks.train PARAMS_FILE` under
torchrun (see tasks/train.py). A killed run leaves its checkpoints in the temp dir and no version.
"""

import os
from typing import Any, Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from flows.sharded import abort_on_error, begin_stage, finish_stage, publish
from storage import paths
from storage.manifest import Manifest, ShardInfo, Stage
from storage.stats import StageStats
from tasks.train import TrainParams, TrainResult, train

STAGE = Stage.TRAIN
STAGE_VERSION = 1


@task(task_run_name="train-run")
def train_run(params: TrainParams, shards_dir: str, out_dir: str, tokenize: dict[str, Any], version: str) -> TrainResult:
    """Train on one device in this process (deterministic compute: no retries)."""
    tok_path = paths.join(shards_dir, tokenize["tokenizer_path"]) if tokenize.get("tokenizer_path") else None
    return train(params, shards_dir, out_dir, float(tokenize["bytes_per_token"]), tokenizer_path=tok_path,
                 tokenize_version=version, tokenizer_sha256=str(tokenize.get("tokenizer_sha256", "")))


def report_markdown(manifest: Manifest, root: str) -> str:
    r = manifest.extras.get("result") or {}
    if not r:
        return ""
    rows = [("model", r.get("model")), ("parameters", r.get("num_params")), ("steps", r.get("steps")),
            ("tokens seen", r.get("tokens_seen")), ("val loss (nats/token)", r.get("val_loss")),
            ("unigram baseline loss", r.get("unigram_loss")), ("val bits per byte", r.get("val_bpb")),
            ("val perplexity", r.get("val_ppl")), ("tokens/s", r.get("tokens_per_s")), ("MFU", r.get("mfu")),
            ("skipped steps", r.get("skipped_steps")), ("rollbacks", r.get("rollbacks"))]
    table = "\n".join(["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    return f"## Training\n\n{table}\n\n## Sample\n\n```\n{r.get('sample', '')}\n```"


@flow(name="train")
def train_flow(params: TrainParams = TrainParams(), data_root: Optional[str] = None, input_version: str = "latest",
               force: bool = False) -> str:
    """Train a GPT on a tokenize version; returns the train version id."""
    run = begin_stage(STAGE, STAGE_VERSION, params, data_root, input_version, force)
    if run.reused is not None:
        publish(run.reused, run.root, report_markdown, reused=True)
        return run.version
    try:
        assert run.input_manifest is not None
        tok = run.input_manifest
        shards_dir = paths.version_dir(run.root, tok.stage, tok.version)
        result = train_run(params, shards_dir, run.out_dir, tok.extras, tok.version)
        # paths relative to the version dir: the temp dir is renamed on commit
        rel = {k: os.path.relpath(getattr(result, k), run.out_dir) for k in ("checkpoint", "metrics_path", "plot_path")}
        result = result.model_copy(update=rel)
        finish_stage(run, [ShardInfo(name=rel["checkpoint"], rows=result.tokens_seen, bytes=0)], [], StageStats(),
                     extras={"result": result.model_dump(mode="json")}, report=report_markdown)
    except BaseException:
        abort_on_error(run)
        raise
    if FlowRunContext.get() is not None:
        create_table_artifact(key="train-metrics", table=[{"metric": k, "value": v} for k, v in
                                                          result.model_dump(mode="json").items() if k != "sample"])
        create_markdown_artifact(key="train-loss-curve", markdown=_plot_markdown(run, result))
    return run.version


def _plot_markdown(run: Any, result: TrainResult) -> str:
    import base64
    from pathlib import Path
    png = Path(paths.version_dir(run.root, STAGE, run.version)) / Path(result.plot_path).name
    if not png.is_file():
        return f"loss curve: `{png}` (not found)"
    data = base64.b64encode(png.read_bytes()).decode()
    return f"# train@{run.version} loss curve\n\n![loss curve](data:image/png;base64,{data})\n\n`{png}`"
