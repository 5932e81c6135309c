"""`cal500exp`: CAL500exp tracks as precomputed power-mel frames plus long-term window labels.

One example per track. Mel *frames* are stored, not windows: with the paper's hop of half a window,
storing windows would double the disk; the tf.data pipeline cuts windows with one gather
(jaxtag.data.pipeline). Window starts, labels and masks are computed here, by the same functions the
tagger uses (jaxtag.data.labels).

Each builder config is keyed by every setting that changes the prepared data (corpus, frontend,
tags, label rules, split), so changed settings build anew and unchanged ones reuse the cache.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import zipfile
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jaxtag.files import write_atomic
from jaxtag.data import corpus, labels, synthetic
from jaxtag.data.audio import load_audio
from jaxtag.data.features import FrontendSettings, mel_spectrogram
from jaxtag.errors import DataError
from jaxtag.data.tags import CAL500EXP_TAGS, EMOTION_TAGS

MANUAL_INSTRUCTIONS = """\
CAL500's audio cannot be downloaded automatically. Put the CAL500exp release in a directory:
  <root>/CAL500_32kps/<track>.mp3                 (audio; .wav/.flac/.ogg also accepted)
  <root>/SegLabelHard/SegLabelHard/<track>.csv    (or SegLabelHard/<track>.csv)
