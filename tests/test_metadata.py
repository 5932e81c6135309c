"""jaxtag.library.file_tags: tags written into each format's own metadata, safely.

Every file here comes from a real encoder: libsndfile (through soundfile) for WAV, FLAC, Ogg
Vorbis, Ogg Opus and MP3 (LAME), FFmpeg's native AAC encoder (through PyAV) for M4A. Audio is
compared by decoding it (soundfile; PyAV for M4A) before and after.
"""
from __future__ import annotations

import os
import stat

import av  # FFmpeg's native AAC encoder and decoder (M4A files)
import mutagen
import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, TALB, TMOO, TXXX, PictureType
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from jaxtag.errors import DataError
from jaxtag.tagging import fingerprint
from jaxtag.library import file_tags as metadata

TITLE, ARTIST, ALBUM = "My Title", "Some Artist", "Albüm ✓ 日本"
COVER = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # stands in for cover art: only its bytes matter
MOODS = ["Emotion-Happy", "Emotion-Calming_/_Soothing"]
TAGS = MOODS + ["Instrument_-_Piano", "Instrument_-_Electric_Guitar_(clean)"]
MODEL = "cal500exp-tiny"

# name -> (extension, mutagen class that must read the file)
FORMATS = {
    "mp3": (".mp3", None),
    "wav": (".wav", WAVE),
    "flac": (".flac", FLAC),
    "ogg_vorbis": (".ogg", OggVorbis),
    "ogg_vorbis_big_comment": (".oga", OggVorbis),
    "opus": (".opus", OggOpus),
    "m4a": (".m4a", MP4),
    "m4a_faststart": (".m4a", MP4),
}
FIELDS = {".mp3": ("TMOO", "TXXX:JAXTAG"), ".wav": ("TMOO", "TXXX:JAXTAG"),
          ".flac": ("MOOD", "JAXTAG"), ".ogg": ("MOOD", "JAXTAG"), ".oga": ("MOOD", "JAXTAG"),
          ".opus": ("MOOD", "JAXTAG"),
          ".m4a": ("----:com.apple.iTunes:MOOD", "----:com.apple.iTunes:JAXTAG")}
# A comment header spanning several Ogg pages (mutagen pages it in ~4 KB pages).
BIG_LYRICS = "la " * 5_000


def _signal(sr: int, seconds: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)
    right = 0.2 * np.sin(2 * np.pi * 660 * t)
    return np.stack([left, right], axis=1).astype(np.float32)


def _with_libsndfile(path, fmt, subtype, sr):
    with sf.SoundFile(str(path), "w", sr, 2, subtype, format=fmt) as f:
        f.title, f.artist = TITLE, ARTIST  # libsndfile's own metadata for this format
        f.write(_signal(sr))


def _with_pyav(path, faststart):
    sr = 44100
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="ipod", options=options) as out:
        out.metadata["title"], out.metadata["artist"] = TITLE, ARTIST
        stream = out.add_stream("aac", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(_signal(sr).T), format="fltp",
                                           layout="stereo")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def make_track(name: str, folder) -> str:
    """A short real-encoder file with a title and artist (and an album and cover where the
    format has room) already in it."""
    ext, _ = FORMATS[name]
    path = str(folder / f"track{ext}")
    if name == "mp3":
        _with_libsndfile(path, "MP3", "MPEG_LAYER_III", 44100)  # LAME writes an ID3v1 tag
        audio = MP3(path)  # ... and an ID3v2.3 tag besides, which the write upgrades to v2.4
        assert audio.tags.version == (1, 1) and str(audio.tags["TIT2"]) == TITLE
        audio.tags.add(TALB(encoding=1, text=[ALBUM]))
        audio.tags.add(APIC(encoding=1, mime="image/png", type=PictureType.COVER_FRONT, desc="",
                            data=COVER))
        audio.tags.update_to_v23()
        audio.save(v2_version=3, v1=1)
    elif name == "wav":
        _with_libsndfile(path, "WAV", "PCM_16", 44100)  # title/artist in a LIST/INFO chunk
        audio = WAVE(path)
        audio.add_tags()
        audio.tags.add(TALB(encoding=3, text=[ALBUM]))
        audio.tags.add(APIC(encoding=3, mime="image/png", type=PictureType.COVER_FRONT, desc="",
                            data=COVER))
        audio.save()
    elif name == "flac":
        _with_libsndfile(path, "FLAC", "PCM_16", 44100)
        audio = FLAC(path)
        audio["ALBUM"] = ALBUM
        picture = Picture()
        picture.type, picture.mime, picture.data = PictureType.COVER_FRONT, "image/png", COVER
        audio.add_picture(picture)
        audio.save()
    elif name.startswith("ogg_vorbis"):
        _with_libsndfile(path, "OGG", "VORBIS", 44100)
        audio = OggVorbis(path)
        audio["ALBUM"] = ALBUM
        if name == "ogg_vorbis_big_comment":
            audio["LYRICS"] = BIG_LYRICS
        audio.save()
    elif name == "opus":
        _with_libsndfile(path, "OGG", "OPUS", 48000)
        audio = OggOpus(path)
        audio["ALBUM"] = ALBUM
        audio.save()
    else:
        _with_pyav(path, faststart=name == "m4a_faststart")
        audio = MP4(path)
        audio["\xa9alb"] = ALBUM
        audio["covr"] = [MP4Cover(COVER, imageformat=MP4Cover.FORMAT_PNG)]
        audio.save()
    return path


