"""CAL500exp directory reader and the train/validation/test split (paper 2, 3.4)."""
import os

import pytest

from conftest import SHARED, make_corpus
from jaxtag.data import corpus
from jaxtag.errors import DataError

NAMES = ["abba-s.o.s.", "cake-perhaps,_perhaps,_perhaps", "chi-lites-have_you_seen_her"]


def test_find_tracks_pairs_audio_and_labels_with_tricky_names(tmp_path):
    root = make_corpus(tmp_path, {n: (4.0, [(0.0, 3.0, {})]) for n in NAMES})
    tracks = corpus.find_tracks(root)
    assert [t.name for t in tracks] == sorted(NAMES)
    assert all(os.path.basename(t.audio_path) == t.name + ".wav" for t in tracks)


def test_flat_label_folder_is_accepted(tmp_path):
    root = make_corpus(tmp_path, {n: (4.0, [(0.0, 3.0, {})]) for n in NAMES}, nested=False)
    assert len(corpus.find_tracks(root)) == 3


def test_missing_audio_is_reported_by_name_or_skipped(tmp_path):
    root = make_corpus(tmp_path, {n: (4.0, [(0.0, 3.0, {})]) for n in NAMES})
    os.remove(os.path.join(root, "CAL500_32kps", "abba-s.o.s..wav"))
    with pytest.raises(DataError, match=r"no audio: abba-s\.o\.s\.") as info:
        corpus.find_tracks(root)
    assert root in str(info.value)
    assert [t.name for t in corpus.find_tracks(root, skip_missing=True)] == sorted(NAMES[1:])


def test_missing_label_csv_is_reported_by_name_or_skipped(tmp_path):
    root = make_corpus(tmp_path, {n: (4.0, [(0.0, 3.0, {})]) for n in NAMES})
    os.remove(os.path.join(root, "SegLabelHard", "SegLabelHard", "cake-perhaps,_perhaps,_perhaps.csv"))
    with pytest.raises(DataError, match=r"audio but no label CSV: cake-perhaps,_perhaps,_perhaps") as info:
        corpus.find_tracks(root)
    assert root in str(info.value)
    assert [t.name for t in corpus.find_tracks(root, skip_missing=True)] == [NAMES[0], NAMES[2]]


def test_wrong_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        corpus.find_tracks(str(tmp_path / "nowhere"))
    (tmp_path / "CAL500_32kps").mkdir()
    with pytest.raises(DataError, match="SegLabelHard"):
        corpus.find_tracks(str(tmp_path))


def test_split_of_500_is_400_50_50_disjoint_and_deterministic():
    names = [f"track_{i}" for i in range(500)]
    a = corpus.make_split(names, seed=0)
    assert [len(a[s]) for s in corpus.SPLITS] == [400, 50, 50]
    assert set(a["train"]) | set(a["validation"]) | set(a["test"]) == set(names)
    assert not set(a["train"]) & set(a["test"]) and not set(a["validation"]) & set(a["test"])
    assert corpus.make_split(list(reversed(names)), seed=0) == a     # order of discovery is irrelevant
    assert corpus.make_split(names, seed=1) != a


def test_small_corpus_keeps_one_track_in_validation_and_test():
    split = corpus.make_split(["a", "b", "c", "d"], seed=0)
    assert [len(split[s]) for s in corpus.SPLITS] == [2, 1, 1]
    with pytest.raises(ValueError, match="too few"):
        corpus.make_split(["a", "b"], seed=0)


@pytest.mark.skipif(not (SHARED / "CAL500_noAudioFeatures").is_dir(), reason="CAL500 song list not available")
def test_real_song_names_split_400_50_50():
    names = (SHARED / "CAL500_noAudioFeatures" / "songNames.txt").read_text().split()
    csvs = {p.stem for p in (SHARED / "SegLabelHard").glob("*.csv")}
    with_labels = [n for n in names if n in csvs]
    assert len(with_labels) == 500
    split = corpus.make_split(with_labels, seed=0)
    assert [len(split[s]) for s in corpus.SPLITS] == [400, 50, 50]
