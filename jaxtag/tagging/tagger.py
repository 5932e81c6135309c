"""Tag any audio second by second with a trained jaxtag model.

    tagger = jaxtag.Tagger.from_workdir("runs/cnn_lstm")
    taggram = tagger.tag("song.mp3")          # or tagger.tag(waveform, sr=44100)

Everything that turns audio into model input (sample rate, mel settings, window length and hop),
the tag names, the model and the threshold are read from the checkpoint, never from the current
config or module globals. Windows come from the same function the training data used
(jaxtag.data.labels.window_starts). Long files are encoded in fixed-size chunks of windows
(bounded memory, one compilation); the cheap across-window stage (the LSTM) then runs over the
whole file, padded to a length bucket, so results equal tagging the file in one piece.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtag.data import labels as labels_lib
from jaxtag.data.audio import load_audio, prepare_waveform
from jaxtag.data.buckets import bucket_length
from jaxtag.data.features import FrontendSettings, mel_spectrogram
from jaxtag.models import create_model, run_keys, to_probabilities, uses_cpu_fast_path
from jaxtag.models.musicnn import MUSICNN_FRONTEND, MusicnnTagger
from jaxtag.tagging import decisions, sections
from jaxtag.tagging.taggram import Taggram, peak_envelope
from jaxtag.training import checkpoints

DEFAULT_CHUNK_WINDOWS = 32
# Length buckets of the across-window stage for pretrained models (trained runs use their own).
PRETRAINED_BUCKETS = (8, 16, 32, 64, 128, 256, 512)
# A pretrained model's fixed threshold where it has no reference statistics (jaxtag.tagging.decisions).
PRETRAINED_THRESHOLD = 0.5


class Tagger:
    """Tags audio with a trained run (`from_workdir`) or a published model (`pretrained`).

    Two jitted stages: `encode` turns windows into features, each window alone, in fixed chunks
    of `chunk_windows` (bounded memory, one compilation); `across_windows` runs across a file's windows
    (the LSTM of cnn_lstm), padded to a length bucket.
    """

    def __init__(self, variables, meta: dict, chunk_windows: int = DEFAULT_CHUNK_WINDOWS):
        self.meta = meta
        self.tags = list(meta["tags"])
        self.frontend = FrontendSettings(**meta["frontend"])
        self.policy = default_policy(meta)
        self.sectioning = sections.DEFAULT   # how its taggrams are cut into sections (from the embeddings)
        self.variables = variables
        self._fingerprint = None
        self.spec: dict = {}   # how to make this tagger again (Tagger.of_spec): a pretrained name or a workdir
        self.chunk_windows = int(chunk_windows)
        if meta.get("pretrained"):
            self.config = None
            self.model = MusicnnTagger(num_tags=len(self.tags), cpu_fast=uses_cpu_fast_path("auto"))
            self.model_name, self.output_activation, self.buckets, seed = (
                meta["pretrained"], "sigmoid", PRETRAINED_BUCKETS, 0)
        else:
            self.config = ml_collections.ConfigDict(meta["config"])
            self.model = create_model(self.config.model, len(self.tags), input_stats=meta.get("input_stats"))
            self.model_name, self.output_activation = self.config.model.name, self.config.model.output_activation
            self.buckets, seed = tuple(self.config.train.length_buckets), self.config.seed
        # The same fixed key as evaluation, so a random LSTM initial state is reproducible.
        self._key = run_keys(seed).inference
        model = self.model
        self._encode = jax.jit(lambda v, mel, present: model.apply(v, mel, present, method=model.encode))
        self._across = jax.jit(lambda v, h, present, key: model.apply(
            v, h, present, method=model.across_windows, rngs={"lstm_state": key}))
        self._penultimate = jax.jit(lambda v, h, present, key: model.apply(
            v, h, present, method=model.penultimate, rngs={"lstm_state": key}))

    @classmethod
    def from_workdir(cls, workdir: str, checkpoint: str = "best", **kwargs) -> "Tagger":
        """Restore the `best` or `latest` checkpoint (or a step number) of a training workdir."""
        variables, meta = checkpoints.restore_for_inference(workdir, checkpoint)
        tagger = cls(variables, meta, **kwargs)
        tagger.spec = {"workdir": os.path.abspath(workdir), "checkpoint": str(checkpoint)}
        return tagger

    @classmethod
    def pretrained(cls, name: str = "musicnn-msd", hop_seconds: float | None = None, cache_dir=None,
                   **kwargs) -> "Tagger":
        """A published model: "musicnn-msd" (50 Last.fm tags, moods among them) or "musicnn-mtt"
        (50 MagnaTagATune tags); weights fetched and converted on first use (jaxtag.pretrained).
        Windows are musicnn's 3-s patches (187 frames); hop_seconds=None puts them end to end,
        starting at frames 0, 187, 374, ... as musicnn's own patches do."""
        from jaxtag.pretrained import load_pretrained
        variables, info = load_pretrained(name, cache_dir)
        frontend = MUSICNN_FRONTEND
        if hop_seconds is not None:
            hop = int(round(hop_seconds * frontend.sample_rate / frontend.hop_length))
            if not 1 <= hop:
                raise ValueError(f"hop_seconds must be at least one frame ({frontend.seconds_per_frame:.4f} s), "
                                 f"got {hop_seconds}")
            frontend = dataclasses.replace(frontend, window_hop=hop)
        meta = {"pretrained": name, "model": name, "tags": info["tags"], "frontend": frontend.to_dict(),
                "source": info["source"], "license": info["license"]}
        variables = {collection: {"musicnn": tree} for collection, tree in variables.items()}
        tagger = cls(variables, meta, **kwargs)
        tagger.spec = {"pretrained": name, "hop_seconds": hop_seconds}
        return tagger

    def load(self, audio, sr: int | None = None) -> tuple[np.ndarray, str]:
        """(waveform at the model's sample rate, source name) of a path or a waveform."""
        f = self.frontend
        if isinstance(audio, (str, os.PathLike)):
            y = load_audio(audio, f.sample_rate)
            source = os.fspath(audio)
        else:
            if sr is None:
                raise ValueError("pass sr= with a waveform")
            samples = np.asarray(audio, np.float32)
            if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
                samples = samples.T  # accept [channels, n] as well as [n, channels]
            y = prepare_waveform(samples, sr, f.sample_rate, source="<waveform>")
            source = "<waveform>"
        return y, source

    def tag(self, audio, sr: int | None = None) -> Taggram:
        """Taggram of a file path or a waveform ([n] or [n, channels]; give its sr)."""
        y, source = self.load(audio, sr)
        mel = mel_spectrogram(y, self.frontend)
        scores, embeddings = self.across_windows(self.encode_windows(self.windows(mel)), embeddings=True)
        taggram = self.taggram(source, len(y) / self.frontend.sample_rate, mel.shape[0], scores, peak_envelope(y),
                               embeddings)
        return dataclasses.replace(taggram, tempo=self.tempo(mel))

    def tempo(self, mel=None, read_frames=None, n_frames: int | None = None):
        """The tempo of a file (jaxtag.tagging.tempo) from its mel frames [frames, n_mels], or read
        with read_frames(first, count) from n_frames."""
        from jaxtag.tagging import tempo
        f = self.frontend
        if mel is not None:
            read_frames, n_frames = (lambda first, count: mel[first:first + count]), len(mel)
        return tempo.estimate(read_frames, n_frames, f.sample_rate, f.hop_length, self.window_starts(n_frames),
                              f.window_frames)

    def window_starts(self, n_frames: int) -> np.ndarray:
        """First frame of each window of a file of n_frames mel frames (as the training data's)."""
        return labels_lib.window_starts(n_frames, self.frontend.window_frames, self.frontend.window_hop)

    def windows(self, mel: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        """The windows [W, window_frames, n_mels] of a mel spectrogram [frames, n_mels] (padded
        when shorter than a window); `starts` (default: all of them) relative to mel's first frame."""
        starts = self.window_starts(mel.shape[0]) if starts is None else starts
        return labels_lib.cut_windows(mel, starts, self.frontend.window_frames)

    def encode_chunk(self, windows: np.ndarray) -> np.ndarray:
        """Window features [n, D] of at most chunk_windows windows [n, frames, n_mels], run as one
        fixed-size chunk (one compilation whatever n; windows of several files may share it)."""
        n = len(windows)
        chunk = np.zeros((self.chunk_windows,) + windows.shape[1:], np.float32)
        chunk[:n] = windows
        present = (np.arange(self.chunk_windows) < n)[None]
        return np.asarray(self._encode(self.variables, chunk[None], present))[0, :n]

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """Window features [W, D], in chunks of chunk_windows (bounded memory)."""
        return np.concatenate([self.encode_chunk(windows[c:c + self.chunk_windows])
                               for c in range(0, len(windows), self.chunk_windows)])

    def across_windows(self, features: np.ndarray, embeddings: bool = False):
        """(probabilities [W, C], embeddings [W, E] or None) of one file's window features: the
        across-window stage (the LSTM of cnn_lstm), padded to a length bucket. The embeddings are
        the input of the output layer (the penultimate layer)."""
        n = len(features)
        length = bucket_length(n, self.buckets)
        padded = np.zeros((1, length, features.shape[1]), features.dtype)
        padded[0, :n] = features
        present = jnp.asarray((np.arange(length) < n)[None])
        out = np.asarray(self._across(self.variables, jnp.asarray(padded), present, self._key))
        scores = to_probabilities(out[0, :n], self.output_activation).astype(np.float32)
        if not embeddings:
            return scores, None
        hidden = self._penultimate(self.variables, jnp.asarray(padded), present, self._key)
        return scores, np.asarray(hidden, np.float32)[0, :n]

    def taggram(self, source: str, duration: float, n_frames: int, scores: np.ndarray,
                envelope: np.ndarray | None = None, embeddings: np.ndarray | None = None) -> Taggram:
        """The Taggram of a file of n_frames mel frames from its per-window scores (and embeddings:
        its sections)."""
        f = self.frontend
        starts = self.window_starts(n_frames)
        end = np.minimum((starts + f.window_frames) * f.seconds_per_frame, max(duration, 1e-9))
        return Taggram(source=source, duration=float(duration), tags=self.tags, start=starts * f.seconds_per_frame,
                       end=end, scores=scores, policy=self.policy, model=self.model_name, envelope=envelope,
                       embeddings=embeddings, sectioning=self.sectioning)

    @classmethod
    def of_spec(cls, spec: dict) -> "Tagger":
        """The tagger a `spec` (Tagger.spec) names."""
        if spec.get("pretrained"):
            return cls.pretrained(spec["pretrained"], hop_seconds=spec.get("hop_seconds"))
        if spec.get("workdir"):
            return cls.from_workdir(spec["workdir"], spec.get("checkpoint", "best"))
        raise ValueError("no model named")

    @property
    def fingerprint(self) -> str:
        """Identifies what makes the scores: the weights themselves, the model, its tags and frontend
        (not the decision policy, which works on stored scores). Two runs of one config that ended
        at the same epoch differ in their weights, so their fingerprints differ."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            meta = {k: self.meta.get(k) for k in ("pretrained", "model", "tags", "frontend", "config", "input_stats")}
            digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
            for path, leaf in jax.tree_util.tree_flatten_with_path(self.variables)[0]:
                array = np.asarray(leaf)
                digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint


def default_policy(meta: dict) -> decisions.DecisionPolicy:
    """A model's own decisions: a pretrained model's evidence rule (from its shipped reference
    statistics and base rates), a trained run's thresholds (validation-tuned where it tuned them)."""
    tags = list(meta["tags"])
    if meta.get("pretrained"):
        reference = decisions.load_reference(meta["pretrained"])
        if reference is not None and "base_rate" in reference["statistics"]:
            return decisions.evidence_policy(tags, reference)
        if reference is not None:
            return decisions.calibrated_policy(tags, reference)
        return decisions.threshold_policy(tags, PRETRAINED_THRESHOLD, origin=f"fixed at {PRETRAINED_THRESHOLD}")
    tuned = bool(meta.get("thresholds"))
    return decisions.threshold_policy(
        tags, checkpoints.checkpoint_threshold(meta, len(tags)),
        origin="tuned on the run's validation split" if tuned else "the run's eval.threshold")
