"""GPT model: shapes, parameter and FLOP counts, causality, document masking, GQA, optimizer groups,
seeded generation, presets."""

import math

import pytest
import torch

from models.gpt import GPT, GPTConfig, document_mask
from models.presets import PRESETS, gpt2_124m, preset, small, tiny

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _cfg(**kw):
    base = {"vocab_size": 300, "seq_len": 32, "n_layer": 2, "n_head": 4, "n_embd": 64}
    return GPTConfig(**{**base, **kw})


def _model(**kw):
    torch.manual_seed(0)
    return GPT(_cfg(**kw)).eval()


def test_forward_shapes_loss_and_tied_head():
    m = _model()
    x, y = torch.randint(0, 300, (2, 32)), torch.randint(0, 300, (2, 32))
    logits, loss = m(x, y)
    assert logits.shape == (2, 32, m.cfg.padded_vocab_size) and m.cfg.padded_vocab_size == 384
    assert m.head.weight is m.wte.weight
    # at init the prediction is close to uniform over the padded vocabulary
    assert abs(loss.item() - math.log(384)) < 0.1
    assert m(x)[1] is None


def test_param_count_matches_config_and_flops_formula():
    for kw in ({}, {"n_kv_head": 2}, {"ffn_hidden": 100}):
        m = _model(**kw)
        assert m.num_params() == m.cfg.num_params()
    c = _cfg()
    assert c.flops_per_token() == 6 * c.num_params() + 12 * 2 * 4 * 16 * 32


def test_presets_have_the_documented_sizes():
    assert 1e6 <= tiny().num_params() <= 3e6
    assert 25e6 <= small().num_params() <= 40e6
    g = gpt2_124m()
    assert (g.n_layer, g.n_embd, g.n_head, g.seq_len, g.padded_vocab_size) == (12, 768, 12, 1024, 50304)
    assert abs(g.num_params() - 124e6) < 2e6
    assert preset("tiny", vocab_size=512, seq_len=64) == tiny(vocab_size=512, seq_len=64)
    assert set(PRESETS) == {"tiny", "small", "gpt2-124m"}
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge", 100, 10)


def test_attention_is_causal():
    m = _model()
    x = torch.randint(0, 300, (1, 32))
    y = x.clone()
    y[0, 20:] = (y[0, 20:] + 7) % 300
    a, b = m(x)[0], m(y)[0]
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_document_mask_isolates_documents():
    m = _model()
    x = torch.randint(0, 300, (1, 32))
    doc_ids = torch.tensor([[0] * 12 + [1] * 20])
    masked = m(x, doc_ids=doc_ids)[0]
    # rotary embeddings are relative, so document 2 behaves exactly as if it started the sequence
    alone = m(x[:, 12:])[0]
    torch.testing.assert_close(masked[:, 12:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[:, :12], m(x[:, :12])[0], atol=1e-5, rtol=1e-5)
    mask = document_mask(torch.tensor([[0, 0, 1]]))
    assert mask[0, 0].tolist() == [[True, False, False], [True, True, False], [False, False, True]]


def test_grouped_query_attention():
    m = _model(n_kv_head=2)
    assert m.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 16, 64)
    x = torch.randint(0, 300, (2, 32))
    logits, loss = m(x, x, doc_ids=torch.zeros(2, 32, dtype=torch.long))
    torch.testing.assert_close(logits, m(x)[0], atol=1e-5, rtol=1e-5)  # one document == plain causal
    assert torch.isfinite(loss)


def test_weight_decay_only_on_matrices():
    m = _model()
    opt = m.configure_optimizers(1e-3, 0.1, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params()
    assert not opt.defaults.get("fused")


def test_generate_is_seeded_and_never_emits_padding_ids():
    m = _model()
    prompt = torch.tensor([[1, 2, 3]])

    def sample(seed, **kw):
        return m.generate(prompt, 40, generator=torch.Generator().manual_seed(seed), **kw)

    a, b = sample(7, temperature=1.0), sample(7, temperature=1.0)
    assert torch.equal(a, b) and a.shape == (1, 43)
    assert int(a.max()) < 300
    assert torch.equal(sample(1, temperature=0.0), sample(2, temperature=0.0))
    assert int(sample(3, top_k=5).max()) < 300
    # longer than seq_len: the context is cropped
    assert m.generate(torch.zeros(1, 30, dtype=torch.long), 5, generator=torch.Generator()).shape == (1, 35)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_flash_path_matches_float32():
    m = _model().cuda()
    x = torch.randint(0, 300, (2, 32), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = m(x, x)
    ref = m(x, x)[1]
    assert abs(loss.item() - ref.item()) < 0.05
    assert m.configure_optimizers(1e-3, 0.1, (0.9, 0.95), "cuda").defaults["fused"]