def decode(path: str) -> tuple[np.ndarray, int]:
    """Decoded samples and rate: PyAV for M4A, soundfile (libsndfile) for the rest."""
    if path.endswith(".m4a"):
        with av.open(path) as container:
            frames = [f.to_ndarray() for f in container.decode(audio=0)]
            rate = container.streams.audio[0].rate
        return np.concatenate(frames, axis=1), rate
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    return samples, rate


def other_tags(path: str) -> dict:
    """The pre-existing tags, read independently of the module under test."""
    ext = os.path.splitext(path)[1]
    audio = mutagen.File(path)
    if ext in (".mp3", ".wav"):
        out = {"title": str(audio.tags["TIT2"]) if "TIT2" in audio.tags else None,
               "artist": str(audio.tags["TPE1"]) if "TPE1" in audio.tags else None,
               "album": str(audio.tags["TALB"]), "cover": audio.tags.getall("APIC")[0].data}
        if ext == ".wav":  # libsndfile's RIFF INFO chunk
            with sf.SoundFile(path) as f:
                out["title"], out["artist"] = f.title, f.artist
        return out
    if ext == ".m4a":
        return {"title": audio["\xa9nam"][0], "artist": audio["\xa9ART"][0],
                "album": audio["\xa9alb"][0], "cover": bytes(audio["covr"][0])}
    out = {"title": audio["title"][0], "artist": audio["artist"][0], "album": audio["album"][0]}
    if ext == ".flac":
        out["cover"] = audio.pictures[0].data
    if "lyrics" in audio:
        out["lyrics"] = audio["lyrics"][0]
    return out


def expected_other_tags(name: str) -> dict:
    out = {"title": TITLE, "artist": ARTIST, "album": ALBUM}
    if name in ("mp3", "wav", "flac", "m4a", "m4a_faststart"):
        out["cover"] = COVER
    if name == "ogg_vorbis_big_comment":
        out["lyrics"] = BIG_LYRICS
    return out


def raw_fields(path: str) -> dict[str, list[list[str]]]:
    """Every MOOD/JAXTAG entry in the file, in any letter case: field -> one value list per
    entry (frame, comment or atom), read with mutagen directly."""
    audio = mutagen.File(path)
    tags = audio.tags
    ext = os.path.splitext(path)[1]
    out = {"MOOD": [], "JAXTAG": []}
    if tags is None:
        return out
    if ext in (".mp3", ".wav"):
        out["MOOD"] = [list(f.text) for f in tags.getall("TMOO")]
        out["JAXTAG"] = [list(f.text) for f in tags.getall("TXXX") if f.desc.upper() == "JAXTAG"]
    elif ext == ".m4a":
        for key, values in tags.items():
            for field in out:
                if key.upper() == "----:COM.APPLE.ITUNES:" + field:
                    out[field].append([bytes(v).decode() for v in values])
    else:
        for key, value in tags:
            if key.upper() in out:
                out[key.upper()].append([value])
    return out


