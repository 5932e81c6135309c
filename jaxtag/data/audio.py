"""Load any audio file as a mono float32 waveform at a given sample rate.

soundfile (libsndfile >= 1.1) decodes WAV, FLAC, OGG/Vorbis, Opus and MP3 without ffmpeg.
Every failure becomes a DataError naming the file and the problem.
"""
from __future__ import annotations

import os

import numpy as np

from jaxtag.errors import DataError

# Decoded by libsndfile (through soundfile); and by FFmpeg (through PyAV): AAC in MP4 (iTunes, Apple Music).
SNDFILE_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".oga", ".aiff", ".aif")
PYAV_EXTENSIONS = (".m4a", ".m4b", ".mp4", ".aac")
AUDIO_EXTENSIONS = SNDFILE_EXTENSIONS + PYAV_EXTENSIONS


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[n] or [n, channels] -> [n], averaging the channels: added one after another and divided,
    as librosa's mean over its [channels, n] layout does (the same floats), and about 30 times
    faster than numpy's mean over the short last axis of [n, channels]."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.shape[1] >= 8:  # numpy sums 8 or more pairwise, for librosa too: the same mean
        return samples.mean(axis=1, dtype=np.float32)
    total = samples[:, 0].copy()
    for channel in range(1, samples.shape[1]):
        total += samples[:, channel]
    return total / np.float32(samples.shape[1])


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


