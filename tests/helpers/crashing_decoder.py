"""A library decoder that kills its worker process on files named crash*, as a segfaulting audio
decoder or the OOM killer would (tests/test_library.py); it decodes the others as usual. And one
that hangs, for Ctrl-C."""
import os

from jaxtag.tagging import decoding


def decode_or_crash(path, frontend, tmp_dir):
    if os.path.basename(path).startswith("crash"):
        os._exit(70)
    return decoding.decode_file(path, frontend, tmp_dir)


def decode_slowly(path, frontend, tmp_dir):
    """A decoder stuck for a minute: what Ctrl-C must not wait for."""
    import time
    time.sleep(60)
    return decoding.decode_file(path, frontend, tmp_dir)
