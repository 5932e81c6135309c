"""jaxtag's tag CLI against the ORIGINAL musicnn's CLI on the same real tracks: wall time, x real time, peak memory.

    python scripts/cli_benchmark.py                              # 15 tracks of 3-4 minutes, 3 rounds
    python scripts/cli_benchmark.py --tracks=2 --repeats=1       # smoke run
    python scripts/cli_benchmark.py --music_dir=DIR --precision=float32 --venv=/tmp/musicnn-venv

The tracks: --tracks (15) .ogg/.flac files of --min_seconds to --max_seconds (180-240 s) from
--music_dir (one folder per source, e.g. the Debian packages of ~/jaxtag_data/real_music/music),
picked round-robin over the folders in sorted order (each folder's files in sorted order): the same
tracks every time, spread over the sources. Fewer qualifying files than --tracks: refused. The
music folder is never written to: the original reads symlinks to it, jaxtag gets fresh copies
(its --write_tags writes into the files).

Each round runs, in this order so that a shared machine's slow spells hit all of them alike:
- the original: musicnn 0.1.0's own CLI (`python -m musicnn.tagger FILE --model MSD_musicnn
  --print --save TAGS`, one file per command) once per track in ONE process of the venv of
  scripts/original_musicnn.py (tensorflow-cpu 2.21.0, tf-keras, librosa 0.11.0, the wheel's code
  and checkpoints): its extractor per file, as its CLI does, builds the graph, opens a session,
  restores the checkpoint and computes the log-mel, then runs the 3-s patches one at a time
  (BATCH_SIZE 1, as shipped). Every restore is checked (the extractor's bare `except:` would go on
  with random weights). One process is the original's best case: its CLI as a user runs it pays
  for the Python start, TensorFlow's import and the model's build once per file;
- jaxtag, once per --precision (float32, bfloat16): `python -m jaxtag.tag MUSIC
  --output_dir=OUT --model=musicnn-msd --precision=P --embeddings --write_tags --playlists` into a
  fresh OUT, on fresh copies of the tracks: every output (per file JSON, CSV, PNG, HTML, sections,
  embeddings and the tags written into the file; the library's summary, similarity index and
  playlists). The weights are fetched (cached) before anything is timed; the original reads the
  wheel's checkpoints.
Each is a fresh process timed from its start to its exit (the interpreter, the imports and the
model's load count, as a user sees them); its peak memory is the kernel's maximum resident set
of it and the children it waited for (os.wait4's ru_maxrss: the largest single process, here the
main one; this script stays small, since a child's figure starts from its parent's at the fork).
Printed: every run, the medians over --repeats rounds, x real time (audio seconds / wall
seconds), jaxtag's speed over the original's per precision, the original's patches whose input
overflowed (its float16 log-mel is inf where the mel power passes 6.55; it tags them anyway), and
last one JSON line.
Needs what scripts/original_musicnn.py needs the first time (pip access, ~2 GB in /tmp, a few
minutes to build the venv; reused after).
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
sys.path.insert(0, SCRIPTS)

from absl import app, flags  # noqa: E402

import original_musicnn  # noqa: E402  (scripts/)

FLAGS = flags.FLAGS
AUDIO_EXTENSIONS = (".ogg", ".flac")
ORIGINAL_MODEL = "MSD_musicnn"     # jaxtag's musicnn-msd
JAXTAG_MODEL = "musicnn-msd"
# What jaxtag's tag CLI does not write unless asked: with these, every output it has.
JAXTAG_ALL_OUTPUTS = ("--embeddings", "--write_tags", "--playlists")


def define_flags() -> None:
    """Defined when run as a script only: tests import this module beside jaxtag.tag, whose
    --precision would clash."""
    flags.DEFINE_string("music_dir", "~/jaxtag_data/real_music/music", "One folder per source (package, "
                        "album) with .ogg/.flac files; read only.")
    flags.DEFINE_integer("tracks", 15, "How many tracks.")
    flags.DEFINE_float("min_seconds", 180, "Shortest track.")
    flags.DEFINE_float("max_seconds", 240, "Longest track.")
    flags.DEFINE_integer("repeats", 3, "Rounds (each: the original, then jaxtag in each precision).")
    flags.DEFINE_list("precision", ["float32", "bfloat16"], "jaxtag's --precision, one run each per round.")
    flags.DEFINE_string("venv", original_musicnn.DEFAULT_VENV, "The original's venv (built if missing, reused).")


# ----------------------------------------------------------------------------- the tracks

def audio_seconds(path: str) -> float | None:
    """The file's duration from its header, None if soundfile cannot read it."""
    import soundfile as sf
    try:
        return sf.info(path).duration
    except (RuntimeError, OSError, ValueError):   # soundfile.LibsndfileError is a RuntimeError
        return None


