"""python -m jaxtag.pretrained fetch [--force] [--cache-dir DIR] | list [--cache-dir DIR]

fetch: download musicnn==0.1.0's wheel from PyPI once, check it and convert both models into the
cache (nothing is done if they are already cached and verified, unless --force).
list: each model's name, tag count and whether a verified copy is cached.
Exit status 0 on success, 1 on an error (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys

from jaxtag import pretrained
from jaxtag.pretrained import musicnn_weights
from jaxtag.errors import JaxtagError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxtag.pretrained",
                                     description="Published weights for jaxtag's models.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=None,
                        help="cache folder (default: $JAXTAG_CACHE, else $JAXTAG_DATA_DIR/pretrained "
                             "or ~/jaxtag_data/pretrained)")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", parents=[common],
                                help="download and convert the weights of every model")
    fetch.add_argument("--force", action="store_true", help="refetch even if cached")
    commands.add_parser("list", parents=[common],
                        help="list the models and whether they are cached")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            root = pretrained.fetch(args.cache_dir, force=args.force)
            for name in pretrained.PRETRAINED:
                print(f"{name}: {pretrained.weights_path(name, root)}")
        else:
            root = musicnn_weights._root(args.cache_dir)
            print(f"cache: {root}")
            for name, spec in pretrained.PRETRAINED.items():
                state = "cached" if pretrained.is_cached(name, root) else "not cached"
                print(f"{name}\t{spec.num_tags} tags\t{state}\t{spec.description}")
    except (JaxtagError, OSError) as e:
        print(f"jaxtag: error: {e}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """Console script entry point (jaxtag-pretrained)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