def seed_old_fields(path: str) -> None:
    """Fields as an earlier run (or another tool) left them, in other letter cases."""
    ext = os.path.splitext(path)[1]
    audio = mutagen.File(path)
    if ext in (".mp3", ".wav"):
        audio.tags.add(TMOO(encoding=3, text=["Old mood"]))
        audio.tags.add(TXXX(encoding=3, desc="jaxtag", text=["model=old; tags=x"]))
        audio.save(v2_version=4)
    elif ext == ".m4a":
        audio["----:com.apple.iTunes:mood"] = [MP4FreeForm(b"Old mood")]
        audio["----:com.apple.iTunes:JAXTAG"] = [MP4FreeForm(b"model=old; tags=x")]
        audio.save()
    else:
        audio.tags.append(("mood", "Old mood"))
        audio.tags.append(("Mood", "Older mood"))
        audio.tags.append(("jaxtag", "model=old; tags=x"))
        audio.save()


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(params=list(FORMATS))
def track(request, tmp_path):
    return request.param, make_track(request.param, tmp_path)


# ------------------------------------------------------------------------------------------------


def test_the_encoders_made_what_each_test_relies_on(track):
    name, path = track
    ext, cls = FORMATS[name]
    audio = mutagen.File(path)
    if cls is not None:
        assert type(audio) is cls
    else:
        assert type(audio).__name__ == "MP3" and audio.tags.version == (2, 3, 0)
    assert other_tags(path) == expected_other_tags(name)
    samples, rate = decode(path)
    assert samples.shape[0] * samples.shape[1] > 10_000 and np.abs(samples).max() > 0.1
    assert metadata.read_tags(path) == {}
    if name == "m4a_faststart":  # moov before mdat: writing tags moves the audio data
        assert read_bytes(path).index(b"moov") < read_bytes(path).index(b"mdat")
    if name == "m4a":
        assert read_bytes(path).index(b"moov") > read_bytes(path).index(b"mdat")


def test_write_reads_back_the_plan_keeps_other_tags_and_the_audio(track):
    name, path = track
    before_samples, before_rate = decode(path)
    plan = metadata.planned_tags(path, MOODS, TAGS, MODEL)
    mood_field, jaxtag_field = FIELDS[os.path.splitext(path)[1]]
    assert plan == {mood_field: "Emotion-Happy; Emotion-Calming_/_Soothing",
                    jaxtag_field: "model=cal500exp-tiny; tags=Emotion-Happy; "
                                  "Emotion-Calming_/_Soothing; Instrument_-_Piano; "
                                  "Instrument_-_Electric_Guitar_(clean)"}

    assert metadata.write_tags(path, MOODS, TAGS, MODEL) == plan

    assert metadata.read_tags(path) == plan
    assert metadata.parse_jaxtag(metadata.read_tags(path)[jaxtag_field]) == (MODEL, TAGS)
    assert other_tags(path) == expected_other_tags(name)
    after_samples, after_rate = decode(path)
    assert after_rate == before_rate
    assert after_samples.shape == before_samples.shape
    assert np.array_equal(after_samples, before_samples)
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    ext, cls = FORMATS[name]
    if cls is not None:
        assert type(mutagen.File(path)) is cls
    else:
        assert mutagen.File(path).tags.version == (2, 4, 0)


def test_mp3_and_wav_carry_id3v24_frames(tmp_path):
    for name in ("mp3", "wav"):
        folder = tmp_path / name
        folder.mkdir()
        path = make_track(name, folder)
        metadata.write_tags(path, MOODS, TAGS, MODEL)
        tags = mutagen.File(path).tags
        assert tags.version == (2, 4, 0)
        assert tags.getall("TMOO")[0].text == ["Emotion-Happy; Emotion-Calming_/_Soothing"]
        assert [f.desc for f in tags.getall("TXXX")] == ["JAXTAG"]
    # The WAV's tags live in an "id3 " RIFF chunk, after the audio: the LIST/INFO chunk is kept.
    data = read_bytes(tmp_path / "wav" / "track.wav")
    assert data.index(b"data") < data.index(b"id3 ") and b"LIST" in data


