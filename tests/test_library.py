"""Tagging a library: streaming decode in workers, windows of several files per chunk, resumable
outputs, one bad file never stopping the others, the library summary and page, audio integrity
warnings, tags written into the files, embeddings."""
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
from helpers import processes
from jaxtag.data import audio, features
from jaxtag.tagging import metadata
from jaxtag.tagging.library import LibraryOptions, tag_library
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


def test_the_model_takes_a_files_windows_while_it_is_still_being_decoded(trained, library, tmp_path, monkeypatch):
    """A long file's windows go through the model as its frames arrive (whole chunks of the
    regular windows), the rest once its length is known; the scores equal the in-memory tagger's."""
    from helpers.crashing_decoder import decode_then_linger
    from jaxtag.tagging import library as library_module
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
    from jaxtag.tagging import library as library_module
    tagger = Tagger.from_workdir(trained[1], chunk_windows=1)
    write, encode = library_module.write_outputs, tagger.encode_chunk
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
    monkeypatch.setattr(library_module, "write_outputs", write_outputs)
    out = tmp_path / "out"
    result = tag_library(tagger, library, _options(out, workers=2))
    assert encoded_meanwhile.is_set(), "the model waited for the first file's outputs"
    assert sorted(result.tagged) == sorted(library) and not result.failed
    assert sorted(r["path"] for r in json.loads((out / "library.json").read_text())["files"]) == sorted(library)
    for path in library:
        name = os.path.splitext(os.path.basename(path))[0]
        assert (out / f"{name}.png").stat().st_size > 0
        assert json.loads((out / ".jaxtag" / "records" / f"{name}.json").read_text())["source"]["path"] == \
            os.path.abspath(path)


def test_a_frames_file_gone_mid_feed_loses_no_file_the_model_completed(trained, tmp_path, monkeypatch):
    """Its worker failed and removed a file's frames while the model read them: the files the
    chunks already encoded completed are still handed back (else never written)."""
    from jaxtag.tagging import library as library_module
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
    # Asking for another output (embeddings) redoes the files that lack it.
    assert len(tag_library(tagger, files, _options(out, embeddings=True)).tagged) == 4
    assert not [f for f in os.listdir(out) if ".jaxtag-tmp-" in f]


def test_bad_files_are_reported_and_the_others_tagged(tagger, library, tmp_path, capsys):
    empty, corrupt, missing = tmp_path / "empty.wav", tmp_path / "corrupt.mp3", str(tmp_path / "gone.flac")
    empty.write_bytes(b"")
    corrupt.write_text("not audio at all\n" * 50)
    files = [library[0], str(empty), str(corrupt), missing, library[3]]
    out = tmp_path / "out"
    result = tag_library(tagger, files, _options(out, workers=2))
    assert sorted(result.tagged) == sorted([library[0], library[3]])
    assert result.failed[str(empty)] == "audio file is empty (0 bytes)"
    assert result.failed[str(corrupt)].startswith("cannot decode audio")
    assert result.failed[missing] == "audio file not found"
    err = capsys.readouterr().err
    for path in (str(empty), str(corrupt), missing):
        assert f"error: {path}: " in err
    summary = json.loads((out / "library.json").read_text())
    assert {f["path"] for f in summary["failed"]} == {str(empty), str(corrupt), missing}
    assert [r["path"] for r in summary["files"]] == [library[0], library[3]]


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
    record = json.loads((out / ".jaxtag" / "records" / "cut_wav.json").read_text())
    assert record["warnings"][0].startswith("truncated: its header promises 10.0 s")


def _samples(path):
    return sf.read(path, dtype="float32")[0]


def test_write_tags_into_the_files_and_dry_run(tagger, library, tmp_path, capsys):
    from jaxtag.data.tags import EMOTION_TAGS, short_tag
    files = [shutil.copy(p, tmp_path) for p in library[:3]]     # wav, flac, mp3
    before = {p: (_samples(p), open(p, "rb").read()) for p in files}
    threshold = tagger.threshold
    tagger.threshold = np.zeros_like(threshold)                  # every tag on: all 18 emotions are moods
    try:
        dry = tag_library(tagger, files, _options(tmp_path / "dry", write_tags=True, dry_run=True))
        assert not dry.failed and all(open(p, "rb").read() == before[p][1] for p in files)
        err = capsys.readouterr().err
        assert all(f"{p}: would write" in err for p in files) and "model=cnn_lstm; tags=" in err
        result = tag_library(tagger, files, _options(tmp_path / "out", write_tags=True))
        assert not result.failed
        again = tag_library(tagger, files, _options(tmp_path / "out", write_tags=True))
    finally:
        tagger.threshold = threshold
    emotions = {short_tag(t) for t in EMOTION_TAGS}
    for path in files:
        fields = metadata.read_tags(path)
        mood = next(v for k, v in fields.items() if "MOO" in k.upper())
        model, tags = metadata.parse_jaxtag(next(v for k, v in fields.items() if "JAXTAG" in k.upper()))
        assert model == "cnn_lstm" and len(tags) == 18 and set(mood.split("; ")) == emotions
        np.testing.assert_array_equal(_samples(path), before[path][0])   # the audio is untouched
    assert again.tagged == [] and len(again.skipped) == 3                # the new mtime was recorded


