"""The library's state in its database (jaxtag.library.state) over a library's life: album-by-album
runs summarised whole, files renamed, moved, copied and deleted, two models, two runs at once, a
damaged stored analysis, and an output folder of the earlier layout taken over."""
import json
import os
import shutil
import socket
import sqlite3

import jax
import numpy as np
import pytest

from helpers import library_state
from jaxtag.library import run as library_module
from jaxtag.library.run import LibraryOptions, tag_library
from jaxtag.library import state as state_lib
from jaxtag.library.state import LibraryBusy, LibraryState, RunLock
from jaxtag.tagging.tagger import Tagger
from test_library import _music


@pytest.fixture(scope="module")
def tagger(trained):
    return Tagger.from_workdir(trained[1])


def _options(out, **kw):
    return LibraryOptions(output_dir=str(out), workers=kw.pop("workers", 1), top_n=0, **kw)


def _albums(root, n=2, per=2):
    """Music/AlbumK/songJ.wav, each of its own audio."""
    files = []
    for k in range(n):
        for j in range(per):
            os.makedirs(root / f"Album{k}", exist_ok=True)
            files.append(_music(root / f"Album{k}" / f"song{j}.wav", 3.0 + j, sr=8000, seed=10 * k + j))
    return files


def _listed(out):
    return sorted(r["path"] for r in json.loads((out / "library.json").read_text())["files"])


def _index_paths(out):
    from jaxtag.library.similarity import load_index
    return sorted(load_index(str(out)).paths)


def _no_decoding(monkeypatch):
    """Fails the test if any file is decoded for the model (a file only checked is not)."""
    def decoded(c, state, d, b):
        raise AssertionError(f"{state.path} was decoded for the model")
    monkeypatch.setattr(library_module, "_take_decoded", decoded)


def test_album_by_album_runs_are_summarised_whole(tagger, tmp_path):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music)
    broken = music / "Album0" / "broken.wav"
    broken.write_bytes(b"RIFF not audio" * 10)
    first = tag_library(tagger, [*files[:2], str(broken)], _options(out, roots=(str(music / "Album0"),)))
    assert sorted(first.tagged) == files[:2] and list(first.failed) == [str(broken)]
    second = tag_library(tagger, files[2:], _options(out, roots=(str(music / "Album1"),)))
    assert sorted(second.tagged) == files[2:]
    assert _listed(out) == sorted(files)             # the whole library, not the last album
    failed = json.loads((out / "library.json").read_text())["failed"]   # the library's, not the run's
    assert [f["path"] for f in failed] == [str(broken)] and failed[0]["problem"].startswith("cannot decode")
    assert _index_paths(out) == sorted(files)
    import csv
    with open(out / "library.csv", newline="") as f:
        assert sorted(r["path"] for r in csv.DictReader(f)) == sorted(files)
    assert all(name in (out / "index.html").read_text() for name in ("Album0", "Album1"))
    from jaxtag.library.playlists import write_playlists
    written = write_playlists(str(out))
    m3u8 = [p for p in written if p.endswith(".m3u8")]
    listed = {os.path.normpath(os.path.join(os.path.dirname(p), line.strip()))
              for p in m3u8 for line in open(p, encoding="utf-8") if line.strip() and not line.startswith("#")}
    assert listed and listed <= set(files) and all(os.path.exists(p) for p in listed)
    assert any(p.startswith(str(music / "Album0")) for p in listed) and any(p.startswith(str(music / "Album1"))
                                                                            for p in listed)
    with LibraryState(str(out)) as state:
        run = state.last_run()
    assert run["status"] == "finished" and run["counts"]["tagged"] == 2 and run["pid"] == os.getpid()


