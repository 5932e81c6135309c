"""The prepared dataset and its tf.data pipeline, on the tiny synthetic corpus and a hand-made corpus."""
import os

import numpy as np
import pytest

from conftest import make_corpus, tiny_config
from jaxtag.data import corpus, labels, pipeline
from jaxtag.data.audio import load_audio
from jaxtag.data.features import FrontendSettings, mel_spectrogram
from jaxtag.errors import DataError


def test_load_split_shapes_dtypes_and_window_contents(prepared_tiny):
    config, builder = prepared_tiny
    d = config.data
    ds = pipeline.load_split(config, "train", shuffle=False)
    n = 0
    for ex in ds.as_numpy_iterator():
        n += 1
        w = ex["mel"].shape[0]
        assert ex["mel"].shape == (w, d.window_frames, d.n_mels) and ex["mel"].dtype == np.float32
        assert ex["labels"].shape == (w, 18) and ex["labels"].dtype == np.float32
        assert ex["mask"].shape == (w,) and ex["mask"].dtype == bool
        assert set(np.unique(ex["labels"])) <= {0.0, 1.0}
    assert n == builder.info.splits["train"].num_examples == 6


def test_windows_are_slices_of_the_tracks_mel(prepared_tiny, data_dir):
    config, builder = prepared_tiny
    settings = FrontendSettings.from_config(config.data)
    syn_root = [p for p in os.listdir(os.path.join(data_dir, "downloads")) if p.startswith("jaxtag_synthetic")]
    tracks = {t.name: t for t in corpus.find_tracks(os.path.join(data_dir, "downloads", syn_root[0]))}
    ex = next(pipeline.load_split(config, "test", shuffle=False).as_numpy_iterator())
    track = tracks[ex["track"].decode()]
    mel = mel_spectrogram(load_audio(track.audio_path, settings.sample_rate), settings)
    starts = labels.window_starts(mel.shape[0], settings.window_frames, settings.window_hop)
    assert ex["mel"].shape[0] == len(starts)
    for k, s in enumerate(starts):
        np.testing.assert_allclose(ex["mel"][k], mel[s:s + settings.window_frames], rtol=1e-6)


def test_splits_are_disjoint_and_follow_make_split(prepared_tiny):
    config, _ = prepared_tiny
    names = {s: sorted(ex["track"].decode() for ex in pipeline.load_split(config, s, shuffle=False).as_numpy_iterator())
             for s in corpus.SPLITS}
    everything = sorted(sum(names.values(), []))
    assert len(set(everything)) == len(everything) == 10
    assert names == corpus.make_split(everything, config.data.split_seed, config.data.split_fractions)


def test_train_split_is_reshuffled_every_epoch_and_seeded(prepared_tiny):
    config, _ = prepared_tiny
    ds = pipeline.load_split(config, "train", seed=3)
    orders = [[ex["track"] for ex in ds.as_numpy_iterator()] for _ in range(4)]
    assert len({tuple(o) for o in orders}) > 1            # passes differ
    again = pipeline.load_split(config, "train", seed=3)
    assert [ex["track"] for ex in again.as_numpy_iterator()] == orders[0]  # same seed, same first pass


def test_bucketed_batches_pad_and_mask(prepared_tiny):
    config, _ = prepared_tiny
    ds = pipeline.load_split(config, "train", shuffle=False)
    lengths = {ex["track"].decode(): ex["mel"].shape[0] for ex in ds.as_numpy_iterator()}
    seen = {}
    for batch in pipeline.bucketed_batches(ds, 4, (4, 8, 16)):
        b, length = batch["present"].shape
        assert b == 4 and length % 4 == 0
        assert batch["mel"].shape[:2] == (4, length)
        for i, name in enumerate(batch["track"]):
            if name:
                seen[name] = int(batch["present"][i].sum())
                assert pipeline.bucket_length(seen[name], (4, 8, 16)) == length
                assert not batch["mask"][i, seen[name]:].any()
            else:
                assert not batch["present"][i].any()
    assert seen == lengths


