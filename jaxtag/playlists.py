"""python -m jaxtag.playlists OUT [--playlist_dir=DIR] [--radio=FILE[,FILE...]]

Playlists from a library tagged by `python -m jaxtag.tag` (OUT): one .m3u8 per tag that tracks
carry (strongest first), a Navidrome smart playlist (.nsp) per mood, and with --radio a
similar/<track>.m3u8 radio list per file named (jaxtag.library.playlists). Paths are relative to
the playlists' folder: write them where your player looks (--playlist_dir, e.g. inside its music
folder). Exit status: 0; 2 if OUT is no tagged library or a radio file is not in it.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

_PLAYLIST_DIR = flags.DEFINE_string("playlist_dir", None, "Where the playlists go (default: OUT/playlists).")
_RADIO = flags.DEFINE_list("radio", [], "Files of the library to write a radio list of similar tracks for.")
_RADIO_LENGTH = flags.DEFINE_integer("radio_length", 50, "Tracks in a radio list (the file itself first).")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("give the tagged library's folder (the tag command's --output_dir)")
    output_dir = os.path.expanduser(argv[1])
    if not os.path.isdir(os.path.join(output_dir, ".jaxtag")):
        print(f"error: {output_dir}: not a folder tagged by `python -m jaxtag.tag` (no .jaxtag inside)", file=sys.stderr)
        return 2
    from jaxtag.library.playlists import write_playlists
    try:
        written = write_playlists(output_dir, _PLAYLIST_DIR.value and os.path.expanduser(_PLAYLIST_DIR.value),
                                  [os.path.expanduser(r) for r in _RADIO.value], _RADIO_LENGTH.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder = os.path.dirname(written[0]) if written else (_PLAYLIST_DIR.value or os.path.join(output_dir, "playlists"))
    print(f"{len(written)} playlist(s) in {folder}", file=sys.stderr)
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
