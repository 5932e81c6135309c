"""Apache Beam (the beam extra): preparing a corpus and tagging a library on Beam give what the
local paths give; the transforms with Beam's TestPipeline; asking for Beam without it installed."""
import csv
import json
import os
import dataclasses
import shutil
import sys

import numpy as np
import pytest

from conftest import make_corpus, tiny_config
from helpers import library_state, processes
from test_library import _music

MULTI = "runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=2"


def test_pipeline_options_are_tfds_style_and_beam_missing_says_what_to_install(monkeypatch):
    from jaxtag import beam
    assert beam.option_flags("runner=DirectRunner, direct_num_workers=2,,save_main_session") == \
        ["--runner=DirectRunner", "--direct_num_workers=2", "--save_main_session"]
    # Dask: jaxtag's DaskRunner by a short name, or by Beam's own path (which runs only the last sink).
    for name in ("dask", "DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"):
        assert beam.option_flags(f"runner={name},dask_client_address=tcp://127.0.0.1:8786") == \
            ["--runner=jaxtag.beam_dask.DaskRunner", "--dask_client_address=tcp://127.0.0.1:8786"]
    with pytest.raises(ValueError, match="without dashes"):
        beam.option_flags("--runner=DirectRunner")
    with pytest.raises(ValueError, match="empty"):
        beam.option_flags(" , ")
    monkeypatch.setitem(sys.modules, "apache_beam", None)          # as if the extra were not installed
    with pytest.raises(beam.BeamMissingError) as missing:
        beam.require_beam()
    assert str(missing.value).count("\n") == 0 and "pip install -e '.[beam]'" in str(missing.value)


def test_a_failed_pipeline_is_named_by_the_workers_error_and_a_url_out_is_refused():
    from jaxtag.beam import BeamPipelineError, failures_named
    from jaxtag.errors import DataError
    from jaxtag.library.beam import tag_on_beam
    from jaxtag.library.run import LibraryOptions
    as_beam_reports_it = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nRuntimeError: "
                          "jaxtag.errors.DataError: /m/b.wav: cannot decode audio [while running 'Decode/ParDo']")
    with pytest.raises(BeamPipelineError) as failed:
        with failures_named("tagging"):
            raise RuntimeError(as_beam_reports_it)
    assert str(failed.value) == "tagging on Apache Beam failed: /m/b.wav: cannot decode audio"
    with pytest.raises(BeamPipelineError, match=r"^preparing on Apache Beam failed: OSError: disk full$"):
        with failures_named("preparing"):
            raise OSError("disk full")
    with pytest.raises(DataError, match="^/m/c.wav: bad$"):            # jaxtag's own errors pass as they are
        with failures_named("tagging"):
            raise DataError("/m/c.wav", "bad")
    # The driver keeps OUT's database and writes the summary itself: a URL is refused, saying why.
    with pytest.raises(ValueError, match=r"gs://bucket/out: .*must be a path the driver and the workers can read.*gcsfuse"):
        tag_on_beam(None, [], LibraryOptions(output_dir="gs://bucket/out"), "runner=DirectRunner")


def test_the_tag_cli_refuses_a_url_out_on_both_paths(tmp_path):
    """A URL OUT is neither written as a local folder named "gs:" nor half-run on Beam."""
    for beam_options in ([], ["--beam_pipeline_options=runner=DirectRunner"]):
        ran = processes.run_cli("jaxtag.tag", str(tmp_path), "--output_dir=gs://bucket/tags", *beam_options,
                                timeout=300)
        assert ran.returncode != 0 and "--output_dir gs://bucket/tags: give a folder, not a URL" in ran.stderr, \
            ran.stderr[-2000:]
        assert "Traceback" not in ran.stderr and not os.path.exists(os.path.join(processes.REPO, "gs:"))