def test_rename_and_folder_move_need_no_model_and_leave_no_ghost(tagger, tmp_path, monkeypatch, capsys):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music)
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    old_names = set(library_state.records(out))
    renamed = str(music / "Album0" / "renamed.wav")
    os.rename(files[0], renamed)                          # rename: mtime and size kept
    shutil.move(str(music / "Album1"), str(music / "Moved"))  # a folder moved (beet move, a new layout)
    moved = [str(music / "Moved" / os.path.basename(f)) for f in files[2:]]
    copy = str(shutil.copy2(moved[1], music / "a copy.wav"))  # found too: a copy of the moved file, not its move
    capsys.readouterr()
    _no_decoding(monkeypatch)
    from jaxtag.tagging.outputs import find_audio
    result = tag_library(tagger, find_audio([str(music)]), _options(out, roots=(str(music),)))
    assert not result.tagged and not result.failed and copy in result.derived
    assert result.moved == {renamed: files[0], moved[0]: files[2], moved[1]: files[3]}
    err = capsys.readouterr().err
    assert f"renamed: {files[0]} -> {renamed}" in err and f"moved: {files[2]} -> {moved[0]}" in err
    now = sorted([renamed, files[1], *moved, copy])
    assert _listed(out) == now and _index_paths(out) == now
    names = set(library_state.records(out))
    assert names == {"Album0/renamed", "Album0/song1", "Moved/song0", "Moved/song1", "a copy"}
    for gone in old_names - names:                        # the old outputs went with the files
        assert not any((out / f"{gone}{suffix}").exists() for suffix in (".json", ".csv", ".png", ".html"))
    for name in names:
        assert json.loads((out / f"{name}.json").read_text())["file"] in now
    # The similar lists of the pages point at no file gone (every page's list was rewritten).
    for name in names:
        listed = (out / f"{name}.similar.js").read_text()
        assert all(f'"{g}"' not in listed for g in old_names - names)
    assert len(library_state.analyses(out)) == 4          # one analysis per audio, whatever its path


def test_a_copy_is_tagged_from_the_same_analysis_and_both_stay(tagger, tmp_path, monkeypatch):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music, n=1)
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    copy = str(shutil.copy2(files[0], music / "Album0" / "copy.wav"))   # cp -p: size and mtime kept
    _no_decoding(monkeypatch)
    result = tag_library(tagger, [*files, copy], _options(out, roots=(str(music),)))
    assert result.derived == [copy] and not result.moved and not result.tagged
    assert _listed(out) == sorted([*files, copy])
    assert len(library_state.analyses(out)) == 2


def test_a_deleted_file_leaves_every_view_and_a_missing_root_prunes_nothing(tagger, tmp_path, capsys):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music)
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    os.remove(files[1])
    from jaxtag.library.playlists import write_playlists
    from jaxtag.tagging.outputs import find_audio
    result = tag_library(tagger, find_audio([str(music)]), _options(out, roots=(str(music),)))
    assert result.gone == [files[1]] and not result.tagged
    left = sorted(set(files) - {files[1]})
    assert _listed(out) == left and _index_paths(out) == left
    assert not (out / "Album0" / "song1.json").exists() and not (out / "Album0" / "song1.html").exists()
    written = write_playlists(str(out))
    assert all("Album0/song1.wav" not in open(p, encoding="utf-8").read() for p in written)
    assert "gone: " + files[1] in capsys.readouterr().err
    # The drive is unmounted: its mount point is there, empty. Nothing is pruned; it is reported.
    shutil.move(str(music), str(tmp_path / "elsewhere"))
    music.mkdir()
    unmounted = tag_library(tagger, [], _options(out, roots=(str(music),)))
    assert unmounted.unreachable == [str(music)] and not unmounted.gone
    assert "holds no audio now" in capsys.readouterr().err
    assert _listed(out) == left


def test_audio_moved_away_and_back_needs_no_model(tagger, tmp_path, monkeypatch):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music, n=1)
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    away = tmp_path / "away.wav"
    shutil.move(files[0], away)                           # out of the library: gone, its analysis kept
    assert tag_library(tagger, files[1:], _options(out, roots=(str(music),))).gone == [files[0]]
    with LibraryState(str(out)) as state:
        assert len(state.orphan_analyses()) == 1
    shutil.move(away, files[0])
    os.utime(files[0], ns=(1, 1))                         # restored from a backup: another mtime
    _no_decoding(monkeypatch)
    back = tag_library(tagger, files, _options(out, roots=(str(music),)))
    assert back.derived == [files[0]] and back.skipped == [files[1]] and not back.tagged
    assert _listed(out) == files and library_state.record(out, "Album0/song0")["source"]["mtime_ns"] == 1
    with LibraryState(str(out)) as state:
        assert state.orphan_analyses() == []


