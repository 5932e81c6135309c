"""Tempo: librosa's estimate per window and for the track, stable only for a steady beat; the
onset envelope block by block equals the whole file's; the library writes it where it is steady."""
import csv
import json
import re

import numpy as np
import pytest
import soundfile as sf

from jaxtag.tagging import tempo

SR, HOP, WINDOW = 16000, 256, 187   # musicnn's frontend: 3-s windows of 62.5 frames/s


def clicks(bpms, seconds_each, sr=SR, seed=0):
    """A drum-like beat (a decaying noise burst on every beat) over a bass tone: each (bpm) part
    for seconds_each in turn."""
    rng = np.random.default_rng(seed)
    n = int(0.12 * sr)
    burst = (0.6 * rng.standard_normal(n) * np.exp(-np.arange(n) / (0.02 * sr))).astype(np.float32)
    parts = []
    for bpm in bpms:
        y = np.zeros(int(seconds_each * sr), np.float32)
        for t in np.arange(0, seconds_each, 60.0 / bpm):
            i = int(t * sr)
            y[i:i + n] += burst[:len(y[i:i + n])]
        parts.append(y)
    y = np.concatenate(parts)
    return y + 0.1 * np.sin(2 * np.pi * 110 * np.arange(len(y)) / sr).astype(np.float32)


def _mel(y):
    import librosa
    return librosa.feature.melspectrogram(y=y, sr=SR, n_fft=512, hop_length=HOP, n_mels=96).T


def _estimate(y):
    mel = _mel(y)
    starts = np.arange(0, max(1, len(mel) - WINDOW + 1), WINDOW)
    return tempo.estimate(lambda a, n: mel[a:a + n], len(mel), SR, HOP, starts, WINDOW)


@pytest.mark.parametrize("bpm", [90, 120, 150])
def test_a_steady_beat_gives_its_tempo_everywhere(bpm):
    found = _estimate(clicks([bpm], 40))
    # librosa's tempogram resolves whole frames of lag: at 62.5 frames/s, a few percent.
    assert found.bpm == pytest.approx(bpm, rel=0.04)
    assert found.stable and found.agreement == 1.0
    np.testing.assert_allclose(found.windows, found.bpm, rtol=0.04)


def test_a_tempo_change_is_not_stable_and_silence_has_none():
    changing = _estimate(clicks([90, 150], 30))
    first, second = changing.windows[:8], changing.windows[-8:]
    assert np.nanmedian(first) == pytest.approx(90, rel=0.05) and np.nanmedian(second) == pytest.approx(150, rel=0.05)
    assert not changing.stable and changing.agreement < tempo.STABLE_SHARE
    silent = _estimate(np.zeros(SR * 20, np.float32))
    assert not silent.stable and np.isnan(silent.bpm) and np.all(np.isnan(silent.windows))
    assert silent.to_dict() == {"bpm": None, "stable": False, "agreement": 0.0}


def test_the_onset_envelope_block_by_block_equals_the_whole_files(monkeypatch):
    import librosa
    mel = _mel(clicks([128], 25)) + 1e-6
    whole = librosa.onset.onset_strength(S=librosa.power_to_db(mel.T, ref=1.0, top_db=None))
    monkeypatch.setattr(tempo, "ENVELOPE_BLOCK", 97)    # many blocks, none aligned to anything
    blocks = tempo.onset_envelope(lambda a, n: mel[a:a + n], len(mel))
    np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.slow   # (a library run with a trained model: 23 s; the fast tier measured 4:03 with it)
def test_the_library_keeps_the_tempo_and_writes_it_only_where_steady(trained, tmp_path):
    from jaxtag.library import file_tags as metadata
    from helpers import library_state
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.tagging.tagger import Tagger
    steady = str(tmp_path / "steady.flac")
    sf.write(steady, clicks([120], 30, sr=22050), 22050)
    rng = np.random.default_rng(1)
    drone = str(tmp_path / "drone.flac")
    sf.write(drone, (0.2 * np.sin(2 * np.pi * 110 * np.arange(22050 * 30) / 22050)
                     * (1 + 0.01 * rng.standard_normal(22050 * 30))).astype(np.float32), 22050)
    tagger = Tagger.from_workdir(trained[1])
    out = tmp_path / "out"
    tag_library(tagger, [steady, drone], LibraryOptions(output_dir=str(out), workers=1, top_n=0, write_tags=True))
    written = json.loads((out / "steady.json").read_text())
    stored = library_state.stored(out, "steady")["tempo"]
    assert written["tempo"]["stable"] and written["tempo"]["bpm"] == pytest.approx(stored.bpm, abs=0.01)
    # The tiny run's frontend hears 20 frames/s: its tempo resolves coarsely, but it is steady.
    assert stored.bpm == pytest.approx(120, rel=0.1)
    assert [w["bpm"] for w in written["windows"]] == [None if np.isnan(b) else round(float(b), 1)
                                                      for b in stored.windows]
    assert metadata.read_tags(steady)["BPM"] == str(int(round(stored.bpm)))
    row = next(r for r in json.loads((out / "library.json").read_text())["files"] if r["name"] == "steady")
    assert row["bpm"] == pytest.approx(stored.bpm, abs=0.05) and row["bpm_stable"] is True
    assert "BPM" not in metadata.read_tags(drone)
    assert not json.loads((out / "drone.json").read_text())["tempo"]["stable"]
    page = (out / "steady.html").read_text()
    assert "BPM (steady)" in page
    payload = json.loads(re.search(r'id="taggram-data">(.*?)</script>', page, re.S).group(1))
    assert payload["bpm"] == [w["bpm"] for w in written["windows"]]        # the page's "BPM now"
    with open(out / "library.csv", newline="") as f:
        table = {r["path"]: r for r in csv.DictReader(f)}
    assert float(table[steady]["bpm"]) == pytest.approx(stored.bpm, abs=0.05) and table[steady]["bpm_stable"] == "true"
    assert table[drone]["bpm_stable"] == "false"
