"""`pretrain export-hf`: a train checkpoint -> a Hugging Face `LlamaForCausalLM` directory (issue 15, item 2).

Input: a committed `train` version (default: the latest) and one of its checkpoints (default: the final
one, the step its manifest names and `result.json` reports; `best` picks the lowest validation loss,
which retention always keeps; or a step number). Output, in `--out`: `config.json`, `model.safetensors`,
`generation_config.json`, `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and the
sentencepiece `tokenizer.model`, so `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load them (tests/tasks/test_export_hf.py checks logits and greedy
generation against models/gpt.py, and token ids against our sentencepiece encoder).

Mapping (models/gpt.py is Llama with fused matrices, so weights are only split and renamed):
  - `attn.qkv` rows are [q heads | k heads | v heads], head-major: split into q/k/v_proj. No RoPE permutation:
    `apply_rope` rotates (x_i, x_{i+d/2}) pairs, HF Llama's `rotate_half` layout, with the same frequencies.
  - `mlp.w13` rows are [w1 (gate) | w3 (up)]: gate_proj, up_proj; `w2` is down_proj.
  - The tied embedding keeps its first `vocab_size` rows only (`tie_word_embeddings: true`): the padding rows
    exist for tensor-core alignment, are never targets, and our `generate` never samples them; each logit is its
    own row's dot product, so the real vocabulary's logits are unchanged and HF generation cannot pick a padding id.
  - float32 weights, as the checkpoints hold them.
Tokenizer: `tokenizer.json` is the sentencepiece BPE model in the `tokenizers` format (vocab, merges ranked by the
merged piece's score, byte fallback, the `▁` dummy prefix; no normalizer beyond that, as our recipe's identity
normalisation), loaded as `PreTrainedTokenizerFast` so no library re-converts it. No BOS is added: training saw
documents separated by `<eos>` only. `split_special_tokens: true`: text that spells `<eos>` is encoded as text, as
sentencepiece does, so `tokenizer(text).input_ids` equals `Tokenizer.encode([text])[0]` for every text (put special
ids into `input_ids` directly). A user-given sentencepiece model of another recipe is refused (`_check_recipe`).
`--out` must be new, empty or an earlier export: other files there (stray weights) would be loaded with ours.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models.gpt import GPTConfig
from models.tokenizer import Tokenizer
from storage import checkpoints as ckpt
from storage import paths
from storage.manifest import Manifest, load_manifest
from tasks.train.params import STAGE

log = logging.getLogger(__name__)

CONFIG, WEIGHTS, GENERATION_CONFIG = "config.json", "model.safetensors", "generation_config.json"
HF_TOKENIZER, TOKENIZER_CONFIG, SPECIAL_TOKENS = "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"
SP_MODEL = "tokenizer.model"
SPACE = "\u2581"  # sentencepiece's whitespace symbol
StepChoice = int | Literal["final", "best"]


@dataclass(frozen=True)
class ExportResult:
    out: str
    train_version: str
    step: int
    tokenize_version: str
    vocab_size: int
    num_params: int


def hf_config(cfg: GPTConfig, tok: Tokenizer) -> dict[str, Any]:
    """`config.json` of the LlamaForCausalLM equal to a GPT of this config (vocab cut to the tokenizer's)."""
    assert tok.vocab_size == cfg.vocab_size, f"tokenizer has {tok.vocab_size} pieces, model {cfg.vocab_size}"
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": cfg.init_std,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def hf_state_dict(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Our GPT state dict renamed and split into LlamaForCausalLM's (lm_head tied, so not stored)."""
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {
        "model.embed_tokens.weight": state["wte.weight"][: cfg.vocab_size],
        "model.norm.weight": state["norm.weight"],
    }
    for i in range(cfg.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = torch.split(state[src + "attn.qkv.weight"], [q, kv, kv], dim=0)
        gate, up = state[src + "mlp.w13.weight"].chunk(2, dim=0)
        out |= {
            dst + "input_layernorm.weight": state[src + "attn_norm.weight"],
            dst + "self_attn.q_proj.weight": wq,
            dst + "self_attn.k_proj.weight": wk,
            dst + "self_attn.v_proj.weight": wv,
            dst + "self_attn.o_proj.weight": state[src + "attn.proj.weight"],
            dst + "post_attention_layernorm.weight": state[src + "mlp_norm.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": state[src + "mlp.w2.weight"],
        }
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def _merges(tok: Tokenizer) -> list[list[str]]:
    """BPE merges: every split of a vocabulary piece into two pieces, ranked by the merged piece's score (the
    order sentencepiece's BPE applies them in), ties by the parts' ids (as transformers' converter does)."""
    sp = tok.sp
    special = {i for i in range(tok.vocab_size) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)}
    vocab = {sp.id_to_piece(i): i for i in range(tok.vocab_size) if i not in special}
    merges: list[tuple[float, int, int, str, str]] = []
    for piece, i in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-sp.get_score(i), vocab[left], vocab[right], left, right))
    return [[left, right] for *_, left, right in sorted(merges)]


def _check_recipe(tok: Tokenizer) -> None:
    """Refuse a model the tokenizer.json below would not reproduce (a user-given `tokenize.tokenizer_path`):
    one that normalises (NFKC maps the ligature to `fi`), collapses whitespace or adds no dummy prefix."""
    probe = " a  \ufb01\tb\n"
    ids = tok.encode([probe])[0]
    if tok.decode(ids) != probe or not tok.sp.id_to_piece(ids[0]).startswith(SPACE):
        raise ValueError(
            f"{tok.path}: export-hf supports sentencepiece models trained with the tokenize stage's recipe "
            f"(identity normalisation, whitespace kept, dummy prefix); this one encodes {probe!r} as "
            f"{[tok.sp.id_to_piece(i) for i in ids]}"
        )


