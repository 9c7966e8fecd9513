"""Planner: Chinchilla numbers, inference-optimal alternative, per-preset cost, epochs warning, GPU table."""

import math

import pytest

from models.presets import gpt2_124m, small, tiny
from tasks.train.plan import (
    GPU_PEAK_BF16,
    auto_preset,
    format_duration,
    format_plan,
    gpu_key_for_device_name,
    peak_flops,
    pick_preset,
    plan,
)


def test_chinchilla_from_tokens():
    p = plan(tokens=20e9)
    assert p.chinchilla.params == pytest.approx(1e9)
    assert p.chinchilla.tokens == pytest.approx(20e9)
    assert p.chinchilla.flops == pytest.approx(6 * 1e9 * 20e9)
    assert p.inference_optimal.params == pytest.approx(20e9 / 150)
    assert p.warnings == []


def test_chinchilla_from_compute_and_gpu_hours():
    c = 6 * 1e9 * 20e9
    p = plan(compute_flops=c)
    assert p.chinchilla.params == pytest.approx(1e9) and p.chinchilla.tokens == pytest.approx(20e9)
    inf = plan(compute_flops=c, inference_tokens_per_param=100).inference_optimal
    assert inf.tokens / inf.params == pytest.approx(100)
    assert inf.flops == pytest.approx(c)  # same budget, smaller model, more tokens
    assert inf.params < 1e9
    h = plan(gpu_hours=1000, gpu="A100", mfu=0.5)
    assert h.compute_flops == pytest.approx(1000 * 3600 * 312e12 * 0.5)


def test_preset_estimates():
    p = plan(tokens=1e12, gpu="H100", mfu=0.4, vocab_size=50257, seq_len=1024)
    est = {e.name: e for e in p.presets}
    g = gpt2_124m()
    e = est["gpt2-124m"]
    assert e.params == g.num_params() and e.tokens == pytest.approx(20 * g.num_params())
    assert e.flops == pytest.approx(g.flops_per_token() * e.tokens)
    assert e.gpu_hours == pytest.approx(e.flops / (989e12 * 0.4) / 3600)
    assert e.epochs == pytest.approx(e.tokens / 1e12)
    budget = plan(compute_flops=1e18, vocab_size=50257, seq_len=1024).presets
    assert {x.name: x for x in budget}["gpt2-124m"].tokens == pytest.approx(1e18 / g.flops_per_token())


def test_warns_when_data_would_repeat_more_than_four_epochs():
    p = plan(tokens=1e6, vocab_size=4096, seq_len=256)
    warned = {e.name for e in p.presets if e.warning}
    assert "gpt2-124m" in warned and "small" in warned  # 20 N tokens >> 1e6
    assert p.warnings and "epochs" in p.warnings[-1]
    small_data = plan(tokens=1e6, compute_flops=1e16)
    assert any("compute-optimal run" in w for w in small_data.warnings)


def test_pick_preset_closest_in_log_space():
    assert pick_preset(plan(tokens=20 * 124e6, vocab_size=50257)) == "gpt2-124m"
    assert pick_preset(plan(tokens=20 * tiny().num_params(), vocab_size=4096, seq_len=256)) == "tiny"
    assert pick_preset(plan(tokens=1e3, vocab_size=4096)) == "tiny"
    assert pick_preset(plan(tokens=1e13)) == "gpt2-124m"


def test_gpu_table_and_device_names():
    assert peak_flops("H100") == 989e12 and peak_flops("h200") == 989e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_key_for_device_name("NVIDIA L40S") == "L40S"
    assert gpu_key_for_device_name("NVIDIA L4") == "L4"
    assert gpu_key_for_device_name("NVIDIA A100-SXM4-80GB") == "A100"
    assert gpu_key_for_device_name("NVIDIA GH200 480GB") == "GH200"
    assert gpu_key_for_device_name("Tesla T4") is None
    assert all(v > 1e14 for v in GPU_PEAK_BF16.values())
    with pytest.raises(ValueError, match="unknown GPU"):
        peak_flops("TPU")


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        plan()
    with pytest.raises(ValueError, match="not both"):
        plan(compute_flops=1e20, gpu_hours=10)
    with pytest.raises(ValueError, match="mfu"):
        plan(tokens=1e9, mfu=0)
    with pytest.raises(ValueError, match="100, 200"):
        plan(tokens=1e9, inference_tokens_per_param=20)
    assert math.isfinite(plan(tokens=1e9).chinchilla.params)


def test_auto_preset_follows_the_data_size():
    assert auto_preset(20 * gpt2_124m().num_params(), 50257, 1024)[0] == "gpt2-124m"
    assert auto_preset(20 * small(vocab_size=4096, seq_len=256).num_params(), 4096, 256)[0] == "small"
    name, p = auto_preset(400_000, 4096, 256)  # the demo crawl's train split
    assert name == "tiny" and p.chinchilla.params == pytest.approx(20_000)


def test_wall_clock_over_several_gpus_and_text():
    one, four = plan(tokens=1e9, gpus=1), plan(tokens=1e9, gpus=4)
    for a, b in zip(one.presets, four.presets):
        assert b.gpu_hours == pytest.approx(a.gpu_hours) and b.wall_hours == pytest.approx(a.gpu_hours / 4)
    assert (format_duration(0.5), format_duration(50), format_duration(1 / 3600)) == ("30 min", "2.08 days", "1 s")
    text = format_plan(plan(tokens=1e6, vocab_size=4096, seq_len=256), "test data")
    assert text.startswith("data: 1,000,000 unique tokens (test data)")
    assert "model: auto picks tiny" in text and "warning: gpt2-124m:" in text
    assert "model: auto" not in format_plan(plan(compute_flops=1e20))  # no data size: nothing to pick from
    with pytest.raises(ValueError, match="positive"):
        plan(tokens=0)
    with pytest.raises(ValueError, match="gpus"):
        plan(tokens=1e9, gpus=0)