and pass it as the manual dir (jaxtag: --config.data.root=<root>).
"""


@dataclasses.dataclass(frozen=True)
class PreparedSettings:
    """Every setting that changes the prepared data."""
    frontend: FrontendSettings = FrontendSettings()
    tags: tuple[str, ...] = EMOTION_TAGS
    # The corpus's tag columns when they are not CAL500exp's 67 (a user's own vocabulary); () for CAL500exp.
    vocabulary: tuple[str, ...] = ()
    unannotated: str = "ignore"
    label_set: str = "hard"
    label_dir: str = ""
    audio_dir: str = "CAL500_32kps"
    split_seed: int = 0
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    skip_bad_tracks: bool = False
    # "" for a user's corpus (given as the manual dir); else the synthetic corpus's parameters.
    synthetic: tuple[tuple[str, Any], ...] = ()
    # Identifies the user's corpus (its absolute path), so two corpora never share a cache.
    corpus_id: str = ""

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if not d["vocabulary"]:
            del d["vocabulary"]  # CAL500exp's: the same key as before vocabularies were recorded
        return json.dumps(d, sort_keys=True)

    @property
    def columns(self) -> tuple[str, ...]:
        """The tag columns every label CSV must have."""
        return self.vocabulary or CAL500EXP_TAGS

    @property
    def config_name(self) -> str:
        kind = "synthetic" if self.synthetic else "real"
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:12]
        return f"{kind}_{digest}"


@dataclasses.dataclass(eq=False)
class Cal500expConfig(tfds.core.BuilderConfig):
    settings: PreparedSettings = PreparedSettings()

    @classmethod
    def from_settings(cls, settings: PreparedSettings) -> "Cal500expConfig":
        kind = "jaxtag's synthetic corpus" if settings.synthetic else "a CAL500exp-layout corpus"
        return cls(name=settings.config_name, settings=settings,
                   description=f"{kind}; settings in the dataset's metadata")


SPLIT_FILE = "split.json"

DEFAULT_SYNTHETIC = (("max_seconds", 40.0), ("min_seconds", 24.0), ("num_tracks", 60),
                     ("sample_rate", 22050), ("seed", 0))


class Cal500exp(tfds.core.GeneratorBasedBuilder):
    """CAL500exp segment-labelled tracks as mel frames with long-term window labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    BUILDER_CONFIGS = [
        Cal500expConfig.from_settings(PreparedSettings()),
        Cal500expConfig.from_settings(PreparedSettings(synthetic=DEFAULT_SYNTHETIC)),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        s: PreparedSettings = self.builder_config.settings
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "track": tfds.features.Text(),
                "mel": tfds.features.Tensor(shape=(None, s.frontend.n_mels), dtype=np.float32),
                "window_start": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "labels": tfds.features.Tensor(shape=(None, len(s.tags)), dtype=np.float32),
                "mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
                "n_frames": tfds.features.Scalar(dtype=np.int32),
                "n_annotated_frames": tfds.features.Scalar(dtype=np.int32),
            }),
            homepage="https://github.com/jaxtag/jaxtag",
            metadata=tfds.core.MetadataDict(settings=json.loads(s.to_json())),
        )

    def _corpus_root(self, dl_manager) -> str:
        s: PreparedSettings = self.builder_config.settings
        if not s.synthetic:
            return str(dl_manager.manual_dir)
        params = dict(s.synthetic)
        root = str(dl_manager.download_dir / f"jaxtag_synthetic_{s.config_name}")
        logging.warning("*** Using jaxtag's SYNTHETIC corpus (%d generated tracks) in %s: "
                        "set --config.data.root to train on real CAL500exp data. ***",
                        params["num_tracks"], root)
        synthetic.generate_corpus(root, audio_dir=s.audio_dir, **params)
        return root

    def _split_generators(self, dl_manager):
        s: PreparedSettings = self.builder_config.settings
        root = self._corpus_root(dl_manager)
        tracks = corpus.find_tracks(root, s.audio_dir, s.label_set, s.label_dir, s.skip_bad_tracks)
        if s.skip_bad_tracks:
            # Drop unreadable tracks before splitting, so a split is never left empty by them.
            tracks = [t for t in tracks if _readable(t, s)]
        split = corpus.make_split([t.name for t in tracks], s.split_seed, s.split_fractions)
        # The split file travels with the prepared data (TFDS moves this folder into place when
        # preparation completes), so every later run uses the same tracks.
        with open(os.path.join(str(self.data_dir), SPLIT_FILE), "w", encoding="utf-8") as f:
            json.dump({"seed": s.split_seed, "fractions": list(s.split_fractions), **split}, f, indent=1)
        by_name = {t.name: t for t in tracks}
        return {name: self._generate_examples([by_name[n] for n in split[name]]) for name in corpus.SPLITS}

    # Set by jaxtag.data.pipeline.prepare: examples come from a Beam PTransform, not a thread pool.
    use_beam = False

    def _cache_folder(self) -> str:
        return os.path.join(os.path.dirname(os.path.dirname(str(self.data_dir))), "track_cache",
                            self.builder_config.name)

    def _generate_examples(self, tracks):
        if self.use_beam:
            return _beam_examples(tracks, self.builder_config.settings, self._cache_folder())
        return self._local_examples(tracks)

    def _local_examples(self, tracks):
        s: PreparedSettings = self.builder_config.settings
        cache = TrackCache(self._cache_folder())
        # Decoding, resampling and the FFTs release the GIL, so threads use both cores.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for track, result in zip(tracks, pool.map(lambda t: _try_example(t, s, cache), tracks)):
                if isinstance(result, DataError):
                    if not s.skip_bad_tracks:
                        raise result
                    logging.warning("Skipping bad track %s: %s", track.name, result)
                    continue
                yield track.name, result
        if cache.hits:
            logging.info("Reused %d track(s) finished by an interrupted preparation", cache.hits)


def _beam_examples(tracks, s: PreparedSettings, cache_folder: str):
    """The examples of `tracks` as a Beam PTransform: track list -> reshuffle (spread over the
    workers) -> one example per track, the same function as the local path. A bad track stops the
    pipeline naming it, or (skip_bad_tracks) is skipped, logged and counted."""
    from jaxtag.beam import require_beam
    beam = require_beam()
    skipped = beam.metrics.Metrics.counter("jaxtag", "skipped_bad_tracks")

    def example(track):
        result = _try_example(track, s, TrackCache(cache_folder))
        if isinstance(result, DataError):
            if not s.skip_bad_tracks:
                raise result
            logging.warning("Skipping bad track %s: %s", track.name, result)
            skipped.inc()
            return
        yield track.name, result

    return beam.Create(list(tracks)) | beam.Reshuffle() | beam.FlatMap(example)


