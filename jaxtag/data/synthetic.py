"""A deterministic synthetic corpus in the exact CAL500exp on-disk layout.

CAL500's audio cannot be redistributed, so jaxtag ships a generator instead. Each track is a
sequence of 3-10 s segments; each segment draws musical attributes (tempo, loudness, major/minor
mode, brightness, distortion, instrument timbre, drums, bass, voice, atonality) and its tags are
*rules over those attributes* (e.g. Sad = minor and slow, Angry = distorted and loud). So tags are
caused by the audio and change inside a track, and a model can really learn them. As in the real
release, only some segments are annotated, rows are written out of time order, values as %.6f.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from jaxtag.files import write_atomic
from jaxtag.data.tags import CAL500EXP_TAGS

TIMBRES = ("piano", "organ", "synth", "guitar")
VOICES = ("none", "male", "female")


@dataclasses.dataclass(frozen=True)
class SegmentAttributes:
    fast: bool
    loud: bool
    major: bool
    bright: bool
    distorted: bool
    weird: bool
    drums: bool
    bass: bool
    timbre: str
    voice: str


def tags_of(a: SegmentAttributes) -> dict[str, float]:
    """The segment's tags, as rules over its audio attributes. Unlisted tags are 0."""
    slow, quiet = not a.fast, not a.loud
    guitar = a.timbre == "guitar"
    rules = {
        "Emotion-Angry_/_Agressive": a.distorted and a.loud,
        "Emotion-Arousing_/_Awakening": a.fast,
        "Emotion-Bizarre_/_Weird": a.weird,
        "Emotion-Calming_/_Soothing": slow and quiet,
        "Emotion-Carefree_/_Lighthearted": a.major and a.bright,
        "Emotion-Cheerful_/_Festive": a.major and a.fast,
        "Emotion-Emotional_/_Passionate": a.loud and not a.major,
        "Emotion-Exciting_/_Thrilling": a.fast and a.loud,
        "Emotion-Happy": a.major and not a.weird,
        "Emotion-Laid-back_/_Mellow": slow and not a.distorted,
        "Emotion-Light_/_Playful": a.bright and quiet,
        "Emotion-Loving_/_Romantic": a.major and slow,
        "Emotion-Pleasant_/_Comfortable": quiet and not a.distorted,
        "Emotion-Positive_/_Optimistic": a.major and a.drums,
        "Emotion-Powerful_/_Strong": a.loud and a.drums,
        "Emotion-Sad": slow and not a.major,
        "Emotion-Tender_/_Soft": quiet and not a.bright,
        "Emotion-Touching_/_Loving": not a.major and a.voice != "none",
        "Instrument_-_Acoustic_Guitar": guitar and not a.distorted,
        "Instrument_-_Electric_Guitar_(distorted)": guitar and a.distorted,
        "Instrument_-_Bass": a.bass,
        "Instrument_-_Drum_Set": a.drums,
        "Instrument_-_Piano": a.timbre == "piano",
        "Instrument_-_Organ": a.timbre == "organ",
        "Instrument_-_Synthesizer": a.timbre == "synth",
        "Instrument_-_Male_Lead_Vocals": a.voice == "male",
        "Instrument_-_Female_Lead_Vocals": a.voice == "female",
        "Vocals-Low-pitched": a.voice == "male",
        "Vocals-High-pitched": a.voice == "female",
        "Instrument_-_Piano-Solo": a.timbre == "piano" and not (a.drums or a.bass) and a.voice == "none",
    }
    return {t: float(v) for t, v in rules.items()}


def _draw_attributes(rng: np.random.Generator, previous: SegmentAttributes | None) -> SegmentAttributes:
    fresh = SegmentAttributes(
        fast=rng.random() < 0.5, loud=rng.random() < 0.5, major=rng.random() < 0.5,
        bright=rng.random() < 0.5, distorted=rng.random() < 0.3, weird=rng.random() < 0.2,
        drums=rng.random() < 0.5, bass=rng.random() < 0.5,
        timbre=TIMBRES[rng.integers(len(TIMBRES))], voice=VOICES[rng.integers(len(VOICES))])
    if previous is None:
        return fresh
    # Music changes gradually: each attribute changes with probability 1/2 between segments.
    keep = {f.name: rng.random() < 0.5 for f in dataclasses.fields(SegmentAttributes)}
    return SegmentAttributes(**{k: getattr(previous if keep[k] else fresh, k) for k in keep})


def _harmonic_tone(t, freq, n_harmonics, rolloff, inharmonic=0.0):
    out = np.zeros_like(t)
    for h in range(1, n_harmonics + 1):
        partial = h * (1.0 + inharmonic * (h - 1))
        if freq * partial > 9000:  # keep below the Nyquist of every rate we resample to
            break
        out += np.sin(2 * np.pi * freq * partial * t) / h ** rolloff
    return out


