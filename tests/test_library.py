"""Tagging a library: streaming decode in workers, windows of several files per chunk, resumable
outputs, one bad file never stopping the others, the library summary and page, audio integrity
warnings, tags written into the files, embeddings."""
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from helpers import library_state, processes
from jaxtag.data import audio, features
from jaxtag.library import file_tags as metadata
from jaxtag.library.run import LibraryOptions, tag_library
from jaxtag.library.state import LibraryState
from jaxtag.tagging.outputs import output_names
from jaxtag.tagging.tagger import Tagger


@pytest.fixture(scope="module")
def tagger(trained):
    return Tagger.from_workdir(trained[1])


def _music(path, seconds, sr=22050, channels=1, seed=0, fmt=None):
    """A few tones changing every second, with noise: windows differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    freq = 110 * 2 ** (rng.integers(0, 24, int(seconds) + 1) / 12)[t.astype(int)]
    y = 0.3 * np.sin(2 * np.pi * np.cumsum(freq) / sr) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    y = (y + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    sf.write(str(path), np.stack([y] * channels, 1) if channels > 1 else y, sr, format=fmt)
    return str(path)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("music")
    return [_music(folder / "one.wav", 7.5, sr=8000), _music(folder / "two.flac", 5.2, channels=2, seed=1),
            _music(folder / "three.mp3", 12.3, sr=44100, seed=2), _music(folder / "four.ogg", 3.1, seed=3)]


@pytest.mark.parametrize("sr_in, seconds", [(44100, 7.3), (8000, 2.05), (22050, 0.02)])
def test_streaming_decoding_equals_decoding_the_whole_file(tmp_path, sr_in, seconds):
    path = _music(tmp_path / "x.wav", seconds, sr=sr_in, channels=2)
    settings = features.FrontendSettings(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96)
    whole = audio.load_audio(path, 16000)
    blocks = list(audio.AudioStream(path, 16000, block_seconds=0.7))
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    mel = features.StreamingMel(settings)
    streamed = np.concatenate([mel.push(b) for b in blocks] + [mel.finish()])
    expected = features.mel_spectrogram(whole, settings)
    assert streamed.shape == expected.shape == (1 + len(whole) // 256, 96)
    np.testing.assert_allclose(streamed, expected, rtol=1e-4, atol=1e-7 * expected.max())


def _options(out, **kw):
    return LibraryOptions(output_dir=str(out), workers=kw.pop("workers", 1), top_n=0, **kw)


def test_decoding_workers_run_numpy_blas_on_one_thread():
    """A decoding worker's BLAS (its mel projection) on more threads than one spins on the cores
    the model's threads need (measured: twice the CPU time for the same decoding)."""
    import concurrent.futures
    import importlib
    import multiprocessing
    import threadpoolctl
    from jaxtag.tagging import decoding
    context = multiprocessing.get_context("spawn")
    runs = {}
    for name, init, args in (("plain", importlib.import_module, ("numpy",)), ("worker", decoding.init_worker, ())):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=init, initargs=args) as pool:
            runs[name] = [(p["user_api"], p["num_threads"]) for p in pool.submit(threadpoolctl.threadpool_info).result()]
    assert any(api == "blas" for api, _ in runs["worker"])
    assert all(threads == 1 for _, threads in runs["worker"]), runs["worker"]
    if (os.cpu_count() or 1) > 1:  # what the initializer changes: numpy's default is a thread per core
        assert any(api == "blas" and threads > 1 for api, threads in runs["plain"]), runs["plain"]


def test_library_outputs_equal_the_tagger_and_the_summary_is_right(tagger, library, tmp_path):
    out = tmp_path / "out"
    result = tag_library(tagger, library, _options(out, workers=2, embeddings=True))
    assert sorted(result.tagged) == sorted(library) and not result.failed and not result.skipped
    from jaxtag.tagging.decoding import peak_rss_mb
    assert 10 < result.worker_peak_rss_mb < peak_rss_mb()  # workers measure their own memory; no JAX in them
    rows = {r["path"]: r for r in json.loads((out / "library.json").read_text())["files"]}
    with open(out / "library.csv", newline="") as f:
        table = {r["path"]: r for r in csv.DictReader(f)}
    for path in library:
        name = os.path.splitext(os.path.basename(path))[0]
        record = json.loads((out / f"{name}.json").read_text())
        scores = np.array([w["scores"] for w in record["windows"]])
        # Streamed decoding and windows batched across files give the in-memory tagger's scores.
        np.testing.assert_allclose(scores, tagger.tag(path).scores, atol=2e-6)
        start, end = np.array([w["start"] for w in record["windows"]]), np.array([w["end"] for w in record["windows"]])
        with np.load(out / f"{name}.embeddings.npz", allow_pickle=False) as npz:
            np.testing.assert_allclose(npz["start"], start)
            np.testing.assert_allclose(npz["end"], end)
            # The penultimate layer: the output layer on the embeddings gives the scores.
            w, b = (np.asarray(tagger.variables["params"]["out"][k]) for k in ("kernel", "bias"))
            np.testing.assert_allclose(1 / (1 + np.exp(-(npz["embeddings"] @ w + b))), scores, atol=1e-5)
        _check_summary_row(rows[path], table[path], record, scores, start, end)


@pytest.mark.slow   # (a library run with a slowed decoder: 10 s; the fast tier measured 3:54 with it)
def test_the_model_takes_a_files_windows_while_it_is_still_being_decoded(trained, library, tmp_path, monkeypatch):
    """A long file's windows go through the model as its frames arrive (whole chunks of the
    regular windows), the rest once its length is known; the scores equal the in-memory tagger's."""
    from helpers.crashing_decoder import decode_then_linger
    from jaxtag.library import run as library_module
    small_chunks = Tagger.from_workdir(trained[1], chunk_windows=4)
    take_decoded, fed_before_the_end = library_module._take_decoded, {}

    def note_windows_fed_then_take(c, state, decoded, batcher):
        fed_before_the_end[state.path] = state.fed
        return take_decoded(c, state, decoded, batcher)
    monkeypatch.setattr(library_module, "_take_decoded", note_windows_fed_then_take)
    out = tmp_path / "out"
    result = tag_library(small_chunks, library, _options(out, workers=2), decode=decode_then_linger)
    assert sorted(result.tagged) == sorted(library)
    hop = small_chunks.frontend.window_hop
    for path in library:
        name = os.path.splitext(os.path.basename(path))[0]
        windows = json.loads((out / f"{name}.json").read_text())["windows"]
        starts = np.round(np.array([w["start"] for w in windows]) / small_chunks.frontend.seconds_per_frame)
        regular = int(np.sum(starts % hop == 0))  # all but the one aligned to the end, if any
        assert regular >= 4 and regular - 4 < fed_before_the_end[path] <= regular, (path, fed_before_the_end)
        scores = np.array([w["scores"] for w in windows])
        np.testing.assert_allclose(scores, small_chunks.tag(path).scores, atol=2e-6)


