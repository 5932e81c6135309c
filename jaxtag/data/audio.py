"""Load any audio file as a mono float32 waveform at a given sample rate.

soundfile (libsndfile >= 1.1) decodes WAV, FLAC, OGG/Vorbis, Opus and MP3 without ffmpeg.
Every failure becomes a DataError naming the file and the problem.
"""
from __future__ import annotations

import os

import numpy as np

from jaxtag.errors import DataError

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".oga", ".aiff", ".aif")


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[n] or [n, channels] -> [n], averaging the channels."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return y.astype(np.float32, copy=False)
    import librosa  # imported lazily: librosa's import is slow.
    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def prepare_waveform(samples: np.ndarray, sr: int, target_sr: int,
                     source: str | os.PathLike | None = None) -> np.ndarray:
    """Downmix, check and resample a waveform already in memory."""
    y = to_mono(samples)
    if y.size == 0:
        raise DataError(source, "the audio has no samples")
    if not np.all(np.isfinite(y)):
        raise DataError(source, "the audio contains NaN or infinite samples")
    if sr <= 0:
        raise DataError(source, f"invalid sample rate {sr}")
    return resample(y, int(sr), int(target_sr))


def load_audio(path: str | os.PathLike, target_sr: int) -> np.ndarray:
    """Read `path`, downmix to mono and resample to `target_sr`. Returns float32 [n]."""
    import soundfile as sf
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "audio file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, "audio file is empty (0 bytes)")
    try:
        samples, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports corrupt/unknown formats as various errors.
        raise DataError(path, f"cannot decode audio ({type(e).__name__}: {e})") from None
    return prepare_waveform(samples, sr, target_sr, source=path)
