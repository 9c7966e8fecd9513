"""Building blocks of the training loop in `tasks/train/__init__.py`: runtime, data order, one step, guards.

- `Runtime`: device, autocast dtype and the DDP rank/world. Under `torchrun` (detected with
  `torch.distributed.is_torchelastic_launched`) the process group is NCCL on CUDA, gloo on CPU.
- Data order: sample position p (a global count of sequences consumed since step 0) maps to sequence
  `permutation(seed, epoch)[p % n]`, epoch = p // n. One integer is therefore the whole data-loader
  state: a checkpoint stores it, a resume continues from it, and a rollback skips a range of it.
  Within a step the global batch is split as position offset (micro * world + rank) * micro_batch.
- `train_step`: gradient accumulation (DDP gradient sync only on the last micro-batch), clipping, and
  the non-finite / huge gradient-norm skip. It reads loss and norm back every step (one device sync),
  which the stability checks need; `bench/train.py` times this same function.
- `SpikeGuard`: rollback trigger when the loss stays above `factor` x the running mean for `patience`
  consecutive steps.
- RNG capture/restore (torch, CUDA, numpy, python) for checkpoints.
- The loop's state: `TrainState` (what a checkpoint's meta.json restores besides weights and
  optimizer), `Models` (raw / compiled / DDP views of one model), `Run` (everything one run holds),
  `FaultHooks` (fault injection used by the tests), and `record_step` (a step's counters, throughput
  and metrics row; the row format is tasks/train/metrics.py's).
Imports only go one way: `tasks.train` (the loop) -> loop -> metrics, params; metrics and params import
nothing of this package.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from models.gpt import GPT, GPTConfig
from storage.token_shards import TokenShards
from tasks.train.metrics import MetricsLog
from tasks.train.params import TrainParams

log = logging.getLogger(__name__)

MicroBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # x, y, doc_ids


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain float32
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)


def setup_runtime(device: str, dtype: str) -> Runtime:
    """Pick the device and precision; join the process group when launched by torchrun."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use device: auto or cpu")
    rank, world, local_rank = 0, 1, 0
    if dist.is_torchelastic_launched():
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = dist.get_node_local_rank(fallback_rank=rank)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (e.g. eval of fp32 runs)
        torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    want_bf16 = dtype == "bfloat16" or (dtype == "auto" and use_cuda)
    return Runtime(
        device=dev, amp_dtype=torch.bfloat16 if want_bf16 else None, rank=rank, world=world, local_rank=local_rank
    )


def teardown_runtime(rt: Runtime) -> None:
    if rt.ddp and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.ddp:
        dist.barrier()


class DataOrder:
    """Deterministic sample positions -> sequence indices (a fresh seeded permutation per epoch)."""

    def __init__(self, num_sequences: int, seed: int):
        assert num_sequences > 0, "empty training set"
        self.n, self.seed = num_sequences, seed
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        positions = np.arange(start, start + count, dtype=np.int64)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // self.n):
            sel = positions // self.n == epoch
            out[sel] = self._permutation(int(epoch))[positions[sel] % self.n]
        return out


def skip_past(pos: int, skip_ranges: list[tuple[int, int]]) -> int:
    """First position >= pos outside every [start, end) skip range."""
    moved = True
    while moved:
        moved = False
        for start, end in skip_ranges:
            if start <= pos < end:
                pos, moved = end, True
    return pos


def rank_slices(global_batch: int, micro: int, accum: int, rank: int, world: int) -> list[slice]:
    """This rank's micro-batch slices of a step's global batch."""
    assert global_batch == micro * accum * world, f"{global_batch} != {micro} * {accum} * {world}"
    return [slice((m * world + rank) * micro, (m * world + rank + 1) * micro) for m in range(accum)]


@dataclass(frozen=True)
class StepOutcome:
    loss: float
    grad_norm: float
    skipped: bool


