"""One train step of a small batch-normed model with plain SGD, on a chosen mesh, for the
multi-device and multi-host tests (run in their own processes: the device count is fixed when
JAX starts).

    python tests/helpers/parallel_sgd.py devices        # 1 device vs 8 (XLA_FLAGS sets 8)
    python tests/helpers/parallel_sgd.py host ID PORT   # process ID of 2 on localhost; ID -1: alone

Prints one JSON line.
"""
import json
import sys

import jax
import numpy as np

LENGTHS = [3, 8, 5, 8, 1, 7, 8, 2]  # tracks of a batch of 8, padded to 8 windows


def make_config_and_batch():
    from conftest import tiny_config
    config = tiny_config("/nonexistent", **{"model.name": "resnet_lstm", "model.conv_channels": (4, 8),
                                             "model.dense_sizes": (16, 16), "model.lstm_initial_state": "zeros"})
    rng = np.random.default_rng(0)
    batch = {"mel": np.zeros((8, 8, 32, 32), np.float32), "labels": np.zeros((8, 8, 18), np.float32),
             "mask": np.zeros((8, 8), bool), "present": np.zeros((8, 8), bool)}
    for i, n in enumerate(LENGTHS):
        batch["mel"][i, :n] = rng.uniform(size=(n, 32, 32)) * 10
        batch["labels"][i, :n] = rng.uniform(size=(n, 18)) < 0.4
        batch["mask"][i, :n] = batch["present"][i, :n] = True
    return config, batch


def sgd_step(config, batch, mesh):
    """One train step on `mesh` with plain SGD, so parameter differences measure gradient
    differences (Adam's m / sqrt(v) turns float noise on ~0 gradients into full steps)."""
    import optax
    from jaxtag.models import create_model
    from jaxtag.training import parallel, steps
    model = create_model(config.model, 18)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    sgd = optax.sgd(0.05)
    state = parallel.replicate(state.replace(tx=sgd, opt_state=sgd.init(state.params)), mesh)
    step = steps.make_train_step(model, config.train.loss, None, mesh)
    state, per_track, _, _ = step(state, parallel.shard_batch(batch, mesh), jax.random.PRNGKey(1))
    return state, per_track


def _flat(tree):
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)]).tolist()


def one_versus_eight_devices() -> dict:
    from jax.sharding import Mesh
    config, batch = make_config_and_batch()
    out = {}
    for name, devices in [("one", jax.devices()[:1]), ("eight", jax.devices()[:8])]:
        state, per_track = sgd_step(config, batch, Mesh(np.asarray(devices), ("data",)))
        out[name] = {"params": _flat(state.params), "batch_stats": _flat(state.batch_stats),
                     "loss": np.asarray(per_track).tolist(), "shards": len(per_track.sharding.device_set)}
    out["devices"] = len(jax.devices())
    return out


def one_host_of_two(process_id: int, port: str) -> dict:
    from jaxtag.training import parallel
    if process_id >= 0:
        parallel.initialize_distributed(f"localhost:{port}", 2, process_id)
    config, batch = make_config_and_batch()
    if jax.process_count() > 1:  # each process holds its own rows of the global batch
        rows = len(batch["mel"]) // jax.process_count()
        batch = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}
    state, per_track = sgd_step(config, batch, parallel.data_mesh())
    return {"processes": jax.process_count(), "devices": len(jax.devices()), "params": _flat(state.params),
            "loss": np.asarray(per_track).tolist()}


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        print(json.dumps(one_versus_eight_devices()))
    else:
        print(json.dumps(one_host_of_two(int(sys.argv[2]), sys.argv[3])))
