"""Real tags out of the box and transfer: tagging with musicnn's published weights (Tagger and CLI),
a musicnn trunk under the paper's LSTM head (frozen and fine-tuned), two frontends side by side
in the prepared-data cache, and training on a corpus with its own tag vocabulary."""
import json
import os
import pathlib

import jax
import numpy as np
import pytest
import soundfile as sf

from conftest import make_corpus, tiny_config, tiny_musicnn_config, write_csv, write_tone
from helpers import processes
from jaxtag.data import labels, pipeline
from jaxtag.errors import DataError
from jaxtag.models.musicnn import MUSICNN_FRONTEND
from jaxtag.tagging.tagger import Tagger
from jaxtag.training import checkpoints
from jaxtag.training.loop import train_and_evaluate

REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "musicnn_reference.npz"
PATCH_SECONDS = 187 * 256 / 16000


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def clip_path(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(str(path), reference["clip"], int(reference["sr"]), subtype="PCM_16")
    return str(path)


@pytest.mark.parametrize("name, original", [("musicnn-msd", "MSD_musicnn"), ("musicnn-mtt", "MTT_musicnn")])
def test_pretrained_tagger_gives_musicnn_probabilities_on_its_own_patches(name, original, reference, clip_path,
                                                                           pretrained_cache):
    # The port's fidelity: in float32 (bfloat16 has its own bounds: tests/test_precision.py).
    tagger = Tagger.pretrained(name, cache_dir=pretrained_cache, precision="float32")
    assert tagger.model.cpu_fast == (jax.default_backend() == "cpu")   # one window at a time on CPU
    taggram = tagger.tag(clip_path)
    assert taggram.tags == list(reference[f"{original}_tags"]) and taggram.model == name
    # The clip is 8.96 s: 561 frames, exactly musicnn's own 3 patches at frames 0, 187, 374.
    n = len(reference[f"{original}_probs"])
    assert len(taggram.start) == n == 3
    np.testing.assert_allclose(taggram.start, np.arange(n) * PATCH_SECONDS, atol=1e-9)
    np.testing.assert_allclose(taggram.end, np.minimum((np.arange(n) + 1) * PATCH_SECONDS, 8.96), atol=1e-9)
    # From the audio with jaxtag's float32 frontend: within 5e-4 of the original's float16 path.
    np.testing.assert_allclose(taggram.scores, reference[f"{original}_probs"], atol=5e-4)


def test_pretrained_hop_and_a_short_file(clip_path, pretrained_cache, tmp_path):
    tagger = Tagger.pretrained("musicnn-msd", hop_seconds=1.0, cache_dir=pretrained_cache)
    assert tagger.frontend.window_hop == 62  # 1 s = 62.5 frames of 16 ms
    taggram = tagger.tag(clip_path)
    # Windows every 62 frames, and one more aligned to the end: (561 - 187) / 62 -> 7 + 1.
    assert len(taggram.start) == 8
    np.testing.assert_allclose(np.diff(taggram.start)[:-1], 62 * 256 / 16000)
    whole = Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache).tag(clip_path)
    np.testing.assert_allclose(taggram.scores[0], whole.scores[0], atol=1e-6)  # the same first patch
    short = tagger.tag(write_tone(tmp_path / "short.wav", 1.0, sr=16000))  # shorter than a patch: padded
    assert short.scores.shape == (1, 50) and np.isfinite(short.scores).all()
    with pytest.raises(ValueError, match="hop_seconds"):
        Tagger.pretrained("musicnn-msd", hop_seconds=0.001, cache_dir=pretrained_cache)


