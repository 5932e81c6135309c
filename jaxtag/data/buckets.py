"""Length buckets: pad a track's windows to one of a few lengths, so jit compiles once per bucket."""
from __future__ import annotations

from typing import Sequence


def bucket_length(n_windows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n_windows; past the last, the next multiple of the last bucket."""
    for b in buckets:
        if n_windows <= b:
            return int(b)
    last = int(buckets[-1])
    return -(-n_windows // last) * last
