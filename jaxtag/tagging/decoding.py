"""The decoding stage of library tagging, run in worker processes ahead of the model: a file is
decoded, downmixed and resampled block by block (jaxtag.data.audio.AudioStream), turned into mel
frames block by block (jaxtag.data.features.StreamingMel), and the frames are written to a
temporary file that the model reads window by window. Memory does not grow with the file's length.

Workers import numpy, soundfile, soxr and librosa only (not JAX), and ignore Ctrl-C: the main
process stops them.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import numpy as np

from jaxtag.data.audio import AudioStream, check_audio_file
from jaxtag.files import sha256_file
from jaxtag.data.features import FrontendSettings, StreamingMel
from jaxtag.tagging.taggram import reduce_envelope

ENVELOPE_BINS = 2000   # (min, max) pairs of the waveform for the taggram picture
ENVELOPE_RATE = 50     # pairs per second kept while streaming, reduced to ENVELOPE_BINS at the end


@dataclasses.dataclass
class DecodedFile:
    """A decoded file: its mel frames are in `frames_path` (raw float32 [n_frames, n_mels])."""
    path: str
    frames_path: str
    n_frames: int
    duration: float                 # seconds of audio decoded
    envelope: np.ndarray            # [bins, 2] (min, max)
    warnings: list[str]
    stamp: dict                     # file_stamp: {"size", "mtime_ns", "content"} as it was read
    decode_seconds: float           # decoding and resampling
    feature_seconds: float          # mel frames
    worker_peak_rss_mb: float = 0.0  # the worker process's peak memory so far


@dataclasses.dataclass
class DecodeFailure:
    path: str
    problem: str


@dataclasses.dataclass
class Unchanged:
    """A file whose size or mtime changed holds the same audio as when it was tagged."""
    path: str
    stamp: dict


def check_then_decode(decode, expected_content: str | frozenset, path: str, frontend: dict, frames_path: str,
                      mel_basis: np.ndarray | None = None):
    """Worker: Unchanged when the file's audio fingerprint is still `expected_content` (it was
    only retagged, touched or copied: nothing to decode), or one of them (a set: audio the library
    has analysed, found again), else decode(path, ...)."""
    try:
        stamp = file_stamp(path)
    except Exception:  # noqa: BLE001 - gone or unreadable: decoding says so
        stamp = None
    expected = {expected_content} if isinstance(expected_content, str) else expected_content
    if stamp is not None and stamp["content"] in expected:
        return Unchanged(path, stamp)
    return decode(path, frontend, frames_path, mel_basis)


def init_worker() -> None:
    """Worker initializer: Ctrl-C goes to the main process, which shuts the workers down; on
    Linux a worker ends with the main process, even when that is killed (no orphan decoders); and
    numpy's BLAS runs on this worker's own thread (see below)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    # The mel projection is a small matmul per block; OpenBLAS would run it on one thread per core
    # whose waiting spins: a 60-minute file took 9.9 CPU-s to decode instead of 5.0, taken from
    # the model's threads on the same cores.
    import threadpoolctl
    threadpoolctl.threadpool_limits(limits=1)


def worker_started() -> int:
    """The first task of a worker pool: that it runs tells a worker that died while decoding a
    file from one that could not start at all."""
    return os.getpid()


def content_fingerprint(path: str) -> str:
    """What says a file holds the same audio on a rerun: the sha256 of its audio stream without
    its tags where jaxtag can walk its format (so tags written by --write_tags, a tag editor or a
    player do not count as a change), else of the whole file."""
    from jaxtag.tagging.fingerprint import audio_fingerprint
    audio = audio_fingerprint(path)
    if audio is not None:
        return f"audio:{audio}"
    return f"file:{sha256_file(path)}"