LossHook = Callable[[int, torch.Tensor], torch.Tensor]


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[MicroBatch],
    rt: Runtime,
    lr: float,
    grad_clip: float,
    skip_factor: float,
    step: int = 0,
    ddp_module: DistributedDataParallel | None = None,
    loss_hook: LossHook | None = None,
) -> StepOutcome:
    """One optimizer step over the micro-batches; skipped when the gradient norm is bad."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=rt.device)
    n = len(micro_batches)
    for i, (x, y, doc_ids) in enumerate(micro_batches):
        last = i == n - 1
        no_sync = ddp_module.no_sync() if ddp_module is not None and not last else contextlib.nullcontext()
        with no_sync:
            with rt.autocast():
                _, loss = model(x, y, doc_ids)
            if loss_hook is not None:
                loss = loss_hook(step, loss)
            (loss / n).backward()
        total += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    mean_loss = total / n
    if rt.ddp:
        dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)  # gloo has no AVG
        mean_loss /= rt.world
    loss_value, norm_value = float(mean_loss.item()), float(grad_norm.item())
    skipped = not math.isfinite(norm_value) or norm_value > skip_factor * grad_clip
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss=loss_value, grad_norm=norm_value, skipped=skipped)


@dataclass
class SpikeGuard:
    """Flags a loss spike: `patience` consecutive losses above `factor` x mean of the last `window`."""

    factor: float
    patience: int
    window: int
    history: deque[float] = field(default_factory=deque)
    spike_ranges: list[tuple[int, int]] = field(default_factory=list)

    def update(self, loss: float, pos_range: tuple[int, int]) -> bool:
        """Record a step; True when the run should roll back (offending ranges in `spike_ranges`)."""
        full = len(self.history) >= min(self.window, 5)
        mean = sum(self.history) / len(self.history) if self.history else math.inf
        if full and (not math.isfinite(loss) or loss > self.factor * mean):
            self.spike_ranges.append(pos_range)
            return len(self.spike_ranges) >= self.patience
        self.spike_ranges.clear()
        if math.isfinite(loss):
            self.history.append(loss)
            while len(self.history) > self.window:
                self.history.popleft()
        return False

    def reset_spike(self) -> list[tuple[int, int]]:
        ranges, self.spike_ranges = self.spike_ranges, []
        return ranges


def capture_rng(rt: Runtime) -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA, numpy global, python) as plain containers."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(rt.device) if rt.device_type == "cuda" else None,
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], rt: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and rt.device_type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], rt.device)
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def gather_rng(rt: Runtime) -> list[dict[str, Any]]:
    """RNG states of every rank, on every rank (rank order)."""
    mine = capture_rng(rt)
    if not rt.ddp:
        return [mine]
    out: list[Any] = [None] * rt.world
    dist.all_gather_object(out, mine)
    return out


StepCallback = Callable[[int, int, float, float], None]
"""Progress callback `on_step(step, total_steps, loss, tokens_per_second)`: called by rank 0 after every optimizer
step (step 1..total_steps; lower again after a loss-spike rollback); tokens_per_second is that step's own
throughput (tokens of the step / seconds of its forward, backward and update). flows/train.py drives its
progress bar with it; tasks import nothing of flows."""


@dataclass
class FaultHooks:
    """Fault injection for tests: corrupt rows (by sample position), corrupt the loss, or stop after a step."""

    corrupt_rows: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    corrupt_loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    after_step: Callable[[int], None] | None = None


@dataclass
class TrainState:
    """Everything besides model and optimizer that a checkpoint must restore."""

    step: int = 0
    seq_pos: int = 0
    tokens_seen: int = 0
    skip_ranges: list[tuple[int, int]] = field(default_factory=list)
    val_loss: float | None = None
    val_step: int = -1
    best_val_loss: float | None = None
    skipped_steps: int = 0
    rollbacks: int = 0
    skipped_batches: int = 0
    unrecovered_spikes: int = 0


@dataclass
class Models:
    raw: GPT  # parameters live here; state_dict and generate use it
    compiled: torch.nn.Module  # raw or torch.compile(raw); used for evaluation
    train: torch.nn.Module  # compiled, wrapped in DDP when world > 1
    ddp: DistributedDataParallel | None


@dataclass
class Run:
    params: TrainParams
    rt: Runtime
    out: Path
    train_data: TokenShards
    val_data: TokenShards
    model_name: str
    cfg: GPTConfig
    models: Models
    optimizer: torch.optim.Optimizer
    order: DataOrder
    accum: int
    metrics: MetricsLog
    guard: SpikeGuard
    unigram: float
    bytes_per_token: float
    lineage: dict[str, str]
    state: TrainState = field(default_factory=TrainState)
    peak: float | None = None
    resumed_from: int | None = None  # checkpoint step this process resumed from
    timing: dict[str, float] = field(
        default_factory=lambda: {"tokens": 0.0, "seconds": 0.0, "win_tokens": 0.0, "win_seconds": 0.0, "steps": 0.0}
    )

    @property
    def global_batch(self) -> int:
        return self.params.micro_batch_size * self.accum * self.rt.world

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.cfg.seq_len


def record_step(run: Run, loss: float, lr: float, grad_norm: float, skipped: bool, seconds: float) -> None:
    """Count a step (skips, throughput) and write a metrics row every log_interval steps."""
    st, t, p = run.state, run.timing, run.params
    if skipped:
        st.skipped_steps += 1
        log.warning("step %d skipped: gradient norm %.3g (loss %.4g)", st.step, grad_norm, loss)
        run.metrics.write({"step": st.step, "event": "grad_skip", "grad_norm": grad_norm, "loss": loss})
    t["steps"] += 1
    if t["steps"] > 1:  # the first step of a process includes compilation
        t["tokens"] += run.tokens_per_step
        t["seconds"] += seconds
    t["win_tokens"] += run.tokens_per_step
    t["win_seconds"] += seconds
    if st.step % p.log_interval and st.step != p.max_steps:
        return
    tps = t["win_tokens"] / t["win_seconds"]
    mfu = run.cfg.flops_per_token() * tps / (run.peak * run.rt.world) if run.peak else None
    t["win_tokens"] = t["win_seconds"] = 0.0
    run.metrics.write(
        {
            "step": st.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tps,
            "mfu": mfu,
            "skipped_steps": st.skipped_steps,
            "rollbacks": st.rollbacks,
        }
    )
    if run.rt.is_main:
        log.info(
            "step %d/%d loss %.4f lr %.2e gnorm %.3f %.0f tok/s%s",
            st.step,
            p.max_steps,
            loss,
            lr,
            grad_norm,
            tps,
            f" mfu {mfu:.1%}" if mfu else "",
        )
