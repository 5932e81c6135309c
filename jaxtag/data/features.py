"""Mel spectrogram frontend (paper 3.1): librosa power mel at 20500 Hz, n_fft 2048, hop 1024."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class FrontendSettings:
    """Everything that turns a waveform into model input; saved with checkpoints."""
    sample_rate: int = 20500
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 128
    window_frames: int = 128
    window_hop: int = 64

    @classmethod
    def from_config(cls, data_config: Mapping[str, Any]) -> "FrontendSettings":
        return cls(**{f.name: int(data_config[f.name]) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def seconds_per_frame(self) -> float:
        return self.hop_length / self.sample_rate


def mel_spectrogram(y: np.ndarray, settings: FrontendSettings) -> np.ndarray:
    """Power mel spectrogram, float32 [n_frames, n_mels] (time first).

    librosa centres frames (center=True), so frame t is centred at t * hop / sr seconds and
    n_frames = 1 + len(y) // hop.
    """
    import librosa
    mel = librosa.feature.melspectrogram(
        y=np.asarray(y, dtype=np.float32), sr=settings.sample_rate, n_fft=settings.n_fft,
        hop_length=settings.hop_length, n_mels=settings.n_mels, power=2.0)
    return np.ascontiguousarray(mel.T, dtype=np.float32)
