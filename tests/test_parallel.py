"""Multi-track batches and data parallelism over devices (8 CPU devices in a subprocess)."""
import json
import os
import re
import shutil
import types

import jax
import numpy as np
import pytest

from conftest import tiny_config
from helpers import processes
from jaxtag.errors import ConfigError
from jaxtag.models import create_model, run_keys
from jaxtag.training import checkpoints, parallel, steps
from jaxtag.training.loop import train_and_evaluate


def _tracks(rng, lengths, length):
    batch = {"mel": np.zeros((len(lengths), length, 32, 32), np.float32),
             "labels": np.zeros((len(lengths), length, 18), np.float32),
             "mask": np.zeros((len(lengths), length), bool), "present": np.zeros((len(lengths), length), bool)}
    for i, n in enumerate(lengths):
        batch["mel"][i, :n] = rng.uniform(size=(n, 32, 32)) * 10
        batch["labels"][i, :n] = rng.uniform(size=(n, 18)) < 0.4
        batch["mask"][i, :n] = batch["present"][i, :n] = True
    return batch


def test_padded_multi_track_batch_equals_tracks_one_by_one(data_dir):
    # Zeros LSTM initial state: a random one is drawn per batch row, so rows would differ by design.
    config = tiny_config(data_dir, **{"model.lstm_initial_state": "zeros"})
    model = create_model(config.model, 18)
    batch = _tracks(np.random.default_rng(0), [5, 8, 3], 8)
    predict = steps.make_predict_step(model)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(3)
    together = np.asarray(predict(state.variables, batch, key))
    for i, n in enumerate([5, 8, 3]):
        alone = {k: v[i:i + 1, :n] for k, v in batch.items()}
        np.testing.assert_allclose(np.asarray(predict(state.variables, alone, key))[0], together[i, :n],
                                   rtol=1e-5, atol=1e-6)


def test_batch_size_must_divide_over_devices():
    # check_batch_size reads only the mesh's device count: an 8-device stand-in, as on a TPU host.
    eight = types.SimpleNamespace(devices=np.empty((8,), object))
    parallel.check_batch_size(16, eight)
    parallel.check_batch_size(8, eight)
    with pytest.raises(ConfigError, match=r"train.batch_size \(12\) must be a multiple of the number of devices \(8\)"):
        parallel.check_batch_size(12, eight)
    parallel.check_batch_size(1, parallel.data_mesh())  # this process's own mesh: 1 device here


