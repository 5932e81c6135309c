"""Training: one step learns, one compilation per bucket, the whole loop on the tiny config, resume."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import tiny_config
from helpers import processes
from jaxtag.models import create_model
from jaxtag.training import checkpoints, steps
from jaxtag.training.compilations import count_compilations
from jaxtag.training.loop import train_and_evaluate


def _batch(rng, length=6, n_tags=18, present=None):
    present = np.ones((1, length), bool) if present is None else present
    return {"mel": rng.uniform(size=(1, length, 32, 32)).astype(np.float32) * 10,
            "labels": (rng.uniform(size=(1, length, n_tags)) < 0.4).astype(np.float32),
            "mask": present.copy(), "present": present}


def test_train_step_reduces_the_loss_on_a_fixed_batch(data_dir):
    config = tiny_config(data_dir)
    model = create_model(config.model, 18)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    step = steps.make_train_step(model, "margin")
    batch = _batch(np.random.default_rng(0))
    losses = []
    for _ in range(40):
        state, per_track, _, finite = step(state, batch, jax.random.PRNGKey(1))
        assert bool(finite)
        losses.append(float(per_track[0]))
    assert losses[1] < losses[0]  # one step already lowers the loss on the same batch
    assert losses[-1] < 0.8 * losses[0]
    assert int(state.step) == 40


@pytest.mark.slow   # 15 s: the fast tier measured 4:22 of its 4 minutes in a slow hour
def test_train_step_compiles_once_per_bucket(data_dir):
    config = tiny_config(data_dir)
    model = create_model(config.model, 18)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    step = steps.make_train_step(model, "margin")
    rng = np.random.default_rng(0)
    for n_real in (3, 5, 8):  # three tracks of different lengths, all padded to bucket 8
        present = np.arange(8)[None] < n_real
        state, _, _, _ = step(state, _batch(rng, 8, present=present), jax.random.PRNGKey(1))
    assert step._cache_size() == 1
    state, _, _, _ = step(state, _batch(rng, 16), jax.random.PRNGKey(1))
    assert step._cache_size() == 2


@pytest.mark.slow
def test_an_epoch_of_random_lengths_compiles_once_per_bucket(data_dir):
    """Counted by jax.monitoring (XLA compile events), over 30 tracks of random lengths."""
    from jaxtag.data.buckets import bucket_length
    config = tiny_config(data_dir)
    model = create_model(config.model, 18)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    step = steps.make_train_step(model, "margin")
    rng, key = np.random.default_rng(1), jax.random.PRNGKey(1)
    buckets = (4, 8, 16)
    lengths = rng.integers(1, 17, size=30)
    with count_compilations() as compiled:
        for n in lengths:
            length = bucket_length(int(n), buckets)
            state, _, _, _ = step(state, _batch(rng, length, present=np.arange(length)[None] < n), key)
        jax.block_until_ready(state)
    used = {bucket_length(int(n), buckets) for n in lengths}
    assert len(used) == 3 and compiled["n"] == len(used)
    with count_compilations() as again:  # a second epoch compiles nothing
        for n in lengths[:5]:
            length = bucket_length(int(n), buckets)
            state, _, _, _ = step(state, _batch(rng, length, present=np.arange(length)[None] < n), key)
    assert again["n"] == 0


def test_train_and_evaluate_writes_checkpoints_and_metrics(trained):
    config, workdir, result = trained
    assert os.listdir(os.path.join(workdir, "checkpoints", "latest"))
    assert os.listdir(os.path.join(workdir, "checkpoints", "best"))
    with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
        saved = json.load(f)
    for key in ("tags", "maa", "mean_maa", "baseline_maa", "roc_auc", "pr_auc", "threshold"):
        assert key in saved
    assert len(saved["tags"]) == 18 and saved["threshold"] == 0.5
    assert np.isfinite(saved["mean_maa"]) and np.isfinite(saved["mean_baseline_maa"])
    assert saved == checkpoints.json_safe(result)  # undefined metrics (NaN) are null in the file
    # The best checkpoint holds the best validation score seen; the latest keeps at most
    # keep_checkpoints steps.
    metric = config.eval.best_metric
    _, best = checkpoints.restore_for_inference(workdir, "best")
    _, latest = checkpoints.restore_for_inference(workdir, "latest")
    assert best["validation"][metric] == latest["best_score"] >= latest["validation"][metric]
    assert (best["step"] == latest["step"]) == (latest["validation"][metric] == latest["best_score"])
    # The test metrics say which checkpoint they are of, and its validation scores (docs/results.md).
    assert saved["checkpoint"]["epoch"] == best["epoch"] and saved["checkpoint"]["which"] == "best"
    assert saved["checkpoint"]["validation"]["mean_roc_auc"] == best["validation"]["mean_roc_auc"]
    assert len(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) <= config.train.keep_checkpoints
    assert len(os.listdir(os.path.join(workdir, "checkpoints", "best"))) == 1


def test_metrics_json_maa_is_recomputed_from_the_predictions_file(trained):
    _, workdir, _ = trained
    with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
        saved = json.load(f)
    with np.load(os.path.join(workdir, "eval", "test_predictions.npz"), allow_pickle=False) as npz:
        names = sorted({k.rsplit("/", 1)[0] for k in npz.files})
        tracks = [(npz[f"{n}/scores"], npz[f"{n}/labels"], npz[f"{n}/mask"]) for n in names]
    assert len(names) == saved["num_tracks"] == 2
    # Independent recomputation: per track, per tag accuracy over unmasked windows; then the mean.
    per_track = []
    for scores, labels, mask in tracks:
        if mask.any():
            per_track.append(((scores[mask] >= 0.5) == (labels[mask] > 0.5)).mean(axis=0))
    maa = np.mean(per_track, axis=0)
    np.testing.assert_allclose([saved["maa"][t] for t in saved["tags"]], maa, rtol=1e-12)
    assert saved["mean_maa"] == pytest.approx(maa.mean())


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(trained, tmp_path):
    config, original, _ = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)  # other tests use the original run
    import orbax.checkpoint as ocp
    first = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest")).latest_step()
    config = tiny_config(config.data.data_dir, **{"train.num_epochs": 3})
    train_and_evaluate(config, workdir)
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest"))
    meta = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    assert meta["epoch"] == 2                      # only the third epoch ran
    steps_per_epoch = first // 2
    assert mngr.latest_step() == first + steps_per_epoch


@pytest.mark.slow
def test_main_eval_mode_and_prepare_cli(trained, tmp_path):
    config, original, _ = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    os.remove(os.path.join(workdir, "eval", "test_metrics.json"))
    out = processes.run_cli("jaxtag.main", "--config=configs/tiny.py", f"--workdir={workdir}", "--mode=eval",
                            f"--config.data.data_dir={config.data.data_dir}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mean" in out.stdout and os.path.exists(os.path.join(workdir, "eval", "test_metrics.json"))
    # Evaluation only: no training step ran, no checkpoint was added.
    def saved_steps(run):
        return {kind: sorted(os.listdir(os.path.join(run, "checkpoints", kind))) for kind in ("latest", "best")}
    assert saved_steps(workdir) == saved_steps(original) and saved_steps(original)["latest"]
    # Training wrote TensorBoard event files.
    events = os.listdir(os.path.join(original, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events), events
    out = processes.run_cli("jaxtag.prepare", "--config=configs/tiny.py",
                            f"--config.data.data_dir={config.data.data_dir}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train" in out.stdout and "Emotion-Sad" in out.stdout
    assert "using the built-in SYNTHETIC corpus" in out.stderr  # said loudly, never silently


@pytest.mark.slow
def test_main_reports_bad_root_without_a_traceback(tmp_path):
    out = processes.run_cli("jaxtag.main", "--config=configs/tiny.py", f"--workdir={tmp_path}/w",
                            f"--config.data.root={tmp_path}/nope", f"--config.data.data_dir={tmp_path}/d")
    assert out.returncode == 1
    assert f"{tmp_path}/nope: data root does not exist" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_improved_settings_train_with_train_split_statistics_and_tuned_thresholds(prepared_tiny, tmp_path):
    from jaxtag.tagging.tagger import Tagger
    config, builder = prepared_tiny
    config = tiny_config(config.data.data_dir, **{
        "model.name": "resnet_attention", "model.conv_channels": (4, 8, 8), "model.dense_sizes": (16, 16),
        "model.compression": "log1p", "model.normalize": True, "model.output_activation": "none",
        "train.loss": "bce", "train.pos_weight": "balanced", "train.num_epochs": 1,
        "eval.tune_thresholds": True})
    workdir = str(tmp_path / "run")
    result = train_and_evaluate(config, workdir)
    tagger = Tagger.from_workdir(workdir)
    stats = tagger.meta["input_stats"]
    # Independent recomputation over the train split's real frames only.
    frames = np.concatenate([ex["mel"][:ex["n_frames"]] for ex in builder.as_dataset(split="train").as_numpy_iterator()])
    x = np.log1p(config.model.log_scale * frames.astype(np.float64))
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["std"], np.maximum(x.std(0), 1e-3 * x.std(0).max()), rtol=1e-4)
    assert stats["num_frames"] == frames.shape[0]
    assert isinstance(result["threshold"], list) and len(result["threshold"]) == 18
    np.testing.assert_allclose(tagger.policy.thresholds, tagger.meta["thresholds"], rtol=1e-6)
    np.testing.assert_allclose(result["threshold"], tagger.meta["thresholds"], rtol=1e-6)
    assert "emotion" in result["categories"] and np.isfinite(result["mean_roc_auc"])


def test_mistyped_config_field_fails_before_any_work(tmp_path):
    out = processes.run_cli("jaxtag.main", "--config=configs/tiny.py", f"--workdir={tmp_path}/w",
                            "--config.train.learnig_rate=0.1", f"--config.data.data_dir={tmp_path}/d")
    assert out.returncode != 0 and "learnig_rate" in out.stderr
    assert not os.path.exists(tmp_path / "d") and not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_prepare_cli_validates_the_config_before_reading_audio(tmp_path):
    out = processes.run_cli("jaxtag.prepare", "--config=configs/tiny.py", "--config.data.window_hop=64",
                            f"--config.data.data_dir={tmp_path}/d")
    assert out.returncode != 0 and "data.window_hop (64) exceeds data.window_frames (32)" in out.stderr
    assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "d")


@pytest.mark.slow
def test_checkpoints_are_written_every_n_steps_of_the_run_not_of_the_epoch(prepared_tiny, tmp_path):
    """6 steps an epoch, checkpoint_every_steps=5, 2 epochs: mid-epoch checkpoints at steps 5 and 10
    (counted over the run), end-of-epoch ones at 6 and 12. Counted within each epoch, the second
    would have come at step 11, and a count longer than an epoch would never fire."""
    config, _ = prepared_tiny
    config = tiny_config(config.data.data_dir, **{"train.checkpoint_every_steps": 5, "train.keep_checkpoints": 10})
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)
    saved = sorted(int(step) for step in os.listdir(os.path.join(workdir, "checkpoints", "latest")))
    assert saved == [5, 6, 10, 12]
    mid = {step: checkpoints.restore_for_inference(workdir, str(step))[1] for step in (5, 10)}
    assert (mid[5]["epoch"], mid[5]["batches_done"]) == (0, 5)
    assert (mid[10]["epoch"], mid[10]["batches_done"]) == (1, 4)


def test_eval_mode_uses_the_checkpoint_model_settings_and_refuses_another_model(trained, tmp_path):
    from jaxtag.errors import ConfigError
    from jaxtag.evaluation.evaluate import evaluate_checkpoint
    config, original, result = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    # The command's config says other sizes and another split: the checkpoint's are used.
    other = tiny_config(config.data.data_dir, **{"model.lstm_size": 99, "model.dense_sizes": (7, 5, 3),
                                                  "data.split_seed": 5})
    again = evaluate_checkpoint(other, workdir, "test")
    np.testing.assert_equal(again["maa"], result["maa"])  # NaN where undefined, on both sides
    np.testing.assert_equal(again["roc_auc"], result["roc_auc"])
    with pytest.raises(ConfigError, match=r"its checkpoint is a 'cnn_lstm' model but the config names 'cnn'"):
        evaluate_checkpoint(tiny_config(config.data.data_dir, **{"model.name": "cnn"}), workdir, "test")


def test_metrics_files_are_standard_json_and_strings_are_kept():
    value = {"roc_auc": {"Emotion-Sad": float("nan"), "NaN-named tag": 0.5}, "curve": [float("-inf"), 1.0, np.float32(2)],
             "note": "NaN and -Infinity inside a string stay", "count": np.int64(3)}
    safe = checkpoints.json_safe(value)
    assert safe == {"roc_auc": {"Emotion-Sad": None, "NaN-named tag": 0.5}, "curve": [None, 1.0, 2.0],
                    "note": "NaN and -Infinity inside a string stay", "count": 3}
    json.dumps(safe, allow_nan=False)  # strict JSON: raises on any NaN or infinity left


def test_metrics_file_parses_as_strict_json(trained):
    _, workdir, _ = trained

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
        text = f.read()
    json.loads(text, parse_constant=refuse)
    assert "null" in text  # the tiny test split leaves some tags one-class: undefined metrics are null


def test_count_compilations_unregisters_its_listener(data_dir):
    from jax._src import monitoring
    before = len(monitoring.get_event_duration_listeners())
    with count_compilations() as compiled:
        assert len(monitoring.get_event_duration_listeners()) == before + 1
        jax.jit(lambda x: x * 3 + 1)(np.arange(5.0)).block_until_ready()
    assert len(monitoring.get_event_duration_listeners()) == before and compiled["n"] == 1


def test_resuming_a_checkpoint_of_the_earlier_layout_says_why_it_cannot(trained, tmp_path):
    """Training workdirs from before the paper trunk became plain Flax tag and evaluate (see
    test_tagger.py) but cannot resume: a clear CheckpointError, not orbax's tree mismatch."""
    from jaxtag.errors import CheckpointError
    from jaxtag.training.loop import restore_or_initialize, set_up_run
    config, workdir, _ = trained
    variables, meta = checkpoints.restore_for_inference(workdir)
    trunk = variables["params"]["trunk"]
    old = {**variables, "params": {**variables["params"], "trunk": {
        "dense_0": trunk["dense_0"], "convs": {k: v for k, v in trunk.items() if k.startswith("conv")}}}}
    run = set_up_run(config, str(tmp_path / "old"))
    state, _ = restore_or_initialize(run)  # a fresh run: nothing to resume
    run.store.save(meta["step"], old, state.opt_state, meta, 1.0, True)
    run.store.wait()
    with pytest.raises(CheckpointError, match=r"saved by an earlier jaxtag .* cannot resume from it; use a new"):
        restore_or_initialize(run)
    run.store.close()