@pytest.mark.slow
def test_tag_cli_uses_the_combined_musicnn_without_a_workdir_and_mtt_on_request(clip_path, pretrained_cache, tmp_path,
                                                                                reference):
    env = {"JAXTAG_CACHE": pretrained_cache}
    from jaxtag.tagging.tagger import Tagger
    combined = Tagger.pretrained("musicnn", cache_dir=pretrained_cache)
    for model, tags in [(None, combined.tags), ("musicnn-mtt", list(reference["MTT_musicnn_tags"]))]:
        out = tmp_path / (model or "default")
        args = [clip_path, f"--output_dir={out}", "--top_n=3"] + ([f"--model={model}"] if model else [])
        result = processes.run(["-m", "jaxtag.tag", *args], **env)
        assert result.returncode == 0, result.stderr[-3000:]
        record = json.loads((out / "clip.json").read_text())
        assert record["model"] == (model or "musicnn")
        assert record["tags"] == list(tags) and len(record["windows"]) == 3
        for ext in ("csv", "png", "html"):
            assert (out / f"clip.{ext}").stat().st_size > 0
        segments = labels.read_segments(out / "clip.csv", record["tags"], columns=None)
        assert segments.labels.shape[1] == len(tags) and segments.end[-1] == pytest.approx(record["duration"], abs=1e-5)
        page = (out / "clip.html").read_text()
        data = json.loads(page.split('id="taggram-data">')[1].split("</script>")[0])
        assert data["tags"] == record["tags"] and f"model {record['model']}" in page
        # Top tags by the evidence rule's strength: the share of the clip's time a tag is on (from
        # the written window tags and the windows' time partition), ties by the mean score.
        top = result.stdout.strip().splitlines()[-1]
        windows = record["windows"]
        centres = np.array([(w["start"] + w["end"]) / 2 for w in windows])
        bounds = np.r_[0.0, (centres[:-1] + centres[1:]) / 2, record["duration"]]
        on = np.array([[t in w["tags"] for t in record["tags"]] for w in windows], float)
        share = (np.diff(bounds)[:, None] * on).sum(0) / record["duration"]
        mean = np.array([w["scores"] for w in windows]).mean(0)
        best = min(range(len(tags)), key=lambda i: (-round(share[i], 9), -mean[i]))
        assert top.startswith(clip_path + ": " + record["tags"][best] + " "), top
    both = processes.run(["-m", "jaxtag.tag", clip_path, "--workdir=x", "--model=musicnn-mtt"], **env)
    assert both.returncode != 0 and "give one" in both.stderr


def test_musicnn_frontend_prepares_beside_the_paper_frontend(prepared_tiny):
    config, paper_builder = prepared_tiny
    musicnn = tiny_musicnn_config(config.data.data_dir)
    builder = pipeline.prepare(musicnn)
    assert builder.builder_config.name != paper_builder.builder_config.name
    ex = next(pipeline.load_split(musicnn, "train", shuffle=False).as_numpy_iterator())
    assert ex["mel"].shape[1:] == (64, MUSICNN_FRONTEND.n_mels)
    paper = next(pipeline.load_split(config, "train", shuffle=False).as_numpy_iterator())
    assert paper["mel"].shape[1:] == (config.data.window_frames, config.data.n_mels)  # still there


@pytest.fixture(scope="module")
def musicnn_runs(prepared_tiny, pretrained_cache, tmp_path_factory):
    """The tiny corpus through musicnn_lstm, frozen and fine-tuned: {kind: (config, workdir, metrics)}."""
    config, _ = prepared_tiny
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXTAG_CACHE", pretrained_cache)
        for kind, freeze in [("frozen", True), ("finetuned", False)]:
            run_config = tiny_musicnn_config(config.data.data_dir, **{"model.freeze_trunk": freeze,
                                                                       "train.trunk_learning_rate": 1e-3})
            workdir = str(tmp_path_factory.mktemp(kind))
            runs[kind] = (run_config, workdir, train_and_evaluate(run_config, workdir))
    return runs


def _published(pretrained_cache):
    from jaxtag.pretrained import load_pretrained
    return load_pretrained("musicnn-msd", pretrained_cache)[0]


def _max_difference(trunk, published, collection):
    mine = trunk[collection]["trunk"]["musicnn"]
    return max(float(np.max(np.abs(np.asarray(mine[layer][k]) - published[collection][layer][k])))
               for layer in mine for k in mine[layer])


@pytest.mark.slow
def test_frozen_trunk_keeps_the_published_weights_and_the_head_learns(musicnn_runs, pretrained_cache):
    config, workdir, metrics = musicnn_runs["frozen"]
    variables, meta = checkpoints.restore_for_inference(workdir, "latest")
    published = _published(pretrained_cache)
    assert _max_difference(variables, published, "params") == 0.0
    assert _max_difference(variables, published, "batch_stats") == 0.0
    assert meta["model"] == "musicnn_lstm" and meta["config"]["model"]["pretrained"] == "musicnn-msd"
    assert meta["frontend"]["n_mels"] == 96 and meta["frontend"]["sample_rate"] == 16000
    assert len(metrics["tags"]) == 18 and np.isfinite(metrics["mean_maa"])
    # The tagger needs nothing but the checkpoint: the trunk's weights are in it.
    tagger = Tagger.from_workdir(workdir)
    taggram = tagger.tag(write_tone(pathlib.Path(workdir) / "tone.wav", 5.0, sr=22050))
    assert taggram.scores.shape[1] == 18 and tagger.frontend.sample_rate == 16000
    assert np.isfinite(taggram.scores).all()