@pytest.mark.slow
def test_eight_devices_give_the_same_parameters_as_one():
    out = processes.run([os.path.join(processes.TESTS, "helpers", "parallel_sgd.py"), "devices"], timeout=600,
                        XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["one"]["shards"] == 1 and result["eight"]["shards"] == 8
    np.testing.assert_allclose(result["eight"]["loss"], result["one"]["loss"], rtol=1e-5, atol=1e-6)
    # One step of a batch-normed model: equal up to float reduction order.
    np.testing.assert_allclose(result["eight"]["params"], result["one"]["params"], rtol=1e-4, atol=1e-6)
    # Running variances come from E[x^2] - E[x]^2, which magnifies summation-order differences.
    np.testing.assert_allclose(result["eight"]["batch_stats"], result["one"]["batch_stats"], rtol=1e-2, atol=1e-3)


@pytest.mark.slow
def test_two_processes_on_localhost_match_one_process(tmp_path):
    script = os.path.join(processes.TESTS, "helpers", "parallel_sgd.py")
    codes, outs, errs = processes.two_processes(lambda i, port: [script, "host", str(i), port], tmp_path, "sgd")
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    single = processes.run([script, "host", "-1", "0"], timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    reference = json.loads(single.stdout.strip().splitlines()[-1])
    assert [r["processes"] for r in results] == [2, 2] and results[0]["devices"] == 2
    assert reference["processes"] == 1
    for r in results:
        np.testing.assert_allclose(r["params"], reference["params"], rtol=1e-4, atol=1e-6)
        # Every host reads every track's loss, its own rows and the other host's.
        np.testing.assert_allclose(r["loss"], reference["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_hosts,batch_size", [(2, 2), (4, 4), (2, 4)])
def test_each_host_reads_its_own_shard_and_all_hosts_step_through_the_same_buckets(prepared_tiny, n_hosts,
                                                                                    batch_size):
    """Emulated hosts of a multi-host run: disjoint shards that together are the train split, the
    same number of steps and the same bucket at every step on every host, each track once, in
    its own bucket, and padding rows (no track) where a host has run out of a bucket."""
    from jaxtag.data import pipeline
    from jaxtag.data.buckets import bucket_length
    config, _ = prepared_tiny
    config = tiny_config(config.data.data_dir, **{"train.batch_size": batch_size})
    buckets = tuple(config.train.length_buckets)
    everything = {ex["track"].decode(): len(ex["mask"])
                  for ex in pipeline.load_split(config, "train", shuffle=False).as_numpy_iterator()}
    shards = [{ex["track"].decode(): len(ex["mask"])
               for ex in pipeline.load_split(config, "train", shuffle=False, shard=(h, n_hosts)).as_numpy_iterator()}
              for h in range(n_hosts)]
    assert sum(len(s) for s in shards) == len(everything) == 6
    assert {k: v for s in shards for k, v in s.items()} == everything
    lengths = [pipeline.track_lengths(config, "train", (h, n_hosts)) for h in range(n_hosts)]
    assert [sorted(l) for l in lengths] == [sorted(s.values()) for s in shards]
    for epoch in (0, 1):
        per_host = [list(pipeline.train_batches(config, epoch, h, n_hosts, lengths)) for h in range(n_hosts)]
        assert len({len(b) for b in per_host}) == 1   # every host runs the same number of steps
        seen = []
        for step_rows in zip(*per_host):
            assert len({b["mel"].shape for b in step_rows}) == 1   # one bucket per step, on every host
            length = step_rows[0]["mel"].shape[1]
            for h, b in enumerate(step_rows):
                assert b["mel"].shape[0] == batch_size // n_hosts
                for name, present in zip(b["track"], b["present"]):
                    if name:
                        assert name in shards[h]               # a host's rows come from its own shard
                        assert present.sum() == everything[name] and bucket_length(everything[name], buckets) == length
                        seen.append(name)
                    else:
                        assert not present.any()
        assert sorted(seen) == sorted(everything)           # each track exactly once per epoch
    orders = [[tuple(b["track"]) for b in pipeline.train_batches(config, epoch, 0, n_hosts, lengths)]
              for epoch in (0, 1, 2, 3)]
    assert len(set(map(tuple, orders))) > 1                  # epochs differ


def test_multi_host_plan_covers_the_busiest_host_of_each_bucket():
    from jaxtag.data import pipeline
    # bucket 4: host 0 has 3 tracks, host 1 has 1 -> 2 steps of 2 rows; bucket 8: 1 and 2 -> 1 step;
    # a host with no track at all still steps (all padding).
    plan = pipeline.multi_host_plan([[1, 2, 3, 7], [4, 8, 6], []], 2, (4, 8), seed=0)
    assert sorted(plan) == [4, 4, 8]
    assert plan == pipeline.multi_host_plan([[1, 2, 3, 7], [4, 8, 6], []], 2, (4, 8), seed=0)
    assert sorted(pipeline.multi_host_plan([[9, 20]], 1, (4, 8), seed=1)) == [16, 24]


@pytest.mark.slow
def test_main_trains_across_two_processes_each_reading_its_own_shard(prepared_tiny, tmp_path):
    """The whole `python -m jaxtag.main` on two localhost processes (JAX's distributed runtime, CPU,
    gloo): each reads its half of the train split, both step together through the common plan,
    orbax writes one set of checkpoints, process 0 writes the evaluation. A SIGTERM to one process
    stops both at the same step with a checkpoint; rerun, they resume and finish with the
    parameters of one process replaying the same steps, each built from the two hosts' rows."""
    from jaxtag.data import pipeline
    config, _ = prepared_tiny
    overrides = {"train.batch_size": 2, "train.num_epochs": 2, "model.name": "cnn_lstm"}
    workdir = tmp_path / "run"
    args = ["--config=configs/tiny.py", f"--workdir={workdir}", f"--config.data.data_dir={config.data.data_dir}",
            *(f"--config.{k}={v}" for k, v in overrides.items())]
    def main(i, port, fault=None):
        launch = [processes.RUN_WITH_FAULT, fault] if fault else ["-m"]
        return [*launch, "jaxtag.main", *args, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                f"--process_id={i}"]

    # Process 1 is SIGTERM'd after step 1.
    codes, _, logs = processes.two_processes(lambda i, port: main(i, port, "sigterm@1" if i == 1 else None),
                                             tmp_path, "preempted")
    assert codes == [143, 143], logs[0][-2000:] + logs[1][-2000:]
    saved = [int(re.search(r"Preempted: saved step (\d+)", log).group(1)) for log in logs]
    assert saved[0] == saved[1] >= 2      # one common step, after process 1's SIGTERM
    _, meta = checkpoints.restore_for_inference(str(workdir), "latest")
    assert meta["step"] == saved[0] and meta["batches_done"] is not None
    shutil.copytree(workdir, tmp_path / "preempted")
    codes, _, logs = processes.two_processes(main, tmp_path, "resumed")
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert all("Resumed at epoch" in log for log in logs)

    # The same two epochs replayed in this process: the two hosts' rows of each step, one batch.
    config = tiny_config(config.data.data_dir, **overrides)
    lengths = [pipeline.track_lengths(config, "train", (h, 2)) for h in range(2)]
    model = create_model(config.model, 18)
    keys = run_keys(config.seed)
    state = steps.create_train_state(config, model, keys.init)
    step = steps.make_train_step(model, config.train.loss)
    for epoch in range(2):
        losses = []
        for rows in zip(*(pipeline.train_batches(config, epoch, h, 2, lengths) for h in range(2))):
            batch = {k: np.concatenate([r[k] for r in rows]) for k in steps.BATCH_KEYS}
            state, per_track, valid, _ = step(state, batch, keys.step)
            losses += np.asarray(per_track)[np.asarray(valid)].tolist()
    variables, meta = checkpoints.restore_for_inference(str(workdir), "latest")
    assert meta["step"] == int(state.step) > saved[0]
    np.testing.assert_allclose(meta["train_loss"], np.mean(losses), rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), variables["params"],
                 jax.device_get(state.params))
    # Saved by two processes, resumable by one (another topology): the state comes back whole.
    fresh = steps.create_train_state(config, model, keys.init)
    store = checkpoints.CheckpointStore(str(workdir))
    try:
        _, opt_state, resumed_meta = store.restore_latest(fresh.variables, fresh.opt_state)
    finally:
        store.close()
    assert resumed_meta["step"] == int(state.step)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), jax.device_get(opt_state),
                 jax.device_get(state.opt_state))
    metrics = json.loads((workdir / "eval" / "test_metrics.json").read_text())
    assert metrics["checkpoint"]["which"] == "best" and len(metrics["tags"]) == 18
    assert os.listdir(workdir / "tensorboard")

    # The mid-epoch checkpoint of two hosts, resumed by one process: that epoch's batches differ
    # with the host count, so the epoch restarts from its first batch rather than skip wrong ones.
    train_and_evaluate(config, str(tmp_path / "preempted"))
    _, meta = checkpoints.restore_for_inference(str(tmp_path / "preempted"), "latest")
    one_host_steps = sum(len(list(pipeline.train_batches(config, epoch))) for epoch in range(2))
    assert meta["step"] == saved[0] + one_host_steps


