"""Data parallelism over devices (and hosts) with jax.sharding: batches are split over a 1-D
"data" mesh axis, parameters and optimizer state are replicated. No pmap: one jax.jit program,
partitioned by XLA from the shardings.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxtag.errors import ConfigError


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                           auto: bool = False) -> None:
    """Join a multi-host run (JAX's own distributed runtime). With auto=True, JAX detects the
    cluster (Cloud TPU, SLURM, ...); otherwise give the coordinator's host:port, the process count
    and this process's id. A no-op for a single process."""
    if not (auto or coordinator_address):
        return
    # CPU processes need a collectives backend to talk to each other (GPU/TPU ignore this).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)


def on_each_host_in_turn(fn):
    """fn() on process 0 first, then on the others: hosts that share a filesystem find process 0's
    prepared data instead of racing to write it; hosts with local disks each prepare their own."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils
    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("jaxtag: process 0 has run it")
    if jax.process_index() != 0:
        result = fn()
    multihost_utils.sync_global_devices("jaxtag: every process has run it")
    return result


def data_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"train.batch_size ({batch_size}) must be a multiple of the number of devices ({n}) "
                          "for data parallelism: each device takes batch_size / devices tracks a step")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's rows of a global batch (all of it with one process) as global arrays split
    over the data axis: the global batch is the processes' rows in process order."""
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        out[key] = jax.make_array_from_process_local_data(
            sharding, value, (value.shape[0] * jax.process_count(),) + value.shape[1:])
    return out


def gather_from_hosts(values: np.ndarray) -> list[np.ndarray]:
    """Every process's 1-D array (lengths may differ), on every process, in process order."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return [values]
    from jax.experimental import multihost_utils
    sizes = multihost_utils.process_allgather(np.asarray([values.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), values.dtype)
    padded[:values.size] = values
    gathered = multihost_utils.process_allgather(padded)
    return [np.asarray(row[:int(n)]) for row, n in zip(gathered, np.ravel(sizes))]


def replicate(tree, mesh: Mesh):
    """tree (the same values on every process) as arrays replicated over the mesh. Through host
    memory: arrays already on one local device (a restored checkpoint) cannot be put on other
    hosts' devices, host values can (each process fills its own devices)."""
    return jax.device_put(jax.device_get(tree), replicated(mesh))
