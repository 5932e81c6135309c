"""What a library run says: top tags per file on stdout; warnings, failures, moves and progress on
stderr."""
from __future__ import annotations

import os
import sys
import threading

from jaxtag.tagging.outputs import shown_path


class LockedLog:
    """A log called from the main and the writer thread, one call at a time."""

    def __init__(self, log):
        self._log = log
        self._lock = threading.Lock()

    def __getattr__(self, name):
        method = getattr(self._log, name)

        def locked(*args, **kwargs):
            with self._lock:
                return method(*args, **kwargs)
        return locked


class Log:
    """What the tag command says: top tags per file on stdout; warnings, failures and progress on
    stderr."""

    def __init__(self, options):
        self.options = options
        self.bar = None

    def plan(self, total: int, todo: int, derive: int = 0, partial: int = 0, library: int = 0) -> None:
        done = total - todo - derive
        if done:
            self.say(f"{done} of {total} file(s) already tagged with this model and these decisions "
                     "(--force redoes them)")
        if derive:
            self.say(f"{derive} file(s) tagged with this model (or its networks) before: their tags are derived "
                     "again from the stored scores with this run's decisions (no decoding, no model)")
        if library:
            self.say(f"{library} other file(s) of the library tagged with this model are derived again with this "
                     "run's decisions (no model), so the library shows one policy")
        if partial:
            self.say(f"{partial} file(s) analysed before by some of this model's networks: only the others run")
        derive += library
        if todo + derive >= 2:
            from tqdm import tqdm
            self.bar = tqdm(total=todo + derive, desc="tagging", unit="file", file=sys.stderr)

    def tagged(self, path: str, taggram) -> None:
        if self.options.top_n > 0:
            top = ", ".join(f"{t} {s:.2f}" for t, s in taggram.top_tags(self.options.top_n))
            self._print(f"{shown_path(path)}: {top}", sys.stdout)
        self._step()

    def unchanged(self, path: str) -> None:
        """A file checked in a worker: the same audio as when it was tagged (done)."""
        self._step()

    def failed(self, path: str, problem: str, done: bool = True) -> None:
        """done: the file leaves the queue here (a failure after tagging it does not)."""
        self._print(f"error: {shown_path(path)}: {problem}", sys.stderr)
        if done:
            self._step()

    def moved(self, old: str, new: str) -> None:
        """A file recognised by its audio under a new path (no model ran)."""
        how = "renamed" if os.path.dirname(old) == os.path.dirname(new) else "moved"
        self._print(f"{how}: {shown_path(old)} -> {shown_path(new)}", sys.stderr)

    def gone(self, path: str) -> None:
        self._print(f"gone: {shown_path(path)} (its outputs are removed from the library)", sys.stderr)

    def warn(self, path: str, message: str) -> None:
        self._print(f"warning: {shown_path(path)}: {message}", sys.stderr)

    def say(self, message: str) -> None:
        self._print(message, sys.stderr)

    def _print(self, message: str, stream) -> None:
        if self.bar is not None:
            self.bar.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)

    def _step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)