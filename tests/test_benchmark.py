"""scripts/benchmark.py runs and prints what it promises (tiny sizes; speed is not asserted)."""
import os
import re

import pytest

from helpers import processes


@pytest.mark.slow
def test_benchmark_prints_its_table_and_ends_with_the_cnn_lstm_train_rate(pretrained_cache):
    out = processes.run(["scripts/benchmark.py", "--quick", "--repeats=1", "--nopipeline", "--musicnn"], timeout=900,
                        JAXTAG_CACHE=pretrained_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("JAX ") and "devices:" in lines[0]
    assert re.match(r"matmul peak \(2048x2048 f32, XLA\): [\d.]+ GFLOP/s", lines[1])
    rows = {}
    for name in ("cnn", "cnn_lstm"):
        row = next(l for l in lines if l.startswith(f"{name} ") and "padded to" in l)
        rows[name] = [float(v) for v in row.split()[1:7] if not v.endswith("%")]
        assert len(rows[name]) == 4 and all(v > 0 for v in rows[name])  # train, GFLOP/s, infer, GFLOP/s
        compiled = re.search(rf"^{name}: compilations for an epoch of 8 tracks of random lengths: (\d+) \((\d+) length buckets\)",
                             out.stdout, re.M)
        assert compiled and int(compiled.group(1)) == int(compiled.group(2)) > 1
    for kind in ("frozen trunk", "fine-tuned", "fine-tuned, XLA's own kernel gradients"):
        rate = re.search(rf"^musicnn_lstm train step, {re.escape(kind)}: ([\d.]+) windows/s", out.stdout, re.M)
        assert rate and float(rate.group(1)) > 0, kind
    final = re.fullmatch(r"cnn_lstm train windows/s: ([\d.]+)", lines[-1])
    assert final and float(final.group(1)) == rows["cnn_lstm"][0]


def test_similarity_benchmark_compares_the_index_with_exact_search():
    """The --similar benchmark on its quick size (a few seconds): both
    indexes are built and searched, exact search finds itself, the IVF index its recall."""
    out = processes.run(["scripts/benchmark.py", "--similar", "--quick"], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    exact = re.search(r"^exact \(faiss flat\): build [\d.]+ s; query median [\d.]+ ms, 95th percentile [\d.]+ ms; "
                      r"recall@10 against exact ([\d.]+)$", out.stdout, re.M)
    ivf = re.search(r"^IVF-Flat, tuned nprobe: build [\d.]+ s, nprobe (\d+) of (\d+) cells \(recall ([\d.]+) of other "
                    r"tracks' moments, tuned on sampled moments\); query median [\d.]+ ms, 95th percentile [\d.]+ ms; "
                    r"recall@10 against exact ([\d.]+)$", out.stdout, re.M)
    assert exact and float(exact.group(1)) == 1.0, out.stdout
    assert ivf and int(ivf.group(1)) < int(ivf.group(2)) and float(ivf.group(3)) >= 0.97, out.stdout
    assert float(ivf.group(4)) >= 0.9, out.stdout


def _rerun_figures(stdout: str) -> dict:
    header = re.search(r"^rerun benchmark: a library of (\d+) files in (\d+) albums, musicnn-msd, \d+ CPU cores, in "
                       r"(.+) \((built in \d+ s|built before, reused)\)$", stdout, re.M)
    files = re.search(r"^formats json,csv,png,html; files (\d+): skipped (\d+), tagged (\d+), derived (\d+), "
                      r"failed (\d+), gone (\d+)$", stdout, re.M)
    index = re.search(r"^similarity index: (\d+) tracks, (\d+) moments, (exact|ivf), (up to date \(not rewritten\)|"
                      r"rewritten); (\d+) playlists$", stdout, re.M)
    stages = re.search(r"^stages: (.+)$", stdout, re.M)
    peak = re.search(r"^peak RSS (\d+) MB \((\d+) MB after loading the model in [\d.]+ s\)$", stdout, re.M)
    total = re.search(r"^rerun of (\d+) unchanged files: ([\d.]+) s \(target for 20,000: under 30 s\)$", stdout, re.M)
    assert header and files and index and stages and peak and total, stdout
    return {"header": header.groups(), "files": [int(v) for v in files.groups()], "index": index.groups(),
            "stages": {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", stages.group(1))},
            "peak": [int(v) for v in peak.groups()], "total": (int(total.group(1)), float(total.group(2)))}


@pytest.mark.slow
def test_the_rerun_benchmark_skips_every_file_of_its_library_and_finds_the_index_up_to_date(pretrained_cache,
                                                                                          tmp_path):
    """--library_rerun on a library of 50 files (built the first time, reused the second): every
    file is skipped, nothing else happens, the index holds every track and is not rewritten, and
    the stages add up to the total (speed is not asserted)."""
    for attempt in ("built", "reused"):
        out = processes.run(["scripts/benchmark.py", "--library_rerun=50", f"--work_dir={tmp_path}"], timeout=600,
                            JAXTAG_CACHE=pretrained_cache)
        assert out.returncode == 0, out.stderr[-3000:]
        r = _rerun_figures(out.stdout)
        n, albums, folder, how = r["header"]
        assert (int(n), int(albums)) == (50, 5) and folder.startswith(str(tmp_path))
        assert how.startswith("built in") if attempt == "built" else how == "built before, reused"
        assert r["files"] == [50, 50, 0, 0, 0, 0]
        tracks, moments, kind, rewritten, playlists = r["index"]
        assert int(tracks) == 50 and 50 * 60 <= int(moments) <= 50 * 101 and kind == "exact"   # tracks of 3-5 minutes
        assert rewritten.startswith("up to date") and int(playlists) > 0
        assert list(r["stages"]) == ["find", "plan", "prune", "summary", "similarity", "other", "playlists"]
        assert r["total"][0] == 50 and abs(sum(r["stages"].values()) - r["total"][1]) < 0.1
        assert r["peak"][0] >= r["peak"][1] > 0
    audio = [f for _, _, names in os.walk(os.path.join(folder, "music")) for f in names]
    assert len(audio) == 50 and all(f.endswith(".mp3") for f in audio)


def _cli_benchmark():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import cli_benchmark    # its flags are defined only when it runs as a script
    return cli_benchmark


def test_cli_benchmark_picks_its_tracks_by_length_round_robin_over_the_folders(tmp_path):
    """scripts/cli_benchmark.py's tracks: .ogg/.flac files of 180-240 s (bounds included; the
    length read from the file), one folder after the other in sorted order, each folder's files
    by name; the same every time; too few: refused, saying how many there are."""
    import numpy as np
    import soundfile as sf
    bench = _cli_benchmark()
    sr = 1000     # tiny files of real lengths

    def audio(name, seconds):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.zeros(int(seconds * sr), np.int16), sr)

    for name, seconds in [("alpha/a1.flac", 200), ("alpha/a2.ogg", 185), ("alpha/a3.flac", 240),
                          ("alpha/short.flac", 100), ("alpha/long.flac", 250), ("alpha/other.wav", 200),
                          ("alpha/sub/a4.flac", 190), ("beta/b1.FLAC", 180), ("gamma/g1.ogg", 220),
                          ("gamma/g2.flac", 210), ("loose.flac", 200)]:
        audio(name, seconds)
    (tmp_path / "alpha" / "broken.ogg").write_bytes(b"not audio")
    (tmp_path / "empty").mkdir()
    picked = bench.pick_tracks(str(tmp_path), 7)
    assert [(name, round(seconds)) for name, seconds in picked] == [
        ("alpha/a1.flac", 200), ("beta/b1.FLAC", 180), ("gamma/g1.ogg", 220), ("alpha/a2.ogg", 185),
        ("gamma/g2.flac", 210), ("alpha/a3.flac", 240), ("alpha/sub/a4.flac", 190)]
    assert bench.pick_tracks(str(tmp_path), 7) == picked
    assert bench.pick_tracks(str(tmp_path), 3) == picked[:3]
    with pytest.raises(ValueError, match=r"only 7 ogg/flac file\(s\) of 180-240 s .* 8 needed"):
        bench.pick_tracks(str(tmp_path), 8)
    with pytest.raises(ValueError, match="no such folder"):
        bench.pick_tracks(str(tmp_path / "nowhere"), 1)


def test_cli_benchmark_links_the_originals_and_copies_for_a_tagger_that_writes(tmp_path):
    """The original reads symlinks to the music folder; jaxtag gets copies (its --write_tags writes
    into them), so the music folder is never changed."""
    bench = _cli_benchmark()
    music = tmp_path / "music"
    (music / "pkg").mkdir(parents=True)
    (music / "pkg" / "t.ogg").write_bytes(b"the original bytes")
    tracks = [("pkg/t.ogg", 200.0)]
    linked, = bench.lay_out(tracks, str(music), str(tmp_path / "linked"), copy=False)
    copied, = bench.lay_out(tracks, str(music), str(tmp_path / "copied"), copy=True)
    assert linked == str(tmp_path / "linked" / "pkg" / "t.ogg") and copied == str(tmp_path / "copied" / "pkg" / "t.ogg")
    assert os.path.islink(linked) and os.path.realpath(linked) == str(music / "pkg" / "t.ogg")
    assert not os.path.islink(copied)
    with open(copied, "ab") as f:
        f.write(b" and tags")
    assert (music / "pkg" / "t.ogg").read_bytes() == b"the original bytes"
