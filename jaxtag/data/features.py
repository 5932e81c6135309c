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


def _hz_to_mel(hz):
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear, log_start, log_step = hz / (200.0 / 3), 15.0, np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, log_start + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    log_start, log_step = 15.0, np.log(6.4) / 27.0
    return np.where(mel >= log_start, 1000.0 * np.exp(log_step * (mel - log_start)), mel * 200.0 / 3)


def mel_basis(settings: FrontendSettings) -> np.ndarray:
    """The mel filterbank [n_mels, 1 + n_fft // 2] that mel_spectrogram applies: librosa's
    filters.mel (Slaney scale and area normalisation, 0 Hz to Nyquist), in numpy, so the library's
    decoding workers and main process need not import librosa (seconds, and ~135 MB a worker).
    tests/test_audio_features.py checks it against librosa."""
    n_mels, sr = settings.n_mels, settings.sample_rate
    fft_freqs = np.fft.rfftfreq(settings.n_fft, 1.0 / sr)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return weights


class StreamingMel:
    """mel_spectrogram of a signal given block by block: push(samples) returns the frames that are
    complete so far, finish() the rest. The frames equal mel_spectrogram of the whole signal
    (librosa's centred frames, zero-padded ends), in memory bounded by the block size.

    It needs numpy only when given the mel basis (mel_basis(settings)): library decoding workers
    get it from the main process, as importing librosa takes them seconds."""

    def __init__(self, settings: FrontendSettings, basis: np.ndarray | None = None):
        self.settings = settings
        self._basis = mel_basis(settings) if basis is None else np.asarray(basis, np.float32)
        n = settings.n_fft
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic Hann, as librosa's
        self._buffer = np.zeros(settings.n_fft // 2, np.float32)  # the centred first frame's zero padding
        self.samples = 0
        self.frames = 0

    def _frames(self, n: int) -> np.ndarray:
        """The next n frames from the buffer, which then keeps what later frames need."""
        s = self.settings
        if n <= 0:
            return np.zeros((0, s.n_mels), np.float32)
        needed = (n - 1) * s.hop_length + s.n_fft
        frames = np.lib.stride_tricks.sliding_window_view(self._buffer[:needed], s.n_fft)[::s.hop_length]
        spectrum = np.abs(np.fft.rfft(frames * self._window, axis=1)) ** 2  # librosa.stft(center=False)
        self._buffer = self._buffer[n * s.hop_length:]
        self.frames += n
        return np.ascontiguousarray(spectrum @ self._basis.T, dtype=np.float32)

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
