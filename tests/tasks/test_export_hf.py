"""`pretrain export-hf` (tasks/train/export_hf.py): transformers loads the export and computes what our GPT does.

A sentencepiece tokenizer is trained (tokenize stage recipe) on this repository's own prose and code, a
tokenize version of its token shards is written by hand, and a train version is made two ways: trained in
process by `tasks.train.train` (the tiny preset, the checkpoint format training writes), and random weights
of a config the presets do not cover (grouped-query heads, explicit FFN width, other RoPE theta and norm eps,
non-unit norm weights) saved with storage.checkpoints. Each is exported through the CLI and loaded with
`AutoModelForCausalLM` / `AutoTokenizer`; logits over the real vocabulary, greedy generation token by token
(HF's KV-cached path against our uncached one) and token ids of held-out text must equal ours, and decoding
them must give the text back. (Decoding differs only for id sequences our encoder never produces: a run of
byte pieces that is not valid UTF-8 becomes one U+FFFD per byte in `tokenizers`, while sentencepiece keeps
the valid bytes, as a random model's `<0x65><0x3B><0xE1>` shows.)
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from flows.cli import main  # noqa: E402
from models.gpt import GPT, GPTConfig  # noqa: E402
from models.tokenizer import Tokenizer, train_tokenizer, training_lines  # noqa: E402
from storage import checkpoints as ckpt  # noqa: E402
from storage.artifacts import ArtifactWriter  # noqa: E402
from storage.manifest import ShardInfo, new_manifest  # noqa: E402
from storage.stats import StageStats  # noqa: E402
from storage.token_shards import TokenShardWriter, pack_documents  # noqa: E402
from tasks.train import train  # noqa: E402
from tasks.train.export_hf import hf_tokenizer  # noqa: E402
from tests.tiny import tiny_train_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN_TEXT = ["models/gpt.py", "models/tokenizer.py", "storage/manifest.py", "CONTRIBUTING.md"]
HELD_OUT = ["storage/checkpoints.py", "models/presets.py", "README.md"]
VOCAB, SEQ_LEN, TOK, RANDOM = 1000, 64, "tok1", "abcdef012345"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def documents(names: list[str]) -> list[str]:
    """Blank-line separated paragraphs of repository files (prose, markdown tables and indented code)."""
    return [p for name in names for p in (ROOT / name).read_text().split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def tokenize_root(tmp_path_factory) -> Path:
    """A data root holding one committed tokenize version (tokenizer.model, train/val token shards)."""
    root = tmp_path_factory.mktemp("data")
    w = ArtifactWriter(str(root), "tokenize", TOK, {"mix": "m1"})
    docs = documents(TRAIN_TEXT)
    model = train_tokenizer([line for d in docs for line in training_lines(d)], f"{w.path}/tokenizer.model", VOCAB)
    tok = Tokenizer(model)
    ids = tok.encode(docs)
    shards, sequences = [], {}
    for split, part in (("train", ids[: -len(ids) // 8]), ("val", ids[-len(ids) // 8 :])):
        packed = list(pack_documents(part, SEQ_LEN, tok.eos_id))
        name = f"{split}/tokens-00000.arrow"
        with TokenShardWriter(f"{w.path}/{name}", SEQ_LEN, VOCAB, eos_id=tok.eos_id) as tw:
            tw.write_sequences(np.stack([r for r, _ in packed]), [o for _, o in packed])
        sequences[split] = len(packed)
        shards.append(ShardInfo(name=name, rows=len(packed), bytes=1))
    extras = {
        "vocab_size": VOCAB,
        "seq_len": SEQ_LEN,
        "bytes_per_token": 3.0,
        "eos_id": tok.eos_id,
        "sequences": sequences,
        "tokenizer_path": "tokenizer.model",
        "tokenizer_sha256": tok.sha256,
    }
    w.commit(new_manifest("tokenize", 1, TOK, {}, {"mix": "m1"}, shards, [], StageStats(), extras))
    return root


@pytest.fixture
def root(tokenize_root, tmp_path) -> Path:
    shutil.copytree(tokenize_root, tmp_path / "data")
    return tmp_path / "data"


def tokenizer(root: Path) -> Tokenizer:
    return Tokenizer(root / "tokenize" / TOK / "tokenizer.model")


def commit_train(w: ArtifactWriter, steps: int) -> None:
    result = {"steps": steps, "checkpoint": ckpt.step_dir_name(steps)}
    shards = [ShardInfo(name=ckpt.step_dir_name(steps), rows=0, bytes=0)]
    w.commit(new_manifest("train", 1, w.version, {}, {"tokenize": TOK}, shards, [], StageStats(), {"result": result}))


def save_random_steps(root: Path, cfg: GPTConfig, val_losses: dict[int, float]) -> dict[int, GPT]:
    """A committed train version RANDOM with one random-weight checkpoint per step (norm weights not 1)."""
    w = ArtifactWriter(str(root), "train", RANDOM, {"tokenize": TOK})
    tok, models = tokenizer(root), {}
    for step, val_loss in val_losses.items():
        torch.manual_seed(step)
        model = GPT(cfg)
        for name, p in model.named_parameters():
            if "norm" in name:
                torch.nn.init.uniform_(p, 0.5, 1.5)
        meta = {"model_config": cfg.to_dict(), "val_loss": val_loss, "tokenize_version": TOK}
        ckpt.save_checkpoint(w.path, step, {"model": model.state_dict()}, {**meta, "tokenizer_sha256": tok.sha256})
        models[step] = model.eval()
    commit_train(w, max(val_losses))
    return models


def export(root: Path, out: Path, *args: str):
    assert main(["export-hf", "--out", str(out), "--data-root", str(root), *args]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(out)


def check_same_model(ours: GPT, tok: Tokenizer, hf, hf_tok, prompt: str) -> float:
    """Logits over the real vocabulary and 20 greedy tokens equal ours; returns the largest logit difference."""
    text = " ".join(documents(HELD_OUT)[:4])
    ids = torch.tensor([tok.encode([text])[0][:SEQ_LEN]])
    with torch.no_grad():
        want = ours(ids)[0][..., : ours.cfg.vocab_size]
        got = hf(ids).logits
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = float((got - want).abs().max())
    assert diff < 1e-4, diff
    start = torch.tensor([hf_tok(prompt)["input_ids"]])
    ours_ids = ours.generate(start, 20, temperature=0.0)[0].tolist()
    hf_ids = hf.generate(start, max_new_tokens=20, do_sample=False)[0].tolist()
    # HF stops after <eos>; ours goes on
    assert hf_ids == ours_ids[: len(hf_ids)], (hf_ids, ours_ids)
    assert len(hf_ids) == len(ours_ids) or hf_ids[-1] == tok.eos_id, (hf_ids, ours_ids)
    return diff


def test_trained_model_loads_in_transformers_with_the_same_logits_and_generation(root, tmp_path):
    tok = tokenizer(root)
    w = ArtifactWriter(str(root), "train", "run1", {"tokenize": TOK}, resumable=True)
    p = tiny_train_params(eval_interval=10, ckpt_interval=10, eval_tokens=1024)
    tok_dir = str(root / "tokenize" / TOK)
    r = train(p, tok_dir, w.path, 3.0, tokenize_version=TOK, tokenizer_sha256=tok.sha256)
    commit_train(w, r.steps)
    meta = ckpt.load_meta(w.path, 30)
    ours = GPT(GPTConfig(**meta["model_config"]))
    ours.load_state_dict(ckpt.load_object(w.path, 30, "model"))
    ours.eval()
    assert ours.cfg.padded_vocab_size > VOCAB  # padding rows exist and are dropped

    hf, hf_tok = export(root, tmp_path / "hf")
    c = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (c["architectures"], c["vocab_size"], c["num_hidden_layers"], c["hidden_size"]) == (
        ["LlamaForCausalLM"],
        VOCAB,
        4,
        128,
    )
    assert (c["bos_token_id"], c["eos_token_id"], c["max_position_embeddings"]) == (tok.bos_id, tok.eos_id, SEQ_LEN)
    assert hf.num_parameters() == ours.num_params() - (ours.cfg.padded_vocab_size - VOCAB) * 128
    check_same_model(ours, tok, hf, hf_tok, "def generate(self")
    # token ids of text the tokenizer did not see, code indentation and non-Latin text included
    texts = documents(HELD_OUT) + ["", " ", "  two  spaces\tand\ttabs\n\n", "caf\u00e9 \u4e2d\u6587 3.14159 \U0001f600"]
    texts.append("text that names <eos> and <bos> is text")
    for text in texts:
        assert hf_tok(text)["input_ids"] == tok.encode([text])[0], text
        assert hf_tok.decode(tok.encode([text])[0]) == text


def test_grouped_query_heads_and_step_choice(root, tmp_path, capsys):
    cfg = GPTConfig(
        vocab_size=VOCAB,
        seq_len=SEQ_LEN,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=64,
        ffn_hidden=96,
        rope_theta=500.0,
        norm_eps=1e-6,
        init_std=0.2,  # peaked logits, so greedy choices are far from ties
    )
    models = save_random_steps(root, cfg, {2: 1.5, 4: 2.5, 6: 2.0})
    tok = tokenizer(root)
    hf, hf_tok = export(root, tmp_path / "final")
    c = hf.config
    theta = c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta  # transformers 5 / 4
    assert (c.num_key_value_heads, c.intermediate_size, theta, c.rms_norm_eps) == (2, 96, 500.0, 1e-6)
    check_same_model(models[6], tok, hf, hf_tok, "The model")
    hf, hf_tok = export(root, tmp_path / "best", "--step", "best", "--version", RANDOM)
    check_same_model(models[2], tok, hf, hf_tok, "The model")
    hf, hf_tok = export(root, tmp_path / "four", "--step", "4")
    check_same_model(models[4], tok, hf, hf_tok, "The model")
    capsys.readouterr()
    assert main(["export-hf", "--out", str(tmp_path / "x"), "--data-root", str(root), "--step", "5"]) == 1
    assert f"train@{RANDOM} has no checkpoint 5; it keeps steps [2, 4, 6]" in capsys.readouterr().err
    (tmp_path / "four" / "pytorch_model.bin").write_bytes(b"")
    assert main(["export-hf", "--out", str(tmp_path / "four"), "--data-root", str(root)]) == 1
    assert "holds files an export does not write (pytorch_model.bin)" in capsys.readouterr().err
    assert main(["export-hf", "--out", str(tmp_path / "final"), "--data-root", str(root)]) == 0  # an earlier export


def test_a_normalising_tokenizer_is_refused(tmp_path):
    lines = [line for d in documents(TRAIN_TEXT) for line in training_lines(d)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp_path / "nfkc"), vocab_size=400, minloglevel=2
    )
    with pytest.raises(ValueError, match="identity normalisation"):
        hf_tokenizer(Tokenizer(tmp_path / "nfkc.model"))