def test_a_wav_whose_id3_chunk_is_upper_case_is_tagged(tmp_path):
    """Several tag editors write a WAV's ID3 tag in an "ID3 " chunk; mutagen reads and rewrites it
    as its own "id3 " chunk, so the fingerprint must not count either as audio."""
    path = make_track("wav", tmp_path)
    data = bytearray(read_bytes(path))
    at = data.index(b"id3 ")
    data[at:at + 4] = b"ID3 "
    open(path, "wb").write(bytes(data))
    samples, before = decode(path)[0], fingerprint.audio_fingerprint(path)
    metadata.write_tags(path, MOODS, TAGS, MODEL)
    assert metadata.read_tags(path) == metadata.planned_tags(path, MOODS, TAGS, MODEL)
    assert other_tags(path) == expected_other_tags("wav")
    np.testing.assert_array_equal(decode(path)[0], samples)
    assert fingerprint.audio_fingerprint(path) == before
    written = read_bytes(path)
    assert written.lower().count(b"id3 ") == 1   # one tag chunk, not a second one beside the old


def test_ogg_big_comment_header_gains_a_page_and_the_audio_survives(tmp_path):
    path = make_track("ogg_vorbis_big_comment", tmp_path)
    pages_before = read_bytes(path).count(b"OggS")
    before, _ = decode(path)
    # A 5 KB field: the comment header needs more pages, so every audio page after it is
    # renumbered and gets a new CRC (which the verification must accept).
    metadata.write_tags(path, MOODS, TAGS + ["x" * 5000], MODEL)
    assert read_bytes(path).count(b"OggS") > pages_before
    after, _ = decode(path)
    assert np.array_equal(after, before)
    assert other_tags(path)["lyrics"] == BIG_LYRICS


def test_an_ogg_audio_page_with_a_wrong_crc_is_not_silently_repaired(tmp_path):
    """A damaged audio page (its CRC wrong) counts in the fingerprint: a write that renumbers the
    pages (a longer comment) would give it a fresh CRC, so it is refused and the file kept."""
    path = make_track("ogg_vorbis_big_comment", tmp_path)
    data = bytearray(read_bytes(path))
    starts = [i for i in range(len(data)) if data[i:i + 4] == b"OggS"]
    last = starts[-1]                        # an audio page: its CRC bytes are 22..25 of its header
    data[last + 22] ^= 0xFF
    open(path, "wb").write(bytes(data))
    before = fingerprint.audio_fingerprint(path)
    (tmp_path / "x").mkdir()
    intact = fingerprint.audio_fingerprint(str(make_track("ogg_vorbis_big_comment", tmp_path / "x")))
    assert before is not None and before != intact          # the damage counts
    with pytest.raises(DataError, match="audio data would change"):
        metadata.write_tags(path, MOODS, TAGS + ["x" * 5000], MODEL)
    assert read_bytes(path) == bytes(data)


def test_m4a_freeform_atoms_are_utf8(tmp_path):
    path = make_track("m4a_faststart", tmp_path)
    metadata.write_tags(path, ["Emotion-Happy"], ["Emotion-Happy", "Gänsehaut"], MODEL)
    values = MP4(path).tags["----:com.apple.iTunes:JAXTAG"]
    assert len(values) == 1 and isinstance(values[0], MP4FreeForm)
    assert values[0].dataformat == mutagen.mp4.AtomDataType.UTF8
    assert bytes(values[0]).decode("utf-8") == (
        "model=cal500exp-tiny; tags=Emotion-Happy; Gänsehaut")
    assert MP4(path).tags["----:com.apple.iTunes:MOOD"] == [MP4FreeForm(b"Emotion-Happy")]


def test_a_steady_tempo_is_written_and_an_unsteady_one_leaves_the_files_own(track):
    """With a bpm the tempo field is written (whole beats); without, one already there (another
    tool's) is left exactly as it is; the audio and every other tag survive both."""
    name, track = track
    samples = decode(track)[0]
    kind = fingerprint.kind_of(track)
    field = {"mp3": "TBPM", "wav": "TBPM", "flac": "BPM", "ogg": "BPM", "mp4": "tmpo"}[kind]
    plan = metadata.write_tags(track, MOODS, TAGS, MODEL, bpm=120.4)
    assert plan[field] == "120" and metadata.read_tags(track) == plan
    assert other_tags(track) == expected_other_tags(name)
    # Another tool's tempo, then a write without one (the tempo was not steady): kept.
    audio = fingerprint.open_audio(track, kind)
    metadata._apply(audio, kind, {**metadata.planned_tags(track, MOODS, TAGS, MODEL), field: "97"})
    metadata._save(audio, kind)
    plan = metadata.write_tags(track, MOODS[:1], TAGS, MODEL)
    assert field not in plan and metadata.read_tags(track)[field] == "97"
    assert metadata.read_tags(track)[metadata._FIELDS[kind][0]] == MOODS[0]
    assert "(left as it is: the tempo is not steady)" in metadata.describe_plan(track, plan)
    np.testing.assert_array_equal(decode(track)[0], samples)
    with pytest.raises(ValueError, match="positive number"):
        metadata.planned_tags(track, MOODS, TAGS, MODEL, bpm=float("nan"))


