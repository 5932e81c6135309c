"""Tagging new audio: library API and CLI, on the tiny trained run."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from helpers import processes
from jaxtag.data import corpus, labels, pipeline
from jaxtag.tagging.outputs import find_audio, output_name, output_names
from jaxtag.tagging.tagger import Tagger


@pytest.fixture(scope="module")
def tagger(trained):
    _, workdir, _ = trained
    return Tagger.from_workdir(workdir)


def _synthetic_tracks(config):
    root = os.path.join(config.data.data_dir, "downloads")
    syn = [d for d in os.listdir(root) if d.startswith("jaxtag_synthetic")][0]
    return {t.name: t for t in corpus.find_tracks(os.path.join(root, syn))}


def test_taggram_matches_the_training_windows_and_evaluation_scores(trained, tagger):
    config, workdir, _ = trained
    tracks = _synthetic_tracks(config)
    with np.load(os.path.join(workdir, "eval", "test_predictions.npz"), allow_pickle=False) as npz:
        for ex in pipeline.load_split(config, "test", shuffle=False).as_numpy_iterator():
            name = ex["track"].decode()
            taggram = tagger.tag(tracks[name].audio_path)
            # The same windows as the prepared data: count, and start times from the same starts.
            assert len(taggram.start) == ex["mel"].shape[0]
            hop = config.data.hop_length / config.data.sample_rate
            n_frames = int(round(taggram.duration * config.data.sample_rate)) // config.data.hop_length + 1
            np.testing.assert_allclose(taggram.start, labels.window_starts(
                n_frames, config.data.window_frames, config.data.window_hop) * hop)
            # The same scores as evaluation of the same (best) checkpoint.
            np.testing.assert_allclose(taggram.scores, npz[f"{name}/scores"], rtol=1e-4, atol=1e-5)
    assert tagger.tags == list(trained[2]["tags"])


def test_settings_come_from_the_checkpoint_not_the_current_config(trained, tagger):
    config, _, _ = trained
    assert tagger.frontend.n_mels == config.data.n_mels == 32
    assert tagger.frontend.sample_rate == 8000 and tagger.config.model.lstm_size == 12


def test_file_shorter_than_a_window_is_padded_and_tagged(tagger, tmp_path):
    path = write_tone(tmp_path / "short.wav", 0.3, sr=16000)
    taggram = tagger.tag(path)
    assert taggram.scores.shape == (1, 18)
    assert taggram.start[0] == 0 and taggram.end[0] == pytest.approx(0.3, abs=1e-3)
    assert np.all((taggram.scores >= 0) & (taggram.scores <= 1))


def test_long_file_in_chunks_equals_one_piece(trained, tmp_path):
    _, workdir, _ = trained
    rng = np.random.default_rng(0)
    y = rng.standard_normal(8000 * 40).astype(np.float32) * np.repeat(rng.uniform(0.01, 0.5, 40), 8000)
    chunked = Tagger.from_workdir(workdir, chunk_windows=4).tag(y, sr=8000)
    whole = Tagger.from_workdir(workdir, chunk_windows=512).tag(y, sr=8000)
    assert len(chunked.start) > 8  # several chunks
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-5, atol=1e-6)


def test_waveform_input_equals_file_input(tagger, tmp_path):
    path = write_tone(tmp_path / "tone.wav", 5.0, sr=8000, channels=2)
    y, sr = sf.read(path, dtype="float32")
    np.testing.assert_allclose(tagger.tag(y, sr=sr).scores, tagger.tag(path).scores, rtol=1e-5)


def test_csv_round_trips_through_the_cal500exp_reader(tagger, tmp_path):
    taggram = tagger.tag(write_tone(tmp_path / "tone.wav", 12.0, sr=8000)).smoothed(3)
    path = tmp_path / "out.csv"
    path.write_text(taggram.to_csv())
    seg = labels.read_segments(path, taggram.tags, columns=None)
    expected = taggram.segments()
    np.testing.assert_allclose(seg.start, [s for s, _, _ in expected], atol=1e-6)
    np.testing.assert_allclose(seg.end, [e for _, e, _ in expected], atol=1e-6)
    np.testing.assert_array_equal(seg.labels, np.array([a for _, _, a in expected], np.float32))
    assert seg.start[0] == 0 and seg.end[-1] == pytest.approx(taggram.duration, abs=1e-6)


def test_segments_merge_identical_neighbours_and_use_nearest_centres():
    from jaxtag.tagging.decisions import threshold_policy
    from jaxtag.tagging.taggram import Taggram
    t = Taggram("x", 10.0, ["a", "b"], start=np.array([0.0, 2.0, 4.0, 6.0]), end=np.array([4.0, 6.0, 8.0, 10.0]),
                scores=np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.7]]),
                policy=threshold_policy(["a", "b"], [0.5, 0.5]))
    segs = t.segments()
    assert [(s, e) for s, e, _ in segs] == [(0.0, 5.0), (5.0, 10.0)]   # centres 2, 4 | 6, 8
    assert [list(a) for _, _, a in segs] == [[True, False], [False, True]]
    np.testing.assert_allclose(t.time_on(), [0.5, 0.5])
    # Smoothing changes the decisions, never the scores (they are written as the model gave them).
    np.testing.assert_array_equal(t.smoothed(3).scores, t.scores)


def test_the_window_at_an_instant_is_the_one_with_the_nearest_centre():
    from jaxtag.tagging.taggram import window_at
    rng = np.random.default_rng(0)
    start = np.cumsum(rng.uniform(0.5, 3.0, 20))      # uneven hops, as a last window's can be
    end = start + 4.0
    centres = (start + end) / 2
    for t in rng.uniform(0, end[-1], 500):
        assert window_at(start, end, t) == np.abs(centres - t).argmin()
    assert window_at(start, end, -1.0) == 0 and window_at(start, end, 1e9) == 19
    # Halfway between two centres: the later window, as Taggram.bounds() and the listening page.
    assert window_at(start, end, (centres[4] + centres[5]) / 2) == 5


def test_output_names_are_safe_and_unique(tmp_path):
    a, b = output_name("/music/a/song.mp3"), output_name("/music/b/song.mp3")
    assert a != b and a.startswith("song-")
    for nasty in ["../../etc/passwd.mp3", "<script>x</script>.mp3", ".hidden.mp3", "é è ü.flac"]:
        name = output_name(nasty)
        assert "/" not in name and not name.startswith(".") and "<" not in name
    names = output_names(["/m/a/song.mp3", "/m/b/song.mp3", "/m/Song.wav", "/m/solo <i>.mp3", "/m/b/Song.flac"])
    assert names["/m/solo <i>.mp3"] == "solo _i_"   # unique: the plain safe name, as users expect
    # Outputs mirror the folders below the inputs' common folder; names clash inside a folder only.
    assert names["/m/a/song.mp3"] == "a/song" and names["/m/Song.wav"] == "Song"
    clashing = [names[p] for p in ["/m/b/song.mp3", "/m/b/Song.flac"]]
    assert len(set(n.lower() for n in clashing)) == 2 and all(n.lower().startswith("b/song-") for n in clashing)
    # A directory given is the root its files' folders are mirrored below; names earlier runs
    # gave stay with their files, and no new file takes them.
    assert output_names(["/lib/Artist/Album/x.ogg"], roots=["/lib", "/lib/Artist"]) == {"/lib/Artist/Album/x.ogg": "Album/x"}
    kept = output_names(["/lib/A/x.ogg", "/lib/B/x.ogg"], roots=["/lib"], recorded={"/lib/B/x.ogg": "x", "/old/A/x.ogg": "A/x"})
    assert kept["/lib/B/x.ogg"] == "x" and kept["/lib/A/x.ogg"].startswith("A/x-")
    for nasty in ["/m/ .. /x.mp3", "/m/a:b?/c*.mp3", "/m/dots.../end.  .mp3"]:
        for part in output_names([nasty, "/m/z.mp3"])[nasty].split("/"):
            assert part and part[0] not in ". " and part[-1] not in ". " and ".." != part
    from jaxtag.errors import DataError
    from jaxtag.tagging.outputs import write_outputs
    with pytest.raises(DataError, match=r"^/m/x\.mp3: its output name .* would leave --output_dir"):
        write_outputs(None, "/m/x.mp3", str(tmp_path / "out"), ["json"], name="../escape")
    assert not (tmp_path / "escape.json").exists()
    (tmp_path / "d" / "e").mkdir(parents=True)
    for p in ["d/x.mp3", "d/e/y.FLAC", "d/e/notes.txt"]:
        (tmp_path / p).write_bytes(b"")
    assert find_audio([str(tmp_path / "d")]) == [str(tmp_path / "d/e/y.FLAC"), str(tmp_path / "d/x.mp3")]


def _tag_cli(*args):
    return processes.run_cli("jaxtag.tag", *args, timeout=600)


@pytest.mark.slow
def test_cli_tags_good_files_and_reports_a_corrupt_one(trained, tmp_path):
    _, workdir, _ = trained
    music = tmp_path / "music"
    music.mkdir()
    good = [write_tone(music / "one <b>&.wav", 4.0, sr=8000), write_tone(music / "two.flac", 3.0, sr=8000, fmt="FLAC")]
    bad = music / "broken.mp3"
    bad.write_text("not audio at all\n" * 20)
    empty = music / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    result = _tag_cli(f"--workdir={workdir}", str(music), f"--output_dir={out}", "--smooth=3", "--top_n=2")
    assert result.returncode == 1
    assert str(bad) in result.stderr and "cannot decode" in result.stderr
    assert f"{empty}: " in result.stderr and "empty (0 bytes)" in result.stderr
    for path, name in zip(good, ["one _b_&", "two"]):
        base = out / name
        for ext in ("json", "csv", "png", "html"):
            assert (base.parent / f"{base.name}.{ext}").stat().st_size > 0, ext
        record = json.loads((base.parent / f"{base.name}.json").read_text())
        assert record["file"] == path and len(record["tags"]) == 18
        assert all(set(w) == {"start", "end", "scores", "tags", "bpm"} for w in record["windows"])
        assert path in result.stdout  # top-n summary
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json") == ["library.json", "one _b_&.json", "two.json"]
    # --threshold overrides the run's: at 0 every tag is on in every window.
    result = _tag_cli(f"--workdir={workdir}", good[1], f"--output_dir={tmp_path / 'all_on'}", "--threshold=0",
                      "--formats=json")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "all_on" / "two.json").read_text())
    assert all(sorted(w["tags"]) == sorted(record["tags"]) for w in record["windows"])
    # An impossible option fails before any work, naming itself.
    result = _tag_cli(f"--workdir={workdir}", good[1], f"--output_dir={tmp_path / 'even'}", "--smooth=2")
    assert result.returncode != 0 and "--smooth must be an odd number" in result.stderr
    assert not (tmp_path / "even").exists()


def test_cli_without_checkpoint_fails_clearly(tmp_path):
    path = write_tone(tmp_path / "a.wav", 1.0)
    result = _tag_cli(f"--workdir={tmp_path}/empty", path, f"--output_dir={tmp_path}/out")
    assert result.returncode == 2
    assert "no checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_files_of_different_lengths_in_one_bucket_compile_once(trained):
    from jaxtag.training.compilations import count_compilations
    _, workdir, _ = trained
    tagger = Tagger.from_workdir(workdir)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(8000 * s)).astype(np.float32) * 0.1 for s in (2.5, 3.0, 3.5)]
    lengths = [tagger.tag(w, sr=8000).scores.shape[0] for w in waves]
    assert len(set(lengths)) == 3 and max(lengths) <= 8  # three lengths, one bucket (8)
    fresh = Tagger.from_workdir(workdir)
    with count_compilations() as first:
        fresh.tag(waves[0], sr=8000)
    with count_compilations() as more:
        for w in waves[1:]:
            fresh.tag(w, sr=8000)
    assert first["n"] >= 1 and more["n"] == 0


def test_a_checkpoint_in_the_earlier_layout_still_tags(trained, tmp_path):
    """Runs saved before the paper trunk became plain Flax kept its conv layers under trunk/convs/:
    restored for inference, they tag exactly as the same weights in today's layout."""
    from jaxtag.training import checkpoints
    _, workdir, _ = trained
    variables, meta = checkpoints.restore_for_inference(workdir)
    trunk = variables["params"]["trunk"]
    old = {**variables, "params": {**variables["params"], "trunk": {
        "dense_0": trunk["dense_0"], "convs": {k: v for k, v in trunk.items() if k.startswith("conv")}}}}
    assert "conv0" not in old["params"]["trunk"]
    store = checkpoints.CheckpointStore(str(tmp_path / "old"))
    try:
        store.save(meta["step"], old, {"unused": np.zeros(1)}, meta, 1.0, True)
        store.wait()
    finally:
        store.close()
    y = np.random.default_rng(0).standard_normal(8000 * 5).astype(np.float32) * 0.1
    np.testing.assert_array_equal(Tagger.from_workdir(str(tmp_path / "old")).tag(y, sr=8000).scores,
                                  Tagger.from_workdir(workdir).tag(y, sr=8000).scores)


