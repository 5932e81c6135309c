"""Frame and window label rules (paper 3.2-3.3) against hand-computed cases, and the CSV reader."""
import numpy as np
import pytest

from conftest import SHARED, write_csv
from jaxtag.data import labels
from jaxtag.errors import DataError
from jaxtag.data.tags import CAL500EXP_TAGS, EMOTION_TAGS

TWO = ("Emotion-Happy", "Emotion-Sad")


def segs(rows, tags=TWO):
    start, end, lab = zip(*rows)
    return labels.Segments(np.array(start, float), np.array(end, float), np.array(lab, np.float32), tags)


def test_frame_labels_use_half_open_intervals_of_frame_centres():
    # Frames every 0.5 s, centres 0, 0.5, 1.0, ... Segment [1.0, 2.0) holds centres 1.0 and 1.5;
    # the frame at 2.0 belongs to the next segment [2.0, 3.0); 3.0 and later lie in no segment.
    s = segs([(1.0, 2.0, [1, 0]), (2.0, 3.0, [0, 1])])
    lab, ann = labels.frame_labels(s, 8, 0.5, "ignore")
    np.testing.assert_array_equal(ann, [0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(lab[:, 0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(lab[:, 1], [0, 0, 0, 0, 1, 1, 0, 0])


def test_negative_mode_marks_gaps_as_annotated_negatives():
    s = segs([(1.0, 2.0, [1, 1])])
    lab, ann = labels.frame_labels(s, 6, 0.5, "negative")
    assert ann.all()
    np.testing.assert_array_equal(lab[:, 0], [0, 0, 1, 1, 0, 0])


def test_window_starts_cover_the_tail_with_an_end_aligned_window():
    np.testing.assert_array_equal(labels.window_starts(256, 128, 64), [0, 64, 128])
    np.testing.assert_array_equal(labels.window_starts(300, 128, 64), [0, 64, 128, 172])
    np.testing.assert_array_equal(labels.window_starts(128, 128, 64), [0])
    np.testing.assert_array_equal(labels.window_starts(50, 128, 64), [0])
    for n in (129, 191, 192, 193, 1000):
        starts = labels.window_starts(n, 128, 64)
        assert starts[-1] + 128 == n or (n - 128) % 64 == 0
        assert starts[-1] + 128 <= n and np.all(np.diff(starts) <= 64)


def test_window_label_is_mean_of_annotated_frames_strictly_above_half():
    window = 4
    frame = np.array([[1], [1], [0], [0],      # window 0: mean 0.5 -> 0 (not > 0.5)
                      [1], [1], [1], [0]], np.float32)  # window 1: mean 0.75 -> 1
    ann = np.ones(8, bool)
    lab, mask = labels.window_labels(frame, ann, np.array([0, 4]), window)
    np.testing.assert_array_equal(lab[:, 0], [0, 1])
    assert mask.all()


def test_window_mask_needs_half_the_frames_annotated_and_ignores_unannotated_frames():
    window = 4
    frame = np.array([[1], [0], [0], [0], [1], [1], [0], [0]], np.float32)
    ann = np.array([1, 0, 0, 0,    # 1 of 4 annotated -> masked
                    1, 1, 0, 0])   # 2 of 4 annotated -> kept; mean over annotated = 1 -> label 1
    lab, mask = labels.window_labels(frame, ann.astype(bool), np.array([0, 4]), window)
    np.testing.assert_array_equal(mask, [False, True])
    assert lab[1, 0] == 1


def test_soft_labels_are_averaged_then_thresholded():
    frame = np.array([[0.6], [0.6], [0.4], [0.4]], np.float32)
    lab, _ = labels.window_labels(frame, np.ones(4, bool), np.array([0]), 2)
    assert lab[0, 0] == 1  # mean 0.6
    lab, _ = labels.window_labels(frame, np.ones(4, bool), np.array([2]), 2)
    assert lab[0, 0] == 0  # mean 0.4


def test_short_track_is_padded_and_padding_counts_as_unannotated():
    frame = np.ones((3, 1), np.float32)
    ann = np.ones(3, bool)
    starts = labels.window_starts(3, 4, 2)
    lab, mask = labels.window_labels(frame, ann, starts, 4)
    assert labels.pad_frames(np.zeros((3, 5)), 4).shape == (4, 5)
    assert mask[0] and lab[0, 0] == 1      # 3 of 4 frames annotated
    lab, mask = labels.window_labels(frame[:1], ann[:1], labels.window_starts(1, 4, 2), 4)
    assert not mask[0]                     # 1 of 4: masked


def test_read_segments_sorts_rows_and_selects_tags(tmp_path):
    p = write_csv(tmp_path / "t.csv", [(5.0, 8.0, {"Emotion-Sad": 1.0}), (0.5, 3.0, {"Emotion-Happy": 1.0})])
    s = labels.read_segments(p, TWO)
    np.testing.assert_array_equal(s.start, [0.5, 5.0])
    np.testing.assert_array_equal(s.labels, [[1, 0], [0, 1]])


def test_read_segments_accepts_bom_and_windows_line_endings(tmp_path):
    p = write_csv(tmp_path / "t.csv", [(0.0, 3.0, {"Emotion-Sad": 1.0})], newline="\r\n", bom=True)
    s = labels.read_segments(p, TWO)
    np.testing.assert_array_equal(s.labels, [[0, 1]])


@pytest.mark.parametrize("case, message", [
    ("unknown_column", "unknown tag column"),
    ("missing_column", "missing tag column"),
    ("end_before_start", "not after Start_Time"),
    ("non_numeric", "non-numeric"),
    ("negative_time", "negative time"),
    ("overlap", "overlap"),
    ("no_rows", "no segments"),
    ("bad_header", "Start_Time,End_Time"),
    ("empty", "empty"),
])
def test_read_segments_errors_name_the_file(tmp_path, case, message):
    path = tmp_path / f"{case}.csv"
    row = [(0.0, 3.0, {"Emotion-Sad": 1.0})]
    if case == "unknown_column":
        write_csv(path, row, header=["Start_Time", "End_Time", *CAL500EXP_TAGS, "Emotion-Grumpy"])
    elif case == "missing_column":
        write_csv(path, row, header=["Start_Time", "End_Time", *CAL500EXP_TAGS[1:]])
    elif case == "end_before_start":
        write_csv(path, [(4.0, 3.0, {})])
    elif case == "non_numeric":
        write_csv(path, row)
        path.write_text(path.read_text().replace("3.000000", "abc", 1))
    elif case == "negative_time":
        write_csv(path, [(-1.0, 3.0, {})])
    elif case == "overlap":
        write_csv(path, [(0.0, 3.0, {}), (2.0, 5.0, {})])
    elif case == "no_rows":
        write_csv(path, [])
    elif case == "bad_header":
        write_csv(path, row, header=["Start", "End", *CAL500EXP_TAGS])
    elif case == "empty":
        path.write_text("")
    with pytest.raises(DataError, match=message) as info:
        labels.read_segments(path, TWO)
    assert str(path) in str(info.value)


@pytest.mark.skipif(not (SHARED / "SegLabelHard").is_dir(), reason="real CAL500exp CSVs not available")
def test_reads_all_real_cal500exp_label_files():
    files = sorted((SHARED / "SegLabelHard").glob("*.csv"))
    assert len(files) == 500
    n_segments, emotion_counts = 0, []
    for f in files:
        s = labels.read_segments(f, EMOTION_TAGS)
        assert np.all(np.diff(s.start) > 0) and np.all(s.end[:-1] <= s.start[1:])
        n_segments += len(s.start)
        emotion_counts.append(s.labels.sum(axis=1))
    counts = np.concatenate(emotion_counts)
    # Figures measured on the release (../shared/cal500exp.md).
    assert n_segments == 3223
    assert counts.min() >= 1 and abs(counts.mean() - 6.3) < 0.05
