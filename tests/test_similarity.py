"""Similar tracks and moments: the vectors, the index against exact search, its updates and kills,
the query CLI, and the lists on the library's pages."""
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest

from jaxtag.library import similarity
from jaxtag.library.run import LibraryOptions, tag_library
from jaxtag.tagging.tagger import Tagger
from test_library import _music


def test_whitening_makes_the_reference_covariance_the_identity_up_to_shrinkage():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    covariance, mean = a @ a.T + 0.1 * np.eye(6), rng.standard_normal(6)
    w = similarity.whitening_from(mean, covariance)
    values = np.linalg.eigvalsh(covariance)
    expected = np.sort(values / (values + similarity.WHITENING_SHRINK * values.mean()))
    np.testing.assert_allclose(np.sort(np.diag(w.projection.T @ covariance @ w.projection)), expected, rtol=1e-9)
    np.testing.assert_allclose(w.projection.T @ covariance @ w.projection, np.diag(np.diag(
        w.projection.T @ covariance @ w.projection)), atol=1e-9)
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(w(x), (x - mean) @ w.projection, rtol=1e-5)
    np.testing.assert_array_equal(similarity.Whitening()(x), x.astype(np.float32))   # no reference: as they are


@pytest.mark.parametrize("model", ["musicnn-msd", "musicnn-mtt"])
def test_shipped_embedding_statistics_are_a_covariance(model):
    with np.load(similarity.embedding_reference_path(model)) as npz:
        mean, covariance, windows = npz["mean"], npz["covariance"], int(npz["windows"])
    assert mean.shape == (200,) and covariance.shape == (200, 200) and windows > 20000
    np.testing.assert_allclose(covariance, covariance.T, atol=1e-6)
    assert np.linalg.eigvalsh(covariance.astype(np.float64)).min() > -1e-4
    assert similarity.model_whitening(model).projection.shape == (200, 200)


def test_exact_neighbours_in_blocks_equal_a_full_sort():
    rng = np.random.default_rng(1)
    vectors = similarity.unit(rng.standard_normal((1000, 8)))
    queries = similarity.unit(rng.standard_normal((7, 8)))
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(similarity.exact_neighbours(queries, vectors, 10, block=128), expected)


def _clustered(n_tracks, windows, dim=16, seed=0):
    """Tracks of windows: cluster centres (always the same), a track offset, window noise."""
    centres = np.random.default_rng(1234).standard_normal((20, dim))
    rng = np.random.default_rng(seed)
    tracks = centres[rng.integers(0, 20, n_tracks)] + 0.5 * rng.standard_normal((n_tracks, dim))
    return [t + 0.4 * rng.standard_normal((windows, dim)) for t in tracks]


def _fake_library(folder, tracks):
    """An output folder whose database and stored arrays hold these tracks' embeddings (as a
    tagging run leaves it)."""
    from jaxtag.files import write_atomic
    from jaxtag.library.state import Analysis, LibraryState, arrays_file
    state = LibraryState(str(folder))
    for i, embeddings in enumerate(tracks):
        name = f"album{i % 3}/track{i:03d}"
        n = len(embeddings)
        source = {"path": f"/music/{name}.ogg", "size": 1, "mtime_ns": 1, "content": f"{i:064x}"}

        def save(f, embeddings=embeddings, n=n, source=source):
            np.savez(f, scores=np.zeros((n, 2), np.float32), start=np.arange(n) * 3.0, end=np.arange(n) * 3.0 + 3,
                     duration=np.float64(3 * n), embeddings=embeddings.astype(np.float32),
                     envelope=np.zeros((0, 2), np.float32), tags=np.array(["a", "b"]), model=np.array("m1"),
                     source_json=np.array(json.dumps(source)), warnings_json=np.array("[]"))
        relative = arrays_file(source["content"], "m1")
        write_atomic(os.path.join(folder, relative), save)
        state.put_analysis(Analysis(source["content"], "m1", relative, os.path.getsize(os.path.join(folder, relative)),
                                    ()))
        state.put_decision(name, source, {"version": 2, "model": "m1", "policy": "p"}, [], {})
    state.close()