@pytest.mark.parametrize("tags", [["Emotion-Happy", "Emotion-Not_Angry_Aggressive"],
                                  [f"tag {i} " + "x" * (i % 23) for i in range(50)]])
def test_taggram_picture_keeps_every_label_inside_and_clear_of_the_plot(tags):
    """The margins are set from the labels' measured widths (no fitting at drawing time): every
    text is inside the picture and the tag labels do not run into the heat map."""
    import matplotlib.pyplot
    import matplotlib.text
    from jaxtag.tagging import plots
    from jaxtag.tagging.decisions import threshold_policy
    from jaxtag.tagging.taggram import Taggram
    n = len(tags)
    starts = np.arange(6) * 3.0
    taggram = Taggram("a rather long file name of a song.flac", 18.0, tags, starts, starts + 3.0,
                      np.random.default_rng(0).random((6, n)).astype(np.float32), threshold_policy(tags, 0.5),
                      "musicnn-msd", np.tile([[-0.5, 0.5]], (50, 1)))
    fig = plots.taggram_figure(taggram)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    picture = fig.bbox
    heat_map = fig.axes[0]
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    assert len(texts) > n
    for text in texts:
        box = text.get_window_extent(renderer)
        assert picture.x0 <= box.x0 and box.x1 <= picture.x1 and picture.y0 <= box.y0 and box.y1 <= picture.y1, \
            (text.get_text(), box, picture)
    plot_left = heat_map.get_window_extent(renderer).x0
    assert max(t.get_window_extent(renderer).x1 for t in heat_map.get_yticklabels()) < plot_left
    # and no wide empty margin: the longest label starts near the picture's left edge
    assert min(t.get_window_extent(renderer).x0 for t in heat_map.get_yticklabels()) - picture.x0 < 0.3 * fig.dpi
    matplotlib.pyplot.close(fig)


