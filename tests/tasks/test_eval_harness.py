"""Agreement with lm-evaluation-harness (issue 17 item 2): the eval stage's log-likelihoods and accuracies for one
checkpoint equal lm-eval's `hf` model on the `pretrain export-hf` export of that checkpoint, on the same items.

A tiny model is trained in process (tests/tasks/test_export_hf.py's data root: a sentencepiece tokenizer and
token shards of this repository's prose) and exported through the CLI. The items are written to local JSONL
files with lm-eval task YAMLs beside them (`dataset_path: json`, no hub access): a multiple-choice task in
llm-foundry's ARC format (acc, acc_norm), a LAMBADA-style task (greedy acc, as lm-eval's `loglikelihood`
output type) and one whose continuations are the model's own greedy next pieces (so greedy hits, not only
misses, are compared). Every per-choice log-likelihood and greedy flag is compared, then acc / acc_norm.

Prefix token: training separated documents with <eos>, and our scorer puts <eos> before every context
(tasks.eval.score.encode_pair). lm-eval's HFLM prepends a token to non-empty contexts only through the
tokenizer (`add_bos_token=True` -> `add_special_tokens=True`); its `prefix_token_id` (BOS, else EOS) is used
for empty contexts and rolling windows. So the export's tokenizer_config.json is given `bos_token: <eos piece>`
and `add_bos_token: true` (transformers then builds the post-processor `<eos> $A`), and HFLM gets
`add_bos_token=True`: both sides score [eos] + context + continuation with identical token ids.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="issue 17: the dev extra installs lm-eval[hf]==0.4.13")
pytest.importorskip("transformers")

from flows.cli import main  # noqa: E402
from models.gpt import GPT, GPTConfig  # noqa: E402
from models.tokenizer import Tokenizer  # noqa: E402
from storage import checkpoints as ckpt  # noqa: E402
from storage.artifacts import ArtifactWriter  # noqa: E402
from tasks.eval.score import encode_pair, loglikelihoods, score_task  # noqa: E402
from tasks.eval.tasks import EvalTask, Item, load_task  # noqa: E402
from tasks.train import train  # noqa: E402
from tests.tasks.test_export_hf import (  # noqa: E402,F401
    SEQ_LEN,
    TOK,
    commit_train,
    documents,
    tokenize_root,
)
from tests.tiny import tiny_train_params  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
HELD_OUT = ["storage/checkpoints.py", "models/presets.py", "README.md"]


@pytest.fixture(scope="module")
def exported(tokenize_root, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """(our GPT, tokenizer, export dir) of a 30-step tiny model."""
    root = tmp_path_factory.mktemp("harness") / "data"
    shutil.copytree(tokenize_root, root)
    tok = Tokenizer(root / "tokenize" / TOK / "tokenizer.model")
    w = ArtifactWriter(str(root), "train", "run1", {"tokenize": TOK}, resumable=True)
    p = tiny_train_params()
    train(p, str(root / "tokenize" / TOK), w.path, 3.0, tokenize_version=TOK, tokenizer_sha256=tok.sha256)
    commit_train(w, 30)
    model = GPT(GPTConfig(**ckpt.load_meta(w.path, 30)["model_config"]))
    model.load_state_dict(ckpt.load_object(w.path, 30, "model"))
    out = root.parent / "hf"
    assert main(["export-hf", "--out", str(out), "--data-root", str(root)]) == 0
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the prefix token: <eos>, as in training
        config = json.loads((out / name).read_text())
        config["bos_token"] = config["eos_token"]
        if name == "tokenizer_config.json":
            config["add_bos_token"] = True
        (out / name).write_text(json.dumps(config))
    return model.eval(), tok, out


def sentences(n: int) -> list[str]:
    # prose words (a target like `[10]` would be parsed as a list by lm-eval's doc_to_target)
    words = [w for w in " ".join(documents(HELD_OUT)).split() if w.strip(".,;:()'").isalpha()]
    return [" ".join(words[i : i + 12]) for i in range(0, 12 * n, 12)]


def write_tasks(tmp: Path, model: GPT, tok: Tokenizer) -> dict[str, Path]:
    """llm-foundry files and lm-eval task YAMLs reading them (same items, same prompt text)."""
    s = sentences(40)
    half = [(" ".join(x.split()[:6]), " ".join(x.split()[6:])) for x in s]
    mc = [{"query": half[i][0], "choices": [half[i + k][1] for k in range(3)], "gold": i % 3} for i in range(20)]
    greedy = [{"context": " ".join(x.split()[:-1]), "continuation": x.split()[-1]} for x in s[20:40]]
    # and a task of the model's own greedy next piece (`,` `.`) after a context: greedy hits on both sides
    nexts = []
    for x in sentences(60)[40:]:
        ids = tok.encode([x])[0]
        with torch.no_grad():
            top = int(model(torch.tensor([[tok.eos_id, *ids]]))[0][0, -1, : tok.vocab_size].argmax())
        cont = tok.decode([*ids, top])[len(tok.decode(ids)) :]
        if cont.strip() == cont and cont:
            nexts.append({"context": x, "continuation": cont})
    files = {"arc_easy": mc, "lambada_openai": greedy, "next": nexts}
    for name, rows in files.items():
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp}/{{name}}.jsonl\ntest_split: test\n"
    (tmp / "ours_mc.yaml").write_text(
        "task: ours_mc\n" + common.format(name="arc_easy") + "output_type: multiple_choice\n"
        'doc_to_text: "{{query}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold\n'
        'target_delimiter: " "\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n'
    )
    (tmp / "ours_greedy.yaml").write_text(
        "task: ours_greedy\n" + common.format(name="lambada_openai") + "output_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{\' \' + continuation}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (tmp / "ours_next.yaml").write_text(
        "task: ours_next\n" + common.format(name="next") + "output_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{continuation}}"\nmetric_list:\n  - metric: acc\n'
    )
    return {
        "ours_mc": tmp / "arc_easy.jsonl",
        "ours_greedy": tmp / "lambada_openai.jsonl",
        "ours_next": tmp / "next.jsonl",
    }


def run_lm_eval(export: Path, tmp: Path, tok: Tokenizer) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(export), device="cpu", batch_size=8, dtype="float32", add_bos_token=True)
    assert lm.tok_encode("The cat") == [tok.eos_id, *tok.encode(["The cat"])[0]]
    return simple_evaluate(
        model=lm,
        tasks=["ours_mc", "ours_greedy", "ours_next"],
        task_manager=TaskManager(include_path=str(tmp), include_defaults=False),
        log_samples=True,
        num_fewshot=0,
    )


def test_scores_equal_lm_evaluation_harness(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, export = exported
    files = write_tasks(tmp_path, model, tok)
    out = run_lm_eval(export, tmp_path, tok)
    worst = 0.0
    for name, path in files.items():
        task = load_task(path)
        if name == "ours_next":  # the continuation as it is (the LAMBADA format puts a space before it)
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            task = EvalTask(name, "greedy", [Item([r["context"]], [r["continuation"]], 0) for r in rows])
        ours = score_task(model, tok, task, SEQ_LEN, tok.vocab_size, batch_size=8)
        samples = sorted(out["samples"][name], key=lambda r: r["doc_id"])
        assert len(samples) == len(task.items) >= (5 if name == "ours_next" else 20)
        for item, sample in zip(task.items, samples):
            requests = [encode_pair(tok, c, x) for c, x in zip(item.contexts, item.continuations)]
            mine = loglikelihoods(model, requests, SEQ_LEN, tok.vocab_size, batch_size=8)
            theirs = [(float(r[0][0]), bool(r[0][1])) for r in sample["resps"]]
            assert [g for _, g in mine] == [g for _, g in theirs], (item, mine, theirs)
            worst = max(worst, *(abs(a - b) for (a, _), (b, _) in zip(mine, theirs)))
        metrics = out["results"][name]
        assert ours["acc"] == metrics["acc,none"], (name, ours, metrics)
        assert name != "ours_next" or ours["acc"] == 1.0, "the model's own greedy pieces are greedy hits"
        if "acc_norm,none" in metrics:
            assert ours["acc_norm"] == metrics["acc_norm,none"], (name, ours, metrics)
    accs = {n: (out["results"][n].get("acc,none"), out["results"][n].get("acc_norm,none")) for n in files}
    print(f"largest log-likelihood difference vs lm-eval: {worst:.2e}; lm-eval (acc, acc_norm): {accs}")
    assert worst < 1e-4, worst
    assert torch.get_num_threads() == 1
