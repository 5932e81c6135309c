"""The train state and the jitted steps (paper 4.3): one step takes a batch of whole tracks
padded to a length bucket, so it compiles once per bucket.

The loss is summed over each track's unmasked windows and averaged over the batch's tracks.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxtag.models import pretrained_trunk
from jaxtag.pretrained import load_pretrained
from jaxtag.training import losses, parallel

BATCH_KEYS = ("mel", "labels", "mask", "present")


class TrainState(train_state.TrainState):
    batch_stats: Any = None   # batch-norm statistics of models that have them; {} otherwise

    @property
    def variables(self) -> dict:
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def create_train_state(config, model, key) -> TrainState:
    """Initial parameters (a pretrained trunk's published weights where the model has one) and
    the optimizer."""
    d = config.data
    mel = jnp.zeros((1, 1, d.window_frames, d.n_mels), jnp.float32)
    variables = model.init({"params": key, "lstm_state": key}, mel, jnp.ones((1, 1), bool))
    variables = with_pretrained_trunk(config.model, variables)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              tx=make_optimizer(config, variables["params"]),
                              batch_stats=variables.get("batch_stats", {}))
    # A Python-int step would be weakly typed and force a second compilation after the first step.
    return state.replace(step=jnp.zeros((), jnp.int32))


def make_optimizer(config, params) -> optax.GradientTransformation:
    """Adam at train.learning_rate (paper 4.3). A pretrained trunk (musicnn) gets its own: frozen
    (no update at all) with model.freeze_trunk, else Adam at train.trunk_learning_rate
    (fine-tuning: small steps, so the published features are refined, not overwritten)."""
    adam = optax.adam(config.train.learning_rate)
    if pretrained_trunk(config.model) is None:
        return adam
    if config.model.freeze_trunk:
        trunk = optax.set_to_zero()
    else:
        trunk = optax.adam(config.train.trunk_learning_rate)
    labels = {name: jax.tree.map(lambda _: "head", tree) for name, tree in params.items()}
    labels["trunk"] = {name: jax.tree.map(lambda _: "trunk" if name == "musicnn" else "head", tree)
                       for name, tree in params["trunk"].items()}
    return optax.multi_transform({"head": adam, "trunk": trunk}, labels)


def device_batch(batch: dict) -> dict:
    """The arrays of a batch that go to the device (not the track names)."""
    return {k: batch[k] for k in BATCH_KEYS}


def make_train_step(model, loss_name: str, pos_weight=None, mesh=None) -> Callable:
    """The jitted train step: (state, batch, key) -> (state, per-track losses [B], which rows
    held a track [B], whether the update was finite and applied). With a mesh, batches are split
    over its "data" axis and the state is replicated; gradients are averaged across devices by
    XLA (GSPMD), no pmap."""
    loss_fn = losses.get_loss(loss_name)
    pos_weight = None if pos_weight is None else np.asarray(pos_weight, np.float32)
    jit_kwargs = {}
    if mesh is not None:
        rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        # Per-track losses come back replicated (a few floats): every host can read them.
        jit_kwargs = dict(in_shardings=(rep, data, rep), out_shardings=(rep, rep, rep, rep))

    @functools.partial(jax.jit, donate_argnums=(0,), **jit_kwargs)
    def train_step(state, batch, key):
        step_key = jax.random.fold_in(key, state.step)

        def objective(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
            scores, updates = model.apply(variables, batch["mel"], batch["present"], train=True,
                                          rngs={"lstm_state": step_key}, mutable=["batch_stats"])
            per_track = losses.track_loss(loss_fn(scores, batch["labels"], pos_weight), batch["mask"])
            n_tracks = jnp.maximum(jnp.sum(jnp.any(batch["present"], axis=1)), 1)
            return jnp.sum(per_track) / n_tracks, (per_track, updates)

        (loss, (per_track, updates)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

        def update(state):
            state = state.apply_gradients(grads=grads)
            return state.replace(batch_stats=updates["batch_stats"]) if state.batch_stats else state

        # A non-finite loss or gradient never reaches the parameters; the host stops training.
        state = jax.lax.cond(finite, update, lambda s: s, state)
        # Which rows held a track: on many hosts, no host knows the others' padding rows.
        return state, per_track, jnp.any(batch["present"], axis=1), finite

    return train_step


def make_predict_step(model) -> Callable:
    """The jitted inference step: (variables, batch, key) -> per-window outputs [B, L, C]."""
    @jax.jit
    def predict_step(variables, batch, key):
        return model.apply(variables, batch["mel"], batch["present"], rngs={"lstm_state": key})
    return predict_step


def with_pretrained_trunk(model_config, variables: dict, cache_dir=None) -> dict:
    """variables with the trunk's published weights in place of their random initialisation
    (fetched on first use); unchanged for models without a pretrained trunk (musicnn_lstm's
    trunk: jaxtag.models.musicnn)."""
    name = pretrained_trunk(model_config)
    if name is None:
        return variables
    pretrained, _ = load_pretrained(name, cache_dir)
    out = {collection: dict(tree) for collection, tree in variables.items()}
    for collection, tree in out.items():
        mine = tree["trunk"]["musicnn"]
        # The trunk uses musicnn up to its penultimate layer: every one of its variables is there.
        theirs = {k: pretrained[collection][k] for k in mine}
        shapes = jax.tree.map(np.shape, (mine, theirs))
        if shapes[0] != shapes[1]:
            raise ValueError(f"the {name} weights do not fit the musicnn trunk: {shapes}")
        tree["trunk"] = {**tree["trunk"], "musicnn": jax.tree.map(jnp.asarray, theirs)}
    return out
