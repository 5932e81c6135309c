"""jaxtag.files: the one atomic, durable write; temporary names a later run cleans up."""
import os

import pytest

from jaxtag import files


def test_write_atomic_is_all_or_nothing_and_durable(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "record.json"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    files.write_atomic(str(path), "first")
    assert path.read_text() == "first"
    # The data, then the folder holding the rename: a file written after it never survives a
    # power cut without it.
    assert len(synced) == 2 and synced[1] == str(tmp_path / "sub") and files.TMP_MARK in synced[0]

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        files.write_atomic(str(path), half_then_fail)
    assert path.read_text() == "first" and os.listdir(tmp_path / "sub") == ["record.json"]
    synced.clear()
    files.write_atomic(str(path), b"second", durable=False)
    assert path.read_bytes() == b"second" and synced == []


def test_temporary_names_are_unique_hidden_and_cleaned_up_only_when_their_writer_is_gone(tmp_path):
    a, b = files.temporary_name(str(tmp_path / "x.json")), files.temporary_name(str(tmp_path / "x.json"))
    assert a != b and os.path.basename(a).startswith(".x.json.")
    assert files.left_by_dead_process(os.path.basename(a))          # our own id: a leftover
    assert not files.left_by_dead_process(f".x.json.ab12{files.TMP_MARK}1")   # pid 1 lives
    assert files.left_by_dead_process(f".x.json.ab12{files.TMP_MARK}999999999")
    assert not files.left_by_dead_process("x.json")
