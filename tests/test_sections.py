"""Sections: change points on the window embeddings (known changes found, a steady track one
section), each section decided by the policy on its own windows, found on generated audio whose
character changes at known times, carried by every output, re-derived from the store, and
queried with `similar FILE#N`."""
import csv
import dataclasses
import io
import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from jaxtag.tagging import sections
from jaxtag.tagging.decisions import threshold_policy
from jaxtag.tagging.taggram import Taggram


def _segments(lengths, dim=24, noise=0.3, seed=0):
    """Window vectors: one random direction per segment, plus noise; (vectors, true change windows)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(lengths), dim))
    vectors = np.concatenate([c + noise * rng.standard_normal((n, dim)) for c, n in zip(centres, lengths)])
    return sections.moment_vectors(vectors, None), list(np.cumsum(lengths)[:-1])


def test_change_points_are_the_known_changes_and_a_steady_track_has_none():
    vectors, truth = _segments([14, 9, 20])
    start = np.arange(len(vectors)) * 3.0
    assert sections.change_points(vectors, start, start[-1] + 3) == truth == [14, 23]
    steady, _ = _segments([60], seed=1)
    assert sections.change_points(steady, np.arange(60) * 3.0, 180.0) == []
    # Too short for two sections of MIN_SECONDS: one section, whatever the vectors.
    assert sections.change_points(vectors[:5], start[:5], 15.0) == []
    assert sections.change_points(vectors[:1], start[:1], 2.0) == []
    # The same music at a finer hop (three windows a 3-s window): the same change times.
    fine = np.repeat(vectors, 3, axis=0)
    assert sections.change_points(fine, np.arange(len(fine)) * 1.0, len(fine) * 1.0) == [3 * t for t in truth]
    # The shortest section is kept: a 6-s change (two windows) is no section of its own.
    short, _ = _segments([20, 2, 20], seed=2)
    assert all(b - a >= 3 for a, b in zip([0, *sections.change_points(short, np.arange(42) * 3.0, 126.0)],
                                          [*sections.change_points(short, np.arange(42) * 3.0, 126.0), 42]))


def test_settings_have_a_key_and_refuse_nonsense():
    assert sections.DEFAULT.key() == sections.SectionSettings().key()
    assert dataclasses.replace(sections.DEFAULT, penalty_seconds=8.0).key() != sections.DEFAULT.key()
    assert sections.DEFAULT.describe()["key"] == sections.DEFAULT.key()
    with pytest.raises(ValueError, match="kernel"):
        sections.SectionSettings(kernel="l1")
    with pytest.raises(ValueError, match="positive"):
        sections.SectionSettings(penalty_seconds=0)


def _taggram(vectors, scores, tags=("Emotion-Happy", "Emotion-Sad", "Guitar"), policy=None):
    n = len(scores)
    start = np.arange(n) * 3.0
    return Taggram("song.wav", 3.0 * n, list(tags), start, start + 3.0, np.asarray(scores, np.float32),
                   policy or threshold_policy(tags, 0.5), model="cnn_lstm", embeddings=vectors)


def test_each_section_carries_the_policys_decisions_on_its_own_windows():
    vectors, truth = _segments([10, 12])
    # Happy and guitar in the first part, sad in the second, each on in most of its windows.
    rng = np.random.default_rng(3)
    scores = np.where(np.r_[np.zeros(10), np.ones(12)][:, None] == [0, 1, 0], 0.8, 0.2) + 0.05 * rng.standard_normal((22, 3))
    scores[:10, 2] = 0.9
    taggram = _taggram(vectors, np.clip(scores, 0, 1))
    found = taggram.sections()
    assert [(s.first_window, s.last_window) for s in found] == [(0, 9), (10, 21)]
    assert [(s.start_s, s.end_s) for s in found] == [(0.0, 30.0), (30.0, 66.0)]
    for s in found:   # the policy's decisions on the section's windows alone
        d = taggram.policy.decide(taggram.scores[s.first_window:s.last_window + 1])
        assert (s.tags, s.moods) == (d.track_tags, d.moods)
    assert "Emotion-Happy" in found[0].moods and "Guitar" in found[0].tags and "Emotion-Sad" not in found[0].tags
    assert found[1].moods == ["Emotion-Sad"] and "Guitar" not in found[1].tags
    # Another rule re-decides the same sections: each section's tags are the new policy's on its windows.
    other = taggram.with_policy(threshold_policy(taggram.tags, 0.85))
    again = other.sections()
    assert [(s.first_window, s.last_window) for s in again] == [(0, 9), (10, 21)]
    for s in again:
        d = other.policy.decide(other.scores[s.first_window:s.last_window + 1])
        assert (s.tags, s.moods) == (d.track_tags, d.moods)
    assert again[0].tags != found[0].tags    # Happy (0.8) is not on at 0.85
    # The JSON and the sections CSV carry them; without embeddings they are unknown.
    data = taggram.to_dict()
    assert data["sections"] == [s.to_dict() for s in found] and data["sectioning"]["key"] == sections.DEFAULT.key()
    rows = list(csv.DictReader(io.StringIO(taggram.sections_csv())))
    assert rows == [{"start": f"{a:.3f}", "end": f"{b:.3f}", "tags": "; ".join(s.tags), "moods": "; ".join(s.moods)}
                    for a, b, s in ((0, 30, found[0]), (30, 66, found[1]))]
    # The library's row (library.json, library.csv) and the listening page's bar.
    from jaxtag.library import summary
    from jaxtag.tagging.html_page import render_html
    row = summary.track_summary(taggram, "song.wav", "song")
    assert row["sections"] == data["sections"]
    assert summary.sections_text(row["sections"]) == \
        f"0.0-30.0 s: {', '.join(found[0].tags)} | 30.0-66.0 s: {', '.join(found[1].tags)}"
    page = render_html(taggram, None)
    payload = json.loads(re.search(r'id="taggram-data">(.*?)</script>', page, re.S).group(1))
    # Labels: moods first, then the other tags, in short names, at most three.
    assert [(s["start"], s["end"]) for s in payload["sections"]] == [(0.0, 30.0), (30.0, 66.0)]
    assert payload["sections"][0]["label"].startswith("Happy") and payload["sections"][1]["label"].startswith("Sad")
    for shown, s in zip(payload["sections"], found):
        assert shown["label"].split(", ") == ([m.replace("Emotion-", "") for m in s.moods]
                                              + [t.replace("Emotion-", "") for t in s.tags if t not in s.moods])[:3]
    bare = dataclasses.replace(taggram, embeddings=None)
    assert bare.sections() is None and bare.to_dict()["sections"] is None and bare.sections_csv() is None


# -- generated audio with the pretrained model -----------------------------------------------------

SR = 16000


def _tones(seconds, rng):
    """A melody of decaying sine notes, four a second."""
    t = np.arange(int(seconds * SR)) / SR
    notes = 220 * 2 ** (rng.integers(0, 12, int(seconds * 4) + 1) / 12)
    return 0.3 * np.exp(-3 * (t * 4 % 1)) * np.sin(2 * np.pi * np.cumsum(notes[(t * 4).astype(int)]) / SR)


def _drums(seconds, rng):
    """A kick on every beat at 120 BPM and a noisy hi-hat on every half beat."""
    t = np.arange(int(seconds * SR)) / SR
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-20 * ((t * 2) % 1))
    return 0.5 * kick + 0.3 * rng.standard_normal(len(t)) * np.exp(-60 * ((t * 4) % 1))


def _noise(seconds, rng):
    return 0.1 * rng.standard_normal(int(seconds * SR))


CHANGES = (31.7, 61.3)   # seconds: tones, then drums, then noise (neither on musicnn's 3-s window grid)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generated audio: one file whose character changes at CHANGES, one steady melody, and the
    drums of the first alone (a track like its second section)."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("sections_music")
    parts = [_tones(CHANGES[0], rng), _drums(CHANGES[1] - CHANGES[0], rng), _noise(30.0, rng)]
    files = {"changing": np.concatenate(parts), "steady": _tones(60.0, rng), "drums": _drums(40.0, rng)}
    paths = {}
    for name, y in files.items():
        paths[name] = str(folder / f"{name}.wav")
        sf.write(paths[name], y.astype(np.float32), SR)
    return paths


@pytest.fixture(scope="module")
def musicnn(pretrained_cache):
    from jaxtag.tagging.tagger import Tagger
    return Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache)


def test_generated_audio_is_cut_where_its_character_changes(musicnn, generated):
    changing = musicnn.tag(generated["changing"])
    found = changing.sections()
    assert len(found) == 3, [(s.start_s, s.end_s) for s in found]
    for section, change in zip(found[1:], CHANGES):
        assert abs(section.start_s - change) <= 4.5, (section.start_s, change)
    assert found[0].start_s == 0 and found[-1].end_s == pytest.approx(changing.duration)
    assert all(a.end_s == b.start_s for a, b in zip(found, found[1:]))
    steady = musicnn.tag(generated["steady"]).sections()
    assert [(s.start_s, s.end_s) for s in steady] == [(0.0, pytest.approx(60.0))]


@pytest.fixture(scope="module")
def tagged(musicnn, generated, tmp_path_factory):
    from jaxtag.library.run import LibraryOptions, tag_library
    out = tmp_path_factory.mktemp("sections_out")
    files = [generated[n] for n in ("changing", "steady", "drums")]
    result = tag_library(musicnn, files, LibraryOptions(output_dir=str(out), workers=1, top_n=0))
    assert sorted(result.tagged) == sorted(files) and not result.failed
    return out, files


@pytest.mark.slow
def test_every_output_carries_the_sections_and_a_new_rule_rederives_them_from_the_store(musicnn, tagged):
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.library.state import LibraryState
    from jaxtag.library.write import stored_taggram
    out, files = tagged
    expected = musicnn.tag(files[0]).sections()    # the in-memory tagger's, from the same audio
    written = json.loads((out / "changing.json").read_text())
    assert [(s["start"], s["end"]) for s in written["sections"]] == \
        [(pytest.approx(s.start_s, abs=1e-3), pytest.approx(s.end_s, abs=1e-3)) for s in expected]
    assert [(s["tags"], s["moods"]) for s in written["sections"]] == [(s.tags, s.moods) for s in expected]
    rows = list(csv.DictReader(open(out / "changing.sections.csv", newline="")))
    assert [(float(r["start"]), float(r["end"]), r["tags"]) for r in rows] == \
        [(pytest.approx(s["start"], abs=1e-3), pytest.approx(s["end"], abs=1e-3), "; ".join(s["tags"]))
         for s in written["sections"]]
    assert (out / "changing.csv").read_text().startswith("Start_Time,End_Time,")   # the CAL500exp layout, as before
    library = {r["name"]: r for r in json.loads((out / "library.json").read_text())["files"]}
    assert library["changing"]["sections"] == written["sections"] and len(library["steady"]["sections"]) == 1
    table = {r["path"]: r for r in csv.DictReader(open(out / "library.csv", newline=""))}
    assert table[files[0]]["sections"].count(" | ") == len(written["sections"]) - 1
    assert table[files[0]]["sections"].startswith(f"0.0-{written['sections'][0]['end']:.1f} s: ")
    page = (out / "changing.html").read_text()
    payload = json.loads(re.search(r'id="taggram-data">(.*?)</script>', page, re.S).group(1))
    assert [(s["start"], s["end"], s["tags"]) for s in payload["sections"]] == \
        [(s["start"], s["end"], s["tags"]) for s in written["sections"]]
    assert '<div id="sections"></div>' in page
    # Another rule (one threshold): every output derived again from the store, no model; the same
    # sections, each decided by the new rule on its windows.
    policy = musicnn.policy
    musicnn.policy = policy.with_threshold(0.2)
    try:
        again = tag_library(musicnn, files, LibraryOptions(output_dir=str(out), workers=1, top_n=0))
        assert sorted(again.derived) == sorted(files) and not again.tagged
        with LibraryState(str(out)) as state:
            content = state.record("changing")["source"]["content"]
            stored, _, taggram = stored_taggram(musicnn, str(out), state, content, files[0])
        redone = json.loads((out / "changing.json").read_text())["sections"]
        assert [(s["start"], s["end"]) for s in redone] == [(s["start"], s["end"]) for s in written["sections"]]
        # Each section decided on its windows, by the share of its time each tag is on (the
        # windows' stretches: from the nearest centre, clipped to the file).
        centres = (stored["start"] + stored["end"]) / 2
        edges = np.r_[0.0, (centres[:-1] + centres[1:]) / 2, stored["duration"]]
        active = musicnn.policy.active(stored["scores"])
        for s, section in zip(redone, taggram.sections()):
            a, b = section.first_window, section.last_window + 1
            seconds = np.diff(np.clip(edges, 0, stored["duration"]))[a:b]
            d = musicnn.policy.decide(stored["scores"][a:b], share=(seconds[:, None] * active[a:b]).sum(0) / seconds.sum(),
                                      active=active[a:b])
            assert (s["tags"], s["moods"]) == (d.track_tags, d.moods)
    finally:
        musicnn.policy = policy
    # Other section settings: derived again too (the record holds their key); back to the default,
    # the first run's sections again.
    musicnn.sectioning = dataclasses.replace(sections.DEFAULT, penalty_seconds=1000.0)
    try:
        one = tag_library(musicnn, files, LibraryOptions(output_dir=str(out), workers=1, top_n=0))
        assert sorted(one.derived) == sorted(files) and not one.tagged
        assert len(json.loads((out / "changing.json").read_text())["sections"]) == 1
    finally:
        musicnn.sectioning = sections.DEFAULT
    back = tag_library(musicnn, files, LibraryOptions(output_dir=str(out), workers=1, top_n=0))
    assert sorted(back.derived) == sorted(files)
    assert json.loads((out / "changing.json").read_text())["sections"] == written["sections"]
    assert not tag_library(musicnn, files, LibraryOptions(output_dir=str(out), workers=1, top_n=0)).derived


@pytest.mark.slow
def test_similar_takes_a_section(tagged, tmp_path):
    from jaxtag.library.similarity import find_similar
    out, files = tagged
    found = find_similar(str(out), f"{files[0]}#2", n=2)
    written = json.loads((out / "changing.json").read_text())["sections"]
    assert found["section"] == {"number": 2, "start": pytest.approx(written[1]["start"], abs=0.01),
                                "end": pytest.approx(written[1]["end"], abs=0.01)}
    # Its drums: the track of drums alone is the nearest, and so are its moments.
    assert found["tracks"][0]["path"] == files[2] and found["moments"][0]["path"] == files[2]
    first = find_similar(str(out), f"{files[0]}#1", n=1)
    assert first["tracks"][0]["path"] == files[1]     # the melody: the steady melody
    with pytest.raises(ValueError, match="no section 4: the track has 3"):
        find_similar(str(out), f"{files[0]}#4")
    # An outside file (the same audio elsewhere, tagged on the fly) has the same sections.
    outside = shutil.copy(files[0], tmp_path / "outside.wav")
    assert find_similar(str(out), f"{outside}#2", n=2)["tracks"][0]["path"] == files[2]


def test_the_measurements_joins_are_where_it_says_and_its_counts_are_right(tmp_path):
    """scripts/real_music_report.py sections: each pair joined at the second it reports, from the
    tracks' middles; a join found only with a boundary within the tolerance; boundaries a minute."""
    from test_decisions import _script
    script = _script()
    rng = np.random.default_rng(5)
    tracks = []
    for k, seconds in enumerate((60.0, 75.0, 61.5)):
        y = (0.1 * rng.standard_normal(int(seconds * 8000))).astype(np.float32)
        sf.write(tmp_path / f"t{k}.wav", y, 8000)
        tracks.append({"file": f"t{k}.wav", "path": str(tmp_path / f"t{k}.wav")})
    pairs = script.joined_pairs(tracks, str(tmp_path / "joined"), 8000)
    assert len(pairs) == 3 and len({p["join"] for p in pairs}) == 3
    for p in pairs:
        y, sr = sf.read(p["path"], dtype="float32")
        a, b = (sf.read(tmp_path / p[key], dtype="float32")[0] for key in ("first", "second"))
        n = int(round(p["join"] * sr))
        assert script.PIECE_SECONDS[0] <= p["join"] <= script.PIECE_SECONDS[1]
        begin = (len(a) - n) // 2
        np.testing.assert_allclose(y[:n], a[begin:begin + n], atol=1e-4)      # FLAC: 16-bit
        begin = (len(b) - (len(y) - n)) // 2
        np.testing.assert_allclose(y[n:], b[begin:begin + len(y) - n], atol=1e-4)
    # Counting: two joined files with a change after window 14 (a boundary at 42 s) and joins at
    # 46 s (found: 4 s off) and 48 s (6 s off: not found, its boundary counted as another); an
    # ordinary 2-minute track with one change and a steady 1-minute track.
    vectors, _ = _segments([14, 16])
    joined = [(_taggram(vectors, np.zeros((30, 3))), vectors)] * 2
    changing, _ = _segments([20, 20], seed=6)
    steady, _ = _segments([20], seed=4)
    ordinary = [(_taggram(changing, np.zeros((40, 3))), changing), (_taggram(steady, np.zeros((20, 3))), steady)]
    figures = script.section_figures(ordinary, joined, [46.0, 48.0], sections.DEFAULT)
    assert (figures["found"], figures["joins"]) == (1, 2) and figures["median_gap"] == pytest.approx(5.0)   # of 4 and 6 s
    assert figures["per_minute"] == pytest.approx(1 / 3) and figures["most_per_minute"] == pytest.approx(0.5)
    assert figures["extra_per_minute_joined"] == pytest.approx(1 / 3) and figures["ordinary_sections"] == 3