def test_the_model_goes_on_while_a_files_outputs_are_written(trained, library, tmp_path, monkeypatch):
    """Outputs are written on a writer thread: the first file's writing is held until the model
    has encoded another chunk, which it could not do if writing blocked it. Every file ends
    tagged, with its outputs and record, in a library written after all of them."""
    import threading
    from jaxtag.library import run as library_module
    tagger = Tagger.from_workdir(trained[1], chunk_windows=1)
    from jaxtag.library import write as write_module
    write, encode = write_module.write_outputs, tagger.encode_chunk
    writing_first, encoded_meanwhile, first = threading.Event(), threading.Event(), []

    def encode_chunk(windows):
        if writing_first.is_set():
            encoded_meanwhile.set()
        return encode(windows)

    def write_outputs(taggram, path, *args, **kwargs):
        if not first:
            first.append(path)
            writing_first.set()
            encoded_meanwhile.wait(timeout=20)
            writing_first.clear()   # only encodes while the write is held count
        return write(taggram, path, *args, **kwargs)
    monkeypatch.setattr(tagger, "encode_chunk", encode_chunk)
    monkeypatch.setattr(write_module, "write_outputs", write_outputs)
    out = tmp_path / "out"
    result = tag_library(tagger, library, _options(out, workers=2))
    assert encoded_meanwhile.is_set(), "the model waited for the first file's outputs"
    assert sorted(result.tagged) == sorted(library) and not result.failed
    assert sorted(r["path"] for r in json.loads((out / "library.json").read_text())["files"]) == sorted(library)
    for path in library:
        name = os.path.splitext(os.path.basename(path))[0]
        assert (out / f"{name}.png").stat().st_size > 0
        assert library_state.record(out, name)["source"]["path"] == os.path.abspath(path)


def test_a_frames_file_gone_mid_feed_loses_no_file_the_model_completed(trained, tmp_path, monkeypatch):
    """Its worker failed and removed a file's frames while the model read them: the files the
    chunks already encoded completed are still handed back (else never written)."""
    from jaxtag.library import run as library_module
    tagger = Tagger.from_workdir(trained[1], chunk_windows=2)
    f = tagger.frontend
    batcher = library_module.WindowBatcher(tagger, library_module.LibraryResult())
    other = library_module._FileState("other.wav", "", n_windows=1)
    batcher.add(other, 0, np.zeros((1, f.window_frames, f.n_mels), np.float32))
    frames = tmp_path / "long.f32"
    np.random.default_rng(0).random((f.window_frames + 2 * f.window_hop, f.n_mels), dtype=np.float32).tofile(frames)
    read_frames, reads = library_module.decoding.read_frames, []

    def read_then_vanish(*args):
        reads.append(args)
        if len(reads) > 1:
            raise FileNotFoundError(str(frames))
        return read_frames(*args)
    monkeypatch.setattr(library_module.decoding, "read_frames", read_then_vanish)
    long = library_module._FileState("long.wav", str(frames))
    done = library_module._feed_arrived(tagger, long, batcher)
    assert done == [other] and other.encoded == 1 and long.fed == 2 and len(reads) == 2


def test_formats_must_be_known_and_include_json(tagger, library, tmp_path):
    from jaxtag.tagging.outputs import check_formats
    check_formats(("json", "png"))
    with pytest.raises(ValueError, match=r"unknown \['mp4'\]"):
        check_formats(("json", "mp4"))
    with pytest.raises(ValueError, match="must include json"):
        tag_library(tagger, library, _options(tmp_path / "out", formats=("csv", "png")))
    assert not (tmp_path / "out").exists()  # refused before anything is written


def _check_summary_row(row, csv_row, record, scores, start, end):
    """The row recomputed from the file's own JSON: time on from the nearest window centre at
    every instant, the strongest window, the top tags by mean score."""
    tags, duration = record["tags"], record["duration"]
    centres = (start + end) / 2
    instants = np.linspace(0, duration, 20001)[:-1] + duration / 40000
    nearest = np.abs(instants[:, None] - centres[None, :]).argmin(axis=1)
    on = scores >= np.array(record["threshold"])
    for j, tag in enumerate(tags):
        assert row["share"][tag] == pytest.approx(on[nearest, j].mean(), abs=2e-3)
        k = int(np.argmax(scores[:, j]))
        assert row["strongest"][tag] == pytest.approx({"start": start[k], "end": end[k], "score": scores[k, j]},
                                                      abs=1e-3)
        assert float(csv_row[f"{tag} share"]) == pytest.approx(row["share"][tag], abs=1e-4)
        assert float(csv_row[f"{tag} strongest score"]) == pytest.approx(row["strongest"][tag]["score"], abs=1e-4)
    mean = scores.mean(axis=0)
    assert [t for t, _ in row["top_tags"]] == [tags[i] for i in np.argsort(-mean, kind="stable")[:5]]
    assert row["duration"] == pytest.approx(duration, abs=1e-3) and csv_row["model"] == record["model"]


@pytest.mark.slow
def test_rerun_redoes_only_what_changed(tagger, library, tmp_path):
    files = [shutil.copy(p, tmp_path) for p in library]
    out = tmp_path / "out"
    assert len(tag_library(tagger, files, _options(out)).tagged) == 4
    again = tag_library(tagger, files, _options(out))
    assert again.tagged == [] and sorted(again.skipped) == sorted(files)
    _music(files[0], 6.0, sr=8000, seed=9)                     # new content
    shutil.copy(files[1], files[1] + ".bak")                   # same content, new mtime
    os.replace(files[1] + ".bak", files[1])
    changed = tag_library(tagger, files, _options(out))
    assert changed.tagged == [files[0]] and len(changed.skipped) == 3
    assert json.loads((out / "one.json").read_text())["duration"] == pytest.approx(6.0, abs=0.01)
    assert len(tag_library(tagger, files, _options(out, force=True)).tagged) == 4
    # Asking for another output (embeddings) writes it for every file from the stored model output.
    exported = tag_library(tagger, files, _options(out, embeddings=True))
    assert len(exported.derived) == 4 and not exported.tagged
    assert (out / "one.embeddings.npz").exists()
    assert not [f for f in os.listdir(out) if ".jaxtag-tmp-" in f]


