"""Starting the processes tests need: jaxtag's CLIs, helper scripts, and two JAX processes that
form one distributed run on localhost."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(REPO, "tests")
RUN_WITH_FAULT = os.path.join(TESTS, "helpers", "run_with_fault.py")


def environment(**extra) -> dict:
    """os.environ for a child process: quiet TensorFlow, the repository and tests/ importable,
    no simulated devices unless asked for."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def run(args: list[str], timeout: int = 900, **env) -> subprocess.CompletedProcess:
    """`python ARGS` in the repository (args: ["-m", "jaxtag.main", ...] or a script path)."""
    return subprocess.run([sys.executable, *args], cwd=REPO, env=environment(**env), capture_output=True,
                          text=True, timeout=timeout)


def run_cli(module: str, *args: str, fault: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS`, or with fault ("sigkill@N", ...) through run_with_fault.py."""
    if fault:
        return run([RUN_WITH_FAULT, fault, module, *args], timeout=timeout)
    return run(["-m", module, *args], timeout=timeout)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def two_processes(command, log_dir, tag: str, timeout: int = 600):
    """Runs `command(process_id, port)` (an argv list after `python`) as processes 0 and 1 of one
    JAX run on localhost. Returns their exit codes, stdouts and stderrs."""
    port = free_port()
    # Output goes to files: a full pipe would block one process at JAX's shutdown barrier.
    logs = [(open(os.path.join(log_dir, f"{tag}_out{i}"), "w+"), open(os.path.join(log_dir, f"{tag}_err{i}"), "w+"))
            for i in range(2)]
    procs = [subprocess.Popen([sys.executable, *command(i, port)], cwd=REPO, env=environment(),
                              stdout=logs[i][0], stderr=logs[i][1], text=True) for i in range(2)]
    codes, outs, errs = [], [], []
    for p, (out, err) in zip(procs, logs):
        codes.append(p.wait(timeout=timeout))
        out.seek(0), err.seek(0)
        outs.append(out.read())
        errs.append(err.read())
    return codes, outs, errs