@pytest.mark.slow
def test_finetuning_moves_the_trunk_but_not_its_batch_norm_statistics(musicnn_runs, pretrained_cache):
    _, workdir, _ = musicnn_runs["finetuned"]
    variables, _ = checkpoints.restore_for_inference(workdir, "latest")
    published = _published(pretrained_cache)
    assert _max_difference(variables, published, "params") > 0
    assert _max_difference(variables, published, "batch_stats") == 0.0
    mine = variables["params"]["trunk"]["musicnn"]
    # Every front-end conv trains (their kernel gradients are jaxtag's own, see single_channel_conv);
    # the input batch norm's scale and shift stay the published ones.
    for conv in ("timbral_7x38", "timbral_7x67", "temporal_128", "temporal_64", "temporal_32"):
        assert np.max(np.abs(np.asarray(mine[conv]["kernel"]) - published["params"][conv]["kernel"])) > 0, conv
    for name in ("scale", "bias"):
        np.testing.assert_array_equal(mine["input_bn"][name], published["params"]["input_bn"][name])


@pytest.mark.slow   # 8 s (the fast tier's budget)
def test_optimizer_freezes_or_slows_only_the_musicnn_weights(data_dir, pretrained_cache, monkeypatch):
    import optax
    from jaxtag.models import create_model
    from jaxtag.training import steps
    monkeypatch.setenv("JAXTAG_CACHE", pretrained_cache)
    config = tiny_musicnn_config(data_dir, **{"model.freeze_trunk": False, "train.trunk_learning_rate": 1e-6,
                                              "train.learning_rate": 1e-2})
    model = create_model(config.model, 18)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    grads = jax.tree.map(np.ones_like, state.params)
    updates, _ = state.tx.update(grads, state.opt_state, state.params)
    # Adam's first step is -learning_rate * sign(gradient): each part at its own rate.
    np.testing.assert_allclose(updates["trunk"]["musicnn"]["backend_dense"]["kernel"], -1e-6, rtol=1e-3)
    np.testing.assert_allclose(updates["trunk"]["dense_0"]["kernel"], -1e-2, rtol=1e-3)
    np.testing.assert_allclose(updates["out"]["bias"], -1e-2, rtol=1e-3)
    frozen = tiny_musicnn_config(data_dir)
    state = steps.create_train_state(frozen, create_model(frozen.model, 18), jax.random.PRNGKey(0))
    updates, _ = state.tx.update(grads, state.opt_state, state.params)
    assert not np.any(updates["trunk"]["musicnn"]["backend_dense"]["kernel"])
    assert isinstance(state.tx, optax.GradientTransformation)


OWN_TAGS = ("joy", "gloom", "drive (fast)", "hush")


def _own_rows(i):
    # Alternating segments with made-up tags; every tag is on somewhere in every track.
    return [(0.0, 2.0, {"joy": 1.0, "hush": float(i % 2)}), (2.0, 4.0, {"gloom": 1.0, "drive (fast)": 1.0}),
            (4.0, 6.0, {"joy": 1.0, "drive (fast)": float(i % 2 == 0), "hush": 1.0})]


