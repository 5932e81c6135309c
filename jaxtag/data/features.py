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


class StreamingMel:
    """mel_spectrogram of a signal given block by block: push(samples) returns the frames that are
    complete so far, finish() the rest. The frames equal mel_spectrogram of the whole signal
    (librosa's centred frames, zero-padded ends), in memory bounded by the block size."""

    def __init__(self, settings: FrontendSettings):
        import librosa
        self.settings = settings
        self._librosa = librosa
        self._basis = librosa.filters.mel(sr=settings.sample_rate, n_fft=settings.n_fft, n_mels=settings.n_mels)
        self._buffer = np.zeros(settings.n_fft // 2, np.float32)  # the centred first frame's zero padding
        self.samples = 0
        self.frames = 0

    def _frames(self, n: int) -> np.ndarray:
        """The next n frames from the buffer, which then keeps what later frames need."""
        s = self.settings
        if n <= 0:
            return np.zeros((0, s.n_mels), np.float32)
        needed = (n - 1) * s.hop_length + s.n_fft
        spectrum = np.abs(self._librosa.stft(self._buffer[:needed], n_fft=s.n_fft, hop_length=s.hop_length,
                                             center=False)) ** 2
        self._buffer = self._buffer[n * s.hop_length:]
        self.frames += n
        return np.ascontiguousarray((self._basis @ spectrum).T, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        s = self.settings
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, np.float32)])
        self.samples += len(samples)
        return self._frames(0 if len(self._buffer) < s.n_fft else 1 + (len(self._buffer) - s.n_fft) // s.hop_length)

    def finish(self) -> np.ndarray:
        """The last frames: 1 + samples // hop_length in all, as librosa counts them."""
        s = self.settings
        self._buffer = np.concatenate([self._buffer, np.zeros(s.n_fft // 2 + s.n_fft, np.float32)])
        return self._frames(1 + self.samples // s.hop_length - self.frames)
