"""Audio containers as jaxtag's tag writer sees them: which kind a file is (by its extension,
checked against its bytes), opening it with mutagen, and the fingerprint of its audio stream
without its tags (what a tag write, a tag editor or a player's play count never change): the
library's content check (a retagged or copied file is not tagged again) and the tag writer's
verification (jaxtag.library.file_tags) both use it.

The fingerprint is a sha256 over everything that is not the tag being rewritten, compared
exactly but without decoding: MP3: the bytes between the leading ID3v2 tag and a trailing ID3v1
tag; WAV: every RIFF chunk but the ID3 one (``id3 ``, or ``ID3 `` as some editors write it);
FLAC: every metadata block but VORBIS_COMMENT/PADDING, then all audio frames; Ogg (pages read
with mutagen's OggPage): every packet of every logical stream but the comment packet, with the
granule positions of the audio pages (page sequence numbers and CRCs may change when the comment
header grows; a page whose CRC is wrong counts as such); MP4: every box but ``free``/``skip`` and
``moov.udta``, each ``mdat`` payload, and the ``stco``/``co64``/``tfhd`` offsets as (mdat index,
offset inside it), so a moved ``mdat`` must still be addressed correctly.
"""
from __future__ import annotations

import hashlib
import os
import struct
from typing import BinaryIO

from jaxtag.errors import DataError

# .aac (raw ADTS) is not here: it has no metadata container, and mutagen's AAC class is read-only.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".m4b", ".mp4")

_KIND_BY_EXTENSION = {
    ".mp3": "mp3", ".wav": "wav", ".flac": "flac",
    ".ogg": "ogg", ".oga": "ogg", ".opus": "ogg",
    ".m4a": "mp4", ".m4b": "mp4", ".mp4": "mp4",
}
_KIND_NAMES = {"mp3": "MP3", "wav": "WAV", "flac": "FLAC", "ogg": "Ogg", "mp4": "MP4/M4A"}
_A_KIND = {"mp3": "an MP3", "wav": "a WAV", "flac": "a FLAC", "ogg": "an Ogg", "mp4": "an MP4/M4A"}
_CHUNK = 1 << 20


class Unparseable(Exception):
    """The container's structure could not be walked (raised by the fingerprint parsers)."""


class Unsupported(Exception):
    """A structure that mutagen would damage (found while walking the original)."""



def kind_of(path: str | os.PathLike) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    try:
        return _KIND_BY_EXTENSION[ext]
    except KeyError:
        which = f"a {ext!r} file" if ext else "a file without an extension"
        raise DataError(path, f"cannot write tags into {which}; supported extensions: "
                              f"{', '.join(SUPPORTED_EXTENSIONS)}") from None



def _syncsafe(b: bytes) -> int:
    return (b[0] & 0x7F) << 21 | (b[1] & 0x7F) << 14 | (b[2] & 0x7F) << 7 | (b[3] & 0x7F)


def id3v2_end(f: BinaryIO, at: int = 0) -> int:
    """Offset just past an ID3v2 tag starting at ``at`` (``at`` itself when there is none)."""
    f.seek(at)
    head = f.read(10)
    if len(head) == 10 and head[:3] == b"ID3" and head[3] < 0xFF and head[4] < 0xFF:
        return at + 10 + _syncsafe(head[6:10]) + (10 if head[5] & 0x10 else 0)
    return at


def _sniff(f: BinaryIO) -> str | None:
    """The container the bytes say this is (None: not recognised)."""
    start = id3v2_end(f)
    f.seek(start)
    head = f.read(12)
    if head[:4] == b"fLaC":
        return "flac"
    if start:
        # ID3v2 in front of anything but FLAC: MPEG audio unless the rest is another container.
        other = {b"OggS": "ogg", b"RIFF": "wav"}.get(head[:4])
        return other or ("mp4" if head[4:8] == b"ftyp" else "mp3")
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[4:8] == b"ftyp":
        return "mp4"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "mp3"  # an MPEG audio frame sync with a valid layer (ADTS AAC has layer 0)
    return None


def _ogg_codec(f: BinaryIO) -> str | None:
    """'vorbis' or 'opus': the first beginning-of-stream page that mutagen can tag."""
    for page, _ in _ogg_pages(f):
        if not page.first:
            break  # past the beginning-of-stream pages
        data = b"".join(page.packets)
        if data.startswith(b"\x01vorbis"):
            return "vorbis"
        if data.startswith(b"OpusHead"):
            return "opus"
    return None


