"""Interrupted training resumes exactly; preemption saves; divergence stops without saving."""
import json
import os
import re
import signal

import jax
import numpy as np
import pytest

from conftest import tiny_config
from helpers import processes
from jaxtag.data import pipeline
from jaxtag.models import create_model
from jaxtag.training import checkpoints, steps
from jaxtag.training.loop import TrainingDivergedError, train_and_evaluate


def _train_cli(workdir, data_dir, fault=None):
    return processes.run_cli("jaxtag.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                             f"--config.data.data_dir={data_dir}", "--config.train.num_epochs=2",
                             "--config.train.checkpoint_every_steps=2", fault=fault)


def _final(workdir):
    variables, meta = checkpoints.restore_for_inference(workdir, "latest")
    with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
        return variables, meta, json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(prepared_tiny, tmp_path_factory):
    config, _ = prepared_tiny
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    out = _train_cli(workdir, config.data.data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    # Progress within an epoch (6 tracks, logged every 4) and the run's ETA after each epoch.
    assert re.search(r"epoch 1: 4/6 tracks, [\d.]+ tracks/s, ETA \d+s", out.stderr), out.stderr[-3000:]
    assert re.search(r"epoch 1/2: train loss .*; ETA \d+s", out.stderr), out.stderr[-3000:]
    return _final(workdir)


# The tiny train split has 6 tracks: 6 steps per epoch. Step 9 is mid-epoch 2, one step after the
# mid-epoch checkpoint at step 8; step 7 is one step after the end-of-epoch-1 checkpoint.
@pytest.mark.slow
@pytest.mark.parametrize("fault, code", [("sigkill@9", -signal.SIGKILL), ("sigkill@7", -signal.SIGKILL),
                                         ("sigterm@9", 143)])
def test_interrupted_training_resumes_bit_identically(prepared_tiny, uninterrupted, tmp_path, fault, code):
    config, _ = prepared_tiny
    workdir = str(tmp_path / "run")
    out = _train_cli(workdir, config.data.data_dir, fault)
    assert out.returncode == code, out.stderr[-3000:]
    if fault.startswith("sigterm"):  # preemption saved the step it was at
        _, meta = checkpoints.restore_for_inference(workdir, "latest")
        assert meta["step"] == 9 and meta["batches_done"] == 3 and meta["epoch"] == 1
    out = _train_cli(workdir, config.data.data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resumed at epoch" in out.stderr
    variables, meta, metrics = _final(workdir)
    ref_variables, ref_meta, ref_metrics = uninterrupted
    assert meta["step"] == ref_meta["step"] == 12
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), variables, ref_variables)
    assert all(jax.tree.leaves(same)), "parameters differ from the uninterrupted run"
    assert meta["train_loss"] == ref_meta["train_loss"]
    assert metrics == ref_metrics


def test_non_finite_step_leaves_the_state_unchanged(data_dir):
    config = tiny_config(data_dir)
    model = create_model(config.model, 18)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    step = steps.make_train_step(model, "margin")
    batch = {"mel": np.full((1, 8, 32, 32), np.nan, np.float32), "labels": np.ones((1, 8, 18), np.float32),
             "mask": np.ones((1, 8), bool), "present": np.ones((1, 8), bool)}
    batch["labels"][..., 0] = 0
    state, _, _, finite = step(state, batch, jax.random.PRNGKey(1))
    assert not bool(finite)
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after)))   # Adam's moments too
    assert int(state.step) == 0


@pytest.mark.slow   # (a training run to step 5: 12 s; the fast tier measured 3:54 with it)
def test_divergence_stops_training_naming_step_and_track_and_saves_nothing_bad(prepared_tiny, tmp_path, monkeypatch):
    config, _ = prepared_tiny
    config = tiny_config(config.data.data_dir, **{"train.checkpoint_every_steps": 2})
    real = pipeline.bucketed_batches
    seen = {"n": 0}

    def poisoned(ds, batch_size, buckets):
        for batch in real(ds, batch_size, buckets):
            seen["n"] += 1
            if seen["n"] == 5:  # the 5th step of the run gets a NaN input
                batch["mel"][:] = np.nan
                seen["track"] = batch["track"][0]
            yield batch

    monkeypatch.setattr(pipeline, "bucketed_batches", poisoned)
    workdir = str(tmp_path / "run")
    with pytest.raises(TrainingDivergedError, match=r"step 5 \(track " + seen.get("track", "")) as info:
        train_and_evaluate(config, workdir)
    assert seen["track"] in str(info.value)
    _, meta = checkpoints.restore_for_inference(workdir, "latest")
    assert meta["step"] == 4  # the last good checkpoint stays the latest; nothing after the bad step


@pytest.mark.slow
def test_killed_preparation_resumes_without_redoing_finished_tracks(prepared_tiny, tmp_path):
    reference_config, reference = prepared_tiny
    data_dir = str(tmp_path / "data")
    args = ["--config=configs/tiny.py", f"--config.data.data_dir={data_dir}"]
    out = processes.run_cli("jaxtag.prepare", *args, fault="prepare_kill@4")
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    out = processes.run_cli("jaxtag.prepare", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    reused = sum(int(n) for n in re.findall(r"Reused (\d+) track", out.stderr))
    assert reused >= 4
    config = tiny_config(data_dir)
    builder = pipeline.get_builder(config)
    assert builder.is_prepared()
    assert not os.path.exists(os.path.join(data_dir, "cal500exp", "track_cache", builder.builder_config.name))
    for split in ("train", "validation", "test"):
        got = {ex["track"]: ex for ex in builder.as_dataset(split=split).as_numpy_iterator()}
        want = {ex["track"]: ex for ex in reference.as_dataset(split=split).as_numpy_iterator()}
        assert got.keys() == want.keys()
        for name in got:
            for key in ("mel", "labels", "mask", "window_start"):
                np.testing.assert_array_equal(got[name][key], want[name][key])


def test_track_cache_never_uses_a_partial_or_stale_entry(tmp_path):
    """What a kill can leave behind: a half-written temporary file, a truncated entry under a real
    name (e.g. a disk filled up), or an entry for audio that has since changed. None is used."""
    from jaxtag.data.cal500exp.cal500exp_dataset_builder import TrackCache
    from jaxtag.data.corpus import Track
    audio, csv = tmp_path / "t.wav", tmp_path / "t.csv"
    audio.write_bytes(b"RIFF....")
    csv.write_text("Start_Time,End_Time\n")
    track = Track("t", str(audio), str(csv))
    cache = TrackCache(str(tmp_path / "cache"))
    example = {"mel": np.ones((3, 4), np.float32), "window_start": np.arange(2), "labels": np.zeros((2, 5)),
               "mask": np.ones(2, bool), "track": "t", "n_frames": 3, "n_annotated_frames": 2}
    cache.store(track, example)
    got = cache.load(track)
    np.testing.assert_array_equal(got["mel"], example["mel"])
    assert got["n_frames"] == 3 and cache.hits == 1
    path = cache._path(track)
    full = open(path, "rb").read()
    with open(path + ".tmp123.npz", "wb") as f:  # a kill mid-write leaves only a temporary name
        f.write(full[: len(full) // 2])
    assert cache.load(track) is not None
    with open(path, "wb") as f:                  # truncated under the real name
        f.write(full[: len(full) // 2])
    assert cache.load(track) is None
    with open(path, "wb") as f:
        f.write(full)
    assert cache.load(track) is not None
    audio.write_bytes(b"RIFF.... changed")       # the audio changed since: recomputed
    assert cache.load(track) is None