def _qualifying(folder: str, min_seconds: float, max_seconds: float, duration):
    """(path relative to folder, seconds) of the folder's audio files of the right length, by name."""
    names = sorted(os.path.relpath(os.path.join(root, f), folder)
                   for root, _, files in os.walk(folder, followlinks=True) for f in files
                   if f.lower().endswith(AUDIO_EXTENSIONS))
    for name in names:
        seconds = duration(os.path.join(folder, name))
        if seconds is not None and min_seconds <= seconds <= max_seconds:
            yield name, seconds


def pick_tracks(music_dir: str, n: int, min_seconds: float = 180, max_seconds: float = 240,
                duration=audio_seconds) -> list[tuple[str, float]]:
    """n tracks of min_seconds to max_seconds (.ogg/.flac) from music_dir's folders, round-robin
    over the folders in sorted order, each folder's files by name: [(path relative to music_dir,
    seconds)]. Files directly in music_dir are not taken. ValueError if fewer than n qualify."""
    music_dir = os.path.expanduser(music_dir)
    if not os.path.isdir(music_dir):
        raise ValueError(f"{music_dir}: no such folder")
    folders = sorted(d for d in os.listdir(music_dir) if os.path.isdir(os.path.join(music_dir, d)))
    queues = collections.deque((d, _qualifying(os.path.join(music_dir, d), min_seconds, max_seconds, duration))
                               for d in folders)
    picked = []
    while queues and len(picked) < n:
        folder, files = queues.popleft()
        track = next(files, None)
        if track is not None:
            picked.append((os.path.join(folder, track[0]), track[1]))
            queues.append((folder, files))
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} {'/'.join(e[1:] for e in AUDIO_EXTENSIONS)} file(s) of "
                         f"{min_seconds:g}-{max_seconds:g} s in the folders of {music_dir}; {n} needed "
                         "(--tracks, --min_seconds, --max_seconds, --music_dir)")
    return picked


def lay_out(tracks: list[tuple[str, float]], music_dir: str, dest: str, copy: bool) -> list[str]:
    """The tracks under dest with their folders, as symlinks to music_dir's files (copy=False) or
    as copies of their content (copy=True: a tagger may write into them); their paths, in order."""
    music_dir = os.path.expanduser(music_dir)
    paths = []
    for name, _ in tracks:
        src, dst = os.path.join(music_dir, name), os.path.join(dest, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if copy:
            shutil.copyfile(src, dst)        # the content, even through a symlink
        else:
            os.symlink(os.path.abspath(src), dst)
        paths.append(dst)
    return paths


# ----------------------------------------------------------------------------- the runs

def run_measured(cmd: list[str], log_prefix: str, **popen) -> dict:
    """Run cmd to its end; wall seconds from start to exit, peak RSS in MB (os.wait4's ru_maxrss:
    the process and the children it waited for), exit status; stdout and stderr are kept in
    log_prefix.out/.err and returned."""
    with open(log_prefix + ".out", "wb") as out, open(log_prefix + ".err", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, **popen)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here: Popen must not wait again
    with open(log_prefix + ".out", encoding="utf-8", errors="replace") as f:
        stdout = f.read()
    with open(log_prefix + ".err", encoding="utf-8", errors="replace") as f:
        stderr = f.read()
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024, "returncode": proc.returncode,
            "stdout": stdout, "stderr": stderr}


def _check(run: dict, what: str) -> None:
    if run["returncode"] != 0:
        sys.exit(f"{what} exited with {run['returncode']}:\n{run['stderr'][-4000:]}\n{run['stdout'][-2000:]}")


def run_original(venv: str, unpacked: str, files: list[str], work: str) -> dict:
    """The original's CLI over files in one venv process (scripts/original_musicnn.py cli)."""
    os.makedirs(work)
    save = os.path.join(work, "tags.txt")
    run = run_measured([original_musicnn.venv_python(venv), os.path.join(SCRIPTS, "original_musicnn.py"), "cli",
                        unpacked, ORIGINAL_MODEL, save, *files], os.path.join(work, "log"),
                       env=original_musicnn.venv_env(), cwd=work)
    _check(run, "the original musicnn")
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    if report["restored"] != len(files) or report["saved_lines"] != len(files):
        sys.exit(f"the original did not tag every file: {report}")
    run["report"] = report
    return run


def count_outputs(out: str) -> dict:
    """Files under out by kind: their suffix (a file without one: its name)."""
    counts = collections.Counter()
    for root, _, files in os.walk(out):
        for f in files:
            counts[os.path.splitext(f)[1].lstrip(".") or f] += 1
    return dict(sorted(counts.items()))