def check_audio_file(path: str) -> None:
    """DataError naming the file if it is missing or empty (before a decoder says it less clearly)."""
    if not os.path.isfile(path):
        raise DataError(path, "audio file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, "audio file is empty (0 bytes)")


def load_audio(path: str | os.PathLike, target_sr: int) -> np.ndarray:
    """Read `path`, downmix to mono and resample to `target_sr`. Returns float32 [n]."""
    import soundfile as sf
    path = os.fspath(path)
    check_audio_file(path)
    if os.path.splitext(path)[1].lower() in PYAV_EXTENSIONS:
        return np.concatenate(list(AudioStream(path, target_sr)))
    try:
        samples, sr = sf.read(os.fsencode(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports corrupt/unknown formats as various errors.
        raise DataError(path, f"cannot decode audio ({type(e).__name__}: {e})") from None
    return prepare_waveform(samples, sr, target_sr, source=path)


# ---- Streaming: any file length in bounded memory (library-scale tagging) ----------------------

# A file whose data stop more than this short of its header's promise is reported as truncated.
TRUNCATION_TOLERANCE_SECONDS = 0.5


def _riff_shortfall(path: str) -> tuple[float, float] | None:
    """WAV: (seconds its header promises, seconds its data hold) when the data chunk's declared
    size runs past the end of the file. (libsndfile quietly clamps such a file to its bytes.)"""
    import struct
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = f.read(length)
                byte_rate = struct.unpack("<I", fmt[8:12])[0] if len(fmt) >= 12 else None
                continue
            if name == b"data":
                available = size - f.tell()
                if byte_rate and available < length:
                    return length / byte_rate, available / byte_rate
                return None
            f.seek(length + (length & 1), os.SEEK_CUR)


def _mp3_shortfall(path: str, promised_seconds: float) -> tuple[float, float] | None | bool:
    """MP3 with a Xing/Info header (LAME writes one): (promised, estimated) seconds when the file
    holds fewer stream bytes than the header counts, None when it holds them all. (libsndfile pads
    such a file with silence up to the promised length.) False when no header counts the bytes:
    libsndfile's length is then an estimate from the file's size and first bitrate, which real
    files miss by fractions of a second either way, so it promises nothing."""
    import struct
    with open(path, "rb") as f:
        data = f.read(64 * 1024)
        size = os.fstat(f.fileno()).st_size
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # skip an ID3v2 tag (syncsafe size)
        start = 10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9])
    for tag in (b"Xing", b"Info"):
        at = data.find(tag, start, start + 200)
        if at >= 0 and len(data) >= at + 16:
            flags = struct.unpack(">I", data[at + 4:at + 8])[0]
            if not flags & 2:  # no byte count
                return False
            offset = at + 8 + (4 if flags & 1 else 0)
            stream_bytes = struct.unpack(">I", data[offset:offset + 4])[0]
            available = size - start
            if stream_bytes and available < stream_bytes * 0.99:
                return promised_seconds, promised_seconds * available / stream_bytes
            return None
    return False


class AudioStream:
    """A file's audio as mono float32 blocks at target_sr, decoded, downmixed and resampled a block
    at a time (soxr's streaming resampler, the engine of librosa's default), so memory does not
    grow with the file's length.

    After iterating: `seconds` (decoded), `promised_seconds` (the header's), `warnings` (a
    truncated file: its data stop short of what its header promises)."""

    def __init__(self, path: str | os.PathLike, target_sr: int, block_seconds: float = 10.0):
        self.path = os.fspath(path)
        self.target_sr = int(target_sr)
        self.block_seconds = block_seconds
        self.seconds = 0.0
        self.promised_seconds = 0.0
        self.warnings: list[str] = []

    def __iter__(self):
        path = self.path
        check_audio_file(path)
        extension = os.path.splitext(path)[1].lower()
        opened = _open_pyav(path) if extension in PYAV_EXTENSIONS else _open_sndfile(path)
        with opened as f:
            sr = f.samplerate
            self.promised_seconds = f.frames / sr if sr > 0 else 0.0
            yield from self._blocks(f, sr)
        self._check_length(extension)

    def _blocks(self, f, sr: int):
        resampler = None
        if sr != self.target_sr:
            import soxr
            resampler = soxr.ResampleStream(sr, self.target_sr, 1, dtype="float32", quality="HQ")
        n_in = n_out = 0
        block = max(1, int(self.block_seconds * sr))
        while True:
            try:
                samples = f.read(block, dtype="float32", always_2d=True)
            except Exception as e:
                raise DataError(self.path, f"cannot decode audio after {n_in / sr:.1f} s "
                                           f"({type(e).__name__}: {e})") from None
            y = to_mono(samples)
            if not np.all(np.isfinite(y)):
                raise DataError(self.path, "the audio contains NaN or infinite samples")
            last = len(samples) < block
            n_in += len(y)
            if resampler is not None:
                y = resampler.resample_chunk(y, last=last)
            if last and resampler is not None:
                # librosa.resample's length (its fix_length): ceil(n * ratio) samples in all.
                wanted = int(np.ceil(n_in * (self.target_sr / sr))) - n_out
                y = np.concatenate([y, np.zeros(max(0, wanted - len(y)), np.float32)])[:max(0, wanted)]
            n_out += len(y)
            if len(y):
                yield y.astype(np.float32, copy=False)
            if last:
                break
        if n_in == 0:
            raise DataError(self.path, "the audio has no samples")
        self.seconds = n_in / sr

    def _check_length(self, extension: str) -> None:
        shortfall = None
        if extension == ".wav":
            shortfall = _riff_shortfall(self.path)
        elif extension == ".mp3":
            shortfall = _mp3_shortfall(self.path, self.promised_seconds)
            if shortfall is False:  # no header promises a length (see _mp3_shortfall)
                return
        if shortfall is None and self.promised_seconds - self.seconds > TRUNCATION_TOLERANCE_SECONDS:
            shortfall = (self.promised_seconds, self.seconds)
        if shortfall:
            promised, held = shortfall
            self.warnings.append(f"truncated: its header promises {promised:.1f} s of audio, its data hold "
                                 f"about {held:.1f} s (tagged as decoded)")


def _open_sndfile(path: str):
    import soundfile as sf
    try:
        # As bytes: soundfile encodes a str path strictly, which a name that is not valid UTF-8
        # (held as surrogate escapes) fails.
        return sf.SoundFile(os.fsencode(path))
    except Exception as e:  # libsndfile reports corrupt/unknown formats as various errors
        raise DataError(path, f"cannot decode audio ({type(e).__name__}: {e})") from None


def _open_pyav(path: str) -> "_PyAVReader":
    try:
        import av
    except ImportError:
        raise DataError(path, "decoding this format needs PyAV: pip install av") from None
    try:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not valid UTF-8: FFmpeg reads it through Python
            handle = open(path, "rb")
            return _PyAVReader(av.open(handle), handle)
        return _PyAVReader(av.open(path))
    except Exception as e:  # FFmpeg reports corrupt/unknown files as various errors
        raise DataError(path, f"cannot decode audio ({type(e).__name__}: {e})") from None


class _PyAVReader:
    """The part of soundfile.SoundFile that AudioStream uses (samplerate, frames, read), over
    FFmpeg's decoder: blocks of float32 [n, channels]."""

    def __init__(self, container, handle=None):
        self.container, self.handle = container, handle
        streams = container.streams.audio
        if not streams:
            container.close()
            raise ValueError("no audio stream")
        self.stream = streams[0]
        self.samplerate = int(self.stream.codec_context.sample_rate or 0)
        seconds = (float(self.stream.duration * self.stream.time_base) if self.stream.duration
                   else (container.duration or 0) / 1e6)
        self.frames = int(round(seconds * self.samplerate))
        self._frames = container.decode(self.stream)
        self._pending = np.zeros((0, self.stream.codec_context.channels or 1), np.float32)

    def read(self, n: int, dtype="float32", always_2d=True) -> np.ndarray:
        del dtype, always_2d
        parts, have = [self._pending], len(self._pending)
        while have < n:
            frame = next(self._frames, None)
            if frame is None:
                break
            samples = frame.to_ndarray().astype(np.float32)
            if frame.format.is_planar:
                samples = samples.T                                   # [n, channels]
            else:
                samples = samples.reshape(-1, len(frame.layout.channels))
            if frame.format.name.startswith(("s16", "s32", "u8")):    # integer samples: to [-1, 1]
                samples /= {"s16": 2 ** 15, "s32": 2 ** 31, "u8": 2 ** 7}[frame.format.name[:3].rstrip("p")]
            parts.append(samples)
            have += len(samples)
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._pending = data[n:]
        return data[:n]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.container.close()
        if self.handle is not None:
            self.handle.close()