def open_audio(path: str, kind: str):
    """The mutagen object of ``path`` (a ``kind`` file). DataError when it is not one."""
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis
    from mutagen.wave import WAVE

    name = _KIND_NAMES[kind]
    try:
        with open(path, "rb") as f:
            found = _sniff(f)
            codec = _ogg_codec(f) if kind == "ogg" and found == "ogg" else None
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from e
    except Unparseable as e:
        raise DataError(path, f"cannot read its Ogg structure: {e}") from e
    # An MP3 may start with junk before its first frame: mutagen (and its sketchy flag) decides.
    if found != kind and not (kind == "mp3" and found is None):
        what = f"{_A_KIND[found]} file" if found else "not a recognised audio file"
        raise DataError(path, f"its content is {what}, not {name} as its extension says; "
                              "not writing tags into it")
    if kind == "ogg" and codec is None:
        raise DataError(path, "the Ogg file holds neither a Vorbis nor an Opus stream; "
                              "only those can be tagged")
    cls = {"mp3": MP3, "wav": WAVE, "flac": FLAC, "mp4": MP4,
           "ogg": OggVorbis if codec == "vorbis" else OggOpus}[kind]
    try:
        audio = cls(path)
    except Exception as e:  # noqa: BLE001 -- untrusted bytes: any failure is "cannot parse"
        raise DataError(path, f"cannot parse it as {name} ({type(e).__name__}: {e})") from e
    if kind == "mp3" and getattr(audio.info, "sketchy", False):
        raise DataError(path, "it does not look like valid MPEG audio (mutagen found no reliable "
                              "frame headers); not writing tags into it")
    return audio



def _file_size(f: BinaryIO) -> int:
    return f.seek(0, os.SEEK_END)


def _hash_range(f: BinaryIO, h, start: int, end: int) -> None:
    f.seek(start)
    left = end - start
    while left > 0:
        block = f.read(min(_CHUNK, left))
        if not block:
            raise Unparseable("file ends early")
        h.update(block)
        left -= len(block)


def _fp_mp3(f: BinaryIO, h) -> None:
    size = _file_size(f)
    start = id3v2_end(f)
    end = size
    if size - start >= 128:
        f.seek(size - 128)
        if f.read(3) == b"TAG":
            end -= 128
    _hash_range(f, h, start, end)


def _fp_wav(f: BinaryIO, h) -> None:
    size = _file_size(f)
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise Unparseable("no RIFF/WAVE header")
    riff_end = 8 + struct.unpack("<I", head[4:8])[0]
    if riff_end > size:
        raise Unparseable("the RIFF size runs past the end of the file")
    pos = 12
    while pos + 8 <= riff_end:
        f.seek(pos)
        cid, csize = struct.unpack("<4sI", f.read(8))
        end = pos + 8 + csize
        if end > riff_end:
            raise Unparseable(f"chunk {cid!r} runs past the end of the RIFF data")
        if cid.rstrip().lower() != b"id3":  # the tag chunk: mutagen reads "ID3 " and writes "id3 "
            h.update(cid + struct.pack("<Q", csize))
            _hash_range(f, h, pos + 8, end)
        pos = end + (csize & 1)
    _hash_range(f, h, min(pos, riff_end), size)  # stray bytes in and after the RIFF


def _fp_flac(f: BinaryIO, h) -> None:
    size = _file_size(f)
    start = id3v2_end(f)
    _hash_range(f, h, 0, start)  # mutagen keeps a leading ID3v2 tag as it is
    f.seek(start)
    if f.read(4) != b"fLaC":
        raise Unparseable("no fLaC marker")
    pos = start + 4
    while True:
        f.seek(pos)
        head = f.read(4)
        if len(head) < 4:
            raise Unparseable("metadata blocks run past the end of the file")
        btype, blen = head[0] & 0x7F, int.from_bytes(head[1:4], "big")
        if btype not in (1, 4):  # PADDING and VORBIS_COMMENT are what a tag write changes
            h.update(bytes([btype]) + blen.to_bytes(4, "big"))
            _hash_range(f, h, pos + 4, pos + 4 + blen)
        pos += 4 + blen
        if head[0] & 0x80:
            break
    if pos > size:
        raise Unparseable("metadata blocks run past the end of the file")
    _hash_range(f, h, pos, size)


def _ogg_pages(f: BinaryIO):
    """(page, whether its CRC is right) of every Ogg page, read with mutagen's OggPage. A page's
    CRC is right when mutagen, writing the page it read, gives back its bytes (its CRC included)."""
    from mutagen.ogg import OggPage, error as OggError
    f.seek(0)
    while True:
        start = f.tell()
        try:
            page = OggPage(f)
        except EOFError:
            return
        except OggError as e:
            raise Unparseable(f"an Ogg page is broken ({e})") from None
        end = f.tell()
        f.seek(start)
        raw = f.read(end - start)
        yield page, page.write() == raw


