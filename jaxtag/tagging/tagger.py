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
from jaxtag.tagging import decisions, sections, vocabulary
from jaxtag.tagging import precision as precision_lib
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

    def __init__(self, variables, meta: dict, chunk_windows: int = DEFAULT_CHUNK_WINDOWS, precision: str = "float32"):
        self.meta = meta
        self.tags = list(meta["tags"])
        self.frontend = FrontendSettings(**meta["frontend"])
        self.policy = default_policy(meta)
        self.sectioning = sections.DEFAULT   # how its taggrams are cut into sections (from the embeddings)
        self.variables = variables
        self._fingerprint = None
        self.spec: dict = {}   # how to make this tagger again (Tagger.of_spec): a pretrained name or a workdir
        self.chunk_windows = int(chunk_windows)
        # "float32" (the default) or "bfloat16" ("auto" chosen here, once: jaxtag.tagging.precision);
        # part of the fingerprint.
        self.precision = precision_lib.resolve(precision, pretrained=bool(meta.get("pretrained")))
        self._reduced = None   # the encode stage in bfloat16 on OpenVINO, where that runs it
        if self.precision != "float32" and precision_lib.bfloat16_engine() == "openvino":
            from jaxtag.models.musicnn_openvino import OpenVinoEncoder
            self._reduced = OpenVinoEncoder({c: tree["musicnn"] for c, tree in variables.items()}, self.precision)
        if meta.get("pretrained"):
            self.config = None
            # bfloat16 elsewhere: XLA's, the front-end convolutions in bf16 as OpenVINO's.
            frontend_dtype = jnp.bfloat16 if self.precision == "bfloat16" and self._reduced is None else jnp.float32
            self.model = MusicnnTagger(num_tags=len(self.tags), cpu_fast=uses_cpu_fast_path("auto"),
                                       frontend_dtype=frontend_dtype)
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
        tagger.spec = {"workdir": os.path.abspath(workdir), "checkpoint": str(checkpoint), "precision": tagger.precision}
        return tagger

    @classmethod
    def pretrained(cls, name: str = "musicnn", hop_seconds: float | None = None, cache_dir=None,
                   **kwargs) -> "Tagger":
        """A published model: "musicnn-msd" (50 Last.fm tags, moods among them), "musicnn-mtt"
        (50 MagnaTagATune tags) or "musicnn" (both in one vocabulary: CombinedTagger); weights
        fetched and converted on first use (jaxtag.pretrained). Windows are musicnn's 3-s patches
        (187 frames); hop_seconds=None puts them end to end, starting at frames 0, 187, 374, ...
        as musicnn's own patches do."""
        from jaxtag.pretrained import load_pretrained
        if name in COMBINED:
            return CombinedTagger.pretrained(name, hop_seconds=hop_seconds, cache_dir=cache_dir, **kwargs)
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
        tagger.spec = {"pretrained": name, "hop_seconds": hop_seconds, "precision": tagger.precision}
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
        if self._reduced is not None:   # (OpenVINO takes any number of windows)
            return self._reduced(windows)
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
        """The tagger a `spec` (Tagger.spec) names, in its precision (a spec without one: float32,
        as every tagger was before precisions; never "auto": a Beam worker follows the driver)."""
        precision = spec.get("precision", "float32")
        if spec.get("pretrained"):
            return cls.pretrained(spec["pretrained"], hop_seconds=spec.get("hop_seconds"), precision=precision)
        if spec.get("workdir"):
            return cls.from_workdir(spec["workdir"], spec.get("checkpoint", "best"), precision=precision)
        raise ValueError("no model named")

    # -- a model's analyses of a file (one per network; a combined model has several) ----------

    @property
    def part_fingerprints(self) -> list[str]:
        """The fingerprints of the networks whose analyses make this model's output: its own."""
        return [self.fingerprint]

    def part_tagger(self, fingerprint: str) -> "Tagger":
        """The tagger that runs the network of that fingerprint (part_fingerprints)."""
        if fingerprint != self.fingerprint:
            raise KeyError(fingerprint)
        return self

    def parts_of(self, features: np.ndarray) -> dict:
        """{network fingerprint: (scores [W, its tags], embeddings [W, E])} of one file's window
        features (encode_windows)."""
        return {self.fingerprint: self.across_windows(features, embeddings=True)}

    def assemble(self, parts: dict) -> tuple[np.ndarray, np.ndarray]:
        """(scores [W, C], embeddings) of this model from its networks' analyses (parts_of)."""
        return parts[self.fingerprint]

    @property
    def fingerprint(self) -> str:
        """Identifies what makes the scores: the weights themselves, the model, its tags and frontend
        (not the decision policy, which works on stored scores), and the precision it runs in (a
        float32 fingerprint is as before precisions, so stored float32 analyses stay valid). Two
        runs of one config that ended at the same epoch differ in their weights, so their
        fingerprints differ."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            meta = {k: self.meta.get(k) for k in ("pretrained", "model", "tags", "frontend", "config", "input_stats")}
            if self.precision != "float32":
                meta["precision"] = self.precision
            digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
            for path, leaf in jax.tree_util.tree_flatten_with_path(self.variables)[0]:
                array = np.asarray(leaf)
                digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint


COMBINED = {"musicnn": vocabulary.MUSICNN_MEMBERS}


class CombinedTagger(Tagger):
    """Several pretrained models in one taggram (Tagger.pretrained("musicnn"): musicnn-msd and
    musicnn-mtt). The members share their input (the same decoding, mel frames and windows; the mel
    frames are computed once); each window runs through every member's network. Scores [W, C] are
    the vocabulary's (jaxtag.tagging.vocabulary: merged tags take the max of their members'),
    embeddings [W, sum of the members'] the members' penultimate layers side by side. Its
    fingerprint is a hash of its members' fingerprints and the merge map, and each member's own
    analysis of a file (parts_of) is kept in the library's store, so a file one member analysed
    before needs only the others (jaxtag.library.run). Its members run in one precision, its own
    (a member's fingerprint includes it, so the combined one does)."""

    def __init__(self, name: str, members: list[Tagger], vocab: vocabulary.Vocabulary,
                 chunk_windows: int = DEFAULT_CHUNK_WINDOWS):
        if len({json.dumps(m.meta["frontend"], sort_keys=True) for m in members}) != 1:
            raise ValueError("the models of a combined model must take the same input (frontend and windows)")
        if len({m.precision for m in members}) != 1:
            raise ValueError("the models of a combined model must run in one precision")
        if [m.model_name for m in members] != list(vocab.models) or \
                [list(m.tags) for m in members] != [list(t) for t in vocab.model_tags]:
            raise ValueError("the vocabulary is not of these models' tags")
        self.members, self.vocabulary = list(members), vocab
        self.meta = {"pretrained": name, "model": name, "tags": list(vocab.tags), "frontend": members[0].meta["frontend"],
                     "members": [m.model_name for m in members], "vocabulary": vocab.to_dict(),
                     "source": members[0].meta.get("source"), "license": members[0].meta.get("license")}
        self.tags = list(vocab.tags)
        self.frontend = members[0].frontend
        self.policy = default_policy(self.meta)
        self.sectioning = sections.DEFAULT
        self.config, self.variables, self.spec = None, None, {}
        self.model_name, self.output_activation = name, "sigmoid"
        self.precision, self._reduced = members[0].precision, None   # (the members run their own encode)
        self.chunk_windows = int(chunk_windows)
        for m in self.members:
            m.chunk_windows = self.chunk_windows
        self._fingerprint = None

    @classmethod
    def pretrained(cls, name: str = "musicnn", hop_seconds: float | None = None, cache_dir=None,
                   precision: str = "float32", **kwargs) -> "CombinedTagger":
        """Its members, each Tagger.pretrained in the same precision ("auto" resolved once, here)."""
        precision = precision_lib.resolve(precision, pretrained=True)
        members = [Tagger.pretrained(m, hop_seconds=hop_seconds, cache_dir=cache_dir, precision=precision, **kwargs)
                   for m in COMBINED[name]]
        tagger = cls(name, members, vocabulary.musicnn_vocabulary({m.model_name: m.tags for m in members}),
                     **kwargs)
        tagger.spec = {"pretrained": name, "hop_seconds": hop_seconds, "precision": tagger.precision}
        return tagger

    @property
    def fingerprint(self) -> str:
        """A hash of the members' fingerprints (their weights, tags, frontend and precision) and the
        merge map."""
        if self._fingerprint is None:
            identity = {"combined": self.model_name, "members": [m.fingerprint for m in self.members],
                        "vocabulary": self.vocabulary.to_dict()}
            self._fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return self._fingerprint

    @property
    def feature_dims(self) -> list[int]:
        """Each member's window features (musicnn's penultimate layer: 200)."""
        from jaxtag.models.musicnn import BACKEND_UNITS
        return [BACKEND_UNITS for _ in self.members]

    def encode_chunk(self, windows: np.ndarray) -> np.ndarray:
        """Every member's window features [n, sum of D], side by side (the same windows in turn)."""
        return np.concatenate([m.encode_chunk(windows) for m in self.members], axis=1)

    @property
    def part_fingerprints(self) -> list[str]:
        return [m.fingerprint for m in self.members]

    def part_tagger(self, fingerprint: str) -> Tagger:
        for m in self.members:
            if m.fingerprint == fingerprint:
                return m
        raise KeyError(fingerprint)

    def parts_of(self, features: np.ndarray) -> dict:
        features = np.asarray(features)
        if features.shape[1] != sum(self.feature_dims):
            raise ValueError(f"window features of {features.shape[1]} values for members of {self.feature_dims}")
        splits = np.cumsum(self.feature_dims)[:-1]
        return {m.fingerprint: m.across_windows(f, embeddings=True)
                for m, f in zip(self.members, np.split(features, splits, axis=1))}

    def assemble(self, parts: dict) -> tuple[np.ndarray, np.ndarray]:
        """The vocabulary's scores (merged) and the members' embeddings side by side."""
        ordered = [parts[fp] for fp in self.part_fingerprints]
        lengths = {len(s) for s, _ in ordered} | {len(e) for _, e in ordered}
        if len(lengths) != 1:
            raise ValueError(f"the members' analyses have different numbers of windows: {sorted(lengths)}")
        return (self.vocabulary.merge([s for s, _ in ordered]),
                np.concatenate([np.asarray(e, np.float32) for _, e in ordered], axis=1))

    def across_windows(self, features: np.ndarray, embeddings: bool = False):
        scores, vectors = self.assemble(self.parts_of(features))
        return scores, (vectors if embeddings else None)


def default_policy(meta: dict) -> decisions.DecisionPolicy:
    """A model's own decisions: a pretrained model's evidence rule (from its shipped reference
    statistics and base rates), a trained run's thresholds (validation-tuned where it tuned them)."""
    tags = list(meta["tags"])
    if meta.get("pretrained"):
        reference = decisions.load_reference(meta["pretrained"])
        if reference is not None and list(reference["tags"]) != tags:
            reference = None   # a combined model of another vocabulary than the shipped one's: not calibrated
        if reference is not None and "base_rate" in reference["statistics"]:
            return decisions.evidence_policy(tags, reference)
        if reference is not None:
            return decisions.calibrated_policy(tags, reference)
        return decisions.threshold_policy(tags, PRETRAINED_THRESHOLD, origin=f"fixed at {PRETRAINED_THRESHOLD}")
    tuned = bool(meta.get("thresholds"))
    return decisions.threshold_policy(
        tags, checkpoints.checkpoint_threshold(meta, len(tags)),
        origin="tuned on the run's validation split" if tuned else "the run's eval.threshold")