def run_jaxtag(tracks, music_dir: str, precision: str, work: str) -> dict:
    """jaxtag's tag CLI with every output on fresh copies of the tracks into a fresh folder."""
    music = os.path.join(work, "music")
    lay_out(tracks, music_dir, music, copy=True)
    out = os.path.join(work, "out")
    run = run_measured([sys.executable, "-m", "jaxtag.tag", music, f"--output_dir={out}",
                        f"--model={JAXTAG_MODEL}", f"--precision={precision}", *JAXTAG_ALL_OUTPUTS],
                       os.path.join(work, "log"), cwd=REPO)      # this checkout's jaxtag
    _check(run, f"jaxtag ({precision})")
    if f"tagged {len(tracks)}, already done 0, failed 0 of {len(tracks)} file(s)" not in run["stderr"]:
        sys.exit(f"jaxtag ({precision}) did not tag every file:\n{run['stderr'][-3000:]}")
    run["outputs"] = count_outputs(out)
    shutil.rmtree(work)                 # the copies and outputs (~100 MB a run)
    return run


def _line(label: str, run: dict, audio: float) -> str:
    return f"{label}: {run['wall_s']:.1f} s ({audio / run['wall_s']:.1f}x real time), peak {run['peak_mb']:.0f} MB"


def main(argv):
    del argv
    try:
        tracks = pick_tracks(FLAGS.music_dir, FLAGS.tracks, FLAGS.min_seconds, FLAGS.max_seconds)
    except ValueError as e:       # too few tracks, no such folder
        sys.exit(f"error: {e}")
    audio = sum(seconds for _, seconds in tracks)
    folders = len({name.split(os.sep)[0] for name, _ in tracks})
    precisions = FLAGS.precision
    original_musicnn.ensure_venv(FLAGS.venv)
    print("fetching jaxtag's weights (cached after the first time)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "jaxtag.pretrained", "fetch"], cwd=REPO, check=True, stdout=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="jaxtag_cli_bench_") as work:
        unpacked = original_musicnn.fetch_wheel(os.path.join(work, "wheel"))
        files = lay_out(tracks, FLAGS.music_dir, os.path.join(work, "music"), copy=False)
        print(f"CLI benchmark: {len(tracks)} tracks from {folders} folders of {FLAGS.music_dir}, "
              f"{audio / 60:.1f} audio-minutes; the original musicnn 0.1.0 ({ORIGINAL_MODEL}, its CLI per file in "
              f"one process) vs python -m jaxtag.tag --model={JAXTAG_MODEL} with every output "
              f"({' '.join(JAXTAG_ALL_OUTPUTS)}), precision {', '.join(precisions)}; {FLAGS.repeats} round(s); "
              f"{os.cpu_count()} CPU cores")
        for name, seconds in tracks:
            print(f"  {name} ({int(seconds // 60)}:{seconds % 60:04.1f})")
        runs = {"original": [], **{p: [] for p in precisions}}
        for i in range(FLAGS.repeats):
            print(f"round {i + 1} (load average {os.getloadavg()[0]:.2f}):")
            r = run_original(FLAGS.venv, unpacked, files, os.path.join(work, f"round{i}", "original"))
            runs["original"].append(r)
            not_finite = r["report"]["not_finite"]
            print("  " + _line("original", r, audio)
                  + (f"; inf in the input of {len(not_finite)} file(s), {sum(b for _, b, _ in not_finite)} of "
                     f"{sum(n for _, _, n in not_finite)} of their patches (its float16 log-mel overflowed)"
                     if not_finite else ""))
            for p in precisions:
                r = run_jaxtag(tracks, FLAGS.music_dir, p, os.path.join(work, f"round{i}", f"jaxtag-{p}"))
                runs[p].append(r)
                print("  " + _line(f"jaxtag {p}", r, audio)
                      + (f"; outputs {r['outputs']}" if i == 0 else ""))
    summary = {}
    for key, rs in runs.items():
        median = statistics.median(r["wall_s"] for r in rs)
        summary[key] = {"wall_s": [round(r["wall_s"], 2) for r in rs], "median_s": round(median, 2),
                        "x_real_time": round(audio / median, 1), "peak_mb": [round(r["peak_mb"]) for r in rs]}
    print(f"medians over {FLAGS.repeats} round(s), {audio:.0f} s of audio:")
    print(f"  original: {summary['original']['median_s']:.1f} s ({summary['original']['x_real_time']:.1f}x real time)")
    speed = {}
    for p in precisions:
        speed[p] = round(summary["original"]["median_s"] / summary[p]["median_s"], 2)
        print(f"  jaxtag {p}: {summary[p]['median_s']:.1f} s ({summary[p]['x_real_time']:.1f}x real time): "
              f"{speed[p]:.2f}x the original's speed")
    print(json.dumps({"tracks": len(tracks), "audio_seconds": round(audio, 1), "repeats": FLAGS.repeats,
                      "cpu_cores": os.cpu_count(), "original": summary["original"],
                      "jaxtag": {p: summary[p] for p in precisions}, "jaxtag_speed_over_original": speed,
                      "original_inputs_not_finite": [
                          [os.path.relpath(f, os.path.join(work, "music")), bad, n]
                          for f, bad, n in runs["original"][0]["report"]["not_finite"]]}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