def _fp_ogg(f: BinaryIO, h, tagged_serial: int, header_packets: int) -> None:
    streams: dict[int, list] = {}  # serial -> [hasher, packets finished, partial packet]
    for page, crc_ok in _ogg_pages(f):
        st = streams.setdefault(page.serial, [hashlib.sha256(), 0, bytearray()])
        # Audio starts on a fresh page, so a page holds header packets or audio, never both.
        # Header pages may be repaginated by a tag write; audio pages keep granule and flags.
        if page.serial != tagged_serial or st[1] >= header_packets:
            st[0].update(b"G" + struct.pack("<qB", page.position, 0x04 if page.last else 0))
            if not crc_ok:
                st[0].update(b"bad CRC")  # renumbering would silently "repair" a damaged page
        for i, part in enumerate(page.packets):
            st[2] += part
            if i < len(page.packets) - 1 or page.complete:
                index, packet = st[1], bytes(st[2])
                st[1], st[2] = index + 1, bytearray()
                if page.serial == tagged_serial and index == 1:
                    st[0].update(b"comment packet")
                else:
                    st[0].update(b"P" + len(packet).to_bytes(8, "big") + packet)
    for serial, (sh, _, partial) in streams.items():
        h.update(struct.pack("<I", serial) + sh.digest() + bytes(partial))


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex",
                   b"moof", b"traf", b"mfra"}


def _mp4_boxes(f: BinaryIO, start: int, end: int):
    """(name, payload start, box end) of the boxes in [start, end); stray bytes come last as
    a box named b""."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        size, name = struct.unpack(">I4s", f.read(8))
        payload = pos + 8
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
            payload += 8
        elif size == 0:
            size = end - pos
        if size < payload - pos or pos + size > end:
            raise Unparseable(f"box {name!r} at {pos} has an impossible size")
        yield name, payload, pos + size
        pos += size
    if pos < end:
        yield b"", pos, end  # a few stray bytes (e.g. QuickTime's 32-bit zero terminator)


def _fp_mp4(f: BinaryIO, h) -> None:
    size = _file_size(f)
    top = list(_mp4_boxes(f, 0, size))
    names = {name for name, _, _ in top}
    if b"mfra" in names and b"moof" in names:
        # Its fragment index (tfra) holds absolute moof offsets, which mutagen does not update
        # when the moov box before them grows: seeking would break.
        raise Unsupported("it is a fragmented MP4 with a fragment index (mfra box), whose "
                           "offsets mutagen does not update")
    mdats = [(p, e) for name, p, e in top if name == b"mdat"]

    def where(offset: int) -> bytes:
        for i, (p, e) in enumerate(mdats):
            if p <= offset <= e:
                return struct.pack(">qQ", i, offset - p)
        return struct.pack(">qQ", -1, offset)  # outside every mdat: must not move at all

    def walk(name: bytes, payload: int, end: int, parent: bytes) -> None:
        if name in (b"free", b"skip") or (name == b"udta" and parent == b"moov"):
            return
        h.update(b"<" + name)
        if name in _MP4_CONTAINERS:
            for child in _mp4_boxes(f, payload, end):
                walk(*child, parent=name)
        elif name in (b"stco", b"co64"):
            f.seek(payload)
            data = f.read(end - payload)
            width = 4 if name == b"stco" else 8
            count = struct.unpack(">I", data[4:8])[0] if len(data) >= 8 else -1
            if count < 0 or 8 + count * width > len(data):
                raise Unparseable(f"{name!r} table is truncated")
            offsets = struct.unpack(f">{count}{'I' if width == 4 else 'Q'}",
                                    data[8:8 + count * width])
            h.update(data[:8] + b"".join(where(o) for o in offsets) + data[8 + count * width:])
        elif name == b"tfhd":
            f.seek(payload)
            data = f.read(end - payload)
            if len(data) >= 16 and int.from_bytes(data[1:4], "big") & 1:
                h.update(data[:8] + where(struct.unpack(">Q", data[8:16])[0]) + data[16:])
            else:
                h.update(data)
        else:  # mdat and every other box: byte for byte
            _hash_range(f, h, payload, end)
        h.update(b">")

    for box in top:
        walk(*box, parent=b"")


def fingerprint(path: str, kind: str, audio) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if kind == "mp3":
            _fp_mp3(f, h)
        elif kind == "wav":
            _fp_wav(f, h)
        elif kind == "flac":
            _fp_flac(f, h)
        elif kind == "ogg":
            from mutagen.oggopus import OggOpus
            _fp_ogg(f, h, audio.info.serial, 2 if isinstance(audio, OggOpus) else 3)
        else:
            _fp_mp4(f, h)
    return h.hexdigest()


def audio_fingerprint(path: str | os.PathLike) -> str | None:
    """sha256 of a file's audio stream without its tags (what write_tags, a tag editor or a
    player's play count never change), or None when its format is not one write_tags handles
    or its structure cannot be walked."""
    try:
        kind = kind_of(path)
        real = os.path.realpath(os.fspath(path))
        return fingerprint(real, kind, open_audio(real, kind))
    except (DataError, Unparseable, Unsupported, OSError):
        return None


