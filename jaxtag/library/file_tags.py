"""Write a track's jaxtag tags into the audio file's own metadata, safely (``--write_tags``).

Two fields are written, and a third, the tempo, where the track has a steady one (TBPM / BPM /
tmpo, whole beats per minute; without one, a tempo already in the file is left as it is). They are
named per container (these names are the keys of planned_tags/read_tags):

* MP3 (.mp3): ID3v2.4 frames ``TMOO`` and ``TXXX:JAXTAG`` (an ID3v2.3/2.2 tag is upgraded to 2.4;
  an ID3v1 tag at the end is kept up to date by mutagen).
* WAV (.wav): the same two ID3v2.4 frames, in an ``id3 `` RIFF chunk after the audio chunks.
* FLAC (.flac), Ogg Vorbis and Ogg Opus (.ogg, .oga, .opus; the codec is read from the stream):
  Vorbis comments ``MOOD`` and ``JAXTAG``.
* MP4/M4A (.m4a, .m4b, .mp4): UTF-8 freeform atoms ``----:com.apple.iTunes:MOOD`` and
  ``----:com.apple.iTunes:JAXTAG``.

Values:

* mood: the active mood tags joined with ``"; "`` (the caller decides which tags are moods). With no
  active mood the mood field is *removed*, so it never shows an earlier run's answer.
* jaxtag: ``"model=<model>; tags=<tag1>; <tag2>; ..."`` (``"model=<model>; tags="`` when no tag is
  active). Neither the model name nor a tag may contain ``";"`` or a control character, so the
  value parses unambiguously; :func:`parse_jaxtag` is the parser.

Both fields are replaced on every write (any earlier value, in any letter case, is deleted first),
never appended to; every other tag (title, artist, cover art, RIFF INFO, ...) is kept. After a
write, ``read_tags(path) == planned_tags(path, ...)``; a file that already holds exactly those
values is not rewritten.

Safety: the file is copied to a hidden temporary file in its own folder (so the final
``os.replace`` is atomic), mutagen writes into the copy, and the copy is verified before it
replaces the original:

1. mutagen re-parses the copy and reads back exactly the planned values;
2. every other tag mutagen sees (frames/comments/atoms, and ID3 frames mutagen keeps as raw bytes)
   equals the original's;
3. the audio payload is unchanged, compared exactly but without decoding (decoding thousands of
   files twice would dominate a library run): a SHA-256 over everything that is not the tag
   being rewritten -- MP3: the bytes between the leading ID3v2 tag and a trailing ID3v1 tag;
   WAV: every RIFF chunk but the ID3 one (``id3 ``, or ``ID3 `` as some editors write it); FLAC: every metadata block but VORBIS_COMMENT/PADDING,
   then all audio frames; Ogg: every packet of every logical stream but the comment packet,
   with the granule positions of the audio pages (page sequence numbers and CRCs may change
   when the comment header grows); MP4: every box but ``free``/``skip`` and ``moov.udta``, each
   ``mdat`` payload, and the ``stco``/``co64``/``tfhd`` offsets as (mdat index, offset inside it),
   so a moved ``mdat`` must still be addressed correctly.

Then the copy gets the original's mode bits (and owner, where allowed), is fsynced, and
``os.replace`` puts it in place -- unless the original changed meanwhile. On any failure the
original is untouched, the copy is removed, and a :class:`~jaxtag.errors.DataError` names the file.
A symlink is followed: its target is rewritten, the link stays. A file with several hard links
gets a new inode (the other names keep the old content), as with any atomic-replace writer.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Sequence

from jaxtag.errors import DataError
from jaxtag.files import TMP_MARK, fsync_dir, left_by_dead_process
from jaxtag.tagging.fingerprint import (_CHUNK, _KIND_NAMES, SUPPORTED_EXTENSIONS, Unparseable, Unsupported,
                                        fingerprint, kind_of, open_audio)

__all__ = ["SUPPORTED_EXTENSIONS", "describe_plan", "format_jaxtag", "parse_jaxtag", "planned_tags", "read_tags",
           "write_tags"]

MOOD_SEPARATOR = "; "
TAG_SEPARATOR = "; "

_ITUNES = "----:com.apple.iTunes:"
# (mood field, jaxtag field) as planned_tags and read_tags name them.
_FIELDS = {
    "mp3": ("TMOO", "TXXX:JAXTAG"),
    "wav": ("TMOO", "TXXX:JAXTAG"),
    "flac": ("MOOD", "JAXTAG"),
    "ogg": ("MOOD", "JAXTAG"),
    "mp4": (_ITUNES + "MOOD", _ITUNES + "JAXTAG"),
}
# The tempo field, written only with a stable tempo (else left as it is: it may be another tool's).
_BPM_FIELD = {"mp3": "TBPM", "wav": "TBPM", "flac": "BPM", "ogg": "BPM", "mp4": "tmpo"}


def _owned(kind: str, plan: dict[str, str] | None = None) -> tuple[str, ...]:
    """The fields a write replaces: mood and jaxtag always, the tempo where the plan has one."""
    bpm = _BPM_FIELD[kind]
    return _FIELDS[kind] + ((bpm,) if plan is None or bpm in plan else ())
class _ChangedMeanwhile(Exception):
    """The original file changed while its tagged copy was being made."""


class _VerifyFailed(Exception):
    """The tagged copy differs from what was planned or from the original."""


# --------------------------------------------------------------------------------------------
# What is written


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    if ";" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} {name!r} contains ';' or a control character, which the "
                         "file metadata fields cannot hold unambiguously")
    return name


def format_jaxtag(model: str, tags: Sequence[str]) -> str:
    """The JAXTAG value: ``"model=<model>; tags=<tag1>; <tag2>..."``."""
    _check_name("model name", model)
    tags = list(dict.fromkeys(_check_name("tag", t) for t in tags))
    return f"model={model}{TAG_SEPARATOR}tags={TAG_SEPARATOR.join(tags)}"


def parse_jaxtag(value: str) -> tuple[str, list[str]]:
    """Inverse of :func:`format_jaxtag`: (model, tags). ValueError if it is not such a value."""
    head, sep, tags = value.partition(f"{TAG_SEPARATOR}tags=")
    if not sep or not head.startswith("model=") or ";" in head:
        raise ValueError(f"not a jaxtag value: {value!r}")
    return head[len("model="):], (tags.split(TAG_SEPARATOR) if tags else [])


def planned_tags(path: str | os.PathLike, mood_tags: Sequence[str], all_tags: Sequence[str],
                 model: str, bpm: float | None = None) -> dict[str, str]:
    """The fields write_tags would write into this file (field name -> value), from its extension.

    The mood field is absent when ``mood_tags`` is empty (writing then removes it). The tempo
    field (TBPM, BPM or tmpo: whole beats per minute, as ID3 and iTunes store it) is there only
    with a ``bpm``; without one, a tempo already in the file is left as it is. DataError for an
    unsupported extension; ValueError for a model or tag name with ';' or a control character,
    or a bpm that is not a positive number.
    """
    kind = kind_of(path)
    mood_field, jaxtag_field = _FIELDS[kind]
    moods = list(dict.fromkeys(_check_name("mood tag", t) for t in mood_tags))
    plan = {}
    if moods:
        plan[mood_field] = MOOD_SEPARATOR.join(moods)
    plan[jaxtag_field] = format_jaxtag(model, all_tags)
    if bpm is not None:
        if not (isinstance(bpm, (int, float)) and 0 < bpm < 1000):
            raise ValueError(f"a tempo must be a positive number of beats per minute, got {bpm!r}")
        plan[_BPM_FIELD[kind]] = str(int(round(bpm)))
    return plan


def describe_plan(path: str | os.PathLike, plan: dict[str, str]) -> str:
    """Lines for ``--dry_run``: what write_tags would write into ``path``."""
    kind = kind_of(path)
    lines = [f"{os.fspath(path)}: would write"]
    lines += [f"  {field} = {plan[field]}" for field in _owned(kind) if field in plan]
    lines += [f"  {field} (removed)" for field in _FIELDS[kind] if field not in plan]
    lines += [f"  {field} (left as it is: the tempo is not steady)" for field in (_BPM_FIELD[kind],)
              if field not in plan]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading and setting the two fields


def _text_of_freeform(value) -> str:
    from mutagen.mp4 import AtomDataType
    codec = "utf-16-be" if getattr(value, "dataformat", None) == AtomDataType.UTF16 else "utf-8"
    return bytes(value).decode(codec, "replace")


def _read_fields(audio, kind: str, fields: Sequence[str] | None = None) -> dict[str, str]:
    """The fields' values as found (joined with '; ' when a field holds several values); by
    default mood, jaxtag and the tempo."""
    out = {}
    tags = audio.tags
    if tags is None:
        return out
    for field in (fields if fields is not None else _owned(kind)):
        if kind == "mp4" and field == "tmpo":
            values = [str(v) for v in tags.get("tmpo", [])]
        elif kind in ("mp3", "wav"):
            values = [t for frame in tags.values() if frame.HashKey.upper() == field.upper()
                      for t in frame.text]
        elif kind in ("flac", "ogg"):
            values = tags[field] if field in tags else []
        else:
            values = [_text_of_freeform(v) for key, vals in tags.items()
                      if key.upper() == field.upper() for v in vals]
        if values:
            out[field] = MOOD_SEPARATOR.join(str(v) for v in values)
    return out


def _apply(audio, kind: str, plan: dict[str, str]) -> None:
    """Set the planned fields on a mutagen object (deleting any earlier values first)."""
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    for field in _owned(kind, plan):
        if kind in ("flac", "ogg"):
            if field in tags:
                del tags[field]
        else:
            for key in [k for k in tags.keys() if k.upper() == field.upper()]:
                del tags[key]
    for field, value in plan.items():
        if kind in ("mp3", "wav"):
            from mutagen.id3 import TBPM, TMOO, TXXX, Encoding
            if field == "TMOO":
                tags.add(TMOO(encoding=Encoding.UTF8, text=[value]))
            elif field == "TBPM":
                tags.add(TBPM(encoding=Encoding.UTF8, text=[value]))
            else:
                tags.add(TXXX(encoding=Encoding.UTF8, desc=field.split(":", 1)[1], text=[value]))
        elif kind in ("flac", "ogg"):
            tags[field] = [value]
        elif field == "tmpo":
            tags["tmpo"] = [int(value)]
        else:
            from mutagen.mp4 import AtomDataType, MP4FreeForm
            tags[field] = [MP4FreeForm(value.encode("utf-8"), dataformat=AtomDataType.UTF8)]


def _save(audio, kind: str) -> None:
    if kind in ("mp3", "wav"):
        audio.save(v2_version=4)
    else:
        audio.save()


def _other_tags(audio, kind: str, plan: dict[str, str]):
    """A comparable form of every tag but the fields the plan replaces (a file without tags:
    empty ones)."""
    tags = audio.tags
    ours = {f.upper() for f in _owned(kind, plan)}
    if kind in ("mp3", "wav"):
        if tags is None:
            return [], []
        frames = sorted((f.HashKey, repr(f)) for f in tags.values()
                        if f.HashKey.upper() not in ours)
        unknown = [d for d in getattr(tags, "unknown_frames", []) if len(d) > 10]
        return frames, unknown
    if kind in ("flac", "ogg"):
        # The vendor string counts only where a comment block existed (mutagen names itself in
        # a new one).
        if tags is None:
            return [], None
        return [(k.lower(), v) for k, v in tags if k.upper() not in ours], tags.vendor
    if tags is None:
        return []
    from mutagen.mp4 import MP4Cover, MP4FreeForm

    def canon(v):
        if isinstance(v, MP4Cover):
            return ("cover", bytes(v), int(v.imageformat))
        if isinstance(v, MP4FreeForm):
            return ("freeform", bytes(v), int(v.dataformat), v.version)
        return (type(v).__name__, repr(v))
    return sorted((k, [canon(v) for v in vals]) for k, vals in tags.items()
                  if k.upper() not in ours)


def read_tags(path: str | os.PathLike) -> dict[str, str]:
    """The mood, jaxtag and tempo fields found in the file (named as in :func:`planned_tags`).

    Absent fields are left out. DataError for an unsupported, unreadable or unparseable file.
    """
    kind = kind_of(path)
    return _read_fields(open_audio(os.fspath(path), kind), kind)


# --------------------------------------------------------------------------------------------
# Writing


def _tag_difference(kind: str, before, after) -> str:
    """Which other tags a write would change, in words."""
    if kind in ("mp3", "wav") and before[0] == after[0]:
        ids = sorted({bytes(d[:4]).decode("latin-1") for d in before[1]})
        return (f"mutagen would drop {len(before[1])} ID3 frame(s) it does not know "
                f"({', '.join(ids)}) when it rewrites the older ID3v2 tag as ID3v2.4")
    pairs_before = before if kind == "mp4" else before[0]
    pairs_after = after if kind == "mp4" else after[0]
    keys = sorted({k for k, _ in pairs_before} ^ {k for k, _ in pairs_after}
                  | {k for (k, v) in pairs_before if (k, v) not in pairs_after})
    if kind in ("flac", "ogg") and before[1] != after[1]:
        keys.append("vendor string")
    return f"the file's other tags would change ({', '.join(map(str, keys)) or 'their order'})"


def _verify(tmp: str, kind: str, plan: dict[str, str], other_before,
            fingerprint_before: str) -> None:
    """Raise _VerifyFailed unless the tagged copy holds the plan, the other tags and the audio."""
    try:
        audio = open_audio(tmp, kind)
    except DataError as e:
        raise _VerifyFailed(f"mutagen cannot re-read the copy: {e.problem}") from e
    found = _read_fields(audio, kind, _owned(kind, plan))
    if found != plan:
        raise _VerifyFailed(f"it reads back {found!r} instead of {plan!r}")
    other_after = _other_tags(audio, kind, plan)
    if kind in ("flac", "ogg") and other_before[1] is None:
        other_after = other_after[0], None
    if other_after != other_before:
        raise _VerifyFailed(_tag_difference(kind, other_before, other_after))
    try:
        fingerprint_after = fingerprint(tmp, kind, audio)
    except (Unparseable, Unsupported) as e:
        raise _VerifyFailed(f"its structure is damaged ({e})") from e
    if fingerprint_after != fingerprint_before:
        raise _VerifyFailed("its audio data would change")


def _same_file_state(a: os.stat_result, b: os.stat_result) -> bool:
    def key(s: os.stat_result):
        return s.st_ino, s.st_dev, s.st_size, s.st_mtime_ns
    return key(a) == key(b)


def _writable_file(path) -> tuple[str, os.stat_result]:
    """(the real path, its stat) of a regular, writable file; DataError otherwise."""
    real = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(real)
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise DataError(path, "is not a regular file")
    if not st.st_mode & 0o222 or not os.access(real, os.W_OK):
        raise DataError(path, "the file is read-only; not writing tags into it "
                              "(make it writable to let jaxtag tag it)")
    return real, st


def _fingerprint_before_writing(path, real: str, kind: str, audio) -> str:
    """The audio's fingerprint, walking the container as the verification will (so a dry run
    reports a file that a write would refuse)."""
    try:
        return fingerprint(real, kind, audio)
    except Unparseable as e:
        raise DataError(path, f"cannot walk its {_KIND_NAMES[kind]} structure, so a write could "
                              f"not be verified; not writing tags into it ({e})") from e
    except Unsupported as e:
        raise DataError(path, f"{e}; not writing tags into it") from e
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from e


def _remove_stale_copies(folder: str, prefix: str) -> None:
    """Remove the tagged copies of this file that a killed writer left (the copy carries its
    process id); copies of a writer still running stay."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and TMP_MARK in n]
    except OSError:
        return
    for name in names:
        if left_by_dead_process(name):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def write_tags(path: str | os.PathLike, mood_tags: Sequence[str], all_tags: Sequence[str],
               model: str, dry_run: bool = False, bpm: float | None = None) -> dict[str, str]:
    """Write the planned fields into ``path``'s own metadata and return them.

    With ``dry_run`` nothing is written: the file is only checked (format, parseable, writable)
    and the plan returned. A file already holding exactly the plan is left as it is. DataError
    (naming the file) for an unsupported, unreadable, unparseable or read-only file, or a write
    that failed or did not verify; the original file is then unchanged and no temporary file
    remains.
    """
    plan = planned_tags(path, mood_tags, all_tags, model, bpm)
    kind = kind_of(path)
    real, st = _writable_file(path)
    audio = open_audio(real, kind)
    if _read_fields(audio, kind, _owned(kind, plan)) == plan:
        return plan  # already written: a re-run over a library rewrites nothing
    # `st` was taken first: if the file changes after this, the final check refuses to replace it.
    fingerprint_before = _fingerprint_before_writing(path, real, kind, audio)
    if dry_run:
        return plan
    other_before = _other_tags(audio, kind, plan)

    folder = os.path.dirname(real)
    # (the name's first 100 bytes only, so that the temporary name fits in 255 bytes)
    short = os.fsdecode(os.fsencode(os.path.basename(real))[:100])
    _remove_stale_copies(folder, "." + short + ".")
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + short + ".", suffix=f"{TMP_MARK}{os.getpid()}", dir=folder)
    except OSError as e:
        raise DataError(path, f"cannot create a temporary copy in {folder} to write tags "
                              f"safely: {e.strerror or e}") from e
    replaced = False
    try:
        try:
            with os.fdopen(fd, "wb") as out, open(real, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
            copy = open_audio(tmp, kind)
            _apply(copy, kind, plan)
            _save(copy, kind)
            _verify(tmp, kind, plan, other_before, fingerprint_before)
            if not _same_file_state(st, os.stat(real)):
                raise _ChangedMeanwhile()
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except OSError:
                    pass  # only root may give a file away; the new file stays ours
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, real)
            replaced = True
        except _ChangedMeanwhile as e:
            raise DataError(path, "tags not written: the file changed while they were being "
                                  "written (is another program editing it?); it is left as that "
                                  "program left it") from e
        except _VerifyFailed as e:
            raise DataError(path, f"tags not written, the file is unchanged: the tagged copy "
                                  f"failed verification ({e})") from e
        except (Unparseable, Unsupported) as e:
            raise DataError(path, f"tags not written, the file is unchanged: cannot walk its "
                                  f"{_KIND_NAMES[kind]} structure ({e})") from e
        except Exception as e:  # noqa: BLE001 -- whatever failed, the original is untouched
            problem = e.problem if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            raise DataError(path, f"tags not written, the file is unchanged: {problem}") from e
    finally:
        if not replaced:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    fsync_dir(folder)
    return plan