@pytest.mark.slow
def test_two_models_in_one_output_folder_are_never_mixed(tagger, tmp_path):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music)
    other = Tagger(jax.tree.map(lambda x: x * 1.01, tagger.variables), tagger.meta)
    other.model_name = "other-model"
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    tag_library(other, files[2:], _options(out, roots=(str(music / "Album1"),)))
    summary = json.loads((out / "library.json").read_text())
    assert summary["model"] == "other-model" and _listed(out) == files[2:]
    assert summary["other_models"] == {tagger.model_name: 2}
    assert "2 file(s) tagged with" in (out / "index.html").read_text()
    from jaxtag.library.similarity import load_index
    index = load_index(str(out))
    assert index.model == other.fingerprint and sorted(index.paths) == files[2:]
    assert len(library_state.analyses(out)) == 6          # each model's analyses kept
    # Back to the first model: Album1 comes back from its stored analysis, without the model.
    back = tag_library(tagger, files, _options(out, roots=(str(music),)))
    assert sorted(back.derived) == files[2:] and not back.tagged
    assert _listed(out) == files and json.loads((out / "library.json").read_text())["other_models"] == {}


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(tagger, tmp_path):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music, n=1, per=1)
    lock = RunLock(str(out))
    lock.acquire()
    try:
        with pytest.raises(LibraryBusy, match=f"being tagged by process {os.getpid()} on {socket.gethostname()}, "
                                              "running since 20"):
            tag_library(tagger, files, _options(out))
    finally:
        lock.release()
    assert not library_state.records(out)                 # nothing was touched
    assert tag_library(tagger, files, _options(out)).tagged == files


def test_a_truncated_stored_analysis_is_redone_with_a_warning(tagger, tmp_path, capsys):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music, n=1)
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    record = library_state.record(out, "Album0/song0")
    with LibraryState(str(out)) as state:
        arrays = state.analysis(record["source"]["content"], tagger.fingerprint).arrays
    data = (out / arrays).read_bytes()
    (out / arrays).write_bytes(data[:len(data) // 2])     # an interrupted copy
    capsys.readouterr()
    result = tag_library(tagger, files, _options(out, roots=(str(music),)))
    assert result.tagged == [files[0]] and result.skipped == [files[1]] and not result.failed
    assert f"warning: {files[0]}: its stored analysis" in capsys.readouterr().err
    assert library_state.stored(out, "Album0/song0") is not None
    # Damaged in place (the same size: only reading it tells): redone in the same run.
    data = (out / arrays).read_bytes()
    (out / arrays).write_bytes(b"\0" * len(data))
    policy = tagger.policy
    tagger.policy = policy.with_threshold(0.4)   # another policy: the run must read the arrays
    try:
        again = tag_library(tagger, files, _options(out, roots=(str(music),)))
    finally:
        tagger.policy = policy
    assert again.tagged == [files[0]] and again.derived == [files[1]] and not again.failed
    assert "cannot be read" in capsys.readouterr().err


def _to_earlier_layout(out):
    """The output folder as jaxtag wrote it before the database: records/NAME.json and
    scores/NAME.npz (the arrays' format is unchanged)."""
    records = library_state.records(out)
    with LibraryState(str(out)) as state:
        for name, record in records.items():
            analysis = state.analysis(record["source"]["content"], record["settings"]["model"])
            target = out / ".jaxtag" / "scores" / f"{name}.npz"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out / analysis.arrays), target)
            record_file = out / ".jaxtag" / "records" / f"{name}.json"
            record_file.parent.mkdir(parents=True, exist_ok=True)
            record_file.write_text(json.dumps({k: record[k] for k in ("settings", "source", "outputs", "summary")}))
    for leftover in ("library.db", "library.db-wal", "library.db-shm", "analyses"):
        path = out / ".jaxtag" / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return records


