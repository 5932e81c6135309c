"""`python -m jaxtag.library OUT`: the library at a glance (jaxtag.library.stats) checked against
what the files themselves say, the failures a run records, and --clean."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import soundfile as sf

from helpers import library_state
from jaxtag.library import state as state_lib
from jaxtag.library.__main__ import main
from jaxtag.library.run import tag_library
from jaxtag.library.state import LibraryState, RunLock
from jaxtag.library.stats import NoLibrary, clean_orphans, library_stats
from jaxtag.tagging.decoding import file_stamp
from jaxtag.tagging.outputs import find_audio
from jaxtag.tagging.tagger import Tagger
from test_library import _music
from test_library_state import _albums, _options, _version_1_database


@pytest.fixture(scope="module")
def tagger(trained):
    return Tagger.from_workdir(trained[1])


def _analyses_on_disk(out):
    folder = out / ".jaxtag" / "analyses"
    return {os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(folder) for f in files}


def _json_of_main(capsys, *argv):
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_the_numbers_are_the_files_own_and_clean_removes_exactly_the_orphans(tagger, tmp_path, capsys):
    music, out = tmp_path / "Music", tmp_path / "out"
    files = _albums(music)                                   # Album0/song0 3 s, song1 4 s; Album1 the same
    seconds = {f: sf.info(f).duration for f in files}
    tag_library(tagger, files, _options(out, roots=(str(music),)))
    deleted, moved_from, missing = files[1], files[2], files[3]
    orphan = state_lib.arrays_file(file_stamp(deleted)["content"], tagger.fingerprint)
    os.remove(deleted)
    moved = str(music / "Album1" / "moved.wav")
    os.rename(moved_from, moved)
    corrupt, broken = music / "Album1" / "corrupt.wav", music / "Album0" / "broken.mp3"
    corrupt.write_text("not audio at all\n" * 50)
    broken.write_text("not audio either\n" * 50)
    started = time.time()
    second = tag_library(tagger, find_audio([str(music)]), _options(out, roots=(str(music),)))
    took = time.time() - started
    assert set(second.failed) == {str(corrupt), str(broken)} and second.moved == {moved: moved_from}
    os.remove(missing)                                       # after the run: still in the library

    stats = library_stats(str(out))
    library = [files[0], moved, missing]
    hours = (seconds[files[0]] + seconds[moved_from] + seconds[missing]) / 3600
    assert stats["files"] == 3 and stats["pending"] == 0
    assert stats["hours"] == pytest.approx(hours, rel=1e-3)
    model = {"model": tagger.model_name, "fingerprint": tagger.fingerprint}
    assert [{k: m[k] for k in ("model", "fingerprint", "files")} for m in stats["models"]] == [{**model, "files": 3}]
    assert stats["models"][0]["hours"] == pytest.approx(hours, rel=1e-3)
    (policy,) = stats["policies"]
    assert policy["policy"] == tagger.policy.key() and policy["files"] == 3 and policy["model"] == tagger.model_name
    assert stats["moved"] == 1
    assert stats["missing"] == [missing] and all(os.path.exists(p) for p in set(library) - {missing})
    assert stats["failed"] == second.failed and all(stats["failed"].values())
    assert stats["orphans"] == {"analyses": 1, "bytes": os.path.getsize(out / orphan), "audio": 1,
                                "seconds": pytest.approx(seconds[deleted], rel=1e-3),
                                "hours": pytest.approx(seconds[deleted] / 3600, rel=1e-3)}
    run = stats["last_run"]
    assert (run["pid"], run["host"], run["status"], run["fingerprint"]) == \
        (os.getpid(), socket.gethostname(), "finished", tagger.fingerprint)
    assert run["counts"] == second.counts() and 0 < run["seconds"] <= took and run["files"] == 5
    database = out / ".jaxtag" / "library.db"
    assert stats["database"] == {"path": str(database), "schema_version": 2, "bytes": os.path.getsize(database) + (
        os.path.getsize(f"{database}-wal") if os.path.exists(f"{database}-wal") else 0)}
    assert stats["view"] == {**model, "policy": tagger.policy.key(), "sections": tagger.sectioning.key()}

    # The CLI: --json is library_stats; the text lists the failures' problems with --verbose only.
    assert _json_of_main(capsys, str(out)) == json.loads(json.dumps(stats))
    assert main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "Files: 3, 10.0 s of audio" in text and "Failed (not tagged): 2" in text and str(corrupt) not in text
    assert main([str(out), "--verbose"]) == 0
    text = capsys.readouterr().out
    assert f"  {corrupt}: {second.failed[str(corrupt)]}" in text and f"  {missing}" in text

    # --clean: refused while a run holds the folder; then exactly the orphan's arrays and row go.
    before, rows = _analyses_on_disk(out), library_state.analyses(out)
    lock = RunLock(str(out))
    lock.acquire()
    try:
        assert main([str(out), "--clean"]) == 75
    finally:
        lock.release()
    assert f"being tagged by process {os.getpid()}" in capsys.readouterr().err and _analyses_on_disk(out) == before
    cleaned = _json_of_main(capsys, str(out), "--clean")
    assert [r["arrays"] for r in cleaned["removed"]] == [orphan] and cleaned["bytes"] == stats["orphans"]["bytes"]
    assert before - _analyses_on_disk(out) == {orphan}
    assert {a.arrays for a in rows} - {a.arrays for a in library_state.analyses(out)} == {orphan}
    assert len(library_state.analyses(out)) == len(rows) - 1
    assert library_stats(str(out))["orphans"]["analyses"] == 0
    assert main([str(out), "--clean"]) == 0
    assert "removed 0 analysis(es) of audio no file holds now, freed 0 B" in capsys.readouterr().out

    # A failure is forgotten once the file is tagged, or gone.
    _music(corrupt, 2.0, sr=8000, seed=99)
    os.remove(broken)
    third = tag_library(tagger, find_audio([str(music)]), _options(out, roots=(str(music),)))
    assert third.tagged == [str(corrupt)] and library_stats(str(out))["failed"] == {}


def test_an_output_folder_without_a_library_is_an_error_naming_it(tmp_path, capsys):
    with pytest.raises(NoLibrary, match=f"^{tmp_path}: no tagged library here"):
        library_stats(str(tmp_path))
    assert main([str(tmp_path)]) == 2 and main([str(tmp_path), "--clean"]) == 2
    assert f"error: {tmp_path}: no tagged library here" in capsys.readouterr().err
    assert not (tmp_path / ".jaxtag").exists()               # nothing created
    with pytest.raises(NoLibrary):
        clean_orphans(str(tmp_path))


def test_the_stats_of_a_migrated_version_1_database(tmp_path):
    _version_1_database(tmp_path)
    with LibraryState(str(tmp_path)) as state:
        state.record_failures(1, {"/music/b.wav": "cannot decode audio"}, [])
    stats = library_stats(str(tmp_path))
    assert (stats["files"], stats["seconds"], stats["moved"], stats["missing"], stats["failed"]) == \
        (1, 62.5, 0, ["/music/a.wav"], {"/music/b.wav": "cannot decode audio"})
    assert stats["models"] == [{"model": "tiny", "fingerprint": "fp1", "files": 1, "seconds": 62.5,
                                "hours": 62.5 / 3600}]
    assert stats["orphans"] == {"analyses": 0, "bytes": 0, "audio": 0, "seconds": 0.0, "hours": 0.0}
    assert stats["last_run"]["seconds"] == 1.5 and stats["last_run"]["status"] == "finished"
    assert stats["view"] == {"model": "tiny", "fingerprint": "fp1", "policy": "p1", "sections": None}


@pytest.mark.slow
def test_the_command_line_prints_library_stats_as_json(tmp_path):
    _version_1_database(tmp_path)
    done = subprocess.run([sys.executable, "-m", "jaxtag.library", str(tmp_path), "--json"], capture_output=True,
                          text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert json.loads(done.stdout) == json.loads(json.dumps(library_stats(str(tmp_path))))