@pytest.mark.slow
def test_beam_is_imported_only_when_asked_for():
    """jaxtag installs and runs without the extra: no command imports Beam unless given its options."""
    code = ("import sys\n"
            "import jaxtag.tag\n"                       # (the CLIs' flags clash in one process)
            "from jaxtag.data import pipeline\n"
            "from jaxtag.data.cal500exp import cal500exp_dataset_builder\n"
            "from jaxtag.library import beam, run\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'apache_beam'], 'apache_beam imported'\n")
    ran = processes.run(["-c", code], timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]


@pytest.fixture(scope="module")
def beam():
    return pytest.importorskip("apache_beam", reason="the beam extra is not installed")


def test_bad_tracks_on_beam_stop_naming_them_or_are_skipped_and_counted(beam, tmp_path):
    """The builder's PTransform on Beam's TestPipeline: examples equal the local function's; a
    track that cannot be decoded stops the pipeline naming it, or, skipped, is counted."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from jaxtag.data import corpus, pipeline
    from jaxtag.data.cal500exp.cal500exp_dataset_builder import _beam_examples, track_example
    rows = [(0.0, 3.0, {"Emotion-Happy": 1.0})]
    root = make_corpus(tmp_path / "corpus", {f"t{i}": (4.0, rows) for i in range(3)})
    settings = pipeline.prepared_settings(tiny_config(str(tmp_path / "prepared"), **{"data.root": root}))
    tracks = corpus.find_tracks(root, settings.audio_dir, settings.label_set, settings.label_dir, False)
    expected = {t.name: track_example(t, settings) for t in tracks}
    with TestPipeline() as p:
        examples = p | _beam_examples(tracks, settings, str(tmp_path / "cache"))
        assert_that(examples | beam.Map(lambda kv: (kv[0], int(kv[1]["n_frames"]),
                                                    float(np.asarray(kv[1]["mel"]).sum()))),
                    equal_to([(n, int(e["n_frames"]), float(np.asarray(e["mel"]).sum())) for n, e in expected.items()]))
    with open(os.path.join(root, "CAL500_32kps", "t1.wav"), "r+b") as f:     # its audio data: noise
        f.seek(44)
        f.write(b"\xff" * 4 + os.urandom(16))
        f.truncate(50)
    with pytest.raises(Exception, match="t1"):
        with TestPipeline() as p:
            _ = p | _beam_examples(tracks, settings, str(tmp_path / "cache2"))
    skipping = pipeline.prepared_settings(tiny_config(str(tmp_path / "prepared"), **{
        "data.root": root, "data.skip_bad_tracks": True}))
    p = TestPipeline()
    kept = p | _beam_examples(tracks, skipping, str(tmp_path / "cache3"))
    assert_that(kept | beam.Map(lambda kv: kv[0]), equal_to(["t0", "t2"]))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("skipped_bad_tracks"))["counters"]
    assert [c.committed for c in counters] == [1]


@pytest.mark.slow
def test_a_corpus_prepared_on_beam_equals_the_local_one(beam, tmp_path):
    """The DirectRunner in multi-processing mode, two workers: the same splits, keys and arrays."""
    import tensorflow_datasets as tfds
    from jaxtag.data import pipeline
    local = pipeline.prepare(tiny_config(str(tmp_path / "local")))
    on_beam = pipeline.prepare(tiny_config(str(tmp_path / "beam")), MULTI)
    assert str(on_beam.data_dir) != str(local.data_dir)
    for split in ("train", "validation", "test"):
        a = {ex["track"]: ex for ex in tfds.as_numpy(local.as_dataset(split=split))}
        b = {ex["track"]: ex for ex in tfds.as_numpy(on_beam.as_dataset(split=split))}
        assert sorted(a) == sorted(b)
        for name, example in a.items():
            for key, value in example.items():
                np.testing.assert_array_equal(np.asarray(value), np.asarray(b[name][key]), err_msg=f"{name} {key}")


@pytest.mark.slow
def test_prepare_and_main_prepare_on_beam_from_the_command_line(beam, tmp_path):
    """Both commands take --beam_pipeline_options. A bad track stops the pipeline with one error
    naming its file (Beam re-raises a worker's error as its own RuntimeError); skipped, the rest
    is prepared and the summary (alone on stdout with --json) counts it out."""
    rows = [(0.0, 3.0, {"Emotion-Happy": 1.0})]
    root = make_corpus(tmp_path / "corpus", {f"t{i}": (4.0, rows) for i in range(6)})
    with open(os.path.join(root, "CAL500_32kps", "t1.wav"), "r+b") as f:     # its audio data: noise
        f.seek(44)
        f.write(b"\xff" * 4 + os.urandom(16))
        f.truncate(50)
    base = ["--config=configs/tiny.py", f"--config.data.root={root}"]
    expected = "preparing the corpus on Apache Beam failed: " + os.path.join(root, "SegLabelHard", "SegLabelHard",
                                                                             "t1.csv") + ": track 't1'"
    bad = processes.run_cli("jaxtag.prepare", *base, f"--config.data.data_dir={tmp_path / 'd1'}",
                            f"--beam_pipeline_options={MULTI}", timeout=600)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(f"error: {expected}"), \
        bad.stderr[-3000:]
    bad = processes.run_cli("jaxtag.main", *base, f"--config.data.data_dir={tmp_path / 'd2'}",
                            f"--workdir={tmp_path / 'run'}", "--beam_pipeline_options=runner=DirectRunner", timeout=600)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(f"error: {expected}"), \
        bad.stderr[-3000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")                 # stopped before training
    ok = processes.run_cli("jaxtag.prepare", *base, f"--config.data.data_dir={tmp_path / 'd3'}", "--json",
                           "--config.data.skip_bad_tracks=True", "--beam_pipeline_options=runner=DirectRunner",
                           timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert sum(split["tracks"] for split in json.loads(ok.stdout)["splits"].values()) == 5


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """A small library in every common format, in two folders."""
    root = tmp_path_factory.mktemp("beam_library")
    for album in ("A", "B"):
        (root / album).mkdir()
    return root, [_music(root / ("A" if i < 2 else "B") / f"song{i}.{ext}", 5.0 + 2 * i, seed=30 + i, fmt=ext.upper())
                  for i, ext in enumerate(("mp3", "ogg", "flac", "wav"))]


def test_the_beam_stages_give_the_local_runs_windows_and_features(beam, trained, formats, tmp_path):
    """DecodeFile emits a file's windows (as the tagger cuts them) and facts; the ModelHandler's
    features are the tagger's; on TestPipeline."""
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from jaxtag.library import beam as beam_library
    from jaxtag.tagging.tagger import Tagger
    tagger = Tagger.from_workdir(trained[1])
    root, files = formats
    path = files[2]
    y, _ = tagger.load(path)
    from jaxtag.data.features import mel_spectrogram
    windows = tagger.windows(mel_spectrogram(y, tagger.frontend))
    decode = beam_library._decode_file_fn()(dataclasses.asdict(tagger.frontend))
    with TestPipeline() as p:
        out = (p | beam.Create([{"path": path, "name": "x", "expected": None}])
               | beam.ParDo(decode).with_outputs("facts", "unchanged", "derive", "failed", main="windows"))
        assert_that(out.windows | beam.Map(lambda kv: (kv[0][1], float(np.round(kv[1].sum(), 3)))),
                    equal_to([(k, float(np.round(w.sum(), 3))) for k, w in enumerate(windows)]), label="windows")
        assert_that(out.facts | beam.Map(lambda kv: (kv[0], kv[1]["n_windows"], kv[1]["path"])),
                    equal_to([("x", len(windows), path)]), label="facts")
    handler = beam_library.window_features_handler(tagger.spec, 4)
    model = handler.load_model()
    results = list(handler.run_inference(list(windows[:3]), model))
    np.testing.assert_allclose(np.stack([r.inference for r in results]), tagger.encode_windows(windows[:3]), atol=1e-6)
    assert handler.batch_elements_kwargs()["max_batch_size"] == 4


def test_a_worker_publishes_a_files_arrays_outputs_and_journal_entry_which_the_driver_records(beam, trained,
                                                                                             formats, tmp_path):
    """WriteFile (run here without a pipeline) writes no database: it publishes the file's stored
    arrays, outputs and, last, its journal entry; the driver's import records them as the local
    run does (analysis, file, decisions) and removes the entry."""
    from jaxtag.library import beam as beam_library, journal
    from jaxtag.library.plan import LibraryOptions, settings_of, usable, wanted_outputs
    from jaxtag.library.state import LibraryState
    tagger = beam_library.tagger_of({"workdir": os.path.abspath(trained[1]), "checkpoint": "best"})  # the workers'
    root, files = formats
    decode = beam_library._decode_file_fn()(dataclasses.asdict(tagger.frontend))
    decode.setup()
    emitted = list(decode.process({"path": files[1], "name": "A/one"}))
    windows = np.stack([w for (_, _), w in emitted[:-1]])
    name, facts = emitted[-1].value
    features = tagger.encode_windows(windows)
    out = tmp_path / "out"
    options = LibraryOptions(output_dir=str(out), roots=(str(root),))
    write = beam_library._write_file_fn()(tagger.spec, tagger.policy, options, settings_of(tagger))
    assert list(write.process((name, {"facts": [facts], "features": list(enumerate(features))}))) == []
    assert not (out / ".jaxtag" / "library.db").exists() and len(list((out / ".jaxtag" / "journal").iterdir())) == 1
    with LibraryState(str(out)) as state:
        [entry] = journal.import_journal(state, str(out))
        record, analysis = state.record("A/one"), state.analysis(facts["stamp"]["content"], tagger.fingerprint)
    assert entry["path"] == files[1] and entry["worker"] == beam_library.worker_name()
    assert record["source"] == {"path": files[1], **facts["stamp"]} and record["root"] == str(root)
    assert record["settings"] == settings_of(tagger) and record["outputs"] == wanted_outputs("A/one", options)
    assert all((out / f).exists() for f in record["outputs"]) and usable(str(out), analysis)
    np.testing.assert_allclose(library_state.stored(out, "A/one")["scores"], tagger.across_windows(features)[0],
                               atol=1e-6)
    assert record["summary"]["duration"] == pytest.approx(facts["duration"])
    assert not (out / ".jaxtag" / "journal").exists()


def assert_same_end_state(a, b) -> None:
    """Two output folders hold the same library: the same files in the database (names, sources,
    roots, settings, outputs; their rows' numbers within 1e-5), the same analyses, and the same
    files in OUT (but the dead-letter output, and the similarity index's randomly named file)."""
    ra, rb = library_state.records(a), library_state.records(b)
    assert sorted(ra) == sorted(rb) and ra
    for name in ra:
        for key in ("source", "root", "settings", "outputs"):
            assert ra[name][key] == rb[name][key], (name, key)
        _assert_close(ra[name]["summary"], rb[name]["summary"], name)
    assert library_state.analyses(a) == library_state.analyses(b)

    def listed(out):
        found = (p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        return sorted(f for f in found if not f.startswith((".jaxtag/failed/", ".jaxtag/index/moments-",
                                                            ".jaxtag/library.db-")))
    assert listed(a) == listed(b)


def _assert_close(x, y, where) -> None:
    if isinstance(x, dict):
        assert sorted(x) == sorted(y), where
        for k in x:
            _assert_close(x[k], y[k], f"{where} {k}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_close(u, v, f"{where}[{i}]")
    elif isinstance(x, float):
        assert y == pytest.approx(x, abs=1e-5), where
    else:
        assert x == y, where


def _scores(out):
    found = {}
    for path in out.rglob("*.json"):
        if ".jaxtag" in path.parts or path.name == "library.json":
            continue
        data = json.loads(path.read_text())
        found[data["file"]] = data
    return found


@pytest.mark.slow
def test_tagging_on_beam_equals_the_local_run_and_resumes(beam, trained, formats, tmp_path):
    """The tag CLI on the DirectRunner (multi-processing, two workers) and the local path, on a
    library of mp3, ogg, flac and wav: the same windows, scores within 1e-5, the same tags and
    library rows. A broken file is listed in the dead-letter output and the exit status is 1; a
    rerun finishes only what is left, and finds touched files unchanged."""
    root, files = formats
    library = tmp_path / "library"
    shutil.copytree(root, library)
    broken = library / "B" / "broken.mp3"
    broken.write_text("not audio\n" * 30)
    local, on_beam = tmp_path / "local", tmp_path / "beam"
    args = [f"--workdir={trained[1]}", "--top_n=0"]
    ran = processes.run_cli("jaxtag.tag", str(library), f"--output_dir={local}", *args, timeout=600)
    assert ran.returncode == 1, ran.stderr[-2000:]
    # A run killed part way: two files done (here by a local run of two of them).
    listing = tmp_path / "archive.txt"
    listing.write_text("\n".join(str(library / os.path.relpath(f, root)) for f in files) + "\n" + str(broken) + "\n")
    first = processes.run_cli("jaxtag.tag", str(library / "A"), f"--output_dir={on_beam}", *args, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    ran = processes.run_cli("jaxtag.tag", str(listing), f"--output_dir={on_beam}", *args,
                            f"--beam_pipeline_options={MULTI}", timeout=900)
    assert ran.returncode == 1, ran.stderr[-3000:]
    assert "tagged 2, already done 2, failed 1 of 5 file(s)" in ran.stderr, ran.stderr[-3000:]
    dead = [json.loads(line) for f in (on_beam / ".jaxtag" / "failed").iterdir() for line in f.read_text().splitlines()]
    assert [d["path"] for d in dead] == [str(broken)] and "cannot decode" in dead[0]["problem"]
    a, b = _scores(local), _scores(on_beam)     # by file (the partial run named A's files at the top)
    assert sorted(a) == sorted(b) and len(a) == 4
    for name in a:
        wa, wb = a[name]["windows"], b[name]["windows"]
        assert [(w["start"], w["end"]) for w in wa] == [(w["start"], w["end"]) for w in wb]
        np.testing.assert_allclose([w["scores"] for w in wa], [w["scores"] for w in wb], atol=1e-5)
        assert [w["tags"] for w in wa] == [w["tags"] for w in wb] and a[name]["track_tags"] == b[name]["track_tags"]
        assert a[name]["tempo"] == b[name]["tempo"]
    def rows(out):   # library.csv without the similar column (it names the outputs)
        with open(out / "library.csv", newline="") as f:
            table = list(csv.reader(f))
        drop = table[0].index("similar")
        return sorted(tuple(v for i, v in enumerate(r) if i != drop) for r in table)
    assert rows(local) == rows(on_beam)
    assert library_state.decided_count(on_beam) == 4 and not (on_beam / ".jaxtag" / "journal").exists()
    # Touched files: checked on the workers, found unchanged, their records take the new stamps.
    for f in files:
        os.utime(library / os.path.relpath(f, root), ns=(2_000_000_000, 2_000_000_000))
    again = processes.run_cli("jaxtag.tag", str(listing), f"--output_dir={on_beam}", *args,
                              f"--beam_pipeline_options={MULTI}", timeout=900)
    assert "tagged 0, already done 4, failed 1 of 5 file(s)" in again.stderr, again.stderr[-3000:]
    records = library_state.records(on_beam)
    assert sorted(r["source"]["mtime_ns"] for r in records.values()) == [2_000_000_000] * 4
    assert not [p for p in on_beam.rglob("*") if "jaxtag-tmp" in p.name or p.name.startswith("beam-")]


@pytest.mark.slow
def test_a_beam_run_killed_part_way_is_finished_by_a_rerun_without_redoing_finished_files(beam, trained, formats,
                                                                                          tmp_path):
    """SIGKILL to the driver and its workers once the first file's journal entry is published (the
    database untouched: only the driver writes it): the rerun records the entries, tags only the
    files without one, leaves the finished ones as they are, cleans up, and ends in the local
    run's state; so does a rerun after a file moved (followed, no model)."""
    import signal
    import subprocess
    root, files = formats
    library, out = tmp_path / "library", tmp_path / "out"
    shutil.copytree(root, library)
    args = [str(library), f"--output_dir={out}", f"--workdir={trained[1]}", "--top_n=0",
            "--beam_pipeline_options=runner=DirectRunner"]
    command = [sys.executable, os.path.join(processes.TESTS, "helpers", "run_with_fault.py"), "beam_kill@1",
               "jaxtag.tag", *args]
    with open(tmp_path / "stderr", "w+") as err:   # a session of its own: the fault kills its process group
        killed = subprocess.Popen(command, cwd=processes.REPO, env=processes.environment(), stdout=subprocess.DEVNULL,
                                  stderr=err, start_new_session=True).wait(timeout=900)
        err.seek(0)
        assert killed == -signal.SIGKILL, err.read()[-3000:]
    entries = [json.loads(p.read_text()) for p in (out / ".jaxtag" / "journal").glob("*.json")]
    assert 1 <= len(entries) < len(files) and not (out / "library.json").exists()
    assert library_state.records(out) == {}
    finished = {p: p.stat().st_mtime_ns for e in entries for p in [out / f for f in e["decisions"]["outputs"]]}
    # The rerun, in this process (as the CLI calls it): what it did, and how much audio it took.
    import soundfile
    from jaxtag.library.beam import tag_on_beam
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.tagging.outputs import find_audio
    from jaxtag.tagging.tagger import Tagger
    tagger = Tagger.from_workdir(trained[1])
    options = LibraryOptions(output_dir=str(out), top_n=0, roots=(str(library),))
    local = dataclasses.replace(options, output_dir=str(tmp_path / "local"))
    rerun = tag_on_beam(tagger, find_audio([str(library)]), options, "runner=DirectRunner")
    assert rerun.summary_line(len(files)) == \
        f"tagged {len(files) - len(entries)}, already done {len(entries)}, failed 0 of {len(files)} file(s)"
    assert sorted(rerun.skipped) == sorted(e["path"] for e in entries)
    assert rerun.audio_seconds == pytest.approx(sum(soundfile.info(f).duration for f in rerun.tagged), abs=0.1)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished              # the finished ones untouched
    assert sorted(_scores(out)) == sorted(find_audio([str(library)])) and library_state.decided_count(out) == len(files)
    assert not [p for p in out.rglob("*") if "jaxtag-tmp" in p.name or p.name.startswith("beam-")]
    assert not (out / ".jaxtag" / "journal").exists()
    # The end state: the local run's of the same files.
    tag_library(tagger, find_audio([str(library)]), local)
    assert_same_end_state(tmp_path / "local", out)
    # A file moved to the other folder: recognised by its audio, its outputs derived under its new
    # name and the old ones removed, by both; the same end state again.
    os.rename(library / "B" / "song3.wav", library / "A" / "moved.wav")
    for run in (tag_on_beam(tagger, find_audio([str(library)]), options, "runner=DirectRunner"),
                tag_library(tagger, find_audio([str(library)]), local)):
        assert run.moved == {str(library / "A" / "moved.wav"): str(library / "B" / "song3.wav")} and not run.tagged
    assert "B/song3" not in library_state.records(out) and not (out / "B" / "song3.json").exists()
    assert library_state.record(out, "A/moved")["source"]["path"] == str(library / "A" / "moved.wav")
    assert_same_end_state(tmp_path / "local", out)