def test_bad_files_are_reported_and_the_others_tagged(tagger, library, tmp_path, capsys, monkeypatch):
    empty, corrupt, missing = tmp_path / "empty.wav", tmp_path / "corrupt.mp3", str(tmp_path / "gone.flac")
    empty.write_bytes(b"")
    corrupt.write_text("not audio at all\n" * 50)
    files = [library[0], str(empty), str(corrupt), missing, library[3]]
    out = tmp_path / "out"
    recorded = []
    real_record = LibraryState.record_failures
    monkeypatch.setattr(LibraryState, "record_failures", lambda self, run, failed, cleared: (
        recorded.append(sorted(failed)), real_record(self, run, failed, cleared))[1])
    result = tag_library(tagger, files, _options(out, workers=2))
    assert recorded == [sorted([str(empty), str(corrupt), missing])]   # once a run, by finish_run
    assert sorted(result.tagged) == sorted([library[0], library[3]])
    assert result.failed[str(empty)] == "audio file is empty (0 bytes)"
    assert result.failed[str(corrupt)].startswith("cannot decode audio")
    assert result.failed[missing] == "audio file not found"
    err = capsys.readouterr().err
    for path in (str(empty), str(corrupt), missing):
        assert f"error: {path}: " in err
    summary = json.loads((out / "library.json").read_text())
    assert {f["path"] for f in summary["failed"]} == {str(empty), str(corrupt), missing}
    assert sorted(r["path"] for r in summary["files"]) == sorted([library[0], library[3]])


def _truncate_to(path, fraction):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * fraction)])
    return path


def test_truncated_and_short_files_are_tagged_with_a_warning(tagger, tmp_path, capsys):
    wav = _truncate_to(_music(tmp_path / "cut_wav.wav", 10.0, sr=8000), 0.3)
    mp3 = _truncate_to(_music(tmp_path / "cut_mp3.mp3", 10.0), 0.3)
    short = write_tone(tmp_path / "blip.wav", 0.4, sr=8000)
    fine = [_music(tmp_path / f"fine_{ext}.{ext}", 4.0, fmt=ext.upper()) for ext in ("wav", "mp3", "flac", "ogg")]
    out = tmp_path / "out"
    result = tag_library(tagger, [wav, mp3, short, *fine], _options(out))
    assert len(result.tagged) == 7 and not result.failed
    err = capsys.readouterr().err
    assert re.search(rf"warning: {re.escape(wav)}: truncated: its header promises 10\.0 s of audio, its data hold "
                     r"about 3\.0 s", err)
    assert re.search(rf"warning: {re.escape(mp3)}: truncated: its header promises 10\.0 s of audio, its data hold "
                     r"about 3\.\d s", err)
    assert re.search(rf"warning: {re.escape(short)}: shorter than one window \(0\.40 s < 1\.02 s\)", err)
    assert not any(f in err for f in fine)
    assert json.loads((out / "cut_wav.json").read_text())["duration"] == pytest.approx(3.0, abs=0.05)
    row = next(r for r in json.loads((out / "library.json").read_text())["files"] if r["name"] == "cut_wav")
    assert row["warnings"][0].startswith("truncated: its header promises 10.0 s")   # in the library's summary
    assert [r["warnings"] for r in json.loads((out / "library.json").read_text())["files"] if r["name"] == "fine_wav"] \
        == [[]]


def _samples(path):
    return sf.read(path, dtype="float32")[0]


def test_write_tags_into_the_files_and_dry_run(tagger, library, tmp_path, capsys):
    from jaxtag.data.tags import EMOTION_TAGS, short_tag
    files = [shutil.copy(p, tmp_path) for p in library[:3]]     # wav, flac, mp3
    before = {p: (_samples(p), open(p, "rb").read()) for p in files}
    policy = tagger.policy
    tagger.policy = policy.with_threshold(0.0)                   # every tag on: all 18 emotions are moods
    try:
        dry = tag_library(tagger, files, _options(tmp_path / "dry", write_tags=True, dry_run=True))
        assert not dry.failed and all(open(p, "rb").read() == before[p][1] for p in files)
        err = capsys.readouterr().err
        assert all(f"{p}: would write" in err for p in files) and "model=cnn_lstm; tags=" in err
        result = tag_library(tagger, files, _options(tmp_path / "out", write_tags=True))
        assert not result.failed
        again = tag_library(tagger, files, _options(tmp_path / "out", write_tags=True))
    finally:
        tagger.policy = policy
    emotions = {short_tag(t) for t in EMOTION_TAGS}
    for path in files:
        fields = metadata.read_tags(path)
        mood = next(v for k, v in fields.items() if "MOO" in k.upper())
        model, tags = metadata.parse_jaxtag(next(v for k, v in fields.items() if "JAXTAG" in k.upper()))
        assert model == "cnn_lstm" and len(tags) == 18 and set(mood.split("; ")) == emotions
        np.testing.assert_array_equal(_samples(path), before[path][0])   # the audio is untouched
    assert again.tagged == [] and len(again.skipped) == 3                # the new mtime was recorded
    # Back to the run's own thresholds: the rows and the tags in the files are derived again from
    # the stored scores (no model), as the policy decides them from those scores.
    back = tag_library(tagger, files, _options(tmp_path / "out", write_tags=True))
    assert sorted(back.derived) == sorted(files) and not back.tagged and not back.failed
    rows = {r["path"]: r for r in json.loads((tmp_path / "out" / "library.json").read_text())["files"]}
    from jaxtag.library.write import stored_taggram
    from jaxtag.library.state import LibraryState
    for path, name in output_names(files).items():
        with LibraryState(str(tmp_path / "out")) as state:
            content = library_state.record(tmp_path / "out", name)["source"]["content"]
            decided = stored_taggram(tagger, str(tmp_path / "out"), state, content, path)[2].decisions()
        assert rows[path]["track_tags"] == list(decided.track_tags)
        assert rows[path]["moods"] == [short_tag(t) for t in decided.moods]
        mood = next((v for k, v in metadata.read_tags(path).items() if "MOO" in k.upper()), None)
        assert mood == ("; ".join(rows[path]["moods"]) or None)
    assert any(len(r["moods"]) < 18 for r in rows.values())   # the decisions did change


@contextlib.contextmanager
def _calibrated_on(tagger, files, smooth=1):
    """The tagger decides by the calibrated rule, with reference statistics made from `files`."""
    from jaxtag.tagging import decisions
    summaries = [decisions.summarise_track(tagger.tag(f).scores) for f in files]
    reference = {"model": "test", "tags": tagger.tags, "description": f"{len(files)} test files",
                 "statistics": decisions.reference_statistics(summaries)}
    policy = tagger.policy
    tagger.policy = decisions.calibrated_policy(tagger.tags, reference, smooth=smooth)
    try:
        yield reference["statistics"]
    finally:
        tagger.policy = policy