def _tag_cli(*args):
    return [sys.executable, "-m", "jaxtag.tag", *args]


def _record_count(out):
    """Files done: those with a record (written after all their outputs)."""
    records = os.path.join(out, ".jaxtag", "records")
    return len([f for f in os.listdir(records) if f.endswith(".json")]) if os.path.isdir(records) else 0


def _run_until(command, out, done: int, sig, log_dir):
    """Start the tag command, send `sig` once `done` files have their JSON; its exit code and stderr
    (through a file: a pipe could be held open by a worker)."""
    with open(log_dir / "stderr", "w+") as err:
        proc = subprocess.Popen(command, cwd=processes.REPO, env=processes.environment(), stdout=subprocess.DEVNULL,
                                stderr=err, text=True)
        deadline = time.time() + 600
        while _record_count(out) < done and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        returncode = proc.wait(timeout=300)
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
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)])
def test_a_killed_or_interrupted_run_resumes_and_redoes_only_the_unfinished(trained, twelve, tmp_path, sig, code):
    out = tmp_path / "out"
    command = _tag_cli(f"--workdir={trained[1]}", os.path.dirname(twelve[0]), f"--output_dir={out}", "--workers=2")
    returncode, err = _run_until(command, out, 4, sig, tmp_path)
    assert returncode == code, err[-3000:]
    if sig == signal.SIGINT:  # Ctrl-C: a clean stop, no traceback, temporary files removed
        assert "interrupted: rerun the same command" in err and "Traceback" not in err
        assert not [f for f in os.listdir(out) if ".jaxtag-tmp-" in f]
    finished = _record_count(out)
    assert 4 <= finished < 12
    rerun = subprocess.run(command, cwd=processes.REPO, env=processes.environment(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"tagged {12 - finished}, already done {finished}, failed 0 of 12" in rerun.stderr
    _check_complete(out, twelve)


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
    tag_library(tagger, library, _options(out))
    rows = json.loads((out / "library.json").read_text())["files"]
    tag = rows[0]["top_tags"][1][0]   # a tag that is among some file's top tags
    has = [r for r in rows if r["share"][tag] > 0 or tag in [t for t, _ in r["top_tags"]]]
    expected = [r["name"] for r in sorted(has, key=lambda r: (-r["mean"][tag], r["path"]))]
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
    # Every format now: the runs that wrote only JSON do not count as done.
    assert len(tag_library(tagger, files, _options(out)).tagged) == 3
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
    assert resumed.tagged == [files[1]] and sorted(resumed.skipped) == sorted([files[0], files[2]])
    # Another model (here: another threshold) redoes everything.
    threshold = tagger.threshold
    tagger.threshold = threshold * 0.5
    try:
        assert len(tag_library(tagger, files, _options(out)).tagged) == 3
    finally:
        tagger.threshold = threshold


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
        [library[1], library[2], library[3]]


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_told_so_and_no_file_is_blamed(trained, library, tmp_path):
    """A user script calling tag_library at its top level: each spawned worker imports the script
    and would tag again, which Python stops, so no worker ever starts. The run stops with one
    error saying what to do, not a "killed the worker" failure for every file. With the guard,
    the same script tags."""
    body = textwrap.dedent(f"""
        from jaxtag.tagging.library import LibraryOptions, tag_library
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
    from jaxtag.tagging import library as library_module
    write_library, running_then = library_module._write_library, []

    def note_what_runs_then_write_library(*args):  # right after the pool is gone
        running_then.extend(t for t in threading.enumerate()
                            if isinstance(t, concurrent.futures.process._ExecutorManagerThread))
        running_then.extend(multiprocessing.active_children())
        write_library(*args)
    monkeypatch.setattr(library_module, "_write_library", note_what_runs_then_write_library)
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
    # Another song.wav joins the library: the first keeps its outputs' name, the new one is hashed.
    second = shutil.copy(library[1], str(tmp_path / "b" / "song.flac"))
    result = tag_library(tagger, [first, second], _options(out))
    assert result.skipped == [first] and result.tagged == [second]
    from jaxtag.tagging.outputs import output_name
    assert json.loads((out / f"{output_name(second)}.json").read_text())["file"] == second
    # Tracks named like the library's own files get hashed names; the summary stays the summary.
    named = [shutil.copy(library[0], str(tmp_path / "library.wav")), shutil.copy(library[3], str(tmp_path / "index.ogg"))]
    tag_library(tagger, named, _options(out))
    assert sorted(r["path"] for r in json.loads((out / "library.json").read_text())["files"]) == sorted(named)
    assert (out / "index.html").read_text().startswith("<!DOCTYPE html>") and "jaxtag library" in \
        (out / "index.html").read_text()
    assert all((out / f"{output_name(p)}.json").exists() for p in named)


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