def render_segment(a: SegmentAttributes, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Synthesise one segment's audio from its attributes."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    beat = 60.0 / (150.0 if a.fast else 72.0)
    phase = np.mod(t, beat)                      # time since the last beat
    bar = (t // (4 * beat)).astype(int)          # chord changes every 4 beats
    key = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    intervals = np.array((0, 4, 7) if a.major else (0, 3, 7))
    n_harm, rolloff = (10, 0.7) if a.bright else (3, 2.5)
    envelope = {"piano": np.exp(-3.0 * phase), "guitar": np.exp(-6.0 * phase),
                "organ": np.ones(n), "synth": 0.6 + 0.4 * np.exp(-2.0 * phase)}[a.timbre]
    inharmonic = 0.0
    tone = np.zeros(n)
    for b in range(bar.max() + 1):
        sel = bar == b
        root = key * 2 ** (rng.choice([0, 5, 7, 9]) / 12)
        if a.weird:  # atonal clusters with stretched partials instead of triads
            notes = root * 2 ** (rng.uniform(0, 12, size=3) / 12)
            inharmonic = 0.03
        else:
            notes = [root * 2 ** (i / 12) for i in intervals] + [2 * root * 2 ** (intervals[1] / 12)]
        for f in notes:
            if a.timbre == "synth":  # sawtooth-like: all harmonics at 1/h
                tone[sel] += _harmonic_tone(t[sel], f, 2 * n_harm, 1.0 + (rolloff - 0.7), inharmonic)
            else:
                tone[sel] += _harmonic_tone(t[sel], f, n_harm, rolloff, inharmonic)
    tone *= envelope
    if a.distorted:
        tone = np.tanh(4.0 * tone / (np.abs(tone).max() + 1e-9)) * np.abs(tone).max()
    mix = tone / (np.sqrt(np.mean(tone ** 2)) + 1e-9)
    if a.bass:
        mix += 0.8 * np.sqrt(2) * np.sin(2 * np.pi * (key / 2) * t) * np.exp(-1.5 * phase)
    if a.drums:
        kick = np.sin(2 * np.pi * 55.0 * phase) * np.exp(-25.0 * phase)
        off = np.mod(t + beat / 2, beat)
        hat = rng.standard_normal(n) * np.exp(-60.0 * off) * 0.5
        mix += 2.0 * kick + hat
    if a.voice != "none":
        f0 = 130.0 if a.voice == "male" else 330.0
        pitch = f0 * 2 ** (intervals[(np.floor(t / beat).astype(int)) % 3] / 12)
        vib = 1.0 + 0.01 * np.sin(2 * np.pi * 5.5 * t)
        ph = 2 * np.pi * np.cumsum(pitch * vib) / sr
        mix += 0.9 * sum(np.sin(h * ph) / h for h in range(1, 6))
    rms = 0.2 if a.loud else 0.025
    return (mix / (np.sqrt(np.mean(mix ** 2)) + 1e-9) * rms).astype(np.float32)


def track_name(i: int) -> str:
    # Names in CAL500's artist-title style, with the dots, commas and parentheses real names have.
    return f"synth_artist_{i:03d}-song_no.{i}_(take,_{i % 7})"


def generate_corpus(root: str, num_tracks: int, seed: int, min_seconds: float, max_seconds: float,
                    sample_rate: int, audio_dir: str = "CAL500_32kps", annotate_prob: float = 0.65,
                    audio_format: str = "mp3") -> list[str]:
    """Write `num_tracks` tracks in CAL500exp layout under `root`; returns the track names.

    Deterministic in `seed`. Files are written to a temporary name and renamed, so an interrupted
    run leaves no half-written file under a real name.
    """
    import soundfile as sf
    audio_folder = os.path.join(root, audio_dir)
    label_folder = os.path.join(root, "SegLabelHard", "SegLabelHard")
    os.makedirs(audio_folder, exist_ok=True)
    os.makedirs(label_folder, exist_ok=True)
    names = []
    for i in range(num_tracks):
        rng = np.random.default_rng([seed, i])
        name = track_name(i)
        names.append(name)
        audio_path = os.path.join(audio_folder, f"{name}.{audio_format}")
        label_path = os.path.join(label_folder, f"{name}.csv")
        if os.path.exists(audio_path) and os.path.exists(label_path):
            continue
        duration = rng.uniform(min_seconds, max_seconds)
        pieces, segments, start, previous = [], [], 0.0, None
        while duration - start >= 3.0:
            length = min(rng.uniform(3.0, 10.0), duration - start)
            if duration - start - length < 3.0:
                length = duration - start
            attrs = _draw_attributes(rng, previous)
            pieces.append(render_segment(attrs, length, sample_rate, rng))
            end = start + len(pieces[-1]) / sample_rate
            segments.append((start, end, tags_of(attrs)))
            start, previous = end, attrs
        annotated = rng.random(len(segments)) < annotate_prob
        annotated[rng.integers(len(segments))] = True  # every real track has an annotated segment
        rows = [seg for seg, keep in zip(segments, annotated) if keep]
        y = np.concatenate(pieces)
        write_atomic(audio_path, lambda f: sf.write(f, y, sample_rate, format=audio_format.upper()), durable=False)
        order = rng.permutation(len(rows))  # the release's rows are not in time order
        lines = [",".join(("Start_Time", "End_Time") + CAL500EXP_TAGS)]
        for k in order:
            s, e, tags = rows[k]
            lines.append(",".join(f"{v:.6f}" for v in [s, e] + [tags.get(t, 0.0) for t in CAL500EXP_TAGS]))
        write_atomic(label_path, "\n".join(lines) + "\n", durable=False)
    logging.info("Synthetic corpus: %d tracks in %s", num_tracks, root)
    return names
