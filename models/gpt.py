"""A decoder-only GPT in one file: config, blocks, model, optimizer groups, sampling.

Architecture (Llama-style, no biases anywhere):
    token embedding (tied with the output head; vocab padded to a multiple of 128 for tensor cores)
    -> n_layer x [x + Attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x))] -> RMSNorm -> logits
Attention uses rotary position embeddings (RoPE, Su et al. 2021) on q and k, optional grouped-query
heads (`n_kv_head < n_head`, Ainslie et al. 2023) and `F.scaled_dot_product_attention`.

Document masking (`forward(..., doc_ids=...)`): token shards pack several documents per sequence
separated by <eos>; with `doc_ids` (the document index of each position, from the shard's
`doc_offsets`) attention becomes block-diagonal causal, so a token never attends across a document
boundary. Cost: an explicit mask rules out the flash kernel on CUDA; SDPA falls back to the
memory-efficient kernel (roughly 1.3-2x slower attention). Without `doc_ids` we pass `is_causal=True`
and no mask, which is what lets SDPA pick flash attention.

FLOPs per token (`flops_per_token`) follow the PaLM paper, appendix B (as nanoGPT's `estimate_mfu`):
6 N for the matmuls of forward + backward plus 12 * n_layer * n_head * head_dim * seq_len for attention
scores and values. N counts the tied embedding once (it is the output head's matmul).

No I/O and no Prefect here; training lives in `tasks/train/__init__.py`, presets in `models/presets.py`.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.config import GPTConfig

__all__ = ["GPT", "GPTConfig"]


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (seq_len, head_dim) in the rotate-half layout (GPT-NeoX / Llama HF)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) of x (B, H, T, D) by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where query i may attend key j: j <= i and same document."""
    t = doc_ids.size(1)
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same_doc & causal)[:, None, :, :]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # one fused projection for q, k, v: a single large matmul is faster than three small ones
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)
        q = apply_rope(q.view(b, t, self.n_head, self.hd).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(b, t, self.n_kv, self.hd).transpose(1, 2), cos, sin)
        v = v.view(b, t, self.n_kv, self.hd).transpose(1, 2)
        gqa = self.n_kv != self.n_head
        if gqa and (mask is not None or not x.is_cuda):
            # SDPA's enable_gqa works only with the flash and math kernels on CUDA; expand k, v otherwise
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
            gqa = False
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out: torch.Tensor = self.proj(y.transpose(1, 2).contiguous().view(b, t, -1))
        return out


class SwiGLU(nn.Module):
    """Feed-forward w2(silu(w1 x) * w3 x) (Shazeer 2020), 2/3 of the 4x width to keep the FLOPs.

    w1 and w3 are one (2 * hidden, n_embd) matrix: one large matmul instead of two smaller ones.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.n_embd, 2 * cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        out: torch.Tensor = self.w2(F.silu(gate) * up)
        return out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        out: torch.Tensor = x + self.mlp(self.mlp_norm(x))
        return out


class GPT(nn.Module):
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual output projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.w2.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def num_params(self) -> int:
        """Trainable parameters; the tied embedding/head matrix is counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        return self.cfg.flops_per_token()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, padded_vocab) and, with targets, the mean next-token cross-entropy (float32)."""
        t = idx.size(1)
        assert t <= self.cfg.seq_len, f"sequence length {t} > model seq_len {self.cfg.seq_len}"
        mask = document_mask(doc_ids) if doc_ids is not None else None
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits, None
        # padded vocab rows stay in the softmax: they never occur as targets and are pushed to ~0 mass
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizers(
        self, lr: float, weight_decay: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices (dim >= 2: linear weights, embedding) only; fused on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T); temperature 0 means greedy.

        No KV cache: each step reruns the (cropped) context, fine for the short samples we log.
        Pass a seeded `generator` (on idx's device) for reproducible samples.
        """
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.seq_len :]
            logits, _ = self(context)
            logits = logits[:, -1, : self.cfg.vocab_size].float()  # never sample padding ids
            if temperature == 0.0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
