"""python -m jaxtag.library OUT [--verbose] [--json] [--clean [--wait_for_lock=SECONDS]]

A tagged library at a glance, as `beet stats` shows a beets library (jaxtag.library.stats): its
files and hours of audio per model and decision policy, the files moved by the last run, missing
from disk or not tagged (--verbose lists them with their problems), the analyses kept of audio no
file holds any more, its precision (float32 or bfloat16: what the tag command's --precision=auto
follows), the last run, the database and the current view. --json prints the same as
JSON, for scripts. --clean removes the analyses of audio no file holds any more (moved away or
deleted: they are kept until then, so the same audio found again needs no model run) and says
what it freed; it waits for no run unless --wait_for_lock says so.
Exit status: 0; 2 if OUT is no tagged library or its database cannot be read; 75 if a run holds
OUT (--clean; try again later).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from jaxtag.errors import JaxtagError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxtag.library",
                                     description="A library tagged by `python -m jaxtag.tag` at a glance.")
    parser.add_argument("output_dir", metavar="OUT", help="the tagged library's folder (the tag command's --output_dir)")
    parser.add_argument("--json", action="store_true", help="print it as JSON (for scripts)")
    parser.add_argument("--verbose", "-v", action="store_true", help="list the missing and failed files")
    parser.add_argument("--clean", action="store_true",
                        help="remove the analyses of audio no file of the library holds any more")
    parser.add_argument("--wait_for_lock", type=float, default=0.0, metavar="SECONDS",
                        help="with --clean: how long to wait for a run into OUT to finish (default: not at all)")
    args = parser.parse_args(argv)
    from jaxtag.library import stats
    from jaxtag.library.state import LibraryBusy
    output_dir = os.path.expanduser(args.output_dir)
    try:
        if args.clean:
            result = stats.clean_orphans(output_dir, args.wait_for_lock)
            print(json.dumps(result, indent=1) if args.json else stats.describe_clean(result))
        else:
            result = stats.library_stats(output_dir)
            print(json.dumps(result, indent=1) if args.json else stats.describe(result, args.verbose))
    except LibraryBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 75   # EX_TEMPFAIL, as the tag command's
    except JaxtagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """Console script entry point (jaxtag-library)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