def test_every_output_follows_the_calibrated_decisions(tagger, library, tmp_path):
    """Per-tag thresholds (from reference statistics) and smoothing decide each window's tags in
    the JSON, the CSV segments and the listening page; the track rule the rows' tags and moods,
    which --write_tags writes into the files. Recomputed here from the stored scores."""
    import scipy.ndimage
    from jaxtag.data.tags import short_tag
    from jaxtag.library import run as library_module
    files = [shutil.copy(p, tmp_path) for p in library]
    out = tmp_path / "out"
    with _calibrated_on(tagger, files, smooth=3) as stats:
        result = tag_library(tagger, files, _options(out, write_tags=True))
        names = output_names(files)
    assert sorted(result.tagged) == sorted(files)
    thresholds = 1 / (1 + np.exp(-(np.array(stats["window_mean"]) + 1.28 * np.array(stats["window_std"]))))
    rows = {r["path"]: r for r in json.loads((out / "library.json").read_text())["files"]}
    carried = set()
    for path in files:
        name = names[path]
        scores = library_state.stored(out, name)["scores"]
        active = scipy.ndimage.median_filter(scores, size=(3, 1), mode="nearest") >= thresholds.astype(np.float32)
        written = json.loads((out / f"{name}.json").read_text())
        np.testing.assert_allclose(written["threshold"], thresholds, rtol=1e-5)
        assert [w["tags"] for w in written["windows"]] == [[t for t, on in zip(tagger.tags, a) if on] for a in active]
        page = (out / f"{name}.html").read_text()
        payload = json.loads(re.search(r'id="taggram-data">(.*?)</script>', page, re.S).group(1))
        assert payload["active"] == active.astype(int).tolist()
        segments = __import__("jaxtag.data.labels", fromlist=["x"]).read_segments(out / f"{name}.csv", tagger.tags,
                                                                                 columns=None)
        assert {tuple(row) for row in segments.labels.astype(bool)} <= {tuple(a) for a in active}
        # The track: z of its mean log-odds against the reference tracks.
        z = (np.log(np.clip(scores, 1e-6, 1 - 1e-6) / (1 - np.clip(scores, 1e-6, 1 - 1e-6))).mean(0)
             - np.array(stats["track_mean"])) / np.array(stats["track_std"])
        order = [tagger.tags[i] for i in np.argsort(-z, kind="stable")]
        zs = dict(zip(tagger.tags, z))
        distinct = [t for t in order if zs[t] >= 1.0][:5]
        lean = [t for t in order if 0.5 <= zs[t] < 1.0][:max(0, 2 - len(distinct))]
        moods = [t for t in order if zs[t] >= 0.5][:2]       # every tag of this model is a mood (an emotion)
        row = rows[path]
        assert row["moods"] == [short_tag(t) for t in moods]
        assert row["track_tags"] == [t for t in order if t in distinct + lean + moods]
        fields = metadata.read_tags(path)
        assert (next((v for k, v in fields.items() if "MOO" in k.upper()), "") or "") == "; ".join(row["moods"])
        _, file_tags = metadata.parse_jaxtag(next(v for k, v in fields.items() if "JAXTAG" in k.upper()))
        assert file_tags == [short_tag(t) for t in row["track_tags"]]
        carried.update(row["track_tags"])
    assert carried, "no file carries a tag: the test would check nothing"


def test_every_output_follows_the_evidence_decisions(tagger, library, tmp_path):
    """The evidence rule (the pretrained models' default): a window's tag is on where its score
    passes both its base-rate and its reference-spread thresholds; a track carries the tags on for
    at least the levels' track share of its time (from the CSV segments' durations, computed here), its
    moods those on for at least their mood share; the rows, the files' own tags and the JSON all follow."""
    from jaxtag.data.tags import short_tag
    from jaxtag.tagging import decisions
    from jaxtag.library import run as library_module
    files = [shutil.copy(p, tmp_path) for p in library]
    summaries = [decisions.summarise_track(tagger.tag(f).scores) for f in files]
    stats = decisions.reference_statistics(summaries)
    reference = {"model": "test", "tags": tagger.tags, "description": "test files", "statistics": stats}
    out, default = tmp_path / "out", tagger.policy
    # The tiny test model's scores hardly move: a low ratio, so that some tags pass it.
    tagger.policy = decisions.evidence_policy(tagger.tags, reference, ratio=1.05)
    try:
        tag_library(tagger, files, _options(out, write_tags=True))
    finally:
        tagger.policy = default
    from jaxtag.data.tags import is_mood
    levels = decisions.DEFAULT_EVIDENCE_LEVELS   # the test reference's model ("test") has no levels of its own
    base = np.maximum(stats["base_rate"], [levels.min_mood_base_rate if is_mood(t) else levels.min_base_rate
                                           for t in tagger.tags])
    real = np.log(base / (1 - base)) + np.log(1.05)
    spread = np.array(stats["window_mean"]) + 1.28 * np.array(stats["window_std"])
    thresholds = 1 / (1 + np.exp(-np.maximum(real, spread)))
    rows = {r["path"]: r for r in json.loads((out / "library.json").read_text())["files"]}
    names, carried = output_names(files), set()
    for path in files:
        scores = library_state.stored(out, names[path])["scores"]
        written = json.loads((out / f"{names[path]}.json").read_text())
        np.testing.assert_allclose(written["threshold"], thresholds, rtol=1e-5)
        assert [w["tags"] for w in written["windows"]] == [[t for t, on in zip(tagger.tags, a) if on]
                                                           for a in scores >= thresholds.astype(np.float32)]
        segments = __import__("jaxtag.data.labels", fromlist=["x"]).read_segments(out / f"{names[path]}.csv",
                                                                                 tagger.tags, columns=None)
        lengths = segments.end - segments.start
        share = (lengths[:, None] * segments.labels).sum(0) / lengths.sum()
        mean = scores.mean(0)
        order = sorted(range(len(tagger.tags)), key=lambda i: (-round(share[i], 6), -mean[i]))
        tags = [tagger.tags[i] for i in order if share[i] >= levels.track_share - 1e-6][:5]
        moods = [tagger.tags[i] for i in order if share[i] >= levels.mood_share - 1e-6][:2]
        row = rows[path]
        assert row["moods"] == [short_tag(t) for t in moods]
        assert row["track_tags"] == [tagger.tags[i] for i in order if tagger.tags[i] in tags + moods]
        np.testing.assert_allclose([row["strength"][t] for t in tagger.tags], share, atol=1e-3)
        _, file_tags = metadata.parse_jaxtag(next(v for k, v in metadata.read_tags(path).items() if "JAXTAG" in k.upper()))
        assert file_tags == [short_tag(t) for t in row["track_tags"]]
        carried.update(row["track_tags"])
    assert carried, "no file carries a tag: the test would check nothing"


def test_a_file_whose_tags_cannot_be_written_counts_once(tagger, library, tmp_path, monkeypatch, capsys):
    """A file tagged whose own tags could not be written is tagged (its outputs are there), and
    reported apart: never both tagged and failed; the exit status says so."""
    files = [shutil.copy(p, tmp_path) for p in library[:3]]
    real = metadata.write_tags

    def refuse_one(path, *args, **kwargs):
        if path == files[1]:
            raise metadata.DataError(path, "tags not written, the file is unchanged: a test refusal")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(metadata, "write_tags", refuse_one)
    result = tag_library(tagger, files, _options(tmp_path / "out", write_tags=True))
    assert sorted(result.tagged) == sorted(files) and not result.failed
    assert list(result.tags_not_written) == [files[1]]
    assert result.summary_line(3) == "tagged 3, already done 0, failed 0 of 3 file(s); tags not written into 1"
    summary = json.loads((tmp_path / "out" / "library.json").read_text())
    assert len(summary["files"]) == 3 and summary["failed"] == []
    assert [f["path"] for f in summary["tags_not_written"]] == [files[1]]
    assert f"error: {files[1]}: tags not written: tags not written, the file is unchanged" in capsys.readouterr().err