def _readable(track: corpus.Track, s: PreparedSettings) -> bool:
    """Cheap check (labels parse, audio header decodes, segments within the header's duration); full
    decoding happens in track_example."""
    import soundfile as sf
    try:
        segments = labels.read_segments(track.label_path, s.tags, s.columns)
        _check_segments_within_audio(track, segments, sf.info(track.audio_path).duration)
        return True
    except DataError as e:
        problem = str(e)
    except Exception as e:  # soundfile raises several types for unreadable files
        problem = f"{track.audio_path}: cannot decode audio ({type(e).__name__}: {e})"
    logging.warning("Skipping bad track %s: %s", track.name, problem)
    return False


def _try_example(track: corpus.Track, s: PreparedSettings, cache: "TrackCache"):
    try:
        example = cache.load(track)
        if example is None:
            example = track_example(track, s)
            cache.store(track, example)
        return example
    except DataError as e:
        return e


class TrackCache:
    """Finished tracks of an interrupted preparation, one .npz each, so a rerun does not redo them.

    Each file is written under a temporary name and renamed when complete, so a kill never leaves
    a partial file under a real name; it records the audio and CSV sizes and mtimes, and is used
    only while they are unchanged. Loaded without pickle. Removed once the dataset is complete.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.hits = 0

    def _path(self, track: corpus.Track) -> str:
        return os.path.join(self.folder, hashlib.sha256(track.name.encode()).hexdigest()[:24] + ".npz")

    @staticmethod
    def _stamp(track: corpus.Track) -> np.ndarray:
        a, l = os.stat(track.audio_path), os.stat(track.label_path)
        return np.array([a.st_size, a.st_mtime_ns, l.st_size, l.st_mtime_ns], np.int64)

    def load(self, track: corpus.Track) -> dict | None:
        path = self._path(track)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["track"]) != track.name or not np.array_equal(z["stamp"], self._stamp(track)):
                    return None
                example = {k: z[k] for k in ("mel", "window_start", "labels", "mask")}
                example.update(track=track.name, n_frames=int(z["n_frames"]),
                               n_annotated_frames=int(z["n_annotated_frames"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # unreadable (e.g. truncated) cache entries are recomputed
        self.hits += 1
        return example

    def store(self, track: corpus.Track, example: dict) -> None:
        os.makedirs(self.folder, exist_ok=True)
        path = self._path(track)
        write_atomic(path, lambda f: np.savez(f, stamp=self._stamp(track),
                                              **{k: np.asarray(v) for k, v in example.items()}))

    def clear(self) -> None:
        import shutil
        shutil.rmtree(self.folder, ignore_errors=True)


# Label segments may end this far past the audio's end (annotation tools round; MP3 decoders differ
# by an encoder delay); further means truncated or mismatched audio.
SEGMENTS_PAST_AUDIO_TOLERANCE_SECONDS = 1.0


def _check_segments_within_audio(track: corpus.Track, segments: labels.Segments, seconds: float) -> None:
    if segments.end.max() > seconds + SEGMENTS_PAST_AUDIO_TOLERANCE_SECONDS:
        raise DataError(track.label_path, f"track {track.name!r}: its segments run to {segments.end.max():.1f} s but "
                                          f"its audio ({os.path.basename(track.audio_path)}) ends at {seconds:.1f} s: "
                                          "truncated or mismatched audio (set data.skip_bad_tracks=True to skip it)")


def track_example(track: corpus.Track, s: PreparedSettings) -> dict:
    """Features and window labels of one track."""
    segments = labels.read_segments(track.label_path, s.tags, s.columns)
    y = load_audio(track.audio_path, s.frontend.sample_rate)
    _check_segments_within_audio(track, segments, len(y) / s.frontend.sample_rate)
    mel = mel_spectrogram(y, s.frontend)
    n_frames = mel.shape[0]
    frame_lab, annotated = labels.frame_labels(segments, n_frames, s.frontend.seconds_per_frame, s.unannotated)
    window, hop = s.frontend.window_frames, s.frontend.window_hop
    starts = labels.window_starts(n_frames, window, hop)
    win_lab, mask = labels.window_labels(frame_lab, annotated, starts, window)
    return {"track": track.name, "mel": labels.pad_frames(mel, window), "window_start": starts,
            "labels": win_lab, "mask": mask, "n_frames": n_frames,
            "n_annotated_frames": int(annotated.sum())}
