"""Parameters, job and result of the train stage (no torch import: the CLI and Prefect forms load this fast)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from storage.params import StageParams

STAGE = "train"
STAGE_VERSION = 1
RESULT = "result.json"


class TrainParams(StageParams):
    model: Literal["tiny", "small", "gpt2-124m", "auto"] = Field(
        "tiny",
        description="Model preset (models/presets.py); 'auto' picks the preset closest to the "
        "Chinchilla-optimal size for the training tokens (tasks/train/plan.py).",
    )
    micro_batch_size: int = Field(4, ge=1, le=4096, description="Sequences per forward pass per device.")
    tokens_per_step: int = Field(
        1024,
        ge=1,
        le=2**27,
        description="Target tokens per optimizer step over all "
        "devices; gradient accumulation = this / (micro_batch_size * seq_len * "
        "devices), rounded down, at least 1.",
    )
    max_steps: int = Field(400, ge=1, le=10_000_000, description="Optimizer steps of the run.")
    warmup_steps: int = Field(30, ge=0, le=1_000_000, description="Linear learning-rate warmup steps.")
    lr: float = Field(3e-3, gt=0, le=1.0, description="Peak learning rate (after warmup).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1.0, description="Cosine decay floor as a fraction of lr.")
    weight_decay: float = Field(0.1, ge=0, le=1.0, description="AdamW decoupled weight decay on matrices.")
    beta1: float = Field(0.9, ge=0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1.0, description="AdamW beta2.")
    grad_clip: float = Field(1.0, gt=0, le=1e3, description="Max global gradient norm (clipped above).")
    eval_interval: int = Field(50, ge=1, le=1_000_000, description="Steps between validation evaluations.")
    eval_tokens: int = Field(
        32768,
        ge=1,
        le=2**34,
        description="Validation token budget per evaluation "
        "(the first eval_tokens / seq_len validation sequences, always the same).",
    )
    log_interval: int = Field(10, ge=1, le=100_000, description="Steps between training-metric rows.")
    ckpt_interval: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="Steps between checkpoints; a multiple "
        "of eval_interval so each checkpoint has its validation loss.",
    )
    keep_last: int = Field(2, ge=1, le=1000, description="Most recent checkpoints kept.")
    milestone_interval: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="Also keep checkpoints at multiples "
        "of this step (0: none). The best by validation loss is always kept.",
    )
    seed: int = Field(1337, ge=0, le=2**31 - 1, description="Seed of model init, data order and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, float32 on CPU."
    )
    cpu_threads: int = Field(
        1,
        ge=0,
        le=1024,
        description="torch intra-op threads on CPU (0: torch's "
        "default, one per core). 1 (default) trains the tiny preset 2.5x faster than 2 "
        "when other processes busy a 2-core machine; raise it on a big idle box. Not part "
        "of the version id.",
    )
    gpus: int = Field(
        1,
        ge=1,
        le=64,
        description="Training processes on this node: one per GPU on CUDA (DDP over NCCL); on CPU, that "
        "many gloo processes. 1 (default): the train flow trains in its own process; more: it launches "
        "`torchrun --nproc_per_node gpus -m tasks.train`. The batch is tokens_per_step whatever the count "
        "(it must then be a multiple of micro_batch_size x seq_len x gpus), so the run optimises the same "
        "thing up to floating-point reduction order: not part of the version id.",
    )
    compile: bool = Field(True, description="torch.compile the model on CUDA (never on CPU).")
    doc_mask: bool = Field(
        False, description="Block-diagonal attention within documents (doc_offsets); disables the flash kernel on CUDA."
    )
    skip_grad_norm_factor: float = Field(
        100.0,
        ge=1.0,
        le=1e6,
        description="Skip a step whose gradient norm exceeds this x grad_clip (or is not finite).",
    )
    spike_factor: float = Field(
        3.0, gt=1.0, le=100.0, description="Loss spike: loss above this x the running mean of recent losses."
    )
    spike_patience: int = Field(
        3,
        ge=1,
        le=1000,
        description="Consecutive spike steps that trigger a "
        "rollback to the last checkpoint (offending batches are skipped).",
    )
    spike_window: int = Field(50, ge=5, le=100_000, description="Steps in the running mean of the loss.")
    max_rollbacks: int = Field(5, ge=0, le=1000, description="Rollbacks before the run fails as diverged.")
    resume: bool = Field(
        True,
        description="Continue from the latest valid checkpoint in the output dir: the "
        "train version's own directory, where a failed or killed run of it left its "
        "checkpoints. false: the stage discards them and starts over. Not part of the version id.",
    )
    sample_prompt: str = Field(
        "The",
        max_length=2000,
        description="Prompt of the logged text sample "
        "(needs a tokenizer; else the start of the first validation sequence).",
    )
    sample_tokens: int = Field(64, ge=0, le=4096, description="Tokens generated for the sample.")
    sample_temperature: float = Field(0.8, ge=0, le=10.0, description="Sampling temperature (0: greedy).")
    sample_top_k: int = Field(50, ge=0, le=1_000_000, description="Top-k sampling (0: full distribution).")

    def version_params(self) -> dict[str, Any]:
        """Everything but the knobs that only say how to get there (resume, cpu_threads, gpus: the batch,
        data order and schedule do not depend on them, only the floating-point summation order does)."""
        return self.model_dump(mode="json", exclude={"resume", "cpu_threads", "gpus"})

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.ckpt_interval % self.eval_interval:
            raise ValueError(
                f"ckpt_interval={self.ckpt_interval} must be a multiple of "
                f"eval_interval={self.eval_interval} (checkpoints keep their validation loss)"
            )
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} > max_steps={self.max_steps}")
        return self


def grad_accumulation(params: TrainParams, seq_len: int, processes: int = 1) -> int:
    """Micro-batches per process and optimizer step: tokens_per_step / (micro_batch_size x seq_len x
    processes), rounded down, at least 1."""
    return max(1, params.tokens_per_step // (params.micro_batch_size * seq_len * processes))


def check_processes(params: TrainParams, seq_len: int, processes: int) -> None:
    """Several processes must train on the batch one process would (`gpus` is not part of the version id)."""
    one = grad_accumulation(params, seq_len) * params.micro_batch_size
    many = grad_accumulation(params, seq_len, processes) * processes * params.micro_batch_size
    if one != many:
        per_round = params.micro_batch_size * seq_len * processes
        raise ValueError(
            f"{processes} training processes would change the batch: tokens_per_step={params.tokens_per_step} "
            f"is {one} sequences of {seq_len} tokens per step in one process but {many} in {processes}; "
            f"make tokens_per_step a multiple of micro_batch_size x seq_len x gpus = {per_round}, or lower "
            f"micro_batch_size (the version id does not include gpus, so the batch must not depend on it)"
        )


class TrainJob(BaseModel):
    """Everything `python -m tasks.train JOB.json` needs (the in-process call takes the same fields)."""

    params: TrainParams = Field(default_factory=lambda: TrainParams())
    shards_dir: str = Field(description="tokenize version directory (has train/ and val/).")
    out_dir: str = Field(description="Output directory (checkpoints, metrics, plot, sample).")
    bytes_per_token: float = Field(gt=0, description="UTF-8 bytes per token, from the tokenize manifest.")
    tokenizer_path: str | None = Field(None, description="sentencepiece model for the text sample.")
    tokenize_version: str = ""
    tokenizer_sha256: str = ""


class TrainResult(BaseModel):
    model: str = Field(description="The preset trained (what `auto` resolved to).")
    requested_model: str = Field("", description="The `model` param: a preset name or auto.")
    resumed_from: int | None = Field(None, description="Checkpoint step this process resumed from.")
    epochs: float = Field(0.0, description="max_steps x tokens per step / training tokens of the data.")
    num_params: int
    steps: int
    tokens_seen: int
    train_loss: float | None
    val_loss: float
    best_val_loss: float
    val_ppl: float
    val_bpb: float
    unigram_loss: float = Field(description="Unigram (train token frequency) cross-entropy on the val set.")
    tokens_per_s: float | None = Field(description="Training throughput over this process's steps.")
    mfu: float | None
    skipped_steps: int
    rollbacks: int
    skipped_batches: int
    checkpoint: str = Field(description="The final checkpoint's directory, relative to the run's directory.")
    metrics_path: str = Field(description="metrics.jsonl, relative to the run's directory.")
    plot_path: str = Field(description="The loss plot, relative to the run's directory.")
    sample: str
    seconds: float