def test_bucket_length_rounds_past_the_last_bucket():
    assert pipeline.bucket_length(3, (4, 8)) == 4
    assert pipeline.bucket_length(8, (4, 8)) == 8
    assert pipeline.bucket_length(9, (4, 8)) == 16
    assert pipeline.bucket_length(17, (4, 8)) == 24


def test_settings_key_the_prepared_data(data_dir):
    base = pipeline.prepared_settings(tiny_config(data_dir)).config_name
    assert pipeline.prepared_settings(tiny_config(data_dir)).config_name == base
    for field, value in [("data.n_mels", 16), ("data.window_hop", 8), ("data.unannotated", "negative"),
                         ("data.tags", "all"), ("data.split_seed", 1), ("data.synthetic.seed", 2)]:
        assert pipeline.prepared_settings(tiny_config(data_dir, **{field: value})).config_name != base, field


def test_user_corpus_is_prepared_with_the_same_rules(tmp_path):
    rows = [(0.0, 3.0, {"Emotion-Happy": 1.0}), (3.0, 6.0, {"Emotion-Sad": 1.0})]
    root = make_corpus(tmp_path / "corpus", {f"artist_{i}-song.{i}": (6.0, rows) for i in range(5)})
    config = tiny_config(str(tmp_path / "prepared"), **{"data.root": root})
    builder = pipeline.prepare(config)
    assert builder.builder_config.name.startswith("real_")
    summary = pipeline.summarize(builder)
    assert [summary["splits"][s]["tracks"] for s in corpus.SPLITS] == [3, 1, 1]
    ex = next(pipeline.load_split(config, "test").as_numpy_iterator())
    # 6 s at 8000 Hz, hop 256 -> 188 frames; windows of 32 frames with hop 16 start at 0, 16, ...,
    # 144 (10 windows, the last ending at frame 176), plus one aligned to the end (156): 11.
    assert ex["mel"].shape[0] == 11
    tags = list(builder.builder_config.settings.tags)
    happy, sad = tags.index("Emotion-Happy"), tags.index("Emotion-Sad")
    # Window 0 covers frames 0-31 (0-0.99 s): Happy only; the last window covers the end: Sad only.
    assert ex["labels"][0, happy] == 1 and ex["labels"][0, sad] == 0
    assert ex["labels"][-1, happy] == 0 and ex["labels"][-1, sad] == 1
    assert summary["label_frequency"]["Emotion-Angry_/_Agressive"] == 0


def test_soft_label_set_is_prepared_with_the_window_rule(tmp_path):
    """label_set=soft reads SegLabelSoft/; a window's label is 1 where its frames' mean is > 0.5."""
    rows = [(0.0, 6.0, {"Emotion-Happy": 0.7, "Emotion-Sad": 0.3, "Emotion-Tender_/_Soft": 0.51})]
    root = tmp_path / "corpus"
    make_corpus(root, {f"artist_{i}-song": (6.0, rows) for i in range(5)})
    os.rename(root / "SegLabelHard", root / "SegLabelSoft")
    os.rename(root / "SegLabelSoft" / "SegLabelHard", root / "SegLabelSoft" / "SegLabelSoft")
    config = tiny_config(str(tmp_path / "prepared"), **{"data.root": str(root), "data.label_set": "soft"})
    builder = pipeline.prepare(config)
    tags = list(builder.builder_config.settings.tags)
    ex = next(pipeline.load_split(config, "test").as_numpy_iterator())
    assert ex["mask"].all()
    for tag, expected in [("Emotion-Happy", 1), ("Emotion-Sad", 0), ("Emotion-Tender_/_Soft", 1), ("Emotion-Angry_/_Agressive", 0)]:
        assert (ex["labels"][:, tags.index(tag)] == expected).all(), tag
    with pytest.raises(DataError, match="SegLabelHard"):  # the hard set is not there
        pipeline.prepare(tiny_config(str(tmp_path / "prepared2"), **{"data.root": str(root)}))


