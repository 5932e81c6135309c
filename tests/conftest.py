"""Shared fixtures: a tiny prepared synthetic corpus, a CAL500exp-format writer, the real CSVs."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Library tagging's default precision is auto (bfloat16 on a CPU with AMX: jaxtag.tagging.precision):
# the tests (and the CLIs they start, which inherit it) tag in float32 on every machine, fast and the
# same; the tests of auto ask for it.
os.environ["JAXTAG_PRECISION"] = "float32"
# librosa's numba functions cache their machine code on disk. Two pytest-xdist workers compiling
# the same function at once can leave a corrupt cache entry that segfaults every later load
# (seen here): each worker (and the processes it starts) gets a cache folder of its own. Workers
# inherit the controller's environment, so this is set per worker, not only when unset.
import tempfile  # noqa: E402

os.environ["NUMBA_CACHE_DIR"] = os.path.join(
    tempfile.gettempdir(), f"jaxtag_numba_cache_{os.getuid()}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")

from jaxtag.data.tags import CAL500EXP_TAGS  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "cal500exp"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jaxtag_data"))


def tiny_config(data_dir: str, **overrides):
    from configs import tiny
    config = tiny.get_config()
    config.data.data_dir = data_dir
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def prepared_tiny(data_dir):
    """The tiny synthetic corpus, prepared once per session: (config, builder)."""
    from jaxtag.data import pipeline
    config = tiny_config(data_dir)
    return config, pipeline.prepare(config)


@pytest.fixture(scope="session")
def trained(prepared_tiny, tmp_path_factory):
    """A tiny run trained and evaluated once per session: (config, workdir, test metrics).
    Tests must not modify the workdir (copy it first)."""
    from jaxtag.training.loop import train_and_evaluate
    config, _ = prepared_tiny
    workdir = str(tmp_path_factory.mktemp("run"))
    return config, workdir, train_and_evaluate(config, workdir)


@pytest.fixture(scope="session")
def pretrained_cache(tmp_path_factory):
    """musicnn's published weights, fetched from PyPI (pip download) and converted once, into a
    cache shared by the xdist workers of a run (writes are atomic; a bad copy is refetched)."""
    from jaxtag import pretrained
    root = str(tmp_path_factory.getbasetemp().parent / "jaxtag_pretrained_cache")
    pretrained.fetch(root)
    return root


def tiny_musicnn_config(data_dir: str, **overrides):
    """tiny_config with musicnn's frontend and a musicnn_lstm model: short windows (musicnn takes
    any length), small head."""
    from jaxtag.models.musicnn import MUSICNN_FRONTEND as F
    base = {"data.sample_rate": F.sample_rate, "data.n_fft": F.n_fft, "data.hop_length": F.hop_length,
            "data.n_mels": F.n_mels, "data.window_frames": 64, "data.window_hop": 64,
            "model.name": "musicnn_lstm", "model.dense_sizes": (16, 12), "model.lstm_size": 8,
            "model.lstm_initial_state": "zeros", "train.num_epochs": 1}
    return tiny_config(data_dir, **{**base, **overrides})


def write_csv(path, rows, tags=CAL500EXP_TAGS, header=None, newline="\n", bom=False):
    """rows: (start, end, {tag: value}). Writes the release's layout and %.6f formatting."""
    header = header or ["Start_Time", "End_Time", *tags]
    lines = [",".join(header)]
    for start, end, values in rows:
        lines.append(",".join([f"{start:.6f}", f"{end:.6f}"] + [f"{values.get(t, 0.0):.6f}" for t in header[2:]]))
    text = newline.join(lines) + newline
    data = text.encode("utf-8")
    with open(path, "wb") as f:
        f.write((b"\xef\xbb\xbf" if bom else b"") + data)
    return str(path)


def write_tone(path, seconds, sr=22050, freq=440.0, channels=1, fmt=None):
    import soundfile as sf
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    if channels > 1:
        y = np.stack([y * (1 + 0.1 * c) for c in range(channels)], axis=1)
    sf.write(str(path), y, sr, format=fmt)
    return str(path)


def make_corpus(root, tracks: dict, audio_ext="wav", nested=True, tags=CAL500EXP_TAGS):
    """A CAL500exp-layout directory. tracks: name -> (seconds, rows); tags: the CSVs' columns."""
    root = pathlib.Path(root)
    audio = root / "CAL500_32kps"
    labels = root / "SegLabelHard" / ("SegLabelHard" if nested else "")
    audio.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i, (name, (seconds, rows)) in enumerate(tracks.items()):
        write_tone(audio / f"{name}.{audio_ext}", seconds, freq=220.0 * (1 + i % 4))
        write_csv(labels / f"{name}.csv", rows, tags=tags)
    return str(root)