def test_a_second_write_replaces_instead_of_adding(track):
    name, path = track
    before, _ = decode(path)
    seed_old_fields(path)
    assert len(raw_fields(path)["MOOD"]) >= 1 and len(raw_fields(path)["JAXTAG"]) == 1
    metadata.write_tags(path, MOODS, TAGS, MODEL)
    plan = metadata.write_tags(path, ["Emotion-Sad"], ["Emotion-Sad", "Instrument_-_Bass"], "m2")

    assert metadata.read_tags(path) == plan
    assert raw_fields(path) == {"MOOD": [["Emotion-Sad"]],
                                "JAXTAG": [["model=m2; tags=Emotion-Sad; Instrument_-_Bass"]]}
    assert other_tags(path) == expected_other_tags(name)
    after, _ = decode(path)
    assert np.array_equal(after, before)

    # No active mood: the mood field goes, so it never shows an earlier answer.
    plan = metadata.write_tags(path, [], ["Instrument_-_Bass"], "m2")
    assert list(plan) == [FIELDS[os.path.splitext(path)[1]][1]]
    assert metadata.read_tags(path) == plan
    assert raw_fields(path) == {"MOOD": [], "JAXTAG": [["model=m2; tags=Instrument_-_Bass"]]}


def test_writing_what_is_already_there_leaves_the_file_alone(tmp_path):
    path = make_track("flac", tmp_path)
    metadata.write_tags(path, MOODS, TAGS, MODEL)
    data, inode = read_bytes(path), os.stat(path).st_ino
    assert metadata.write_tags(path, MOODS, TAGS, MODEL) == metadata.read_tags(path)
    assert read_bytes(path) == data and os.stat(path).st_ino == inode


def test_dry_run_changes_nothing(track):
    _, path = track
    data, st = read_bytes(path), os.stat(path)
    plan = metadata.write_tags(path, MOODS, TAGS, MODEL, dry_run=True)
    assert plan == metadata.planned_tags(path, MOODS, TAGS, MODEL)
    assert read_bytes(path) == data
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_ino == st.st_ino
    assert metadata.read_tags(path) == {}
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    text = metadata.describe_plan(path, plan)
    assert path in text and all(value in text for value in plan.values())


# Failures injected at each step of a write. Each must leave the original byte-identical, no
# temporary file, and a DataError naming the file.


def _save_then_crash(real_save):
    def save(audio, kind):
        real_save(audio, kind)
        with open(audio.filename, "r+b") as f:  # a half-written copy, then the disk fills up
            f.truncate(os.path.getsize(audio.filename) // 2)
        raise OSError(28, "No space left on device")
    return save


def _save_then_damage_audio(real_save):
    def save(audio, kind):
        real_save(audio, kind)
        size = os.path.getsize(audio.filename)
        with open(audio.filename, "r+b") as f:  # one flipped bit in the middle of the audio
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0x01]))
    return save


def _apply_then_drop_the_album(real_apply):
    def apply(audio, kind, plan):
        real_apply(audio, kind, plan)
        key = {"mp3": "TALB", "wav": "TALB", "mp4": "\xa9alb"}.get(kind, "ALBUM")
        del audio.tags[key]
    return apply


def _apply_a_different_value(real_apply):
    def apply(audio, kind, plan):
        real_apply(audio, kind, {k: v + " (garbled)" for k, v in plan.items()})
    return apply


def _raise(*args, **kwargs):
    raise RuntimeError("injected failure")