def hf_tokenizer(tok: Tokenizer) -> dict[str, Any]:
    """`tokenizer.json` (the `tokenizers` library's format) equal to the sentencepiece BPE model."""
    _check_recipe(tok)
    sp = tok.sp
    specials = [i for i in range(tok.vocab_size) if sp.is_control(i) or sp.is_unknown(i)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": sp.id_to_piece(i),
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in specials
        ],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": SPACE},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": sp.id_to_piece(tok.unk_id),
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {sp.id_to_piece(i): i for i in range(tok.vocab_size)},
            "merges": _merges(tok),
        },
    }


def tokenizer_files(tok: Tokenizer, seq_len: int) -> dict[str, dict[str, Any]]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json contents."""
    sp = tok.sp
    special = {
        "bos_token": sp.id_to_piece(tok.bos_id),
        "eos_token": sp.id_to_piece(tok.eos_id),
        "unk_token": sp.id_to_piece(tok.unk_id),
        "pad_token": sp.id_to_piece(tok.pad_id),
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "model_max_length": seq_len,
        **special,
    }
    return {HF_TOKENIZER: hf_tokenizer(tok), TOKENIZER_CONFIG: config, SPECIAL_TOKENS: special}


def resolve_step(out_dir: str, manifest: Manifest, step: StepChoice) -> int:
    """The checkpoint to export: the run's final one, its best by validation loss, or a kept step."""
    steps = ckpt.list_checkpoints(out_dir)
    if step == "final":
        result = manifest.extras.get("result") or {}
        chosen: int | None = int(result["steps"]) if "steps" in result else (steps[-1] if steps else None)
    elif step == "best":
        chosen = ckpt.best_step(out_dir)
    else:
        chosen = step
    if chosen not in steps:
        raise ValueError(
            f"train@{manifest.version} has no checkpoint {step!r}; it keeps steps {steps} (pass one as --step)"
        )
    return int(chosen)


def _tokenizer_of(root: str, manifest: Manifest, meta: dict[str, Any]) -> tuple[str, Tokenizer]:
    """The tokenize version the run trained on and its sentencepiece model (sha256 checked against the checkpoint)."""
    version = str(meta.get("tokenize_version") or manifest.inputs["tokenize"])
    tm = load_manifest(root, "tokenize", version)
    if "tokenizer_path" not in tm.extras:
        raise ValueError(f"tokenize@{version} records no tokenizer_path, so there is no tokenizer to export")
    tok = Tokenizer(
        paths.local_copy(paths.join(paths.version_dir(root, "tokenize", version), tm.extras["tokenizer_path"]))
    )
    want = meta.get("tokenizer_sha256")
    if want and want != tok.sha256:
        raise ValueError(
            f"tokenize@{version}'s tokenizer sha256 {tok.sha256[:16]} differs from the checkpoint's {want[:16]}"
        )
    return version, tok


def save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ImportError(
            "export-hf writes model.safetensors with the safetensors package; pip install safetensors"
        ) from None
    save_file(tensors, path, metadata=metadata)


def _check_out(out: str) -> None:
    """Create `out`; refuse one holding files an export does not write (from_pretrained would read stray weights)."""
    os.makedirs(out, exist_ok=True)
    ours = {CONFIG, WEIGHTS, GENERATION_CONFIG, HF_TOKENIZER, TOKENIZER_CONFIG, SPECIAL_TOKENS, SP_MODEL}
    other = sorted(set(os.listdir(out)) - ours)
    if other:
        raise ValueError(
            f"--out {out} holds files an export does not write ({', '.join(other[:5])}); pass a new directory"
        )


def export_hf(root: str, out: str, version: str = "latest", step: StepChoice = "final") -> ExportResult:
    """Write checkpoint `step` of train@`version` under `root` as a Hugging Face Llama directory `out`."""
    manifest = load_manifest(root, STAGE, version)
    run_dir = paths.version_dir(root, STAGE, manifest.version)
    chosen = resolve_step(run_dir, manifest, step)
    meta = ckpt.load_meta(run_dir, chosen)
    cfg = GPTConfig(**meta["model_config"])
    tokenize_version, tok = _tokenizer_of(root, manifest, meta)
    tensors = hf_state_dict(ckpt.load_object(run_dir, chosen, "model"), cfg)
    _check_out(out)
    provenance = {
        "format": "pt",
        "train_version": manifest.version,
        "step": str(chosen),
        "tokenize_version": tokenize_version,
        "tokenizer_sha256": tok.sha256,
    }
    save_safetensors(tensors, os.path.join(out, WEIGHTS), provenance)
    generation = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    files = {CONFIG: hf_config(cfg, tok), GENERATION_CONFIG: generation, **tokenizer_files(tok, cfg.seq_len)}
    for name, obj in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
    shutil.copyfile(tok.path, os.path.join(out, SP_MODEL))
    log.info("exported train@%s step %d (%s) to %s", manifest.version, chosen, ckpt.step_dir_name(chosen), out)
    return ExportResult(
        out, manifest.version, chosen, tokenize_version, cfg.vocab_size, sum(t.numel() for t in tensors.values())
    )