def test_an_output_folder_of_the_earlier_layout_is_taken_over_without_the_model(tagger, tmp_path, monkeypatch, capsys):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music)
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    before = _to_earlier_layout(out)
    _no_decoding(monkeypatch)
    capsys.readouterr()
    result = tag_library(tagger, files, _options(out, roots=(str(music),)))
    assert sorted(result.skipped) == files and not result.tagged and not result.derived
    assert "took over 4 file(s) of the earlier layout" in capsys.readouterr().err
    after = library_state.records(out)
    assert {n: r["source"] for n, r in after.items()} == {n: r["source"] for n, r in before.items()}
    assert not (out / ".jaxtag" / "records").exists() and not (out / ".jaxtag" / "scores").exists()
    assert all(library_state.stored(out, n) is not None for n in after)


def test_the_schema_is_versioned_and_a_newer_database_refused(tmp_path):
    from jaxtag.errors import DataError
    from jaxtag.library import state as state_lib
    with LibraryState(str(tmp_path)) as state:
        assert state.schema_version() == state_lib.SCHEMA_VERSION
        state.set_meta("schema_version", str(state_lib.SCHEMA_VERSION + 1))
    with pytest.raises(DataError, match="made by a newer jaxtag"):
        LibraryState(str(tmp_path))
    (tmp_path / ".jaxtag" / "library.db").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / ".jaxtag" / f"library.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(DataError, match="library.db: the library's database cannot be read"):
        LibraryState(str(tmp_path))


def test_paths_that_are_not_utf8_round_trip_through_the_database(tmp_path):
    name = os.fsdecode(b"caf\xe9/song")
    source = {"path": os.fsdecode(b"/music/caf\xe9/song.wav"), "size": 3, "mtime_ns": 4, "content": "ab" * 32}
    with LibraryState(str(tmp_path)) as state:
        state.put_decision(name, source, {"model": "m"}, [f"{name}.json"], {"path": source["path"]})
        (record,) = state.records().values()
    assert record["name"] == name and record["source"] == source and record["outputs"] == [f"{name}.json"]
    assert np.array_equal(os.fsencode(record["source"]["path"]), b"/music/caf\xe9/song.wav")


def test_the_database_and_lock_can_live_off_a_network_share(tmp_path, monkeypatch):
    """JAXTAG_STATE_DIR: the database and the run lock of an output folder on a share live in a
    local folder (one per output folder); the outputs stay in OUT."""
    local, share = tmp_path / "local", tmp_path / "share" / "out"
    monkeypatch.setenv("JAXTAG_STATE_DIR", str(local))
    with LibraryState(str(share)) as state:
        state.set_meta("view", "{}")
        assert os.path.dirname(state.path).startswith(str(local)) and os.path.exists(state.path)
    lock = RunLock(str(share))
    lock.acquire()
    try:
        assert os.path.dirname(lock.path) == os.path.dirname(state.path)
        with pytest.raises(LibraryBusy):
            RunLock(str(share)).acquire()
        other = RunLock(str(tmp_path / "share" / "other"))    # another output folder: its own lock
        other.acquire()
        other.release()
    finally:
        lock.release()
    assert not (share / ".jaxtag").exists()
    with LibraryState(str(share)) as again:
        assert again.view() == {}


def _version_1_database(out):
    """A database as schema version 1 made it, with a file, its analysis and decisions, and a run."""
    path = state_lib.database_path(str(out))
    os.makedirs(os.path.dirname(path))
    db = sqlite3.connect(path)
    db.executescript(state_lib.MIGRATIONS[1])
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO meta VALUES ('view', ?)", (json.dumps({"model": "fp1", "policy": "p1"}),))
    db.execute("INSERT INTO files VALUES ('/music/a.wav', 'a', '/music', 10, 20, 'audio:c1', 1.0, 2.0)")
    db.execute("INSERT INTO analyses VALUES ('audio:c1', 'fp1', 'tiny', 'x.npz', 5, '[]', 62.5, 3.0)")
    db.execute("INSERT INTO decisions VALUES ('/music/a.wav', 'fp1', ?, '[\"a.json\"]', ?, 4.0)",
               (json.dumps({"model": "fp1", "policy": "p1"}), json.dumps({"duration": 62.5, "model": "tiny"})))
    db.execute("INSERT INTO runs (started, ended, pid, host, model, model_name, files, counts, status) "
               "VALUES (5.0, 6.5, 42, 'box', 'fp1', 'tiny', 1, '{\"tagged\": 1}', 'finished')")
    db.commit()
    db.close()


