"""tasks.lazy_task: the stage packages import without Prefect (or torch), and their tasks are real Prefect tasks
on first use."""

import subprocess
import sys
from pathlib import Path

import cloudpickle

ROOT = Path(__file__).resolve().parents[2]


def test_stage_packages_and_the_pipeline_table_import_without_prefect_or_torch():
    code = (
        "import sys\n"
        "import flows.stages, flows.config, tasks.train, tasks.eval, tasks.train.plan\n"
        "from flows.stages import REPORTS\n"
        "heavy = sorted(m for m in ('prefect', 'torch', 'flows.pipeline') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "none"


def test_a_lazy_task_is_a_prefect_task_on_first_use_and_pickles_as_one():
    from prefect import Task

    import tasks.langid
    from tasks.lazy_task import LazyTask

    lazy = tasks.langid.langid_shard
    assert isinstance(lazy, LazyTask) and lazy.fn.__name__ == "langid_shard"
    assert isinstance(lazy.task, Task) and lazy.task is lazy.task  # built once
    assert lazy.name == "langid_shard" and callable(lazy.map)  # attributes come from the Prefect task
    shipped = cloudpickle.loads(cloudpickle.dumps(lazy))  # what Dask and process pools send to workers
    assert isinstance(shipped, Task) and shipped.fn.__qualname__ == "langid_shard"


def test_the_runtimes_load_on_first_use():
    import tasks.eval
    import tasks.train

    assert callable(tasks.train.train) and callable(tasks.eval.evaluate)
    try:
        tasks.train.nope  # noqa: B018
    except AttributeError as err:
        assert "tasks.train" in str(err)
    else:
        raise AssertionError("unknown attribute did not raise")