def test_file_names_that_are_not_utf8_are_tagged_and_shown_escaped(tagger, tmp_path):
    """Old Latin-1 collections: `caf\xe9.ogg` is tagged; its outputs, record, library rows and page
    name it with the byte escaped; a rerun finds it done; its own tags are written."""
    from jaxtag.tagging.outputs import find_audio
    folder = tmp_path / "latin1"
    folder.mkdir()
    names = []
    for i, ext in enumerate(("ogg", "wav", "mp3", "flac")):
        raw = os.fsencode(str(folder)) + b"/caf\xe9 " + str(i).encode() + b"." + ext.encode()
        _music(tmp_path / f"plain.{ext}", 4.0, seed=i)
        os.rename(tmp_path / f"plain.{ext}", raw)
        names.append(os.fsdecode(raw))
    files = find_audio([str(folder)])
    assert sorted(files) == sorted(names)
    out = tmp_path / "out"
    result = tag_library(tagger, files, _options(out, write_tags=True))
    assert sorted(result.tagged) == sorted(files) and not result.failed and not result.tags_not_written
    shown = {f["path"] for f in json.loads((out / "library.json").read_text(encoding="utf-8"))["files"]}
    assert shown == {f"{folder}/caf\\xe9 {i}.{ext}" for i, ext in enumerate(("ogg", "wav", "mp3", "flac"))}
    with open(out / "library.csv", encoding="utf-8", newline="") as f:
        assert {r["path"] for r in csv.DictReader(f)} == shown
    for path in files:
        assert metadata.read_tags(path)                              # written into the file itself
    pages = [p for p in os.listdir(out) if p.endswith(".html") and p != "index.html"]
    assert len(pages) == 4 and all("caf\\xe9" in (out / p).read_text(encoding="utf-8") for p in pages)
    assert all("%E9" in (out / p).read_text(encoding="utf-8") for p in pages)   # the audio linked by its bytes
    again = tag_library(tagger, files, _options(out, write_tags=True))
    assert sorted(again.skipped) == sorted(files) and not again.tagged


def _tag_cli(*args):
    return [sys.executable, "-m", "jaxtag.tag", *args]


def _record_count(out):
    """Files done: those whose decisions are recorded (after all their outputs)."""
    return library_state.decided_count(out)


def _run_with_fault(fault, args, log_dir):
    """Run the tag command with a fault injected (tests/helpers/run_with_fault.py); its exit code
    and stderr (through a file: a pipe could be held open by a worker)."""
    command = [sys.executable, os.path.join(processes.TESTS, "helpers", "run_with_fault.py"), fault, "jaxtag.tag", *args]
    with open(log_dir / "stderr", "w+") as err:
        proc = subprocess.Popen(command, cwd=processes.REPO, env=processes.environment(), stdout=subprocess.DEVNULL,
                                stderr=err, text=True)
        returncode = proc.wait(timeout=600)
        err.seek(0)
        return returncode, err.read()


def _check_complete(out, files):
    """Every file has all four outputs, each valid; no temporary file is left."""
    from jaxtag.tagging.outputs import output_names
    for path, name in output_names(files).items():
        record = json.loads((out / f"{name}.json").read_text())
        assert record["file"] == path and record["windows"]
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{name}.csv").read_text().startswith("Start_Time,End_Time,")
        assert (out / f"{name}.html").read_text().rstrip().endswith("</html>")
    with open(out / "library.csv", newline="") as f:
        assert sorted(r["path"] for r in csv.DictReader(f)) == sorted(files)
    assert not [f for f in os.listdir(out) if ".jaxtag-tmp-" in f]


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twelve")
    return [_music(folder / f"song{i:02d}.{('wav', 'flac', 'mp3')[i % 3]}", 3.0 + i % 4, seed=i) for i in range(12)]


