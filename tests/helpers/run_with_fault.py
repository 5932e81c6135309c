"""Runs a jaxtag CLI with a fault injected, for crash tests:

    python tests/helpers/run_with_fault.py FAULT MODULE [ARGS...]

FAULT is sigkill@N or sigterm@N (this process is signalled right after train step N, before the
loop's preemption check), prepare_kill@N (SIGKILL once N tracks of a preparation are cached), or
tag_sigkill@N / tag_sigint@N (the tag command is sent SIGKILL, or SIGINT as a Ctrl-C would be, right
after the Nth file's record is written: a point the test controls, whatever the machine's speed),
or plan_sigint@N (SIGINT while the run checks the Nth file against the records, before any tagging),
or beam_kill@N (on Beam: SIGKILL to the whole process group, driver and workers, once N files'
journal entries are published, their outputs with them; run it in a session of its own).
The faults are patched in here, so the package itself carries no test hooks.
"""
import os
import runpy
import signal
import sys


def inject(fault: str) -> None:
    kind, at = fault.split("@")
    at = int(at)
    if kind in ("sigkill", "sigterm"):
        from jaxtag.training.preemption import Preemption
        due = Preemption.due

        def due_after_fault(self, step):
            if step == at:
                os.kill(os.getpid(), signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
            return due(self, step)

        Preemption.due = due_after_fault
    elif kind == "prepare_kill":
        from jaxtag.data.cal500exp.cal500exp_dataset_builder import TrackCache
        store = TrackCache.store

        def store_then_kill(self, track, example):
            store(self, track, example)
            done = [f for f in os.listdir(self.folder) if f.endswith(".npz") and ".tmp" not in f]
            if len(done) >= at:
                os.kill(os.getpid(), signal.SIGKILL)

        TrackCache.store = store_then_kill
    elif kind in ("tag_sigkill", "tag_sigint"):
        import threading

        from jaxtag.library.state import LibraryState
        put_decision, records, lock = LibraryState.put_decision, [], threading.Lock()

        def decide_then_signal(self, name, *args, **kwargs):
            put_decision(self, name, *args, **kwargs)
            with lock:
                records.append(name)
                if len(records) == at:
                    os.kill(os.getpid(), signal.SIGKILL if kind == "tag_sigkill" else signal.SIGINT)

        LibraryState.put_decision = decide_then_signal
    elif kind == "plan_sigint":
        from jaxtag.library import plan as library_plan
        plan, planned = library_plan.plan_file, []

        def signal_then_plan(*args, **kwargs):
            planned.append(args[0])
            if len(planned) == at:
                os.kill(os.getpid(), signal.SIGINT)
            return plan(*args, **kwargs)

        library_plan.plan_file = signal_then_plan
    elif kind == "beam_kill":
        from jaxtag.library import beam as beam_library
        from jaxtag.library.journal import JOURNAL
        publish = beam_library.publish

        def publish_then_kill(staging, output_dir):
            publish(staging, output_dir)
            journal = os.path.join(output_dir, JOURNAL)
            # Counted on disk: the runner pickles this function into its workers, each with its own copy.
            done = [f for f in os.listdir(journal) if f.endswith(".json")] if os.path.isdir(journal) else []
            if len(done) >= at:
                os.killpg(os.getpgrp(), signal.SIGKILL)

        beam_library.publish = publish_then_kill
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, module, *args = sys.argv[1:]
    if "sigint" in fault:
        # A suite run as a background job (`cmd &`) starts its children with SIGINT ignored, which
        # is right for the program; the Ctrl-C this test sends must still arrive as one.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    inject(fault)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