def _teal_pixels(png: bytes) -> int:
    import io

    import matplotlib.image
    rgb = (matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).round()
    return int(np.sum(np.all(np.abs(rgb - [0x2d, 0xd4, 0xbf]) <= 2, axis=-1)))


def test_taggram_picture_marks_exactly_the_active_cells():
    import io

    from jaxtag.tagging import plots
    from jaxtag.tagging.decisions import threshold_policy
    from jaxtag.tagging.taggram import Taggram
    # Windows 0-4, 2-6, 4-8 s of an 8-s file: stretches 0-3, 3-5, 5-8 s (nearest centre).
    scores = np.array([[0.1, 0.2], [0.9, 0.3], [0.2, 0.7]], np.float32)
    tags = ["Emotion-Happy", "Emotion-Sad"]
    taggram = Taggram("song.wav", 8.0, tags, np.array([0.0, 2.0, 4.0]),
                      np.array([4.0, 6.0, 8.0]), scores, threshold_policy(tags, [0.5, 0.6]), "m",
                      np.tile([[-0.5, 0.5]], (50, 1)))
    np.testing.assert_allclose(plots.active_segments(taggram), [[[3.0, 0.5], [5.0, 0.5]],    # window 1, tag 0
                                                                [[5.0, 1.5], [8.0, 1.5]]])   # window 2, tag 1
    png = io.BytesIO()
    plots.plot_taggram(taggram, png)
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and _teal_pixels(png.getvalue()) > 0
    quiet = taggram.with_policy(threshold_policy(tags, 0.95))
    assert plots.active_segments(quiet).shape == (0, 2, 2)
    png = io.BytesIO()
    plots.plot_taggram(quiet, png)
    assert _teal_pixels(png.getvalue()) == 0