def test_unchanged_settings_reuse_the_prepared_data(data_dir, prepared_tiny):
    config, builder = prepared_tiny
    info = os.path.join(builder.data_dir, "dataset_info.json")
    before = os.stat(info).st_mtime_ns
    again = pipeline.prepare(tiny_config(data_dir))
    assert again.data_dir == builder.data_dir and os.stat(info).st_mtime_ns == before


def test_synthetic_corpus_annotates_some_segments_and_tags_change_within_tracks(tmp_path):
    """As in CAL500exp: only some segments of a track are annotated, and a track's tags change."""
    import soundfile as sf
    from jaxtag.data import synthetic
    from jaxtag.data.labels import read_segments
    from jaxtag.data.tags import CAL500EXP_TAGS
    names = synthetic.generate_corpus(str(tmp_path), num_tracks=6, seed=0, min_seconds=25.0, max_seconds=40.0,
                                      sample_rate=8000, audio_format="wav")
    partly, changing = 0, 0
    for name in names:
        duration = sf.info(str(tmp_path / "CAL500_32kps" / f"{name}.wav")).duration
        segments = read_segments(str(tmp_path / "SegLabelHard" / "SegLabelHard" / f"{name}.csv"), CAL500EXP_TAGS)
        covered = float(np.sum(segments.end - segments.start))
        partly += 0 < covered < duration - 1.0
        changing += len({tuple(row) for row in segments.labels}) > 1
    assert partly >= 1 and changing >= 1


def test_wrong_root_never_falls_back_to_synthetic(tmp_path):
    config = tiny_config(str(tmp_path), **{"data.root": str(tmp_path / "missing")})
    with pytest.raises(DataError, match="does not exist"):
        pipeline.prepare(config)


def test_bad_track_stops_preparation_with_its_name_or_is_skipped(tmp_path):
    rows = [(0.0, 3.0, {"Emotion-Happy": 1.0})]
    root = make_corpus(tmp_path / "corpus", {f"t{i}": (4.0, rows) for i in range(5)})
    bad = os.path.join(root, "CAL500_32kps", "t2.wav")
    with open(bad, "wb") as f:
        f.write(b"RIFF garbage")
    config = tiny_config(str(tmp_path / "prepared"), **{"data.root": root})
    with pytest.raises(DataError) as info:
        pipeline.prepare(config)
    assert "t2.wav" in str(info.value)
    assert not os.path.exists(os.path.join(str(tmp_path / "prepared"), "cal500exp",
                                           pipeline.prepared_settings(config).config_name, "1.0.0",
                                           "dataset_info.json"))
    config = tiny_config(str(tmp_path / "prepared"), **{"data.root": root, "data.skip_bad_tracks": True})
    summary = pipeline.summarize(pipeline.prepare(config))
    assert sum(s["tracks"] for s in summary["splits"].values()) == 4


def test_split_file_is_kept_with_the_prepared_data(prepared_tiny):
    import json
    config, builder = prepared_tiny
    with open(os.path.join(str(builder.data_dir), "split.json")) as f:
        split = json.load(f)
    for name in corpus.SPLITS:
        tracks = sorted(ex["track"].decode() for ex in pipeline.load_split(config, name, shuffle=False).as_numpy_iterator())
        assert split[name] == tracks
    assert split["seed"] == config.data.split_seed


def test_all_67_tags_can_be_prepared(data_dir):
    config = tiny_config(data_dir, **{"data.tags": "all"})
    ex = next(pipeline.load_split(config, "test").as_numpy_iterator())
    assert ex["labels"].shape[1] == 67
    summary = pipeline.summarize(pipeline.prepare(config))
    # The synthetic corpus's instrument tags follow its timbres: some windows have a piano.
    assert summary["label_frequency"]["Instrument_-_Piano"] > 0