INJECTIONS = {
    "save_crashes_half_way": ("_save", _save_then_crash, "No space left on device"),
    "save_damages_the_audio": ("_save", _save_then_damage_audio, "failed verification"),
    "apply_drops_another_tag": ("_apply", _apply_then_drop_the_album,
                                "other tags would change"),
    "apply_writes_other_values": ("_apply", _apply_a_different_value, "reads back"),
    "verify_raises": ("_verify", lambda real: _raise, "injected failure"),
    "replace_fails": ("os.replace", lambda real: _raise, "injected failure"),
    "fsync_fails": ("os.fsync", lambda real: _raise, "injected failure"),
}


@pytest.mark.parametrize("injection", list(INJECTIONS))
def test_a_failed_write_leaves_the_original_untouched(track, injection, monkeypatch):
    name, path = track
    target, make, message = INJECTIONS[injection]
    if target.startswith("os."):
        monkeypatch.setattr(os, target[3:], make(getattr(os, target[3:])))
    else:
        monkeypatch.setattr(metadata, target, make(getattr(metadata, target)))
    data = read_bytes(path)

    with pytest.raises(DataError) as raised:
        metadata.write_tags(path, MOODS, TAGS, MODEL)

    assert raised.value.path == path and str(raised.value).startswith(f"{path}: ")
    assert message in raised.value.problem and "unchanged" in raised.value.problem
    assert read_bytes(path) == data
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def test_an_id3v23_frame_mutagen_would_drop_is_refused(tmp_path):
    """mutagen keeps ID3 frames it does not know only within the same ID3 version, so upgrading
    this ID3v2.3 tag to v2.4 would lose the unknown frame: the write is refused instead."""
    path = make_track("mp3", tmp_path)
    frame = b"XQZW" + (4).to_bytes(4, "big") + b"\0\0" + b"abcd"
    with open(path, "rb") as f:
        audio_start = fingerprint.id3v2_end(f)
    data = read_bytes(path)
    tag = bytearray(data[:audio_start])
    body = bytes(tag[10:]).rstrip(b"\0") + frame  # the frames, then the new one, no padding
    size = len(body)
    syncsafe = bytes([(size >> 21) & 127, (size >> 14) & 127, (size >> 7) & 127, size & 127])
    with open(path, "wb") as f:
        f.write(bytes(tag[:6]) + syncsafe + body + data[audio_start:])
    assert mutagen.File(path).tags.unknown_frames  # the frame is there, unknown to mutagen
    data = read_bytes(path)
    with pytest.raises(DataError, match=r"drop 1 ID3 frame\(s\) it does not know \(XQZW\)"):
        metadata.write_tags(path, MOODS, TAGS, MODEL)
    assert read_bytes(path) == data


def test_flipped_audio_is_caught_as_an_audio_change(tmp_path, monkeypatch):
    """The verification's audio check on its own (a WAV's middle is surely sample data)."""
    path = make_track("wav", tmp_path)
    monkeypatch.setattr(metadata, "_save", _save_then_damage_audio(metadata._save))
    with pytest.raises(DataError, match="audio data would change"):
        metadata.write_tags(path, MOODS, TAGS, MODEL)