def test_a_host_without_a_train_track_is_a_config_error_before_any_collective(prepared_tiny):
    from jaxtag.data import pipeline
    config, _ = prepared_tiny
    with pytest.raises(ConfigError, match="6 track.*fewer than the 7 hosts"):
        pipeline.host_shard_lengths(config, 0, 7)
    assert len(pipeline.host_shard_lengths(config, 5, 6)) == 1


def test_host_batches_read_no_further_than_the_step_needs():
    """A step whose bucket this host has no track of (another host has) reads nothing; a host
    holds at most a step's worth of tracks when its stream matches the plan's buckets."""
    from jaxtag.data import pipeline

    class Stream:
        def __init__(self, lengths):
            self.lengths, self.read = lengths, 0

        def as_numpy_iterator(self):
            for i, n in enumerate(self.lengths):
                self.read += 1
                yield {"track": f"t{i}".encode(), "mel": np.zeros((n, 2, 3), np.float32),
                       "labels": np.zeros((n, 4), np.float32), "mask": np.ones(n, bool)}

    own = [2] * 10
    stream = Stream(own)
    plan = [8] + [4] * 5
    batches = pipeline.host_batches(stream, plan, 2, (4, 8), (2, 3, 4), own)
    first = next(batches)
    assert stream.read == 0 and first["mel"].shape == (2, 8, 2, 3) and not first["present"].any()
    for k, batch in enumerate(batches, start=1):
        assert stream.read == 2 * k and list(batch["track"]) == [f"t{2 * k - 2}", f"t{2 * k - 1}"]
