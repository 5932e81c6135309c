"""Tag decisions: per-tag thresholds, smoothing, the track rules, the policy's key, and the shipped
reference statistics (they follow from their per-track summaries; those from the audio)."""
import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest
import scipy.ndimage

from jaxtag.tagging import decisions
from jaxtag.tagging.decisions import calibrated_policy, evidence_policy, threshold_policy
from jaxtag.tagging.taggram import Taggram

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("real_music_report",
                                                  os.path.join(REPO, "scripts", "real_music_report.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("windows", [1, 2, 7, 40])
def test_smoothing_the_decisions_equals_thresholding_median_filtered_scores(k, windows):
    rng = np.random.default_rng(k * 100 + windows)
    scores = rng.random((windows, 6)).astype(np.float32)
    thresholds = rng.uniform(0.2, 0.8, 6)
    policy = threshold_policy([f"t{i}" for i in range(6)], thresholds, smooth=k)
    expected = scipy.ndimage.median_filter(scores, size=(k, 1), mode="nearest") >= thresholds.astype(np.float32)
    np.testing.assert_array_equal(policy.active(scores), expected)


def test_even_or_zero_smoothing_is_refused():
    for k in (0, 2, 4):
        with pytest.raises(ValueError, match="odd"):
            threshold_policy(["a"], 0.5, smooth=k)


def test_thresholds_are_applied_per_tag_and_track_tags_need_half_the_time():
    tags = ["Emotion-Sad", "Instrument_-_Piano", "Emotion-Happy"]
    policy = threshold_policy(tags, [0.5, 0.2, 0.9])
    scores = np.array([[0.6, 0.1, 0.95], [0.4, 0.3, 0.5], [0.7, 0.25, 0.5], [0.55, 0.1, 0.5]])
    active = policy.active(scores)
    np.testing.assert_array_equal(active, [[1, 0, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]])
    d = policy.decide(scores)
    np.testing.assert_allclose(d.share, [0.75, 0.5, 0.25])
    assert d.track_tags == ["Emotion-Sad", "Instrument_-_Piano"]   # by mean score: 0.5625 > 0.1875
    assert d.moods == ["Emotion-Sad"]                               # CAL500exp's emotions are moods
    assert [t for t, _ in d.top_tags] == ["Emotion-Happy", "Emotion-Sad", "Instrument_-_Piano"]


def _reference(tags, window_mean, window_std, track_mean, track_std):
    return {"model": "m", "tags": list(tags), "description": "a test reference",
            "statistics": {"window_mean": list(window_mean), "window_std": list(window_std),
                           "track_mean": list(track_mean), "track_std": list(track_std)}}


def _logit(p):
    return np.log(p / (1 - p))


def test_calibrated_rule_thresholds_track_tags_and_moods():
    """Per-tag thresholds at WINDOW_Z reference deviations above the reference windows' mean
    log-odds; a track carries the tags whose mean log-odds lie TRACK_Z deviations above the
    reference tracks' mean (at most five, at least two where it leans), and up to two moods that
    lean; its moods are among its tags."""
    tags = ["rock", "jazz", "metal", "sad", "happy", "chill", "pop", "Mellow"]
    c = len(tags)
    window_mean, window_std = np.linspace(-5, -2, c), np.linspace(0.5, 1.5, c)
    track_mean, track_std = np.full(c, -4.0), np.full(c, 1.0)
    policy = calibrated_policy(tags, _reference(tags, window_mean, window_std, track_mean, track_std))
    expected = 1 / (1 + np.exp(-(window_mean + decisions.WINDOW_Z * window_std)))
    np.testing.assert_allclose(policy.thresholds, expected, rtol=1e-6)
    assert policy.moods == ("sad", "happy", "chill", "Mellow")
    # A track whose mean log-odds give z = these (every window alike).
    def track(z):
        return np.tile(1 / (1 + np.exp(-(track_mean + np.asarray(z, float)))), (6, 1))
    d = policy.decide(track([3.0, 2.0, 1.5, 0.2, 0.7, 0.6, 1.2, 1.1]))
    # distinct (z >= 1): rock jazz metal pop Mellow (5: the cap); moods that lean: Mellow happy
    # chill, of which the strongest two; a mood is a track tag too.
    assert d.moods == ["Mellow", "happy"]
    assert d.track_tags == ["rock", "jazz", "metal", "pop", "Mellow", "happy"]
    np.testing.assert_allclose(d.strength, 0.5 * (1 + np.vectorize(__import__("math").erf)(
        np.array([3.0, 2.0, 1.5, 0.2, 0.7, 0.6, 1.2, 1.1]) / np.sqrt(2))), rtol=1e-5)
    # Nothing distinct: the strongest leaning tags, up to two; below the lean, none.
    d = policy.decide(track([0.9, 0.6, 0.55, -1, -1, 0.3, -2, -1]))
    assert d.track_tags == ["rock", "jazz"] and d.moods == []
    assert policy.decide(track([0.4, 0.1, 0, -1, -1, 0.3, -2, -1])).track_tags == []
    # Windows are judged by the thresholds, each tag its own.
    scores = np.array([expected * 1.01, expected * 0.99])
    np.testing.assert_array_equal(policy.active(scores), [[True] * c, [False] * c])


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_evidence_rule_needs_real_and_distinctive_evidence_and_forces_nothing():
    """A window's tag is on where its odds reach `ratio` times the base odds (a tag's base rate
    floored at min_base_rate, a mood's at min_mood_base_rate) AND its log-odds lie WINDOW_Z
    deviations above the reference windows' mean (whichever is higher); a track carries the tags
    on for >= track_share of its time (at most five), moods on for >= mood_share (at most two);
    zero tags and zero moods are valid answers."""
    tags = ["rock", "jazz", "sad", "happy", "chill", "pop"]
    base = np.array([0.2, 0.01, 0.02, 0.05, 0.03, 0.1])
    window_mean, window_std = _logit(np.array([0.1, 0.001, 0.03, 0.02, 0.02, 0.05])), np.full(6, 1.0)
    reference = _reference(tags, window_mean, window_std, window_mean, window_std)
    reference["statistics"]["base_rate"] = list(base)
    policy = evidence_policy(tags, reference, ratio=4.0, track_share=0.5, mood_share=0.25, min_base_rate=0.05,
                             min_mood_base_rate=0.025)
    floored = np.array([0.2, 0.05, 0.025, 0.05, 0.03, 0.1])      # jazz to the tags' floor, sad to the moods'
    np.testing.assert_allclose(policy.base_rate, floored)
    real = _logit(floored) + np.log(4.0)
    distinct = window_mean + decisions.WINDOW_Z * window_std
    np.testing.assert_allclose(policy.thresholds, _sigmoid(np.maximum(real, distinct)), rtol=1e-6)
    # jazz's reference mean is so low that its (floored) base rate decides; sad's spread decides.
    assert real[1] > distinct[1] and distinct[2] > real[2]
    # A tag typical of the reference at a low probability (0.02 for jazz, twice its base rate)
    # is not on, however unusual it is among the reference windows.
    assert _sigmoid(distinct[1]) < 0.02 < policy.thresholds[1]
    # 8 windows: rock on in 5, sad in 2 (a quarter), happy in 1, nothing else.
    on = np.zeros((8, 6), bool)
    on[:5, 0] = on[5:7, 2] = on[7, 3] = True
    scores = np.where(on, policy.thresholds * 1.001, policy.thresholds * 0.999)
    np.testing.assert_array_equal(policy.active(scores), on)
    d = policy.decide(scores)
    assert d.track_tags == ["rock", "sad"] and d.moods == ["sad"]     # sad: a mood at 25 %, not a tag at 50 %
    np.testing.assert_allclose(d.share, on.mean(0))
    assert [t for t, _ in d.top_tags[:3]] == ["rock", "sad", "happy"]
    # Nothing above the thresholds: no tag, no mood, no window tag.
    quiet = np.tile(policy.thresholds * 0.9, (8, 1))
    d = policy.decide(quiet)
    assert d.track_tags == [] and d.moods == [] and not d.active.any()
    # At most five track tags and two moods, by time on, ties by the mean score.
    every = np.tile(policy.thresholds * 1.001, (4, 1))
    every[0, [0, 1]] *= 0.99   # rock and jazz on in 3 of 4 windows
    d = policy.decide(every)
    by_score = lambda names: sorted(names, key=lambda t: -every[:, tags.index(t)].mean())
    assert d.track_tags == by_score(["sad", "happy", "chill", "pop"]) + ["rock"]   # rock's scores above jazz's
    assert d.moods == by_score(["sad", "happy", "chill"])[:2]
    assert policy.describe()["rule"] == "evidence" and policy.replace(mood_share=0.3).key() != policy.key()
    assert policy.describe()["evidence_ratio"] == 4.0


def test_each_pretrained_model_decides_at_its_levels_from_its_base_rates():
    """The shipped references carry base rates, and each model decides at its levels."""
    for model in ("musicnn-msd", "musicnn-mtt", "musicnn"):
        reference = decisions.load_reference(model)
        policy = evidence_policy(reference["tags"], reference)
        levels = decisions.EVIDENCE_LEVELS.get(model, decisions.DEFAULT_EVIDENCE_LEVELS)
        assert policy.track_share == levels.track_share and policy.evidence_ratio == levels.ratio
        mood = np.array([t in policy.moods for t in policy.tags])
        assert (policy.base_rate[~mood] >= levels.min_base_rate).all()
        np.testing.assert_allclose(policy.base_rate[~mood], np.maximum(
            np.array(reference["statistics"]["base_rate"])[~mood], levels.min_base_rate))


def test_evidence_rule_refuses_statistics_without_base_rates():
    tags = ["a", "b"]
    reference = _reference(tags, [0, 0], [1, 1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="no base rates"):
        evidence_policy(tags, reference)
    reference["statistics"]["base_rate"] = [0.1, 0.0]
    with pytest.raises(ValueError, match="base rate outside"):
        evidence_policy(tags, reference)


def test_a_reference_for_other_tags_or_with_no_spread_is_refused():
    tags = ["a", "b"]
    with pytest.raises(ValueError, match="other tags"):
        calibrated_policy(["a", "c"], _reference(tags, [0, 0], [1, 1], [0, 0], [1, 1]))
    with pytest.raises(ValueError, match="no spread"):
        calibrated_policy(tags, _reference(tags, [0, 0], [1, 0], [0, 0], [1, 1]))


def test_the_policy_key_changes_with_every_decision_setting_and_only_then():
    tags = ["sad", "rock"]
    base = calibrated_policy(tags, _reference(tags, [-3, -2], [1, 1], [-3, -2], [0.5, 0.5]))
    again = calibrated_policy(tags, _reference(tags, [-3, -2], [1, 1], [-3, -2], [0.5, 0.5]))
    assert base.key() == again.key()
    assert base.replace(origin="elsewhere").key() == base.key()       # words only
    changed = [base.replace(smooth=3), base.replace(track_z=1.5), base.replace(lean_z=0.2),
               base.replace(max_moods=1), base.replace(thresholds=[0.1, 0.2]), base.replace(track_std=[0.5, 0.6]),
               base.with_threshold(0.5), base.with_threshold(0.4)]
    keys = {p.key() for p in changed}
    assert base.key() not in keys and len(keys) == len(changed)


def test_reference_statistics_from_per_track_summaries_equal_the_pooled_windows():
    rng = np.random.default_rng(0)
    tracks = [rng.uniform(0.001, 0.999, (n, 3)) for n in (3, 10, 1, 25)]
    stats = decisions.reference_statistics([decisions.summarise_track(s) for s in tracks])
    pooled = _logit(np.concatenate(tracks))
    means = np.stack([_logit(s).mean(0) for s in tracks])
    np.testing.assert_allclose(stats["window_mean"], pooled.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["window_std"], pooled.std(0), atol=1e-4)
    np.testing.assert_allclose(stats["track_mean"], means.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["track_std"], means.std(0), atol=1e-5)
    np.testing.assert_allclose(stats["base_rate"], np.concatenate(tracks).mean(0), atol=1e-5)
    assert stats["windows"] == 39 and stats["tracks"] == 4


@pytest.mark.parametrize("model", ["musicnn-msd", "musicnn-mtt"])
def test_shipped_reference_follows_from_its_tracks_and_the_calibration_set(model):
    """What scripts/real_music_report.py wrote: the statistics are recomputed from the per-track
    summaries exactly; the tracks are the calibration set's packages and none of the report set's."""
    reference = decisions.load_reference(model)
    assert reference is not None, f"no shipped statistics for {model}"
    assert decisions.reference_statistics(reference["tracks"]) == reference["statistics"]
    script = _script()
    calibration = {c.package for c in script.CALIBRATION}
    assert {c.package for c in script.REPORT}.isdisjoint(calibration)
    assert {t["collection"] for t in reference["tracks"]} == calibration
    assert {c["package"] for c in reference["collections"]} == calibration
    assert sum(c["tracks"] for c in reference["collections"]) == len(reference["tracks"]) >= 200
    assert len(reference["tags"]) == 50 and min(reference["statistics"]["track_std"]) > 0
    calibrated_policy(reference["tags"], reference)  # usable


def test_old_and_new_taggram_files_read_back(tmp_path):
    tags = ["Emotion-Sad", "Instrument_-_Piano"]
    start = np.array([0.0, 2.0, 4.0])
    taggram = Taggram("song.wav", 7.0, tags, start, start + 3.0, np.array([[0.6, 0.1], [0.4, 0.3], [0.7, 0.25]]),
                      threshold_policy(tags, [0.5, 0.2], smooth=3), model="m")
    path = tmp_path / "song.json"
    path.write_text(taggram.to_json())
    from jaxtag.tagging.taggram import read_taggram
    back = read_taggram(str(path))
    np.testing.assert_array_equal(back.active, taggram.active)
    np.testing.assert_allclose(back.scores, taggram.scores, atol=1e-6)
    written = json.loads(path.read_text())
    assert [w["tags"] for w in written["windows"]] == [[t for t, on in zip(tags, a) if on] for a in taggram.active]
    # A file an earlier jaxtag wrote: no "decisions" entry, one threshold per tag.
    old = {k: v for k, v in written.items() if k not in ("decisions", "track_tags", "moods", "top_tags")}
    path.write_text(json.dumps(old))
    np.testing.assert_array_equal(read_taggram(str(path)).active, taggram.scores >= [0.5, 0.2])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get to fetch a Debian package")
def test_the_shipped_summaries_are_what_the_audio_gives(tmp_path):
    """A small rebuild: the smallest calibration package, fetched from Debian's archive and tagged
    afresh, gives the shipped per-track summaries (within what other CPUs round differently)."""
    script = _script()
    collection = next(c for c in script.CALIBRATION if c.package == "asc-music")
    try:
        script.fetch(collection.package, str(tmp_path))
    except SystemExit as e:
        pytest.skip(f"Debian's archive is out of reach here: {e}")
    script.SETS["one"] = (collection,)
    reference = decisions.load_reference("musicnn-msd")
    infos, tracks = script.tag_set("one", "musicnn-msd", str(tmp_path), workers=1)
    assert infos[0]["tracks"] == len(tracks) == sum(t["collection"] == "asc-music" for t in reference["tracks"])
    rebuilt = script.reference_of("musicnn-msd", infos, tracks, reference["tags"])["tracks"]
    assert script.compare_summaries(reference["tracks"], rebuilt) == []
    shipped = next(c for c in reference["collections"] if c["package"] == "asc-music")
    assert (infos[0]["version"], infos[0]["deb_sha256"]) == (shipped["version"], shipped["deb_sha256"])
    # These MP3s have no Xing header: libsndfile's length is an estimate from their size, a few
    # tenths of a second off, and no truncation warning may come of it.
    from helpers import library_state
    records = library_state.records(tmp_path / "tagged" / "one" / "musicnn-msd")
    assert [r["summary"]["warnings"] for _, r in sorted(records.items())] == [[], [], []]


def test_weak_labels_cover_the_sets_in_each_models_words_and_never_the_set_aside_packages():
    """scripts/weak_labels.py: every collection of the weak and calibration sets is labelled, each
    label's tags are the model's own (a misspelt tag would never count as wrong), the weak set
    shares nothing with the calibration set, and the packages set aside are in no set."""
    script = _script()
    import weak_labels   # scripts/ is on the path once the script is loaded
    labels = weak_labels.labels_by_package()
    every = {c.package for s in script.SETS.values() for c in s}
    assert every <= set(labels) and set(labels) <= every
    assert not every & set(weak_labels.SET_ASIDE)
    assert {c.package for c in script.WEAK}.isdisjoint(c.package for c in script.CALIBRATION)
    for model in ("musicnn-msd", "musicnn-mtt"):
        vocabulary = set(decisions.load_reference(model)["tags"])
        named = set(weak_labels.VOICE[model]).union(*weak_labels.IMPLAUSIBLE[model].values())
        assert named <= vocabulary, named - vocabulary
        assert not {"no vocals", "no vocal", "no voice", "instrumental"} & set(weak_labels.VOICE[model])
    assert weak_labels.implausible("musicnn-mtt", labels["flare-game"]) >= {"female voice", "techno"}
    assert "female voice" not in weak_labels.implausible("musicnn-mtt", labels["fretsonfire-songs-sectoid"])
    assert [weak_labels.theme(f) for f in ("a/battle_theme.ogg", "town_theme.ogg", "calmrace.ogg", "x.ogg")] == \
        ["battle", "calm", None, None]