def test_the_ivf_index_finds_what_exact_search_finds(tmp_path):
    """Above the exact limit, the inverted-file index with its tuned nprobe finds at least the
    target share of the exact 10 nearest moments, also for queries it was not tuned on."""
    tracks = _clustered(120, 40)
    _fake_library(tmp_path, tracks)
    exact = similarity.update_index(str(tmp_path))
    assert exact.kind == "exact" and exact.size == 4800 and len(exact.names) == 120
    shutil.rmtree(tmp_path / ".jaxtag" / "index")
    ivf = similarity.update_index(str(tmp_path), exact_limit=1000)
    assert ivf.kind == "ivf" and ivf.recall >= similarity.RECALL_TARGET and ivf.nprobe < ivf.moments.nlist
    queries = similarity.unit(np.concatenate(_clustered(5, 10, seed=9)))   # new tracks, not in the index
    _, truth = exact.search_moments(queries, 10)
    _, found = ivf.search_moments(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95, recall
    # Tracks are searched exactly in both.
    np.testing.assert_allclose(ivf.tracks, exact.tracks, atol=1e-6)


def test_a_library_of_two_models_indexes_the_commoner_once(tmp_path):
    """Vectors of two models are not comparable: the index holds the model most files were tagged
    with, and is not rebuilt while nothing changes."""
    from jaxtag.library.state import LibraryState
    _fake_library(tmp_path, _clustered(8, 6))
    with LibraryState(str(tmp_path)) as state:
        for i in range(3):   # three files tagged by another model since
            name = f"album{i % 3}/track{i:03d}"
            record = state.record(name)
            state.put_decision(name, record["source"], dict(record["settings"], model="m2"), [], {})
    first = similarity.update_index(str(tmp_path))
    assert first.model == "m1" and sorted(first.names) == sorted(f"album{i % 3}/track{i:03d}" for i in range(3, 8))
    again = similarity.update_index(str(tmp_path))
    assert again.file == first.file and again.names == first.names


def test_the_index_follows_the_store_and_survives_a_killed_write(tmp_path):
    tracks = _clustered(10, 6)
    _fake_library(tmp_path, tracks[:8])
    first = similarity.update_index(str(tmp_path))
    assert len(first.names) == 8 and first.size == 48
    _fake_library(tmp_path, tracks)                       # two added; the others rewritten (redone)
    second = similarity.update_index(str(tmp_path))
    assert len(second.names) == 10 and second.size == 60
    again = similarity.load_index(str(tmp_path))
    assert again.names == second.names and again.size == 60 and again.file == second.file
    # Each track's vector is the mean of its moments, and a moment finds itself first.
    whitened = similarity.moment_vectors(tracks[3], similarity.Whitening())
    np.testing.assert_allclose(again.tracks[again.position("album0/track003")], similarity.track_vector(whitened),
                               atol=1e-6)
    scores, ids = again.search_moments(whitened[2:3], 1)
    number = int(again.numbers[again.position("album0/track003")])
    assert int(ids[0, 0]) == (number << similarity.WINDOW_BITS) + 2 and scores[0, 0] == pytest.approx(1, abs=1e-5)
    # index.html's rows: each file's nearest tracks, kept with the index or found again block by
    # block or for some files only, the same.
    assert again.nearest.shape == (10, similarity.NEAREST)
    full = similarity.similar_tracks_of_all(again)
    # (BLAS rounds blocks differently)
    blocked = similarity.similar_tracks_of_all(dataclasses.replace(again, nearest=None), block=3)
    assert len(full) == 10 and {m: [t for t, _ in r] for m, r in blocked.items()} == \
        {m: [t for t, _ in r] for m, r in full.items()}
    np.testing.assert_allclose([c for r in blocked.values() for _, c in r], [c for r in full.values() for _, c in r],
                               atol=1e-6)
    some = [again.names[1], again.names[7]]
    for kept in (again, dataclasses.replace(again, nearest=None)):
        part = similarity.similar_tracks_of_all(kept, names=some + ["no/such"])
        assert {m: [t for t, _ in r] for m, r in part.items()} == {m: [t for t, _ in full[m]] for m in some}
        np.testing.assert_allclose([c for m in some for _, c in part[m]], [c for m in some for _, c in full[m]],
                                   atol=1e-6)
    assert similarity.similar_tracks_of_all(again, n=5) == similarity.similar_tracks_of_all(
        dataclasses.replace(again, nearest=None), n=5)   # more than kept: found again
    assert {m: r[:2] for m, r in full.items()} == similarity.similar_tracks_of_all(again, n=2)
    cosines = again.tracks @ again.tracks[1]
    cosines[1] = -np.inf
    assert [m for m, _ in full[again.names[1]]] == [again.names[j] for j in np.argsort(-cosines, kind="stable")[:3]]
    # A write killed half-way leaves an orphan: the state still names the complete index; the next
    # update removes the orphan.
    folder = tmp_path / ".jaxtag" / "index"
    (folder / "moments-deadbeef.faiss").write_bytes(b"half")
    assert similarity.load_index(str(tmp_path)).size == 60
    from jaxtag.library.state import arrays_file
    os.utime(tmp_path / arrays_file(f"{1:064x}", "m1"), ns=(1, 1))   # "redone"
    third = similarity.update_index(str(tmp_path))
    assert third.size == 60 and not (folder / "moments-deadbeef.faiss").exists()
    assert sorted(os.listdir(folder)) == sorted([third.file, "state.npz"])


@pytest.fixture(scope="module")
def tagged_library(trained, tmp_path_factory):
    """A library of five files, one of them a copy of another, tagged by the tiny trained run."""
    music = tmp_path_factory.mktemp("similar_music")
    files = [_music(music / f"song{i}.wav", 9.0 + i, sr=8000, seed=i) for i in range(4)]
    files.append(str(shutil.copy(files[1], music / "copy_of_song1.wav")))
    out = tmp_path_factory.mktemp("similar_out")
    tagger = Tagger.from_workdir(trained[1])
    result = tag_library(tagger, files, LibraryOptions(output_dir=str(out), workers=1, top_n=0))
    assert sorted(result.tagged) == sorted(files)
    return tagger, files, out


def test_similar_tracks_and_moments_of_a_file_a_moment_and_an_outside_file(tagged_library, tmp_path):
    from jaxtag.library.similarity import find_similar
    tagger, files, out = tagged_library
    found = find_similar(str(out), files[1], n=3)
    assert found["tracks"][0]["path"] == files[4] and found["tracks"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert files[1] not in [t["path"] for t in found["tracks"]]            # not itself
    assert all(m["path"] != files[1] for m in found["moments"])             # moments of other tracks
    # A moment: the copy's window at the same time is the closest moment.
    at = find_similar(str(out), f"{files[1]}@4.5", n=3)
    best = at["moments"][0]
    assert best["path"] == files[4] and best["start"] <= 4.5 <= best["end"] + 1e-6
    assert best["score"] == pytest.approx(1, abs=1e-4)
    # An outside file (the same audio as song2, elsewhere) is tagged on the fly.
    outside = shutil.copy(files[2], tmp_path / "outside.wav")
    found = find_similar(str(out), str(outside), n=2)
    assert found["tracks"][0]["path"] == files[2] and found["tracks"][0]["score"] == pytest.approx(1, abs=1e-4)
    # The results agree with exact search over the stored vectors.
    index = similarity.load_index(str(out))
    vectors = index.tracks @ index.tracks[index.position("song3")]
    expected = [index.names[i] for i in np.argsort(-vectors, kind="stable") if index.names[i] != "song3"][:3]
    assert [t["name"] for t in find_similar(str(out), files[3], n=3)["tracks"]] == expected


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90.5", 90.5), ("1:30", 90.0), ("0:04.5", 4.5),
                                           ("1:02:03", 3723.0)])
