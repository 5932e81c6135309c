"""Playlists: one per tag tracks carry (read back, relative paths resolved), Navidrome smart
playlists per mood, radio lists of similar tracks, stale ones removed, the CLI."""
import json
import os
import shutil

import pytest

from jaxtag.library import similarity
from jaxtag.library.run import LibraryOptions, tag_library
from jaxtag.library.playlists import write_playlists
from jaxtag.tagging.tagger import Tagger
from test_library import _calibrated_on, _music


def read_m3u8(path):
    """(name, [(seconds, title, the file it points to)]) of a playlist, paths resolved as players do."""
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[0] == "#EXTM3U" and lines[1].startswith("#PLAYLIST:")
    entries = []
    for info, location in zip(lines[2::2], lines[3::2]):
        assert info.startswith("#EXTINF:") and not os.path.isabs(location)
        seconds, title = info[len("#EXTINF:"):].split(",", 1)
        entries.append((int(seconds), title, os.path.normpath(os.path.join(os.path.dirname(path), location))))
    return lines[1][len("#PLAYLIST:"):], entries


@pytest.fixture(scope="module")
def tagged(trained, tmp_path_factory):
    music = tmp_path_factory.mktemp("playlist_music")
    for album in ("album0", "album1"):
        (music / album).mkdir()
    files = [_music(music / f"album{i % 2}" / f"song {i}.wav", 6.0 + i, sr=8000, seed=10 + i) for i in range(6)]
    out = tmp_path_factory.mktemp("playlist_out")
    tagger = Tagger.from_workdir(trained[1])
    with _calibrated_on(tagger, files):
        result = tag_library(tagger, files, LibraryOptions(output_dir=str(out), workers=1, top_n=0))
    assert sorted(result.tagged) == sorted(files)
    return tagger, files, out


def test_a_playlist_per_tag_strongest_first_and_a_smart_playlist_per_mood(tagged, tmp_path):
    tagger, files, out = tagged
    library = json.loads((out / "library.json").read_text())
    rows = library["files"]
    carried = {t for r in rows for t in r["track_tags"]}
    assert carried, "no track carries a tag: the test would check nothing"
    written = write_playlists(str(out))
    folder = out / "playlists"
    from jaxtag.data.tags import short_tag
    for tag in carried:
        name, entries = read_m3u8(folder / f"{short_tag(tag).replace('/', '_')}.m3u8")
        members = sorted((r for r in rows if tag in r["track_tags"]), key=lambda r: (-r["strength"][tag], r["name"]))
        assert name == f"jaxtag: {short_tag(tag)}"
        assert [path for _, _, path in entries] == [r["path"] for r in members]      # relative paths resolve
        assert [s for s, _, _ in entries] == [int(round(r["duration"])) for r in members]
        assert [title for _, title, _ in entries] == [os.path.splitext(os.path.basename(r["path"]))[0] for r in members]
    moods = {m for r in rows for m in r["moods"]}
    assert moods
    for mood in moods:
        smart = json.loads((folder / f"mood {mood.replace('/', '_')}.nsp").read_text())
        assert smart["all"] == [{"is": {"mood": mood}}] and smart["name"] == f"jaxtag: {mood}"
    assert len(written) == len(carried) + len(moods)
    # Elsewhere (a player's music folder): the paths are relative to there.
    elsewhere = tmp_path / "Music" / "Playlists"
    write_playlists(str(out), str(elsewhere))
    tag = sorted(carried)[0]
    _, entries = read_m3u8(elsewhere / f"{short_tag(tag).replace('/', '_')}.m3u8")
    assert all(os.path.exists(path) for _, _, path in entries)


def test_playlists_no_track_carries_any_more_go_and_others_files_stay(tagged, tmp_path):
    tagger, files, out = tagged
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    folder = copy / "playlists"
    first = write_playlists(str(copy))
    (folder / "my own.m3u8").write_text("#EXTM3U\n")
    # Now every track carries every tag (one threshold of 0): other playlists; the user's stays.
    policy = tagger.policy
    tagger.policy = policy.with_threshold(0.0)
    try:
        assert len(tag_library(tagger, files, LibraryOptions(output_dir=str(copy), workers=1, top_n=0)).derived) == 6
    finally:
        tagger.policy = policy
    second = write_playlists(str(copy))
    assert len(second) == 2 * len(tagger.tags)                 # every tag, and every tag is a mood (emotions)
    assert (folder / "my own.m3u8").exists()
    on_disk = {p for p in os.listdir(folder) if not p.startswith(".")} - {"my own.m3u8"}
    assert on_disk == {os.path.basename(p) for p in second}
    assert set(os.path.basename(p) for p in first) - on_disk == set()  # all still carried here


def test_a_radio_list_is_the_track_then_its_most_similar(tagged):
    tagger, files, out = tagged
    written = write_playlists(str(out), radio=[files[2]], radio_length=4)
    radio = next(p for p in written if os.sep + "similar" + os.sep in p)
    _, entries = read_m3u8(radio)
    index = similarity.load_index(str(out))
    name = index.names[index.paths.index(files[2])]
    expected = [files[2]] + [index.paths[index.position(n)] for n, _ in
                             index.similar_tracks(index.tracks[index.position(name)], 3, exclude=name)]
    assert [path for _, _, path in entries] == expected and len(expected) == 4
    with pytest.raises(ValueError, match="not a tagged file"):
        write_playlists(str(out), radio=["/elsewhere/x.wav"])


@pytest.mark.slow
def test_the_playlists_command_and_the_tag_flag(tagged, trained, tmp_path):
    from helpers import processes
    tagger, files, out = tagged
    result = processes.run_cli("jaxtag.playlists", str(out), f"--radio={files[0]}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "playlists" / "similar").is_dir() and "playlist(s) in" in result.stderr
    music = tmp_path / "m"
    music.mkdir()
    _music(music / "a.wav", 5.0, sr=8000)
    tagged_now = processes.run_cli("jaxtag.tag", f"--workdir={trained[1]}", str(music),
                                   f"--output_dir={tmp_path / 'o'}", "--playlists", "--threshold=0", timeout=600)
    assert tagged_now.returncode == 0, tagged_now.stderr[-2000:]
    assert len([p for p in os.listdir(tmp_path / "o" / "playlists") if p.endswith(".m3u8")]) == 18
