"""Training-step throughput: our GPT (models/gpt.py) against a nanoGPT-style GPT-2 of the same size.

    python -m bench.train                                   # gpt2-124m, 32 x 1024, bf16, compiled, CUDA
    python -m bench.train --preset tiny --device cpu --steps 3 --batch 2 --seq 64   # CPU smoke test

Ours is timed through `tasks.train.loop.train_step`, the exact step the trainer runs: fused AdamW,
bf16 autocast, torch.compile, flash SDPA (is_causal, no mask), padded vocab, gradient clipping and the
per-step loss / gradient-norm read-back the stability checks need. The reference is the plain GPT-2
recipe as nanoGPT writes it: LayerNorm and Linear with biases, GELU MLP (4x), learned positions, fused
qkv, SDPA causal, tied embeddings, unpadded vocabulary (GPT-2's 50257; `--ref-pad-vocab` pads it
too), the same AdamW (fused on CUDA), bf16 autocast, compile, clipping, and no per-step sync. Both see
the same synthetic random tokens. MFU = FLOPs/token (PaLM: 6 N + 12 L H Q T, each model's own N) x
tokens/s / peak dense bf16 FLOP/s of the GPU (tasks/train/plan.py table); on CPU only tokens/s is reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.gpt import GPT
from models.presets import PRESETS, preset
from tasks.train.loop import Runtime, train_step
from tasks.train.plan import gpu_key_for_device_name, peak_flops


@dataclass(frozen=True)
class RefConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    n_embd: int


class RefAttention(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))


class RefBlock(nn.Module):
    def __init__(self, c: RefConfig):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(c.n_embd), RefAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(approximate="tanh"), nn.Linear(4 * c.n_embd, c.n_embd)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    """GPT-2 as nanoGPT's model.py builds it (dropout 0, bias on)."""

    def __init__(self, c: RefConfig):
        super().__init__()
        self.c = c
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.seq_len, c.n_embd)
        self.h = nn.ModuleList([RefBlock(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor, doc_ids: None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    def flops_per_token(self) -> float:
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()  # nanoGPT: non-embedding N
        c = self.c
        return 6.0 * n + 12.0 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.seq_len


def ref_optimizer(model: nn.Module, lr: float, device_type: str) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device_type == "cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step after warmup steps (compilation, allocator and cuBLAS autotuning)."""
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return (time.perf_counter() - t0) / steps


def bench_ours(args: argparse.Namespace, rt: Runtime, data: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    torch.manual_seed(0)
    cfg = preset(args.preset, vocab_size=args.vocab, seq_len=args.seq)
    raw = GPT(cfg).to(rt.device)
    model: nn.Module = torch.compile(raw) if args.compile else raw  # type: ignore[assignment]
    opt = raw.configure_optimizers(3e-4, 0.1, (0.9, 0.95), rt.device_type)

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        train_step(model, opt, [(x, y, None)], rt, lr=3e-4, grad_clip=1.0, skip_factor=100.0, step=i)

    sec = time_steps(step, args.warmup, args.steps, rt.device)
    return {
        "params": raw.num_params(),
        "flops_per_token": cfg.flops_per_token(),
        "sec_per_step": sec,
        "vocab_rows": cfg.padded_vocab_size,
    }


def bench_reference(args: argparse.Namespace, rt: Runtime, data: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    torch.manual_seed(0)
    cfg = preset(args.preset, vocab_size=args.vocab, seq_len=args.seq)
    vocab = cfg.padded_vocab_size if args.ref_pad_vocab else args.vocab
    raw = RefGPT(RefConfig(vocab, args.seq, cfg.n_layer, cfg.n_head, cfg.n_embd)).to(rt.device)
    model: nn.Module = torch.compile(raw) if args.compile else raw  # type: ignore[assignment]
    opt = ref_optimizer(raw, 3e-4, rt.device_type)

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        with rt.autocast():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = time_steps(step, args.warmup, args.steps, rt.device)
    return {
        "params": sum(p.numel() for p in raw.parameters()),
        "flops_per_token": raw.flops_per_token(),
        "sec_per_step": sec,
        "vocab_rows": vocab,
    }


def summarize(name: str, r: dict, tokens_per_step: int, peak: float | None) -> dict:
    tps = tokens_per_step / r["sec_per_step"]
    mfu = r["flops_per_token"] * tps / peak if peak else None
    print(
        f"{name:>10}: {r['params'] / 1e6:7.2f}M params, vocab rows {r['vocab_rows']}, "
        f"{r['sec_per_step'] * 1e3:8.1f} ms/step, {tps:10.0f} tokens/s" + (f", MFU {mfu:.1%}" if mfu else "")
    )
    return {**r, "tokens_per_s": tps, "mfu": mfu}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--seq", type=int, default=1024, help="sequence length")
    p.add_argument("--vocab", type=int, default=50257, help="tokenizer vocabulary (GPT-2: 50257)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        default=None,
        help="skip torch.compile (default: compile on CUDA, not on CPU, like the trainer)",
    )
    p.add_argument("--ref-pad-vocab", action="store_true", help="pad the reference vocabulary like ours")
    p.add_argument("--only", choices=["ours", "reference"], help="run one side only")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.compile is None:
        args.compile = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rt = Runtime(device=device, amp_dtype=torch.bfloat16 if device.type == "cuda" else None)
    gen = torch.Generator().manual_seed(0)
    data = [
        tuple(
            torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)
            .to(device)
            .split([args.seq, 1], dim=1)
        )
        for _ in range(4)
    ]
    data = [(x, torch.cat([x[:, 1:], last], dim=1)) for x, last in data]  # y = x shifted by one
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name) if device.type == "cuda" and gpu_key_for_device_name(name) else None
    print(
        f"device {name}, torch {torch.__version__}, preset {args.preset}, batch {args.batch} x {args.seq}, "
        f"{'bf16' if rt.amp_dtype else 'fp32'}, compile {args.compile}, peak "
        f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'n/a'}"
    )
    tokens = args.batch * args.seq
    out: dict[str, dict] = {}
    for side, fn in (("ours", bench_ours), ("reference", bench_reference)):
        if args.only in (None, side):
            out[side] = summarize(side, fn(args, rt, data), tokens, peak)
            gc.collect()
            if device.type == "cuda":
                out[side]["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
    if len(out) == 2:
        ratio = out["ours"]["tokens_per_s"] / out["reference"]["tokens_per_s"]
        out["ratio"] = {"ours_over_reference": ratio}
        print(f"     ratio: ours / reference = {ratio:.3f}x tokens/s")
    if args.json:
        print(json.dumps({"device": name, "args": vars(args), **out}, default=str))
    return 0 if all(math.isfinite(v["tokens_per_s"]) for k, v in out.items() if k != "ratio") else 1


if __name__ == "__main__":
    raise SystemExit(main())