@pytest.mark.parametrize("name", ["mp3", "flac", "opus", "m4a_faststart"])
def test_fingerprint_sees_a_flipped_audio_byte_but_not_a_retag(tmp_path, name):
    path = make_track(name, tmp_path)
    kind = fingerprint.kind_of(path)
    before = fingerprint.fingerprint(path, kind, fingerprint.open_audio(path, kind))
    metadata.write_tags(path, MOODS, TAGS * 40, MODEL)  # a big field: the audio moves
    assert fingerprint.fingerprint(path, kind, fingerprint.open_audio(path, kind)) == before
    data = bytearray(read_bytes(path))
    data[len(data) * 3 // 4] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)
    assert fingerprint.fingerprint(path, kind, fingerprint.open_audio(path, kind)) != before


# Bad inputs


def test_unsupported_extension(tmp_path):
    for ext in (".aac", ".txt", ""):
        path = tmp_path / f"track{ext}"
        path.write_bytes(b"whatever")
        for call in (lambda: metadata.write_tags(path, MOODS, TAGS, MODEL),
                     lambda: metadata.planned_tags(path, MOODS, TAGS, MODEL),
                     lambda: metadata.read_tags(path)):
            with pytest.raises(DataError, match="supported extensions") as raised:
                call()
            assert raised.value.path == str(path)
        assert path.read_bytes() == b"whatever"


@pytest.mark.parametrize("ext", [".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a"])
def test_corrupt_files_are_data_errors(tmp_path, ext):
    garbage = tmp_path / f"garbage{ext}"
    garbage.write_bytes(b"This is a text file, not audio.\n" * 200)
    truncated = tmp_path / f"truncated{ext}"
    real = make_track({".mp3": "mp3", ".wav": "wav", ".flac": "flac", ".ogg": "ogg_vorbis",
                       ".opus": "opus", ".m4a": "m4a"}[ext], tmp_path)
    head = read_bytes(real)[:64]  # the right magic bytes, then nothing
    truncated.write_bytes(head)
    os.remove(real)
    for path, content in ((garbage, garbage.read_bytes()), (truncated, head)):
        calls = [lambda: metadata.write_tags(path, MOODS, TAGS, MODEL),
                 lambda: metadata.write_tags(path, MOODS, TAGS, MODEL, dry_run=True)]
        if path == garbage:  # mutagen reads some truncated files' tags; none is written into
            calls.append(lambda: metadata.read_tags(path))
        for call in calls:
            with pytest.raises(DataError) as raised:
                call()
            assert raised.value.path == str(path)
        assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == sorted([garbage.name, truncated.name])


def test_content_that_disagrees_with_the_extension(tmp_path):
    wav = make_track("wav", tmp_path)
    disguised = tmp_path / "really_a_wav.mp3"
    os.rename(wav, disguised)
    data = disguised.read_bytes()
    with pytest.raises(DataError, match="its content is a WAV file, not MP3"):
        metadata.write_tags(disguised, MOODS, TAGS, MODEL)
    assert disguised.read_bytes() == data


def test_fragmented_mp4_with_a_fragment_index_is_refused(tmp_path):
    """mutagen grows the moov box but leaves the mfra/tfra index's absolute moof offsets stale:
    such a file is refused (dry run included), not damaged."""
    path = tmp_path / "fragmented.m4a"
    with av.open(str(path), "w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov"}) as out:
        stream = out.add_stream("aac", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(_signal(44100).T),
                                           format="fltp", layout="stereo")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    data = path.read_bytes()
    assert b"moof" in data and b"mfra" in data
    for dry_run in (True, False):
        with pytest.raises(DataError, match="fragmented MP4 with a fragment index"):
            metadata.write_tags(path, MOODS, TAGS, MODEL, dry_run=dry_run)
    assert path.read_bytes() == data and os.listdir(tmp_path) == [path.name]


def test_ogg_flac_is_refused(tmp_path):
    """An Ogg container whose stream is neither Vorbis nor Opus (here: FLAC in Ogg, hand-made
    first page, since no PyPI encoder writes Ogg FLAC)."""
    path = tmp_path / "track.ogg"
    packet = b"\x7fFLAC\x01\x00\x00\x01fLaC" + b"\x00" * 38
    header = (b"OggS\x00\x02" + b"\x00" * 8 + b"\x01\x00\x00\x00" + b"\x00" * 8
              + bytes([1, len(packet)]))
    path.write_bytes(header + packet)
    with pytest.raises(DataError, match="neither a Vorbis nor an Opus"):
        metadata.write_tags(path, MOODS, TAGS, MODEL)


def test_read_only_file(tmp_path):
    path = make_track("flac", tmp_path)
    os.chmod(path, 0o444)
    data = read_bytes(path)
    for dry_run in (False, True):
        with pytest.raises(DataError, match="read-only") as raised:
            metadata.write_tags(path, MOODS, TAGS, MODEL, dry_run=dry_run)
        assert raised.value.path == path
    assert read_bytes(path) == data and stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert metadata.read_tags(path) == {}  # reading needs no write access


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="cannot read the file"):
        metadata.write_tags(tmp_path / "missing.mp3", MOODS, TAGS, MODEL)
    folder = tmp_path / "folder.flac"
    folder.mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        metadata.write_tags(folder, MOODS, TAGS, MODEL)


