"""A library decoder that kills its worker process on files named crash*, as a segfaulting audio
decoder or the OOM killer would (tests/test_library.py); it decodes the others as usual. And one
that hangs, for Ctrl-C."""
import os

from jaxtag.tagging import decoding


def decode_or_crash(path, *args):
    if os.path.basename(path).startswith("crash"):
        os._exit(70)
    return decoding.decode_file(path, *args)


def decode_slowly(path, *args):
    """A decoder stuck for a minute: what Ctrl-C must not wait for."""
    import time
    time.sleep(60)
    return decoding.decode_file(path, *args)


def decode_then_linger(path, *args):
    """A decoder that holds on to its result for a while after the last frame is written: the
    main process sees the whole frames file while the file is still 'being decoded'."""
    import time
    decoded = decoding.decode_file(path, *args)
    time.sleep(3)
    return decoded
