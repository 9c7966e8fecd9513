"""A tiny CPU training run for tests that need a trained model (export, eval)."""

from tasks.train import TrainParams


def tiny_train_params(**kw) -> TrainParams:
    """A 30-step tiny CPU run (shared with the eval tests that export a trained model)."""
    base = {
        "model": "tiny",
        "micro_batch_size": 8,
        "tokens_per_step": 512,
        "max_steps": 30,
        "warmup_steps": 3,
        "eval_interval": 30,
        "ckpt_interval": 30,
        "eval_tokens": 512,
        "device": "cpu",
        "sample_tokens": 4,
    }
    return TrainParams(**{**base, **kw})
