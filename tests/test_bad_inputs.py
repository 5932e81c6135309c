"""The bad-input matrix of docs/robustness.md: every case gives a clear error naming the file, or a
documented behaviour; never a traceback from inside a library, never a half-written cache."""
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import make_corpus, tiny_config, write_csv, write_tone
from jaxtag.data import audio, labels, pipeline
from jaxtag.errors import DataError
from jaxtag.tagging.tagger import Tagger

ROW = [(0.0, 3.0, {"Emotion-Sad": 1.0})]


@pytest.fixture(scope="module")
def tagger(trained):
    return Tagger.from_workdir(trained[1])


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    return path


def test_truncated_mp3_and_wav_decode_up_to_the_cut(tmp_path):
    for fmt in ("mp3", "wav"):
        path = _truncate(write_tone(tmp_path / f"t.{fmt}", 4.0, fmt=fmt.upper()))
        y = audio.load_audio(path, 8000)
        assert 1.0 < len(y) / 8000 < 3.0 and np.isfinite(y).all()


@pytest.mark.parametrize("fmt", ["ogg", "flac"])
def test_truncated_ogg_and_flac_are_errors_naming_the_file(tmp_path, fmt):
    path = _truncate(write_tone(tmp_path / f"t.{fmt}", 4.0, fmt=fmt.upper()))
    with pytest.raises(DataError) as info:
        audio.load_audio(path, 8000)
    assert path in str(info.value)


def test_nan_and_inf_samples_in_a_file_are_errors(tmp_path):
    y = np.zeros(8000, np.float32)
    y[100], y[200] = np.nan, np.inf
    path = str(tmp_path / "nan.wav")
    sf.write(path, y, 8000, subtype="FLOAT")
    with pytest.raises(DataError, match="NaN or infinite") as info:
        audio.load_audio(path, 8000)
    assert path in str(info.value)


def test_silence_is_tagged_with_finite_scores(tagger, tmp_path):
    path = str(tmp_path / "silence.wav")
    sf.write(path, np.zeros(8000 * 3, np.float32), 8000)
    assert np.isfinite(tagger.tag(path).scores).all()


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_any_channel_count_is_downmixed(tmp_path, channels):
    path = write_tone(tmp_path / f"c{channels}.wav", 1.0, sr=8000, channels=channels)
    raw, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_allclose(audio.load_audio(path, 8000), raw.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 96000])
def test_unusual_sample_rates_are_resampled(tagger, tmp_path, sr):
    path = write_tone(tmp_path / f"r{sr}.wav", 2.0, sr=sr)
    taggram = tagger.tag(path)
    assert taggram.duration == pytest.approx(2.0, abs=1e-3) and np.isfinite(taggram.scores).all()


def test_file_shorter_than_one_frame_is_tagged(tagger, tmp_path):
    path = str(tmp_path / "tiny.wav")
    sf.write(path, np.full(10, 0.1, np.float32), 8000)
    taggram = tagger.tag(path)
    assert taggram.scores.shape == (1, 18) and np.isfinite(taggram.scores).all()


def test_csv_without_header_is_an_error(tmp_path):
    path = tmp_path / "noheader.csv"
    write_csv(path, ROW)
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match="Start_Time,End_Time") as info:
        labels.read_segments(path, ["Emotion-Sad"])
    assert str(path) in str(info.value)


def test_segments_past_the_audio_end_are_an_error_naming_the_track_or_skipped(tmp_path):
    rows = [(0.0, 2.0, {"Emotion-Happy": 1.0}), (2.0, 4.5, {"Emotion-Sad": 1.0})]  # within 1 s of 4 s: fine
    past = [(0.0, 2.0, {"Emotion-Happy": 1.0}), (2.0, 60.0, {"Emotion-Sad": 1.0})]  # audio is 4 s
    tracks = {f"t{i}": (4.0, rows) for i in range(5)}
    tracks["cut_short"] = (4.0, past)
    root = make_corpus(tmp_path / "c", tracks)
    config = tiny_config(str(tmp_path / "d"), **{"data.root": root})
    with pytest.raises(DataError, match=r"cut_short\.csv: track 'cut_short': its segments run to 60\.0 s but its "
                                        r"audio \(cut_short\.wav\) ends at 4\.0 s") as info:
        pipeline.prepare(config)
    assert "skip_bad_tracks" in str(info.value)
    config = tiny_config(str(tmp_path / "d"), **{"data.root": root, "data.skip_bad_tracks": True})
    summary = pipeline.summarize(pipeline.prepare(config))
    names = {ex["track"].decode() for split in ("train", "validation", "test")
             for ex in pipeline.load_split(config, split).as_numpy_iterator()}
    assert names == {f"t{i}" for i in range(5)} and sum(s["tracks"] for s in summary["splits"].values()) == 5


def test_non_ascii_and_space_names_prepare_and_tag(tagger, tmp_path):
    names = ["björk-jóga (live)", "sigur rós-hoppípolla", "小室哲哉-song", "a b c-d e f", "x-y"]
    root = make_corpus(tmp_path / "c", {n: (4.0, ROW) for n in names})
    config = tiny_config(str(tmp_path / "d"), **{"data.root": root})
    summary = pipeline.summarize(pipeline.prepare(config))
    assert sum(s["tracks"] for s in summary["splits"].values()) == 5
    got = sorted(ex["track"].decode() for split in ("train", "validation", "test")
                 for ex in pipeline.load_split(config, split).as_numpy_iterator())
    assert got == sorted(names)
    assert tagger.tag(os.path.join(root, "CAL500_32kps", "björk-jóga (live).wav")).scores.shape[1] == 18


def test_data_root_without_tracks_is_an_error(tmp_path):
    (tmp_path / "CAL500_32kps").mkdir()
    (tmp_path / "SegLabelHard").mkdir()
    config = tiny_config(str(tmp_path / "d"), **{"data.root": str(tmp_path)})
    with pytest.raises(DataError, match="no track has both") as info:
        pipeline.prepare(config)
    assert str(tmp_path) in str(info.value)


def test_bad_csv_inside_a_corpus_names_the_file_and_leaves_no_dataset(tmp_path):
    root = make_corpus(tmp_path / "c", {f"t{i}": (4.0, ROW) for i in range(5)})
    bad = os.path.join(root, "SegLabelHard", "SegLabelHard", "t3.csv")
    write_csv(bad, [(0.0, 2.0, {}), (1.0, 3.0, {})])  # overlapping segments
    config = tiny_config(str(tmp_path / "d"), **{"data.root": root})
    with pytest.raises(DataError, match="overlap") as info:
        pipeline.prepare(config)
    assert bad in str(info.value)
    assert not pipeline.get_builder(config).is_prepared()