def test_temporary_copy_cannot_be_created(tmp_path, monkeypatch):
    path = make_track("opus", tmp_path)
    data = read_bytes(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(metadata.tempfile, "mkstemp", refuse)
    with pytest.raises(DataError, match="cannot create a temporary copy"):
        metadata.write_tags(path, MOODS, TAGS, MODEL)
    assert read_bytes(path) == data


def test_a_copy_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys
    path = make_track("flac", tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # What write_tags leaves when SIGKILLed mid-copy: a hidden copy carrying the writer's id.
        stale = tmp_path / f".track.flac.x1y2z3.jaxtag-tmp-{gone}"
        live = tmp_path / f".track.flac.a4b5c6.jaxtag-tmp-{running.pid}"   # another writer's, still at work
        other = tmp_path / f".other.flac.d7e8f9.jaxtag-tmp-{gone}"        # another file's: its own write cleans it
        for leftover in (stale, live, other):
            leftover.write_bytes(b"half a copy")
        metadata.write_tags(path, MOODS, TAGS, MODEL)
        assert metadata.read_tags(path)["MOOD"]
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "track.flac"])
    finally:
        running.kill()
        running.wait()


def test_file_changed_during_the_write_is_not_overwritten(tmp_path, monkeypatch):
    path = make_track("flac", tmp_path)
    real_save = metadata._save

    def save_while_someone_else_writes(audio, kind):
        real_save(audio, kind)
        with open(path, "ab") as f:
            f.write(b"\0")
    monkeypatch.setattr(metadata, "_save", save_while_someone_else_writes)
    with pytest.raises(DataError, match="the file changed while they were being written"):
        metadata.write_tags(path, MOODS, TAGS, MODEL)
    assert os.listdir(tmp_path) == ["track.flac"]
    assert metadata.read_tags(path) == {}  # the other program's version, not ours


# Atomic replacement: mode bits, symlinks


def test_mode_bits_are_kept_and_the_file_is_replaced_whole(tmp_path):
    path = make_track("mp3", tmp_path)
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    metadata.write_tags(path, MOODS, TAGS, MODEL)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert os.stat(path).st_ino != inode  # a new file was renamed over the old one


def test_a_long_file_name(tmp_path):
    path = make_track("opus", tmp_path)
    long_path = tmp_path / ("é" * 60 + "🎵" * 30 + ".opus")  # 245 bytes: no room for more
    os.rename(path, long_path)
    plan = metadata.write_tags(long_path, MOODS, TAGS, MODEL)
    assert metadata.read_tags(long_path) == plan and os.listdir(tmp_path) == [long_path.name]


def test_a_symlink_stays_a_symlink(tmp_path):
    real = make_track("ogg_vorbis", tmp_path)
    link = tmp_path / "link.ogg"
    os.symlink(real, link)
    plan = metadata.write_tags(link, MOODS, TAGS, MODEL)
    assert os.path.islink(link)
    assert metadata.read_tags(real) == plan


# The two fields' format


def test_planned_fields_per_extension(tmp_path):
    for ext, fields in FIELDS.items():
        assert list(metadata.planned_tags(f"x{ext.upper()}", MOODS, TAGS, MODEL)) == list(fields)
    assert set(metadata.SUPPORTED_EXTENSIONS) >= set(FIELDS) | {".m4b", ".mp4"}


def test_jaxtag_value_round_trips_and_rejects_ambiguous_names():
    value = metadata.format_jaxtag("runs/model v2", ["a_/_b", "c (d)", "a_/_b"])
    assert value == "model=runs/model v2; tags=a_/_b; c (d)"
    assert metadata.parse_jaxtag(value) == ("runs/model v2", ["a_/_b", "c (d)"])
    assert metadata.parse_jaxtag("model=m; tags=") == ("m", [])
    for bad_value in ("tags=a", "model=m;x; tags=a", "moods=a"):
        with pytest.raises(ValueError):
            metadata.parse_jaxtag(bad_value)
    for model, tags in (("m;1", []), ("", []), ("m", ["a;b"]), ("m", ["a\nb"]), ("m", [""])):
        with pytest.raises(ValueError):
            metadata.planned_tags("x.flac", [], tags, model)
    with pytest.raises(ValueError):
        metadata.planned_tags("x.flac", ["a\x00b"], [], "m")
