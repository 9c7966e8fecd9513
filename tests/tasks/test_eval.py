"""The eval stage's core: evaluation files read in every supported format, log-likelihoods batched equal to a
one-request-at-a-time reference, accuracy / length-normalised accuracy / centred score, bits per byte."""

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.gpt import GPT, GPTConfig
from models.tokenizer import load_tokenizer, train_tokenizer
from tasks.eval.score import bits_per_byte, core_score, encode_pair, loglikelihoods, score_task
from tasks.eval.tasks import EvalTask, Item, load_task

EVALS = Path(__file__).resolve().parents[3] / "shared" / "data" / "evals"
TEXT = (
    "The cat sat on the mat. The dog sat on the rug. A bird sang in the tree. "
    "Water flowed from the spout when the man turned on the faucet. She lost her appetite. "
) * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer(TEXT.split(". "), path, vocab_size=320)
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, seq_len=32, n_layer=2, n_head=2, n_embd=32))
    return m.eval()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_format_reads_into_choices(tmp_path):
    mc = load_task(_write(tmp_path / "arc_easy.jsonl", [{"query": "Q: 2+2?", "choices": ["3", "4"], "gold": 1}]))
    assert mc.kind == "choice" and mc.items[0] == Item(["Q: 2+2?\nAnswer: "] * 2, ["3", "4"], 1) and mc.chance == 0.5
    schema = load_task(
        _write(
            tmp_path / "winogrande.jsonl",
            [{"context_options": ["A so A", "A so B"], "continuation": "won.", "gold": 0}],
        )
    )
    assert schema.items[0] == Item(["A so A", "A so B"], [" won.", " won."], 0)
    lam = load_task(_write(tmp_path / "lambada.jsonl", [{"context": "He said ", "continuation": "hello"}]))
    assert lam.kind == "greedy" and lam.items[0] == Item(["He said"], [" hello"], 0) and lam.chance == 0.0
    hs = {
        "activity_label": "Baking",
        "ctx_a": "A chef mixes flour.",
        "ctx_b": "she",
        "endings": ["bakes [title] it", "x"],
        "label": "0",
    }
    item = load_task(_write(tmp_path / "hellaswag.jsonl", [hs])).items[0]
    assert item.contexts[0] == "Baking: A chef mixes flour. She" and item.continuations == [" bakes. it", " x"]
    mmlu = {"question": "Capital of France? ", "choices": ["Rome", "Paris"], "answer": 1}
    item = load_task(_write(tmp_path / "mmlu.jsonl", [mmlu])).items[0]
    assert item.contexts[0] == "Capital of France?\nA. Rome\nB. Paris\nAnswer:" and item.continuations == [" A", " B"]
    gz = tmp_path / "copa.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"query": "It rained, therefore", "choices": ["wet.", "dry."], "gold": 0}) + "\n")
    assert load_task(gz).name == "copa" and load_task(gz).items[0].contexts[0] == "It rained, therefore "


