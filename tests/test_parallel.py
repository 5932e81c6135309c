"""Multi-track batches and data parallelism over devices (8 CPU devices in a subprocess)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jaxtag import parallel, train
from jaxtag.errors import ConfigError
from jaxtag.models import create_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    predict = train.make_predict_step(model)
    state = train.create_train_state(config, model, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(3)
    together = np.asarray(predict(state.variables, batch, key))
    for i, n in enumerate([5, 8, 3]):
        alone = {k: v[i:i + 1, :n] for k, v in batch.items()}
        np.testing.assert_allclose(np.asarray(predict(state.variables, alone, key))[0], together[i, :n],
                                   rtol=1e-5, atol=1e-6)


def test_batch_size_must_divide_over_devices():
    mesh = parallel.data_mesh()
    parallel.check_batch_size(len(jax.devices()) * 2, mesh)
    if len(jax.devices()) > 1:
        with pytest.raises(ConfigError, match="multiple of the number of devices"):
            parallel.check_batch_size(1, mesh)


SCRIPT = r'''
import json, sys
import jax, numpy as np, optax
sys.path.insert(0, ".")
from jax.sharding import Mesh
from conftest_free import make, sgd_step
config, batch = make()
assert len(jax.devices()) == 8, jax.devices()
out = {}
for name, devices in [("one", jax.devices()[:1]), ("eight", jax.devices())]:
    state, per_track = sgd_step(config, batch, Mesh(np.asarray(devices), ("data",)))
    flat = lambda tree: np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)]).tolist()
    out[name] = {"params": flat(state.params), "batch_stats": flat(state.batch_stats),
                 "loss": np.asarray(per_track).tolist(), "shards": len(per_track.sharding.device_set)}
print(json.dumps(out))
'''

HELPER = r'''
import numpy as np, sys
sys.path.insert(0, "tests")
from conftest import tiny_config
def make():
    config = tiny_config("/nonexistent", **{"model.name": "resnet_lstm", "model.conv_channels": (4, 8),
                                             "model.dense_sizes": (16, 16), "model.lstm_initial_state": "zeros"})
    rng = np.random.default_rng(0)
    lengths = [3, 8, 5, 8, 1, 7, 8, 2]
    batch = {"mel": np.zeros((8, 8, 32, 32), np.float32), "labels": np.zeros((8, 8, 18), np.float32),
             "mask": np.zeros((8, 8), bool), "present": np.zeros((8, 8), bool)}
    for i, n in enumerate(lengths):
        batch["mel"][i, :n] = rng.uniform(size=(n, 32, 32)) * 10
        batch["labels"][i, :n] = rng.uniform(size=(n, 18)) < 0.4
        batch["mask"][i, :n] = batch["present"][i, :n] = True
    return config, batch


def sgd_step(config, batch, mesh):
    """One train step on `mesh` with plain SGD, so parameter differences measure gradient
    differences (Adam's m / sqrt(v) turns float noise on ~0 gradients into full steps)."""
    import jax, optax
    from jaxtag import parallel, train
    from jaxtag.models import create_model
    model = create_model(config.model, 18)
    state = train.create_train_state(config, model, jax.random.PRNGKey(0))
    sgd = optax.sgd(0.05)
    state = parallel.replicate(state.replace(tx=sgd, opt_state=sgd.init(state.params)), mesh)
    step = train.make_train_step(model, config.train.loss, None, mesh)
    state, per_track, _ = step(state, parallel.shard_batch(batch, mesh), jax.random.PRNGKey(1))
    return state, per_track
'''


def test_eight_devices_give_the_same_parameters_as_one(tmp_path):
    (tmp_path / "conftest_free.py").write_text(HELPER)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["one"]["shards"] == 1 and result["eight"]["shards"] == 8
    np.testing.assert_allclose(result["eight"]["loss"], result["one"]["loss"], rtol=1e-5, atol=1e-6)
    # One step of a batch-normed model: equal up to float reduction order.
    np.testing.assert_allclose(result["eight"]["params"], result["one"]["params"], rtol=1e-4, atol=1e-6)
    # Running variances come from E[x^2] - E[x]^2, which magnifies summation-order differences.
    np.testing.assert_allclose(result["eight"]["batch_stats"], result["one"]["batch_stats"], rtol=1e-2, atol=1e-3)


MULTIHOST = r'''
import json, sys
import jax, numpy as np, optax
from conftest_free import make, sgd_step
from jaxtag import parallel
process_id, port = int(sys.argv[1]), sys.argv[2]
if process_id >= 0:
    parallel.initialize_distributed(f"localhost:{port}", 2, process_id)
config, batch = make()
state, _ = sgd_step(config, batch, parallel.data_mesh())
params = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(state.params)])
print(json.dumps({"processes": jax.process_count(), "devices": len(jax.devices()), "params": params.tolist()}))
'''


def test_two_processes_on_localhost_match_one_process(tmp_path):
    import socket
    (tmp_path / "conftest_free.py").write_text(HELPER)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    env.pop("XLA_FLAGS", None)
    # Output goes to files: a full pipe would block one process at JAX's shutdown barrier.
    logs = [(open(tmp_path / f"out{i}", "w+"), open(tmp_path / f"err{i}", "w+")) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", MULTIHOST, str(i), port], cwd=REPO, env=env,
                              stdout=logs[i][0], stderr=logs[i][1], text=True) for i in range(2)]
    for p in procs:
        p.wait(timeout=600)
    outs = []
    for p, (out, err) in zip(procs, logs):
        out.seek(0), err.seek(0)
        assert p.returncode == 0, err.read()[-3000:]
        outs.append((out.read(), None))
    single = subprocess.run([sys.executable, "-c", MULTIHOST, "-1", port], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    reference = json.loads(single.stdout.strip().splitlines()[-1])
    assert [r["processes"] for r in results] == [2, 2] and results[0]["devices"] == 2
    assert reference["processes"] == 1
    for r in results:
        np.testing.assert_allclose(r["params"], reference["params"], rtol=1e-4, atol=1e-6)