@pytest.mark.slow
@pytest.mark.parametrize("fault, code", [("tag_sigkill@4", -signal.SIGKILL), ("tag_sigint@4", 130)])
def test_a_killed_or_interrupted_run_resumes_and_redoes_only_the_unfinished(trained, twelve, tmp_path, fault, code):
    """The signal lands right after the 4th file's record is written (a point the test controls):
    the rerun finishes the rest. Files whose scores were stored but whose outputs were not all
    written are derived again from their stored scores, without the model."""
    out = tmp_path / "out"
    args = [f"--workdir={trained[1]}", os.path.dirname(twelve[0]), f"--output_dir={out}", "--workers=2"]
    returncode, err = _run_with_fault(fault, args, tmp_path)
    assert returncode == code, err[-3000:]
    if code == 130:  # Ctrl-C: a clean stop, no traceback, temporary files removed
        assert "interrupted: rerun the same command" in err and "Traceback" not in err
        assert not [f for f in os.listdir(out) if ".jaxtag-tmp-" in f]
    finished = _record_count(out)
    stored = len(library_state.analyses(out))
    assert 4 <= finished <= stored < 12
    rerun = subprocess.run(_tag_cli(*args), cwd=processes.REPO, env=processes.environment(), capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    derived = stored - finished
    assert (f"tagged {12 - stored}" + (f", re-derived {derived} from stored scores" if derived else "")
            + f", already done {finished}, failed 0 of 12") in rerun.stderr
    _check_complete(out, twelve)


@pytest.mark.slow
def test_ctrl_c_while_the_run_checks_its_records_exits_130_without_a_traceback(trained, twelve, tmp_path):
    """Before any file is tagged (the records are being read and each file planned, which takes a
    while on a big library): a clean stop, nothing half-written."""
    out = tmp_path / "out"
    args = [f"--workdir={trained[1]}", os.path.dirname(twelve[0]), f"--output_dir={out}", "--workers=2"]
    returncode, err = _run_with_fault("plan_sigint@3", args, tmp_path)
    assert returncode == 130, err[-3000:]
    assert "interrupted: rerun the same command" in err and "Traceback" not in err
    assert _record_count(out) == 0 and not library_state.analyses(out)
    assert not [f for f in os.listdir(out) if ".jaxtag-tmp-" in f]


def _chromium_dom(url, profile):
    from test_html_page import _chromium
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1200,800", "--virtual-time-budget=3000", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


USER_ACTIONS = """<script>
// Test only: a user picks a tag, sorts by score (twice: highest first), then opens the first row's
// strongest section.
window.addEventListener("load", () => setTimeout(() => {
  const select = document.getElementById("tag");
  select.value = TAG; select.dispatchEvent(new Event("change"));
  document.getElementById("sort").click(); document.getElementById("sort").click(); document.getElementById("sort").click();
  document.body.dataset.rows = JSON.stringify([...document.querySelectorAll("#library tbody tr")]
      .filter(tr => !tr.hidden).map(tr => [tr.dataset.name, tr.querySelector(".score").textContent]));
  document.body.dataset.hiddenRows = String(document.querySelectorAll("#library tbody tr[hidden]").length);
  if (OPEN) document.querySelector("#library tbody tr:not([hidden]) a.strongest").click();
}, 200));
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_library_page_filters_sorts_and_opens_a_track_page_in_chromium(tagger, library, tmp_path):
    out = tmp_path / "out"
    with _calibrated_on(tagger, library):
        tag_library(tagger, library, _options(out))
    rows = json.loads((out / "library.json").read_text())["files"]
    # A tag some files carry and others not: the filter shows the files that carry it.
    tag = next(t for t in tagger.tags if 0 < sum(t in r["track_tags"] for r in rows) < len(rows))
    has = [r for r in rows if tag in r["track_tags"]]
    expected = [r["name"] for r in sorted(has, key=lambda r: (-r["strength"][tag], r["path"]))]
    page = (out / "index.html").read_text()
    (out / "actions.html").write_text(page.replace("</body>", USER_ACTIONS.replace("TAG", json.dumps(tag))
                                                   .replace("OPEN", "false")))
    dom = _chromium_dom(f"file://{out / 'actions.html'}", tmp_path / "p1")
    shown = json.loads(__import__("html").unescape(re.search(r'data-rows="([^"]*)"', dom).group(1)))
    assert [name for name, _ in shown] == expected                    # filtered, highest score first
    assert [float(s) for _, s in shown] == sorted((float(s) for _, s in shown), reverse=True)
    assert int(re.search(r'data-hidden-rows="(\d+)"', dom).group(1)) == len(rows) - len(has)
    (out / "open.html").write_text(page.replace("</body>", USER_ACTIONS.replace("TAG", json.dumps(tag))
                                                .replace("OPEN", "true")))
    dom = _chromium_dom(f"file://{out / 'open.html'}", tmp_path / "p2")
    best = next(r for r in rows if r["name"] == expected[0])["strongest"][tag]
    title = re.search(r"<title>(.*?)</title>", dom).group(1)
    assert title == f"{os.path.basename(next(r['path'] for r in rows if r['name'] == expected[0]))} - jaxtag"
    cursor = float(re.search(r'<div id="cursor"[^>]*data-time="([0-9.]+)"', dom).group(1))
    assert cursor == pytest.approx(best["start"], abs=0.05)          # the track page opened at the section


@pytest.mark.slow
def test_outputs_of_other_settings_or_a_failed_write_are_redone(tagger, library, tmp_path, monkeypatch):
    files = [shutil.copy(p, tmp_path) for p in library[:3]]
    out = tmp_path / "out"
    assert len(tag_library(tagger, files, _options(out, formats=("json",))).tagged) == 3
    # Every format now: the runs that wrote only JSON do not count as done; the others are derived
    # from the stored scores.
    assert len(tag_library(tagger, files, _options(out)).derived) == 3
    assert all((out / f"{n}.html").exists() for n in ("one", "two", "three"))
    # A write that fails half-way (after the JSON, before the page) leaves the file without a
    # record: the next run redoes it, and only it.
    from jaxtag.tagging import html_page

    def broken_page(taggram, *args, **kw):
        if taggram.source == files[1]:
            raise OSError(28, "No space left on device")
        return real_page(taggram, *args, **kw)

    real_page = html_page.render_html
    monkeypatch.setattr(html_page, "render_html", broken_page)
    forced = tag_library(tagger, files, _options(out, force=True))
    assert forced.failed == {files[1]: "No space left on device"} and len(forced.tagged) == 2
    monkeypatch.setattr(html_page, "render_html", real_page)
    resumed = tag_library(tagger, files, _options(out))
    # Its scores were stored before the page failed: its outputs are derived again, no model.
    assert resumed.derived == [files[1]] and not resumed.tagged
    assert sorted(resumed.skipped) == sorted([files[0], files[2]])
    # Other decisions (here: another threshold) derive every output again from the stored scores.
    policy = tagger.policy
    tagger.policy = policy.with_threshold(0.3)
    try:
        rederived = tag_library(tagger, files, _options(out))
        assert sorted(rederived.derived) == sorted(files) and not rederived.tagged
        assert json.loads((out / "one.json").read_text())["threshold"] == [pytest.approx(0.3)] * len(tagger.tags)
    finally:
        tagger.policy = policy
    # Another model (the same run's settings, other weights) runs the model again.
    import jax
    other = Tagger(jax.tree.map(lambda x: x * 1.01, tagger.variables), tagger.meta)
    assert other.fingerprint != tagger.fingerprint
    assert len(tag_library(other, files, _options(out)).tagged) == 3


def test_a_store_of_an_earlier_version_runs_the_model_again_instead_of_failing(tagger, library, tmp_path):
    """A store written before the tempo was kept (no bpm arrays): other decisions cannot be derived
    from it, so the file goes through the model again; it does not fail."""
    files = [shutil.copy(library[0], tmp_path)]
    out = tmp_path / "out"
    assert len(tag_library(tagger, files, _options(out, formats=("json",))).tagged) == 1
    (analysis,) = library_state.analyses(out)
    (name,) = library_state.records(out)
    with np.load(out / analysis.arrays) as npz:
        earlier = {k: npz[k] for k in npz.files if k not in ("bpm", "window_bpm", "bpm_agreement")}
    with open(out / analysis.arrays, "wb") as f:   # (np.savez would add ".npz" to a name without it)
        np.savez(f, **earlier)
    policy = tagger.policy
    tagger.policy = policy.with_threshold(0.3)
    try:
        again = tag_library(tagger, files, _options(out, formats=("json",)))
    finally:
        tagger.policy = policy
    assert again.tagged == files and not again.failed and not again.derived
    assert library_state.stored(out, name)["tempo"] is not None           # stored again, of this version


@pytest.mark.slow
def test_a_worker_that_dies_is_named_and_the_others_are_tagged(tagger, library, tmp_path):
    from helpers.crashing_decoder import decode_or_crash
    crash = shutil.copy(library[0], str(tmp_path / "crash_me.wav"))
    files = [library[1], crash, library[2], library[3]]
    result = tag_library(tagger, files, _options(tmp_path / "out", workers=2), decode=decode_or_crash)
    assert sorted(result.tagged) == sorted([library[1], library[2], library[3]])
    assert result.failed == {crash: "decoding it killed the worker process (a crash in the audio decoder, or out "
                                    "of memory)"}
    assert [r["path"] for r in json.loads((tmp_path / "out" / "library.json").read_text())["files"]] == \
        [library[3], library[2], library[1]]   # by output name: four, three, two


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_told_so_and_no_file_is_blamed(trained, library, tmp_path):
    """A user script calling tag_library at its top level: each spawned worker imports the script
    and would tag again, which Python stops, so no worker ever starts. The run stops with one
    error saying what to do, not a "killed the worker" failure for every file. With the guard,
    the same script tags."""
    body = textwrap.dedent(f"""
        from jaxtag.library.run import LibraryOptions, tag_library
        from jaxtag.tagging.tagger import Tagger
        {{call}}
            result = tag_library(Tagger.from_workdir({str(trained[1])!r}), {library[:2]!r},
                                 LibraryOptions(output_dir={str(tmp_path / "out")!r}, top_n=0, workers=1))
            print("TAGGED", len(result.tagged), "FAILED", len(result.failed))
        """)
    unguarded, guarded = tmp_path / "unguarded.py", tmp_path / "guarded.py"
    unguarded.write_text(body.replace("{call}", "if True:"))
    guarded.write_text(body.replace("{call}", 'if __name__ == "__main__":'))
    run = subprocess.run([sys.executable, str(unguarded)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode != 0
    assert "WorkerStartError: the decoding worker processes could not start" in run.stderr
    assert 'under `if __name__ == "__main__":`' in run.stderr
    assert "killed the worker" not in run.stderr + run.stdout and "TAGGED" not in run.stdout
    run = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0 and "TAGGED 2 FAILED 0" in run.stdout, run.stderr[-2000:]


def test_ctrl_c_stops_the_decoders_and_leaves_no_pool_thread_or_worker_running(tagger, library, tmp_path,
                                                                             monkeypatch):
    """Ctrl-C while workers decode: the run stops without waiting for them, and neither a worker
    nor the pool's manager thread outlives it (one still closing its pipe at interpreter exit made
    concurrent.futures' exit hook fail with "Bad file descriptor")."""
    import concurrent.futures
    import concurrent.futures.process
    import multiprocessing
    import threading
    from helpers.crashing_decoder import decode_slowly
    from jaxtag.library import run as library_module
    write_library, running_then = library_module.views.write_library, []

    def note_what_runs_then_write_library(*args):  # right after the pool is gone
        running_then.extend(t for t in threading.enumerate()
                            if isinstance(t, concurrent.futures.process._ExecutorManagerThread))
        running_then.extend(multiprocessing.active_children())
        write_library(*args)
    monkeypatch.setattr(library_module.views, "write_library", note_what_runs_then_write_library)
    wait = concurrent.futures.wait

    def ctrl_c_while_waiting(*args, **kwargs):  # where a real Ctrl-C lands: waiting for the decoders
        time.sleep(2.0)
        wait(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(concurrent.futures, "wait", ctrl_c_while_waiting)
    started = time.perf_counter()
    result = tag_library(tagger, library, _options(tmp_path / "out", workers=2), decode=decode_slowly)
    assert result.interrupted and not result.tagged and not result.failed
    assert time.perf_counter() - started < 45  # the decoders sleep 60 s: they were not waited for
    assert running_then == []


def test_names_stay_with_their_files_and_never_take_the_library_files(tagger, library, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = shutil.copy(library[0], str(tmp_path / "a" / "song.wav"))
    out = tmp_path / "out"
    tag_library(tagger, [first], _options(out))
    assert (out / "song.json").exists()
    # Another song joins the library from another folder: the first keeps its outputs' name (tagged
    # alone, it was at the top); the new one's mirror its folder below the two's common folder.
    second = shutil.copy(library[1], str(tmp_path / "b" / "song.flac"))
    result = tag_library(tagger, [first, second], _options(out))
    assert result.skipped == [first] and result.tagged == [second]
    from jaxtag.tagging.outputs import output_name
    assert json.loads((out / "b" / "song.json").read_text())["file"] == second
    # ... and a third song.* in that folder: the two clash inside it, so the newcomer is hashed.
    third = shutil.copy(library[2], str(tmp_path / "b" / "song.mp3"))
    assert tag_library(tagger, [first, second, third], _options(out)).tagged == [third]
    assert json.loads((out / f"{output_name(third, [str(tmp_path)])}.json").read_text())["file"] == third
    # Tracks named like the library's own files get hashed names; the summary stays the summary.
    named = [shutil.copy(library[0], str(tmp_path / "library.wav")), shutil.copy(library[3], str(tmp_path / "index.ogg"))]
    tag_library(tagger, named, _options(out))
    # The summary is the whole library's, whatever files a run was given.
    assert sorted(r["path"] for r in json.loads((out / "library.json").read_text())["files"]) == \
        sorted([first, second, third, *named])
    assert (out / "index.html").read_text().startswith("<!DOCTYPE html>") and "jaxtag library" in \
        (out / "index.html").read_text()
    assert all((out / f"{output_name(p)}.json").exists() for p in named)


def test_outputs_mirror_the_librarys_folders_and_a_flat_folder_keeps_its_names(tagger, library, tmp_path):
    """OUT/Artist/Album/track.* below the directory given; pages link their audio and each other
    through those folders; files an earlier run named flat keep their names."""
    import urllib.parse
    music = tmp_path / "Music"
    paths = {"Ärtist/First Album/01 song.wav": library[0], "Ärtist/First Album/02 song.flac": library[1],
             "Other/Live/01 song.ogg": library[3]}
    files = []
    for rel, source in paths.items():
        (music / rel).parent.mkdir(parents=True, exist_ok=True)
        files.append(str(shutil.copy(source, music / rel)))
    out = tmp_path / "out"
    flat = tag_library(tagger, [files[2]], _options(out))            # an earlier run, one file: flat
    assert flat.tagged == [files[2]] and (out / "01 song.json").exists()
    result = tag_library(tagger, files, _options(out, roots=(str(music),)))
    assert sorted(result.tagged) == sorted(files[:2]) and result.skipped == [files[2]]
    for name, path in (("Ärtist/First Album/01 song", files[0]), ("Ärtist/First Album/02 song", files[1]),
                       ("01 song", files[2])):
        assert json.loads((out / f"{name}.json").read_text())["file"] == path
        assert library_state.record(out, name)["source"]["path"] == os.path.abspath(path)
        assert library_state.stored(out, name) is not None
        page = (out / f"{name}.html").read_text()
        src = urllib.parse.unquote(re.search(r'<audio[^>]* src="([^"]+)"', page).group(1))
        assert os.path.samefile((out / name).parent / src, path)     # the page plays the file in place
    index = (out / "index.html").read_text()
    assert 'const page = name => name.split("/").map(encodeURIComponent).join("/") + ".html";' in index
    rows = {r["name"]: r["path"] for r in json.loads((out / "library.json").read_text())["files"]}
    assert rows == {"Ärtist/First Album/01 song": files[0], "Ärtist/First Album/02 song": files[1],
                    "01 song": files[2]}


def test_a_file_gone_since_the_last_run_is_reported_and_the_run_goes_on(tagger, library, tmp_path):
    files = [shutil.copy(p, tmp_path) for p in library[:2]]
    tag_library(tagger, files, _options(tmp_path / "out"))
    os.remove(files[0])
    result = tag_library(tagger, files, _options(tmp_path / "out"))
    assert result.failed == {files[0]: "audio file not found"} and result.skipped == [files[1]]


def test_library_pages_link_the_audio_and_a_single_file_embeds_it(tagger, library, tmp_path):
    out = tmp_path / "out"
    tag_library(tagger, library[:2], _options(out))
    page = (out / "one.html").read_text()
    relative = os.path.relpath(library[0], out).replace(os.sep, "/")
    assert f'src="{relative}"' in page and "base64," not in page
    tag_library(tagger, library[:1], _options(tmp_path / "single", embed_audio=True))
    assert 'src="data:audio/wav;base64,' in (tmp_path / "single" / "one.html").read_text()


def test_tags_written_by_another_program_do_not_make_a_file_new(tagger, library, tmp_path):
    from mutagen.flac import FLAC
    files = [shutil.copy(p, tmp_path) for p in library[:2]]     # wav, flac
    out = tmp_path / "out"
    tag_library(tagger, files, _options(out))
    tagged = FLAC(files[1])
    tagged["title"] = "renamed by a tag editor"
    tagged.save()
    assert tag_library(tagger, files, _options(out)).tagged == []


def test_hidden_files_are_passed_over_and_m4a_and_unwritable_formats_work(tagger, tmp_path, capsys):
    import av
    from jaxtag.tagging.outputs import find_audio
    folder = tmp_path / "music"
    (folder / ".hidden").mkdir(parents=True)
    _music(folder / "x.wav", 2.0, sr=8000)
    (folder / "._x.wav").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    _music(folder / ".hidden" / "y.wav", 2.0, sr=8000)
    aiff = _music(folder / "z.aiff", 3.0, sr=8000, fmt="AIFF")
    m4a = str(folder / "w.m4a")
    with av.open(m4a, "w") as container:                        # FFmpeg's AAC encoder
        stream = container.add_stream("aac", rate=44100)
        y = _samples(_music(tmp_path / "src.wav", 3.0, sr=44100))
        for i in range(0, len(y), 1024):
            frame = av.AudioFrame.from_ndarray(y[None, i:i + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate = 44100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    files = find_audio([str(folder)])
    assert files == [m4a, str(folder / "x.wav"), aiff]
    result = tag_library(tagger, files, _options(tmp_path / "out", write_tags=True))
    assert not result.failed and len(result.tagged) == 3
    assert "model=cnn_lstm" in next(v for k, v in metadata.read_tags(m4a).items() if "JAXTAG" in k)
    assert re.search(rf"warning: {re.escape(aiff)}: tags not written: jaxtag cannot write tags into .aiff",
                     capsys.readouterr().err)
    m4a_seconds = json.loads((tmp_path / "out" / "w.json").read_text())["duration"]
    assert m4a_seconds == pytest.approx(3.0, abs=0.1)


def test_workers_default_to_the_cpus_this_process_may_use(monkeypatch, tmp_path):
    """os.cpu_count() counts the machine's CPUs; a process pinned to some (affinity) or a
    container with a CPU quota may use fewer: one decoding worker per CPU it may use."""
    from jaxtag import files
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(files, "CGROUP_CPU_MAX", str(tmp_path / "none"))
    monkeypatch.setattr(files, "CGROUP_V1_QUOTA", (str(tmp_path / "none"), str(tmp_path / "none")))
    assert files.available_cpus() == 6
    (tmp_path / "cpu.max").write_text("250000 100000\n")               # 2.5 CPUs' worth: 3 workers
    monkeypatch.setattr(files, "CGROUP_CPU_MAX", str(tmp_path / "cpu.max"))
    assert files.available_cpus() == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert files.available_cpus() == 6
    (tmp_path / "quota").write_text("50000\n")                         # cgroup v1: half a CPU -> 1
    (tmp_path / "period").write_text("100000\n")
    monkeypatch.setattr(files, "CGROUP_CPU_MAX", str(tmp_path / "none"))
    monkeypatch.setattr(files, "CGROUP_V1_QUOTA", (str(tmp_path / "quota"), str(tmp_path / "period")))
    assert files.available_cpus() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    (tmp_path / "quota").write_text("-1\n")
    assert files.available_cpus() == 1


def test_files_only_touched_are_checked_in_the_workers_not_the_main_thread(tagger, library, tmp_path, monkeypatch):
    """A copied or touched library (new mtimes, same audio): the content check runs in the
    decoding workers, inside the run (progress, Ctrl-C), not file by file before it; the files
    are found unchanged, their records take the new stamps, and nothing is decoded or tagged."""
    from jaxtag.tagging import decoding
    from jaxtag.library import run as library_module
    files = [shutil.copy(p, tmp_path) for p in library]
    out = tmp_path / "out"
    assert len(tag_library(tagger, files, _options(out, workers=2)).tagged) == 4
    for path in files:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    def no_hashing_here(path):
        raise AssertionError(f"the main process hashed {path}")
    monkeypatch.setattr(decoding, "content_fingerprint", no_hashing_here)   # workers are other processes
    decoded = []
    monkeypatch.setattr(library_module, "_take_decoded", lambda c, state, d, b: decoded.append(state.path) or [])
    again = tag_library(tagger, files, _options(out, workers=2))
    assert sorted(again.skipped) == sorted(files) and not again.tagged and not again.failed and not decoded
    for path in files:
        name = os.path.splitext(os.path.basename(path))[0]
        assert library_state.record(out, name)["source"]["mtime_ns"] == 1_000_000_000
    # The new stamps are recorded: the next run needs no check at all.
    monkeypatch.setattr(decoding, "check_then_decode", no_hashing_here)
    assert sorted(tag_library(tagger, files, _options(out, workers=2)).skipped) == sorted(files)


def test_a_worker_dying_while_the_main_thread_submits_does_not_abort_the_run(tagger, library, tmp_path, monkeypatch):
    """A decoding worker killed (a decoder crash, the OOM killer) while the main thread handles
    another file: the next submit finds the pool broken. The files in flight are retried, every
    file is tagged and the library summary is written."""
    import concurrent.futures
    import signal as signals
    files = [shutil.copy(p, tmp_path) for p in library] + [str(shutil.copy(library[0], tmp_path / "five.wav"))]
    submit, calls = concurrent.futures.ProcessPoolExecutor.submit, []

    def kill_a_worker_then_submit(pool, fn, *args, **kwargs):
        calls.append(fn)
        # The pool's probe and three files go at once; a fifth submit comes once a file is done
        # (the workers have started): the worker is killed just before it.
        if len(calls) == 5 and pool._processes:
            os.kill(next(iter(pool._processes)), signals.SIGKILL)
            deadline = time.time() + 30
            while not pool._broken and time.time() < deadline:
                time.sleep(0.05)
            assert pool._broken, "the pool did not notice its dead worker"
        return submit(pool, fn, *args, **kwargs)
    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "submit", kill_a_worker_then_submit)
    out = tmp_path / "out"
    result = tag_library(tagger, files, _options(out, workers=2))
    assert sorted(result.tagged) == sorted(files) and not result.failed
    assert len(json.loads((out / "library.json").read_text())["files"]) == 5
