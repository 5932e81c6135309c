"""The built-in synthetic corpus: deterministic, in the real layout, with tags caused by the audio."""
import filecmp
import numpy as np

from jaxtag.data import corpus, labels, synthetic
from jaxtag.data.tags import CAL500EXP_TAGS, EMOTION_TAGS

SR = 11025


def _gen(root, n=3, seed=0):
    return synthetic.generate_corpus(str(root), n, seed, 8.0, 12.0, SR)


def test_generation_is_deterministic_and_in_cal500exp_layout(tmp_path):
    names_a = _gen(tmp_path / "a")
    names_b = _gen(tmp_path / "b")
    assert names_a == names_b
    for name in names_a:
        for rel in (f"CAL500_32kps/{name}.mp3", f"SegLabelHard/SegLabelHard/{name}.csv"):
            assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False)
    header = (tmp_path / "a" / "SegLabelHard" / "SegLabelHard" / f"{names_a[0]}.csv").read_text().splitlines()[0]
    assert header.split(",") == ["Start_Time", "End_Time", *CAL500EXP_TAGS]
    tracks = corpus.find_tracks(str(tmp_path / "a"))
    assert [t.name for t in tracks] == sorted(names_a)
    for t in tracks:
        seg = labels.read_segments(t.label_path, EMOTION_TAGS)  # parses with the real reader
        assert len(seg.start) >= 1 and np.all(seg.labels.sum(axis=1) >= 1)


def test_other_seed_gives_other_audio(tmp_path):
    a = _gen(tmp_path / "a", n=1, seed=0)[0]
    _gen(tmp_path / "b", n=1, seed=1)
    assert not filecmp.cmp(tmp_path / "a" / "CAL500_32kps" / f"{a}.mp3",
                           tmp_path / "b" / "CAL500_32kps" / f"{a}.mp3", shallow=False)


def _attrs(**kw):
    base = dict(fast=False, loud=False, major=True, bright=False, distorted=False, weird=False,
                drums=False, bass=False, timbre="organ", voice="none")
    base.update(kw)
    return synthetic.SegmentAttributes(**base)


def test_tags_follow_the_audio_attributes():
    sad = synthetic.tags_of(_attrs(major=False, fast=False))
    assert sad["Emotion-Sad"] == 1 and sad["Emotion-Happy"] == 0
    angry = synthetic.tags_of(_attrs(distorted=True, loud=True))
    assert angry["Emotion-Angry_/_Agressive"] == 1 and angry["Emotion-Pleasant_/_Comfortable"] == 0
    assert set(sad) <= set(CAL500EXP_TAGS)


def test_loud_segments_are_louder_and_fast_segments_have_more_onsets():
    rng = np.random.default_rng(0)
    quiet = synthetic.render_segment(_attrs(loud=False), 6.0, SR, rng)
    loud = synthetic.render_segment(_attrs(loud=True), 6.0, SR, rng)
    assert np.sqrt(np.mean(loud ** 2)) / np.sqrt(np.mean(quiet ** 2)) > 5

    def onset_rate(attrs):
        import librosa
        y = synthetic.render_segment(attrs, 8.0, SR, np.random.default_rng(1))
        return len(librosa.onset.onset_detect(y=y, sr=SR)) / 8.0

    assert onset_rate(_attrs(fast=True, timbre="piano", drums=True)) > 1.5 * onset_rate(_attrs(fast=False, timbre="piano", drums=True))


def test_minor_and_major_differ_in_the_third():
    chroma = {}
    for major in (True, False):
        import librosa
        y = synthetic.render_segment(_attrs(major=major, timbre="organ"), 4.0, SR, np.random.default_rng(3))
        chroma[major] = librosa.feature.chroma_stft(y=y, sr=SR).mean(axis=1)
    assert not np.allclose(chroma[True], chroma[False], atol=0.05)
