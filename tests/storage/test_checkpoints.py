"""Checkpoint mirroring to an object store while training (storage.checkpoints.mirror / Mirror)."""

import torch

from storage import checkpoints as ckpt


def test_mirror_uploads_complete_checkpoints_meta_last_and_follows_pruning(tmp_path):
    """Training on an object-store root mirrors its local checkpoints (memory:// here; S3 in test_s3_root):
    only complete steps go up, each with meta.json last; a pruned step is deleted remotely; a step saved again
    after a rollback is re-sent; unchanged steps are not re-sent; other files (metrics) follow."""
    import uuid

    import fsspec

    local, remote = str(tmp_path / "run"), f"memory://mirror-{uuid.uuid4().hex}/train/v1"
    fs = fsspec.filesystem("memory")
    for step in (2, 4):
        ckpt.save_checkpoint(local, step, {"model": {"w": torch.full((2,), float(step))}}, {"val_loss": 1.0 / step})
    (tmp_path / "run" / "step-000006").mkdir()  # a save killed before its meta.json: not a checkpoint yet
    (tmp_path / "run" / "step-000006" / "model.pt").write_bytes(b"half")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 4}\n')
    order: list[str] = []
    real_put = fs.put_file

    def put_file(lpath, rpath, **kw):
        order.append(rpath.rsplit("/", 2)[-2] + "/" + rpath.rsplit("/", 1)[-1])
        return real_put(lpath, rpath, **kw)

    fs.put_file = put_file
    try:
        sent = ckpt.mirror(local, remote)
        assert ckpt.list_checkpoints(remote) == [2, 4] and not fs.exists(f"{remote}/step-000006")
        assert fs.cat_file(f"{remote}/metrics.jsonl") == b'{"step": 4}\n'
        assert ckpt.load_object(remote, 4, "model")["w"].tolist() == [4.0, 4.0]
        assert order.index("step-000004/model.pt") < order.index("v1/metrics.jsonl")
        order.clear()
        assert ckpt.mirror(local, remote, sent) == sent and not [o for o in order if o.startswith("step-")]
        ckpt.prune_checkpoints(local, keep_last=1)  # keeps 4 (last) and 4 (best): 2 goes
        ckpt.save_checkpoint(local, 4, {"model": {"w": torch.zeros(2)}}, {"val_loss": 0.1})  # saved again
        ckpt.mirror(local, remote, sent)
        assert ckpt.list_checkpoints(remote) == [4]
        assert ckpt.load_object(remote, 4, "model")["w"].tolist() == [0.0, 0.0]
        # a fresh mirror (a resumed run) does not re-send what the remote already holds
        order.clear()
        ckpt.mirror(local, remote)
        assert not [o for o in order if o.startswith("step-")]
    finally:
        fs.put_file = real_put


def test_the_mirror_thread_uploads_while_the_block_runs(tmp_path):
    """A checkpoint reaches the object store during training, not only at the end (a run killed outright
    resumes elsewhere from it)."""
    import time
    import uuid

    local, remote = str(tmp_path / "run"), f"memory://mirror-{uuid.uuid4().hex}/train/v1"
    with ckpt.Mirror(local, remote, interval_s=0.05):
        ckpt.save_checkpoint(local, 1, {"model": {"w": torch.ones(1)}}, {"val_loss": 1.0})
        for _ in range(100):
            if ckpt.list_checkpoints(remote) == [1]:
                break
            time.sleep(0.05)
        assert ckpt.list_checkpoints(remote) == [1], "nothing uploaded while the block ran"
        ckpt.save_checkpoint(local, 2, {"model": {"w": torch.ones(1)}}, {"val_loss": 0.5})
    assert ckpt.list_checkpoints(remote) == [1, 2]  # the final sync at the block's end
