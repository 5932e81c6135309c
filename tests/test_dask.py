"""Beam on a real Dask cluster (the dask extra): a scheduler and two one-thread worker processes on
this machine (loopback only), started and stopped by the test; preparing a corpus and tagging a
library with runner=dask give what the local paths give, and both workers tag files."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import tiny_config
from helpers import processes
from test_beam import _scores, assert_same_end_state
from test_library import _music

START_TIMEOUT = 120   # seconds for the scheduler and the workers to come up


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes (one thread each, no nanny: the worker is
    the process that runs the tasks), importing this checkout. Yields (scheduler file, the
    workers' pids); stopped whatever happens."""
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    from jaxtag.beam_dask import stop_processes
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = str(folder / "scheduler.json")
    env = processes.environment()     # PYTHONPATH: this checkout (the scheduler unpickles the graph too)
    # No work stealing: each file then runs where the runner scattered it (jaxtag.beam_dask), which
    # is what the both-workers check tests. With stealing, a worker slow to load the model (a busy
    # CI machine) saw the other take all five files (seen twice in fresh-clone CI).
    env["DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING"] = "False"
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    started = []

    def start(log_name, *args):
        log = open(folder / log_name, "w")
        started.append((subprocess.Popen([sys.executable, "-m", *args], cwd=processes.REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT), log))
        return started[-1][0]

    try:
        start("scheduler.log", "distributed.cli.dask_scheduler", *loopback, "--port", "0",
              "--scheduler-file", scheduler_file)
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(scheduler_file):
            assert time.monotonic() < deadline and started[0][0].poll() is None, \
                (folder / "scheduler.log").read_text()[-2000:]
            time.sleep(0.2)
        workers = [start(f"worker{i}.log", "distributed.cli.dask_worker", *loopback, "--scheduler-file",
                         scheduler_file, "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--name", f"w{i}",
                         "--death-timeout", "60") for i in range(2)]
        from distributed import Client
        with Client(scheduler_file=scheduler_file, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
            assert all(address.startswith("tcp://127.0.0.1:") for address in client.nthreads())
        yield scheduler_file, {w.pid for w in workers}
    finally:
        stop_processes(started)


@pytest.mark.slow
def test_preparing_and_tagging_on_a_dask_cluster_equal_the_local_paths(dask_cluster, prepared_tiny, trained, tmp_path):
    """runner=dask with two workers: the prepared dataset is the local one (splits, keys, arrays);
    tagging gives the local run's scores (within 1e-5) and decisions, decided by the driver's own
    DecisionPolicy (one no single threshold gives), and ends in the local run's state (database and
    files); a broken file is dead-lettered; both workers wrote files."""
    import tensorflow_datasets as tfds
    from jaxtag.data import pipeline
    from jaxtag.library.beam import tag_on_beam
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.tagging.tagger import Tagger
    scheduler_file, worker_pids = dask_cluster
    options = f"runner=dask,dask_scheduler_file={scheduler_file}"

    # Preparing: every split written (Beam's DaskRunner computed only the last sink).
    config, local = prepared_tiny
    on_dask = pipeline.prepare(tiny_config(str(tmp_path / "prepared"), **{"data.root": config.data.root}), options)
    assert str(on_dask.data_dir) != str(local.data_dir)
    for split in ("train", "validation", "test"):
        a = {ex["track"]: ex for ex in tfds.as_numpy(local.as_dataset(split=split))}
        b = {ex["track"]: ex for ex in tfds.as_numpy(on_dask.as_dataset(split=split))}
        assert sorted(a) == sorted(b) and a
        for name, example in a.items():
            for key, value in example.items():
                np.testing.assert_array_equal(np.asarray(value), np.asarray(b[name][key]), err_msg=f"{name} {key}")

    # Tagging: five files over the two workers, one broken.
    library = tmp_path / "library"
    library.mkdir()
    files = [_music(library / f"song{i}.{ext}", 4.0 + i, seed=50 + i, fmt=ext.upper())
             for i, ext in enumerate(("wav", "flac", "ogg", "wav", "flac"))]
    broken = library / "broken.mp3"
    broken.write_text("not audio\n" * 30)
    tagger = Tagger.from_workdir(trained[1])
    tagger.policy = tagger.policy.replace(thresholds=np.linspace(0.2, 0.8, len(tagger.tags)))
    runs = {}
    for label, out in (("local", tmp_path / "local"), ("dask", tmp_path / "dask")):
        run_options = LibraryOptions(output_dir=str(out), top_n=0, roots=(str(library),))
        everything = [*files, str(broken)]
        runs[label] = (tag_library(tagger, everything, run_options) if label == "local" else
                       tag_on_beam(tagger, everything, run_options, options))
    local_run, dask_run = runs["local"], runs["dask"]
    assert sorted(dask_run.tagged) == sorted(local_run.tagged) == sorted(files)
    assert list(dask_run.failed) == [str(broken)] and "cannot decode" in dask_run.failed[str(broken)]
    dead = [json.loads(line) for f in (tmp_path / "dask" / ".jaxtag" / "failed").iterdir()
            for line in f.read_text().splitlines()]
    assert [d["path"] for d in dead] == [str(broken)]
    outputs = {label: _scores(tmp_path / label) for label in ("local", "dask")}
    assert sorted(outputs["local"]) == sorted(outputs["dask"]) == sorted(files)
    for path in files:
        a, b = outputs["local"][path], outputs["dask"][path]
        assert [(w["start"], w["end"]) for w in a["windows"]] == [(w["start"], w["end"]) for w in b["windows"]]
        np.testing.assert_allclose([w["scores"] for w in a["windows"]], [w["scores"] for w in b["windows"]], atol=1e-5)
        assert [w["tags"] for w in a["windows"]] == [w["tags"] for w in b["windows"]]
        assert a["track_tags"] == b["track_tags"] and a["decisions"]["key"] == b["decisions"]["key"] == tagger.policy.key()
    # Which worker process wrote which file: both did, and nothing ran in the driver.
    assert sorted(dask_run.workers) == sorted(files)
    pids = {int(worker.rsplit(":", 1)[1]) for worker in dask_run.workers.values()}
    assert pids == worker_pids, dask_run.workers
    assert not [p for p in (tmp_path / "dask").rglob("*") if "jaxtag-tmp" in p.name or p.name.startswith("beam-")]
    # The end state is the local run's: the same database records and analyses, the same files.
    assert_same_end_state(tmp_path / "local", tmp_path / "dask")
