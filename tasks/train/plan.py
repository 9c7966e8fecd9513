"""Training planner: how big a model and how many tokens a data set or compute budget buys.

Pure functions behind `pretrain plan` and `model: auto`:
- Chinchilla (Hoffmann et al. 2022): compute-optimal D ~= 20 N tokens for N parameters, and training
  compute C ~= 6 N D. From a token count D: N = D / 20. From compute C: N = sqrt(C / 120), D = 20 N.
- Inference-optimal alternative (Llama-style over-training, 100-200 tokens per parameter): a smaller
  model trained longer, cheaper to serve. Same C: N = sqrt(C / (6 r)); same data: N = D / r.
- Per preset: training tokens (C / FLOPs-per-token when a budget is given, else that preset's 20 N),
  FLOPs (PaLM's 6 N + attention per token), single-GPU hours at the given MFU, and epochs over the data;
  more than ~4 epochs warns (Muennighoff et al. 2023: repeated data loses value quickly past 4).
`GPU_PEAK_BF16` (dense bf16 tensor-core FLOP/s from vendor data sheets) is shared with the MFU that
`tasks/train/__init__.py` logs. `format_plan` is the text `pretrain plan` prints; `auto_preset` is what
`model: auto` in the train stage uses (the plan of the training tokens, then `pick_preset`);
`train_tokens(tokenize_manifest)` is the data size `pretrain plan` reads from a tokenize version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

from models.presets import PRESETS, preset
from storage.manifest import Manifest
from storage.token_shards import TRAIN_DIR

CHINCHILLA_TOKENS_PER_PARAM = 20.0
MAX_EPOCHS = 4.0

# Dense (no sparsity) bf16 peak FLOP/s per GPU, vendor data sheets.
GPU_PEAK_BF16: dict[str, float] = {
    "H100": 989e12,  # H100 SXM
    "H100-PCIE": 756e12,
    "H100-NVL": 835e12,
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
}

# torch.cuda.get_device_name() substrings -> table key; first match wins, so specific names come first
_DEVICE_NAME_KEYS: list[tuple[tuple[str, ...], str]] = [
    (("GH200",), "GH200"),
    (("H200",), "H200"),
    (("H100", "PCIE"), "H100-PCIE"),
    (("H100", "NVL"), "H100-NVL"),
    (("H100",), "H100"),
    (("B200",), "B200"),
    (("A100",), "A100"),
    (("L40S",), "L40S"),
    (("L4",), "L4"),
    (("A10",), "A10"),
]


def train_tokens(tokenize: Manifest) -> int:
    """Tokens in the train split of a tokenize version (rows x (seq_len + 1), as the trainer counts them)."""
    e = tokenize.extras
    return int(e["sequences"][TRAIN_DIR]) * (int(e["seq_len"]) + 1)


def gpu_key_for_device_name(name: str) -> str | None:
    """Map a CUDA device name ('NVIDIA H100 80GB HBM3') to a `GPU_PEAK_BF16` key, None if unknown."""
    upper = name.upper()
    for needles, key in _DEVICE_NAME_KEYS:
        if all(n in upper for n in needles):
            return key
    return None


def peak_flops(gpu: str) -> float:
    """Peak dense bf16 FLOP/s for a table key or a CUDA device name."""
    key = gpu.upper() if gpu.upper() in GPU_PEAK_BF16 else gpu_key_for_device_name(gpu)
    if key is None:
        raise ValueError(f"unknown GPU {gpu!r}; known: {sorted(GPU_PEAK_BF16)}")
    return GPU_PEAK_BF16[key]


class Allocation(BaseModel):
    params: float = Field(description="Model parameters N.")
    tokens: float = Field(description="Training tokens D.")
    flops: float = Field(description="Training compute 6 N D.")
    tokens_per_param: float


class PresetEstimate(BaseModel):
    name: str
    params: int
    flops_per_token: float = Field(description="6 N + attention term, forward + backward.")
    tokens: float = Field(description="Training tokens assumed for this preset.")
    flops: float
    gpu_hours: float = Field(description="On one GPU of the chosen kind at the chosen MFU.")
    wall_hours: float = Field(description="gpu_hours / gpus (assumes linear scaling over the GPUs).")
    epochs: float | None = Field(description="tokens / data set tokens, when the data size is known.")
    warning: str | None = None


class Plan(BaseModel):
    tokens: float | None = Field(description="Unique tokens available (data set size).")
    compute_flops: float | None = Field(description="Compute budget, given or derived from gpu_hours.")
    gpu: str
    gpus: int = Field(description="GPUs the wall-clock estimates assume.")
    mfu: float
    peak_flops: float
    vocab_size: int
    seq_len: int
    chinchilla: Allocation
    inference_optimal: Allocation
    presets: list[PresetEstimate]
    warnings: list[str]


def _allocation(tokens: float | None, compute: float | None, ratio: float) -> Allocation:
    if compute is not None:
        n = math.sqrt(compute / (6.0 * ratio))
    else:
        assert tokens is not None, "tokens or compute required"
        n = tokens / ratio
    return Allocation(params=n, tokens=ratio * n, flops=6.0 * n * ratio * n, tokens_per_param=ratio)


def _estimate(
    name: str, vocab_size: int, seq_len: int, tokens: float | None, compute: float | None, flops_per_s: float, gpus: int
) -> PresetEstimate:
    cfg = preset(name, vocab_size=vocab_size, seq_len=seq_len)
    n, fpt = cfg.num_params(), cfg.flops_per_token()
    train_tokens = compute / fpt if compute is not None else CHINCHILLA_TOKENS_PER_PARAM * n
    epochs = train_tokens / tokens if tokens else None
    warning = None
    if epochs is not None and epochs > MAX_EPOCHS:
        warning = (
            f"{name}: {train_tokens:.3g} training tokens repeat the {tokens:.3g}-token data set "
            f"{epochs:.1f} times (> {MAX_EPOCHS:g} epochs); use a smaller model or more data"
        )
    flops = fpt * train_tokens
    hours = flops / flops_per_s / 3600.0
    return PresetEstimate(
        name=name,
        params=n,
        flops_per_token=fpt,
        tokens=train_tokens,
        flops=flops,
        gpu_hours=hours,
        wall_hours=hours / gpus,
        epochs=epochs,
        warning=warning,
    )


def plan(
    tokens: float | None = None,
    compute_flops: float | None = None,
    gpu_hours: float | None = None,
    gpu: str = "H100",
    mfu: float = 0.4,
    presets: Sequence[str] = tuple(PRESETS),
    vocab_size: int = 32000,
    seq_len: int = 1024,
    inference_tokens_per_param: float = 150.0,
    gpus: int = 1,
) -> Plan:
    """Model size and cost from a data size (tokens) and/or a budget (compute_flops or gpu_hours)."""
    if tokens is None and compute_flops is None and gpu_hours is None:
        raise ValueError("give at least one of tokens, compute_flops, gpu_hours")
    if compute_flops is not None and gpu_hours is not None:
        raise ValueError("give compute_flops or gpu_hours, not both")
    for name, value in (("tokens", tokens), ("compute_flops", compute_flops), ("gpu_hours", gpu_hours)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value} must be a positive number")
    if gpus < 1:
        raise ValueError(f"gpus={gpus} must be at least 1")
    if not 0.0 < mfu <= 1.0:
        raise ValueError(f"mfu={mfu} must be in (0, 1]")
    if not 100.0 <= inference_tokens_per_param <= 200.0:
        raise ValueError(f"inference_tokens_per_param={inference_tokens_per_param} must be in [100, 200]")
    peak = peak_flops(gpu)
    compute = compute_flops if gpu_hours is None else gpu_hours * 3600.0 * peak * mfu
    chin = _allocation(tokens, compute, CHINCHILLA_TOKENS_PER_PARAM)
    inference = _allocation(tokens, compute, inference_tokens_per_param)
    estimates = [_estimate(p, vocab_size, seq_len, tokens, compute, peak * mfu, gpus) for p in presets]
    warnings = [e.warning for e in estimates if e.warning]
    if tokens and chin.tokens / tokens > MAX_EPOCHS:
        warnings.insert(
            0,
            f"the compute-optimal run needs {chin.tokens:.3g} tokens = "
            f"{chin.tokens / tokens:.1f} epochs of the {tokens:.3g}-token data set (> {MAX_EPOCHS:g})",
        )
    return Plan(
        tokens=tokens,
        compute_flops=compute,
        gpu=gpu,
        gpus=gpus,
        mfu=mfu,
        peak_flops=peak,
        vocab_size=vocab_size,
        seq_len=seq_len,
        chinchilla=chin,
        inference_optimal=inference,
        presets=estimates,
        warnings=warnings,
    )


def pick_preset(p: Plan) -> str:
    """The preset whose size is closest (in log space) to the compute-optimal model of the plan."""
    if not p.presets:
        raise ValueError("plan has no preset estimates")
    target = math.log(p.chinchilla.params)
    return min(p.presets, key=lambda e: abs(math.log(e.params) - target)).name


def auto_preset(tokens: float, vocab_size: int, seq_len: int) -> tuple[str, Plan]:
    """`model: auto`: the preset closest to the compute-optimal size for `tokens` training tokens."""
    p = plan(tokens=tokens, vocab_size=vocab_size, seq_len=seq_len)
    return pick_preset(p), p


def format_duration(hours: float) -> str:
    seconds = hours * 3600.0
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def format_plan(p: Plan, source: str = "") -> str:
    """The plain-text plan `pretrain plan` prints."""
    gpus = f"{p.gpus} x " if p.gpus > 1 else ""
    lines = [
        f"data: {p.tokens:,.0f} unique tokens" + (f" ({source})" if source else "")
        if p.tokens
        else "data: unknown (no epochs check; pass --tokens or make a tokenize version)",
        f"budget: {p.compute_flops:.3g} FLOPs" if p.compute_flops else "budget: none (sized from the data)",
        (
            f"device: {gpus}{p.gpu} at {p.peak_flops / 1e12:.0f} TFLOP/s bf16 peak, MFU {p.mfu:g} "
            f"-> {p.peak_flops * p.mfu * p.gpus / 1e12:.0f} TFLOP/s; vocab {p.vocab_size:,}, seq_len {p.seq_len}"
        ),
        "",
    ]
    flops_per_s = p.peak_flops * p.mfu * p.gpus
    inference = f"inference-optimal ({p.inference_optimal.tokens_per_param:g} tokens/param)"
    for title, a in (("Chinchilla-optimal (D = 20 N, C = 6 N D)", p.chinchilla), (inference, p.inference_optimal)):
        lines.append(
            f"{title}: N = {a.params:.3g} params, D = {a.tokens:.3g} tokens, C = {a.flops:.3g} FLOPs, "
            f"wall-clock {format_duration(a.flops / flops_per_s / 3600.0)}"
        )
    rows = [("preset", "params", "tokens", "epochs", "FLOPs", "GPU-hours", "wall-clock")]
    for e in p.presets:
        rows.append(
            (
                e.name,
                f"{e.params / 1e6:.2f}M",
                f"{e.tokens:.3g}",
                "-" if e.epochs is None else f"{e.epochs:.2f}",
                f"{e.flops:.3g}",
                f"{e.gpu_hours:.3g}",
                format_duration(e.wall_hours),
            )
        )
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    basis = "spend the whole budget" if p.compute_flops else "are 20 x the preset's parameters"
    lines += ["", f"per preset (training tokens {basis}):"]
    lines += [("  " + "  ".join(c.ljust(w) for c, w in zip(r, width))).rstrip() for r in rows]
    if p.tokens:
        lines += ["", f"model: auto picks {pick_preset(p)} (closest in log size to the Chinchilla N)"]
    lines += [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)
