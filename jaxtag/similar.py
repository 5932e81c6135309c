"""python -m jaxtag.similar OUT QUERY [--n=10]

The tracks and the moments of a tagged library (OUT, written by `python -m jaxtag.tag`) most like
QUERY: a file of the library, a moment of one (`FILE@SECONDS`, or `FILE@M:SS`), a section of one (`FILE#N`: its
N-th section, 1 the first, as its listening page numbers them; the mean of its moments), or any
other audio file (tagged on the fly with the library's model; `FILE#N` too). Prints the N most
similar tracks (cosine, path) and the N most similar moments in other tracks (cosine, path,
start-end in seconds); --json prints them as JSON.
The index is brought up to date first if the library changed since (jaxtag.library.similarity).
Exit status: 0; 2 if OUT is no tagged library or QUERY cannot be read.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

_N = flags.DEFINE_integer("n", 10, "How many tracks and moments to list.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of lines.")
_WORKDIR = flags.DEFINE_string("workdir", None, "For an outside file: the training run the library was tagged "
                               "with (default: the library's pretrained model).")


def main(argv):
    if len(argv) != 3:
        raise app.UsageError("give the tagged library's folder and one query: FILE, FILE@SECONDS, FILE#SECTION "
                             "or an audio file")
    output_dir, query = os.path.expanduser(argv[1]), os.path.expanduser(argv[2])
    if not os.path.isdir(os.path.join(output_dir, ".jaxtag")):
        print(f"error: {output_dir}: not a folder tagged by `python -m jaxtag.tag` (no .jaxtag inside)", file=sys.stderr)
        return 2
    from jaxtag.library.similarity import find_similar
    from jaxtag.errors import JaxtagError
    try:
        found = find_similar(output_dir, query, _N.value, _WORKDIR.value)
    except (OSError, ValueError, JaxtagError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if _JSON.value:
        print(json.dumps(found, indent=1))
        return 0
    section = found.get("section")
    where = f" (section {section['number']}, {section['start']:.1f}-{section['end']:.1f} s)" if section else ""
    print(f"tracks most like {found['query']}{where}:")
    for t in found["tracks"]:
        print(f"  {t['score']:.3f}  {t['path']}")
    print("moments most like it, in other tracks:")
    for m in found["moments"]:
        print(f"  {m['score']:.3f}  {m['path']}  {m['start']:.1f}-{m['end']:.1f} s")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