def test_a_time_is_seconds_or_minutes_and_seconds(text, seconds):
    assert similarity.parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["nan", "-3", "inf", "1:75", "a:b", "1:2:3:4", "", "1e400"])
def test_a_time_that_is_none_is_refused_by_name(text):
    with pytest.raises(ValueError, match="is not a time"):
        similarity.parse_seconds(text)


def test_a_bad_query_is_refused_before_the_index_changes_and_never_clamped(tagged_library, tmp_path, capsys):
    """FILE@M:SS is a moment; a time past the end, negative or not a number or a missing file each
    give an error naming the query, and the index is not touched for a query that cannot be read.
    A stored analysis that cannot be read leaves the index with a warning naming it, and the file
    is answered as any outside file (tagged on the fly), not with a traceback."""
    from jaxtag.library.similarity import find_similar
    tagger, files, out = tagged_library
    same = find_similar(str(out), f"{files[1]}@4.5", n=2)
    assert find_similar(str(out), f"{files[1]}@0:04.5", n=2) == dict(same, query=f"{files[1]}@0:04.5")
    state = similarity.index_dir(str(out))
    before = {f: os.stat(os.path.join(state, f)).st_mtime_ns for f in os.listdir(state)}
    for query, message in ((f"{files[1]}@nan", "is not a time"), (f"{files[1]}@-2", "is not a time"),
                           (f"{files[1]}@1:90", "is not a time"), ("/no/such.wav@4", "no such file")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            find_similar(str(out), query)
    assert {f: os.stat(os.path.join(state, f)).st_mtime_ns for f in os.listdir(state)} == before
    with pytest.raises(ValueError, match=r"past the end of the file \(11\.0 s long\)"):
        find_similar(str(out), f"{files[2]}@12")
    # A truncated stored analysis (an interrupted copy).
    index = similarity.load_index(str(out))
    position = index.paths.index(os.path.abspath(files[3]))
    name, path = index.names[position], os.path.join(out, index.signatures[position].rpartition("|")[0])
    kept = tmp_path / "kept.npz"
    shutil.copy(path, kept)
    try:
        with open(path, "r+b") as f:
            f.truncate(100)
        capsys.readouterr()
        found = find_similar(str(out), f"{files[3]}@2", n=2)
        assert f"{name} left out, its stored analysis cannot be read" in capsys.readouterr().err
        assert name not in similarity.load_index(str(out)).names and len(found["moments"]) == 2
    finally:
        shutil.copy(kept, path)
    assert name in similarity.update_index(str(out)).names          # read again once it is whole


def test_the_index_is_rebuilt_when_its_metric_changes(tagged_library, monkeypatch):
    """Another whitening (other reference statistics, another shrinkage) is another metric: the
    index is rebuilt with it, not only when the model changes."""
    tagger, files, out = tagged_library
    index = similarity.update_index(str(out))
    assert similarity.update_index(str(out)).file == index.file          # nothing changed: the same index
    dim = index.tracks.shape[1]
    other = similarity.Whitening(np.zeros(dim), np.eye(dim) * 2.0, "a test metric")
    monkeypatch.setattr(similarity, "whitening_of", lambda spec: other)
    rebuilt = similarity.update_index(str(out))
    assert rebuilt.file != index.file and rebuilt.whitening.key() == other.key() != index.whitening.key()
    monkeypatch.undo()
    assert similarity.update_index(str(out)).whitening.key() == index.whitening.key()


def test_pages_list_similar_tracks_and_moments(tagged_library):
    tagger, files, out = tagged_library
    text = (out / "song1.similar.js").read_text()
    data = json.loads(re.match(r"window\.JAXTAG_SIMILAR = (.*);\n$", text, re.S).group(1))
    assert data["tracks"][0]["name"] == "copy_of_song1" and data["tracks"][0]["href"] == "copy_of_song1.html"
    windows = json.loads((out / "song1.json").read_text())["windows"]
    assert len(data["moments"]) == len(windows)
    for k, row in enumerate(data["moments"]):
        assert row[0]["name"] == "copy_of_song1" and row[0]["start"] == pytest.approx(windows[k]["start"], abs=0.01)
        assert row[0]["href"] == f"copy_of_song1.html#t={windows[k]['start']:.2f}"
    assert '<script src="song1.similar.js"></script>' in (out / "song1.html").read_text()
    rows = {r["name"]: r for r in json.loads((out / "library.json").read_text())["files"]}
    assert rows["song1"]["similar"][0][0] == "copy_of_song1" and rows["copy_of_song1"]["similar"][0][0] == "song1"
    assert '"similar": [["copy_of_song1"' in (out / "index.html").read_text()


@pytest.mark.slow
def test_the_similar_command(trained, tagged_library, tmp_path):
    from helpers import processes
    tagger, files, out = tagged_library
    result = processes.run_cli("jaxtag.similar", str(out), f"{files[1]}@4.5", "--n=2", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"tracks most like {files[1]}@4.5:" and re.fullmatch(r"  [01]\.\d{3}  /\S+\.wav", lines[1])
    assert lines[3] == "moments most like it, in other tracks:"
    moment = re.fullmatch(rf"  1\.000  {re.escape(files[4])}  (\d+\.\d)-(\d+\.\d) s", lines[4])
    assert moment and float(moment.group(1)) <= 4.5 <= float(moment.group(2)), lines[4]
    # An outside file (song2's audio elsewhere), tagged on the fly with the library's training run.
    outside = shutil.copy(files[2], tmp_path / "outside.wav")
    result = processes.run_cli("jaxtag.similar", str(out), str(outside), f"--workdir={trained[1]}", "--n=2",
                               "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert found["tracks"][0]["path"] == files[2] and found["tracks"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert len(found["tracks"]) == len(found["moments"]) == 2
    missing = processes.run_cli("jaxtag.similar", str(out), "/no/such.wav", timeout=300)
    assert missing.returncode == 2 and "/no/such.wav: no such file" in missing.stderr
    bad = processes.run_cli("jaxtag.similar", str(out), str(outside), "--workdir=/no/such/run", timeout=300)
    assert bad.returncode == 2 and "/no/such/run: no checkpoint found" in bad.stderr and "Traceback" not in bad.stderr


def test_the_top_tracks_of_a_row_are_a_stable_sorts_first():
    """index.html's most similar tracks sort only the scores at least as high as the n-th: the
    same positions, in the same order, as a stable sort of the whole row (ties by position; -inf,
    a file's own score, and NaN included)."""
    rng = np.random.default_rng(3)
    for _ in range(2000):
        total = int(rng.integers(1, 12))
        scores = rng.integers(0, 4, total).astype(np.float32)
        if rng.random() < 0.3:
            scores[rng.integers(0, total)] = -np.inf
        if rng.random() < 0.3:
            scores[rng.integers(0, total, 2)] = np.nan
        for n in range(0, total + 2):
            assert list(similarity._top(scores, n, total)) == list(np.argsort(-scores, kind="stable")[:n])


def test_the_moments_are_read_when_searched_and_a_damaged_file_is_built_again(tmp_path):
    """An index read from disk reads its moments' faiss file only when it is searched (a run over
    an unchanged library never does); a file truncated or gone makes the index be built again,
    and so does one that cannot be read once the library changed."""
    tracks = _clustered(10, 6)
    _fake_library(tmp_path, tracks[:8])
    first = similarity.update_index(str(tmp_path))
    folder = tmp_path / ".jaxtag" / "index"
    loaded = similarity.load_index(str(tmp_path))
    assert loaded.moments is None and loaded.size == 48
    again = similarity.update_index(str(tmp_path))
    assert again.file == first.file and again.moments is None   # up to date: not read
    scores, ids = again.search_moments(again.tracks[:1], 3)
    assert again.moments is not None and ids.shape == (1, 3)
    data = (folder / first.file).read_bytes()
    (folder / first.file).write_bytes(data[:len(data) // 2])          # truncated
    assert similarity.load_index(str(tmp_path)) is None
    rebuilt = similarity.update_index(str(tmp_path))
    assert rebuilt.file != first.file and rebuilt.size == 48
    (folder / rebuilt.file).write_bytes(b"\0" * len((folder / rebuilt.file).read_bytes()))   # unreadable, same size
    _fake_library(tmp_path, tracks)                                   # two added
    grown = similarity.update_index(str(tmp_path))
    assert grown.file != rebuilt.file and grown.size == 60 and len(grown.names) == 10
    (folder / grown.file).unlink()                                    # gone
    assert similarity.load_index(str(tmp_path)) is None