def test_bad_items_name_file_line_and_fix(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "choices": ["a"], "gold": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON object"):
        load_task(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match=r"gold\.jsonl:1: `gold` must be an index into the 2 choices, got 5"):
        load_task(_write(tmp_path / "gold.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 5}]))
    with pytest.raises(ValueError, match=r"keys \['foo'\]"):
        load_task(_write(tmp_path / "odd.jsonl", [{"foo": 1}]))
    with pytest.raises(FileNotFoundError, match="fix eval.tasks"):
        load_task(tmp_path / "missing.jsonl")


@pytest.mark.skipif(not EVALS.is_dir(), reason="../shared/data/evals is not here")
def test_the_real_eval_sets_load():
    local, fixtures = EVALS / "llm_foundry_local_data", EVALS / "llm_foundry_test_fixtures"
    arc = load_task(local / "arc_easy.jsonl")
    assert len(arc.items) == 2376 and arc.kind == "choice" and 0.25 <= arc.chance < 0.26
    assert load_task(local / "winogrande.jsonl").chance == 0.5
    assert load_task(local / "lambada_openai.jsonl", limit=10).kind == "greedy"
    for name in ("copa", "piqa", "boolq", "arc_challenge"):
        assert load_task(local / f"{name}.jsonl", limit=20).items
    for name in ("hellaswag_small", "mmlu_small", "piqa_small", "lambada_small", "winograd_small"):
        assert len(load_task(fixtures / f"{name}.jsonl").items) == 4


def _reference(model, ctx, cont, vocab):
    """One request alone, no batching, no padding."""
    ids = torch.tensor([ctx + cont])
    logp = F.log_softmax(model(ids[:, :-1])[0][..., :vocab].float(), dim=-1)[0]
    rows = logp[len(ctx) - 1 :]
    target = torch.tensor(cont)
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


def test_batched_loglikelihoods_equal_one_at_a_time(model, tok):
    pairs = [
        ("The cat sat on the", " mat."),
        ("The dog sat", " on the rug."),
        ("A bird", " sang in the tree."),
        ("Water flowed from the spout when the man turned on the", " faucet."),
        ("She lost", " her appetite."),
    ]
    requests = [encode_pair(tok, c, x) for c, x in pairs]
    assert all(r[0][0] == tok.eos_id and r[1] for r in requests)
    got = loglikelihoods(model, requests, seq_len=32, vocab_size=tok.vocab_size, batch_size=3)
    for (ctx, cont), (ll, greedy) in zip(requests, got):
        ref_ll, ref_greedy = _reference(model, ctx, cont, tok.vocab_size)
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    # trailing spaces of the context move to the continuation (lm-evaluation-harness's _encode_pair)
    assert encode_pair(tok, "The cat sat on the ", "mat.") == encode_pair(tok, "The cat sat on the", " mat.")


def test_accuracy_norm_and_centred_score(model, tok):
    """Accuracy follows the log-likelihoods: the gold choice set to the best-scoring one gives 1.0, to the
    worst 0.0; centred = (acc - chance) / (1 - chance)."""
    contexts, choices = ["The cat sat on the"] * 3, [" mat.", " rug and the dog sang in the faucet.", " tree."]
    lls = [
        s
        for s, _ in loglikelihoods(
            model, [encode_pair(tok, c, x) for c, x in zip(contexts, choices)], 32, tok.vocab_size
        )
    ]
    best, worst = max(range(3), key=lambda j: lls[j]), min(range(3), key=lambda j: lls[j])
    good = score_task(model, tok, EvalTask("t", "choice", [Item(contexts, choices, best)]), 32, tok.vocab_size)
    bad = score_task(model, tok, EvalTask("t", "choice", [Item(contexts, choices, worst)]), 32, tok.vocab_size)
    assert (good["acc"], good["centered"], bad["acc"]) == (1.0, 1.0, 0.0)
    assert bad["centered"] == pytest.approx((0.0 - 1 / 3) / (1 - 1 / 3))
    norm_best = max(range(3), key=lambda j: lls[j] / len(choices[j].lstrip()))
    assert good["acc_norm"] == float(norm_best == best)
    assert core_score({"a": good, "b": bad}) == pytest.approx((1.0 - 0.5) / 2)


def test_bits_per_byte_is_the_summed_nll_over_bytes(model, tok):
    texts = ["The cat sat on the mat.", "A bird sang in the tree. " * 4]
    got = bits_per_byte(model, tok, texts, seq_len=32, vocab_size=tok.vocab_size, batch_size=2)
    nll = 0.0
    for text in texts:
        seq = [tok.eos_id, *tok.encode([text])[0]]
        for pos in range(0, len(seq) - 1, 32):
            chunk = seq[pos : pos + 33]
            logits = model(torch.tensor([chunk[:-1]]))[0][0, :, : tok.vocab_size].float()
            nll += float(F.cross_entropy(logits, torch.tensor(chunk[1:]), reduction="sum"))
    n_bytes = sum(len(t.encode()) for t in texts)
    assert got["bytes"] == n_bytes and got["bpb"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert got["tokens"] == sum(len(tok.encode([t])[0]) + 1 for t in texts) - len(texts)