def test_a_version_1_database_is_migrated_on_open_and_keeps_its_rows(tmp_path):
    _version_1_database(tmp_path)
    with LibraryState(str(tmp_path)) as state:
        assert state.schema_version() == 2 == state_lib.SCHEMA_VERSION
        (record,) = state.records().values()
        assert record["source"] == {"path": "/music/a.wav", "size": 10, "mtime_ns": 20, "content": "audio:c1"}
        assert record["settings"] == {"model": "fp1", "policy": "p1"} and record["outputs"] == ["a.json"]
        assert state.analysis("audio:c1", "fp1") == state_lib.Analysis("audio:c1", "fp1", "x.npz", 5, (), "tiny", 62.5)
        assert state.view() == {"model": "fp1", "policy": "p1"}
        run = state.last_run()
        assert (run["id"], run["pid"], run["counts"]) == (1, 42, {"tagged": 1})
        assert state.failures() == {}
        state.record_failures(run["id"], {"/music/b.wav": "cannot decode audio", "/music/c.wav": "empty"}, [])
        state.record_failures(run["id"], {}, ["/music/c.wav"])
        assert {p: f["problem"] for p, f in state.failures().items()} == {"/music/b.wav": "cannot decode audio"}
        assert state.failures()["/music/b.wav"]["run"] == 1


@pytest.mark.slow
def test_the_tag_command_into_a_busy_folder_exits_75_naming_the_other_run(trained, tmp_path):
    """Two runs at once, as a user starts them: the second tag command says who holds the folder
    (process, host, since when), exits 75 (try again later), no traceback, and touches nothing."""
    import subprocess
    import sys
    from helpers import processes
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music, n=1, per=1)
    lock = RunLock(str(out))
    lock.acquire()
    try:
        done = subprocess.run([sys.executable, "-m", "jaxtag.tag", f"--workdir={trained[1]}", files[0],
                               f"--output_dir={out}", "--workers=1"], cwd=processes.REPO, env=processes.environment(),
                              capture_output=True, text=True, timeout=300)
    finally:
        lock.release()
    assert done.returncode == 75, done.stderr[-2000:]
    assert f"is being tagged by process {os.getpid()} on {socket.gethostname()}, running since" in done.stderr
    assert "Traceback" not in done.stderr and not library_state.records(out)


def test_records_with_some_keys_of_their_rows_are_those_of_the_whole_rows(tmp_path):
    """records(summaries=KEYS) (the playlists' read: SQLite picks the keys out) gives each row's
    values of those keys as the whole rows have them: numbers as stored, strings escaped or not,
    an absent key None; the rest of each record as records() gives it."""
    keys = ("path", "duration", "strength", "moods", "absent")
    with LibraryState(str(tmp_path)) as state:
        paths = ["/music/a.wav", "/music/\u00e9t\u00e9 \"quoted\".wav", os.fsdecode(b"/music/caf\xe9.wav")]
        for i, path in enumerate(paths):
            source = {"path": path, "size": 3, "mtime_ns": i, "content": f"{i:064x}"}
            row = {"path": path, "name": f"n{i}", "duration": 243.125 + i / 3, "strength": [0.1234, 1e-05, 0.0, 1.0],
                   "moods": ["happy", "\u00e9"], "bpm": None}
            state.put_decision(f"n{i}", source, {"model": "m"}, [f"n{i}.json"], row)
        state.put_file("undecided", {"path": "/music/b.wav", "size": 1, "mtime_ns": 1, "content": "ab" * 32})
        whole, some = state.records(), state.records(summaries=keys)
    assert whole.keys() == some.keys() and len(some) == 4
    for name, record in whole.items():
        assert {k: v for k, v in some[name].items() if k != "summary"} == \
            {k: v for k, v in record.items() if k != "summary"}
        if "summary" in record:
            assert some[name]["summary"] == {k: record["summary"].get(k) for k in keys}
        else:
            assert "summary" not in some[name]