@pytest.mark.slow   # (prepare, train and tag end to end: 15 s; the fast tier measured 4:03 with it)
def test_own_labels_train_end_to_end_with_their_own_tag_names(tmp_path):
    root = make_corpus(tmp_path / "corpus", {f"mine_{i}": (6.0, _own_rows(i)) for i in range(6)}, tags=OWN_TAGS)
    config = tiny_config(str(tmp_path / "prepared"), **{"data.root": root, "data.tags": "all", "train.num_epochs": 1,
                                                         "model.name": "cnn"})
    workdir = str(tmp_path / "run")
    metrics = train_and_evaluate(config, workdir)
    assert metrics["tags"] == list(OWN_TAGS) and metrics["categories"] == {}
    assert set(metrics["maa"]) == set(OWN_TAGS)
    taggram = Tagger.from_workdir(workdir).tag(os.path.join(root, "CAL500_32kps", "mine_0.wav"))
    assert taggram.tags == list(OWN_TAGS)
    # A subset by name, from the corpus's own vocabulary; CAL500exp names are unknown there.
    config = tiny_config(str(tmp_path / "prepared"), **{"data.root": root, "data.tags": "gloom,hush"})
    assert pipeline.prepare(config).builder_config.settings.tags == ("gloom", "hush")
    from jaxtag.errors import ConfigError
    with pytest.raises(ConfigError, match=r"unknown tag\(s\) \['Emotion-Sad'\].*the corpus's tags \(joy, gloom"):
        pipeline.prepare(tiny_config(str(tmp_path / "prepared"), **{"data.root": root, "data.tags": "Emotion-Sad"}))
    with pytest.raises(ConfigError, match="no CAL500exp 'emotion' tags"):
        pipeline.prepare(tiny_config(str(tmp_path / "prepared"), **{"data.root": root, "data.tags": "emotion"}))


def test_a_label_file_with_other_columns_is_named(tmp_path):
    root = make_corpus(tmp_path / "corpus", {f"mine_{i}": (6.0, _own_rows(i)) for i in range(4)}, tags=OWN_TAGS)
    odd = os.path.join(root, "SegLabelHard", "SegLabelHard", "mine_2.csv")
    write_csv(odd, _own_rows(2), tags=("joy", "gloom", "drive (fast)", "calm"))
    config = tiny_config(str(tmp_path / "prepared"), **{"data.root": root, "data.tags": "all"})
    with pytest.raises(DataError, match=r"mine_2\.csv: its tag columns differ .*missing \['hush'\], extra \['calm'\]"):
        pipeline.prepare(config)
    # Skipping bad tracks: the odd file is skipped, the others (the common header) are prepared.
    builder = pipeline.prepare(tiny_config(str(tmp_path / "prepared"), **{
        "data.root": root, "data.tags": "all", "data.skip_bad_tracks": True,
        "data.split_fractions": (0.34, 0.33, 0.33)}))
    assert builder.builder_config.settings.tags == OWN_TAGS
    assert sum(builder.info.splits[s].num_examples for s in ("train", "validation", "test")) == 3


@pytest.mark.slow   # (musicnn compiled twice: 11 s; the fast tier measured 3:54 with it)
def test_the_musicnn_trunk_gives_its_penultimate_or_pooled_features(data_dir):
    """The trunk's features before its dense layer: musicnn's own 200-d penultimate layer or its
    1506-d pooled map, computed from the compressed window as the tagger's musicnn does."""
    from jaxtag.models import create_model
    from jaxtag.models.musicnn import Musicnn, compress
    rng = np.random.default_rng(0)
    mel = rng.uniform(size=(1, 3, 64, 96)).astype(np.float32) ** 4
    # On CPU the windows go through musicnn one at a time where no gradient flows into it (frozen,
    # or a fine-tuned run tagging): the same features as the whole batch at once.
    for layer, width, freeze in [("penultimate", 200, True), ("pooled", 1506, True), ("penultimate", 200, False)]:
        model = create_model(tiny_musicnn_config(data_dir, **{"model.musicnn_layer": layer,
                                                              "model.freeze_trunk": freeze}).model, 18)
        assert model.cpu_fast == (jax.default_backend() == "cpu")
        variables = model.init({"params": jax.random.PRNGKey(0), "lstm_state": jax.random.PRNGKey(0)}, mel,
                               np.ones((1, 3), bool))
        trunk = {c: v["trunk"] for c, v in variables.items()}
        assert trunk["params"]["dense_0"]["kernel"].shape == (width, 16)
        net = {c: v["musicnn"] for c, v in trunk.items()}
        expected = Musicnn().apply(net, compress(mel[0]), method="pooled" if layer == "pooled" else "features")
        dense = trunk["params"]["dense_0"]
        got = model.apply(variables, mel, np.ones((1, 3), bool), method=model.encode)[0]
        np.testing.assert_allclose(got, np.maximum(expected @ dense["kernel"] + dense["bias"], 0), rtol=1e-4,
                                   atol=1e-5)