def file_stamp(path: str) -> dict:
    """size, mtime and content fingerprint of a file, as it is about to be read."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "content": content_fingerprint(path)}


class _Envelope:
    """(min, max) of the waveform over stretches of 1/ENVELOPE_RATE s, reduced at the end."""

    def __init__(self, sample_rate: int):
        self.step = max(1, sample_rate // ENVELOPE_RATE)
        self.pairs = []
        self.rest = np.zeros(0, np.float32)

    def add(self, y: np.ndarray) -> None:
        y = np.concatenate([self.rest, y])
        whole = len(y) // self.step * self.step
        if whole:
            blocks = y[:whole].reshape(-1, self.step)
            self.pairs.append(np.stack([blocks.min(1), blocks.max(1)], axis=1))
        self.rest = y[whole:]

    def result(self) -> np.ndarray:
        if len(self.rest):
            self.pairs.append(np.array([[self.rest.min(), self.rest.max()]], np.float32))
        pairs = np.concatenate(self.pairs) if self.pairs else np.zeros((1, 2), np.float32)
        return reduce_envelope(pairs[:, 0], pairs[:, 1], ENVELOPE_BINS)


def decode_file(path: str, frontend: dict, frames_path: str, mel_basis: np.ndarray | None = None
                ) -> DecodedFile | DecodeFailure:
    """Worker: decode `path` into mel frames written to `frames_path` as they are made (the main
    process reads them while this goes on). Never raises: a file that cannot be decoded is a
    DecodeFailure saying why (and its frames file is removed). mel_basis: the frontend's
    (jaxtag.data.features.mel_basis), so that the worker need not import librosa."""
    from jaxtag.errors import problem_of
    try:
        return _decode(path, FrontendSettings(**frontend), frames_path, mel_basis)
    except Exception as e:  # noqa: BLE001 - reported for this file; the others go on
        if os.path.exists(frames_path):
            os.remove(frames_path)
        return DecodeFailure(path, problem_of(e))


def _decode(path: str, settings: FrontendSettings, frames_path: str, mel_basis: np.ndarray | None) -> DecodedFile:
    check_audio_file(path)
    stamp = file_stamp(path)
    stream = AudioStream(path, settings.sample_rate)
    mel = StreamingMel(settings, mel_basis)
    envelope = _Envelope(settings.sample_rate)
    decode_seconds = feature_seconds = 0.0
    with open(frames_path, "wb") as out:
        blocks = iter(stream)
        while True:
            start = time.perf_counter()
            y = next(blocks, None)
            decode_seconds += time.perf_counter() - start
            start = time.perf_counter()
            frames = mel.finish() if y is None else mel.push(y)
            out.write(frames.tobytes())
            out.flush()  # visible to the model as they come
            if y is not None:
                envelope.add(y)
            feature_seconds += time.perf_counter() - start
            if y is None:
                break
    warnings = list(stream.warnings)
    window_seconds = settings.window_frames * settings.seconds_per_frame
    if mel.frames < settings.window_frames:
        warnings.append(f"shorter than one window ({stream.seconds:.2f} s < {window_seconds:.2f} s): "
                        "padded with silence to one window")
    return DecodedFile(path=path, frames_path=frames_path, n_frames=mel.frames,
                       duration=mel.samples / settings.sample_rate, envelope=envelope.result(), warnings=warnings,
                       stamp=stamp, decode_seconds=decode_seconds, feature_seconds=feature_seconds,
                       worker_peak_rss_mb=peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux: VmHWM, which starts afresh at exec, unlike
    getrusage's maxrss, which a spawned worker inherits from its parent's fork), in MB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_frames(frames_path: str, n_mels: int, first: int, count: int) -> np.ndarray:
    """Mel frames [first, first + count) of a frames file (fewer at its end), read from disk."""
    with open(frames_path, "rb") as f:
        f.seek(first * n_mels * 4)
        data = np.fromfile(f, np.float32, max(0, count) * n_mels)
    return data[:len(data) // n_mels * n_mels].reshape(-1, n_mels)
