"""Small file helpers shared across jaxtag."""
from __future__ import annotations

import hashlib


def sha256_file(path: str) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
