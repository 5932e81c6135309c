"""Benchmark the train and inference steps; print one table, last line = cnn_lstm train windows/s.

    python scripts/benchmark.py                 # paper-sized models, a 75-window track
    python scripts/benchmark.py --torch         # also PyTorch references of the same step: eager, torch.compile
    python scripts/benchmark.py --quick         # tiny sizes (smoke run)

    python scripts/benchmark.py --ablation      # also the trunk with XLA's own conv/pool gradients

Measured: windows/s of one train step (forward, loss, backward, Adam) and of inference, counting
the track's real windows only (not the bucket's padding); useful GFLOP/s = the model's FLOPs
counted analytically (below) for the real windows / step time; the machine's matmul peak
(2048x2048 f32 under XLA); compilations for an epoch of tracks of random lengths (one per length
bucket); and the tf.data pipeline's overhead (an epoch from tf.data vs from memory).
Every time is the best of --repeats runs after a warm-up: these machines are shared, and the
minimum is the least disturbed measure.
"""
from __future__ import annotations

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

_TORCH = flags.DEFINE_bool("torch", False, "Also time the same CNN+LSTM step in PyTorch, eager and torch.compile "
                           "(inductor), in turn with jaxtag's (needs torch and, for torch.compile, a C++ compiler).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes: checks the script runs.")
_WINDOWS = flags.DEFINE_integer("windows", 75, "Windows in the benchmark track.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions.")
_PIPELINE = flags.DEFINE_bool("pipeline", True, "Measure the tf.data pipeline overhead on the default corpus.")
_ABLATION = flags.DEFINE_bool("ablation", False, "Also time the paper trunk with XLA's own conv/pool gradients.")
_MUSICNN = flags.DEFINE_bool("musicnn", False, "Also time training on the musicnn trunk: frozen, fine-tuned, and "
                             "fine-tuned with XLA's own kernel gradients for its front-end convs.")
_LIBRARY = flags.DEFINE_bool("library", False, "Only the library-tagging benchmark: generated MP3s (4 and 60 "
                             "minutes, and a library of 10 four-minute files) tagged end to end with --model (musicnn-msd).")
_LIBRARY_DIR = flags.DEFINE_string("library_dir", "", "Where the generated audio is kept (default: a temporary "
                                   "folder); files already there are reused.")
_PRECISION = flags.DEFINE_list("precision", ["float32"], "--library: the tagger's precision(s), each case run in "
                               "each in turn (float32, bfloat16, auto: jaxtag.tagging.precision).")
_LIBRARY_RUN = flags.DEFINE_list("library_run", None, "Internal: tag these files in this process, print one JSON line.")
_MODEL = flags.DEFINE_enum("model", "musicnn-msd", ["musicnn-msd", "musicnn-mtt", "musicnn"],
                           "The pretrained model of the library benchmark (musicnn: both networks, one vocabulary).")
_LIBRARY_CASES = flags.DEFINE_list("library_cases", ["file", "long", "library"], "Which cases of the library "
                                   "benchmark: file (one 4-minute file), long (one 60-minute file), library (ten "
                                   "4-minute files).")
_SIMILAR = flags.DEFINE_bool("similar", False, "Only the similarity benchmark: build time, query latency and "
                             "recall@10 against exact search of the moment index, on --moments moment vectors.")
_MOMENTS = flags.DEFINE_integer("moments", 1_000_000, "Moment vectors in the --similar benchmark.")
_BEAM = flags.DEFINE_bool("beam", False, "Only the Beam benchmark: one library tagged by the local path, by "
                          "Beam's DirectRunner (multi-processing, 2 workers) and on a Dask cluster of this machine "
                          "(a scheduler and 2 one-thread workers, runner=dask), in turn: files/s and real-time "
                          "factor.")
_DASK = flags.DEFINE_bool("dask", True, "With --beam: also the Dask case (needs the dask extra).")
_BEAM_RUN = flags.DEFINE_string("beam_run", None, "Internal: tag --library_run's files on Beam with these pipeline "
                                "options in this process, print one JSON line.")
_LIBRARY_RERUN = flags.DEFINE_integer("library_rerun", 0, "Only the rerun benchmark: a library of this many files (an "
                                      "Artist/Album/track tree of 10 tracks an album, each file a few bytes with its "
                                      "stored analysis of a 3-5 minute track, outputs and database rows, as --model "
                                      "tagged them; built once under --work_dir and reused) tagged again unchanged: "
                                      "seconds per stage, peak RSS.")
_WORK_DIR = flags.DEFINE_string("work_dir", "", "Where --library_rerun keeps its synthetic library (default: the "
                                "temporary folder); one built before with the same size and model is reused.")
_RERUN_RUN = flags.DEFINE_string("rerun_run", None, "Internal: time one rerun of the library in this folder in this "
                                 "process, print one JSON line.")


def _time(fn, repeats):
    """Best wall time of `repeats` calls of fn (after one warm-up call that also compiles)."""
    import jax
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def train_flops_per_window(config, num_tags=18, training=True) -> float:
    """Multiply-adds x 2 of one window's training step, counted from the layer sizes: every layer
    runs forward, input gradient and weight gradient (3x its forward), except the first
    convolution, whose input needs no gradient (2x). Elementwise ops, pooling and Adam are not
    counted. training=False: the forward pass only (inference). Paper trunk and LSTM models only."""
    d, m = config.data, config.model
    h, w, c_in = d.window_frames, d.n_mels, 1
    total = 0.0
    passes = 3 if training else 1
    for i, c in enumerate(m.conv_channels):
        forward = 2.0 * h * w * c_in * c * 9
        total += (min(passes, 2) if i == 0 else passes) * forward
        c_in = c
        if i % 2 == 1:
            h, w = h // 2, w // 2
    sizes = [h * w * c_in] + list(m.dense_sizes)
    dense = [(sizes[0], sizes[1])]
    head_in = sizes[1]
    if m.name.endswith("lstm"):
        lstm = m.lstm_size
        total += passes * 2.0 * 4 * (sizes[1] + lstm) * lstm
        head_in += lstm
    for out in list(m.dense_sizes[1:]) + [num_tags]:
        dense.append((head_in, out))
        head_in = out
    total += sum(passes * 2.0 * a * b for a, b in dense)
    return total


def matmul_peak(n=2048, repeats=10) -> float:
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n ** 3 / _time(lambda: f(a), repeats) / 1e9


def _config(name):
    import importlib
    config = importlib.import_module(f"configs.{name}").get_config()
    if _QUICK.value and config.model.name.startswith("musicnn"):  # its sizes are its weights'; it takes any length
        config.data.window_frames = 64
    elif _QUICK.value:
        d, m = config.data, config.model
        d.n_mels, d.window_frames = 32, 32
        m.conv_channels, m.dense_sizes, m.lstm_size = (4, 4, 8, 8), (32, 16, 16), 8
    return config


def _random_track(config, n_windows: int, num_tags: int = 18) -> tuple[dict, int]:
    """A batch of one track of n_windows random windows, padded to its length bucket; the bucket."""
    import numpy as np
    from jaxtag.data.buckets import bucket_length
    d = config.data
    length = bucket_length(n_windows, config.train.length_buckets)
    rng = np.random.default_rng(0)
    present = np.arange(length)[None] < n_windows
    mel = rng.uniform(size=(1, length, d.window_frames, d.n_mels)) * present[..., None, None]
    return {"mel": mel.astype(np.float32), "labels": (rng.uniform(size=(1, length, num_tags)) < 0.35).astype(np.float32),
            "mask": present, "present": present}, length


def bench_model(name: str, n_windows: int, repeats: int) -> dict:
    import jax
    from jaxtag.models import create_model
    from jaxtag.training import steps
    config = _config(name)
    model = create_model(config.model, 18)
    batch, length = _random_track(config, n_windows)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    step = steps.make_train_step(model, config.train.loss)
    key = jax.random.PRNGKey(1)
    holder = {"state": state}

    def one_step():
        holder["state"], loss, _, _ = step(holder["state"], batch, key)
        return loss

    flops = train_flops_per_window(config) * n_windows
    train_s = _time(one_step, repeats)
    predict = steps.make_predict_step(model)
    infer_s = _time(lambda: predict(holder["state"].variables, batch, key), repeats)
    infer_flops = train_flops_per_window(config, training=False) * n_windows
    return {"train_windows_per_s": n_windows / train_s, "infer_windows_per_s": n_windows / infer_s,
            "train_gflops": flops / train_s / 1e9, "infer_gflops": infer_flops / infer_s / 1e9,
            "flops_per_step": flops, "padded_to": length,
            "step_seconds": train_s, "step": lambda: jax.block_until_ready(one_step())}


def musicnn_training(n_windows: int, repeats: int) -> list[tuple[str, float]]:
    """Train-step windows/s of a track of n_windows on the musicnn trunk (published weights,
    needs them cached or the network): frozen, fine-tuned, and fine-tuned with XLA's own kernel
    gradients for the one-channel front-end convs (what jaxtag.models.musicnn.single_channel_conv
    replaces)."""
    import jax
    from jaxtag.models import create_model, musicnn
    from jaxtag.training import steps
    rows = []
    for label, name, xla_kernel_grads in [("frozen trunk", "musicnn_lstm", False),
                                          ("fine-tuned", "musicnn_lstm_finetune", False),
                                          ("fine-tuned, XLA's own kernel gradients", "musicnn_lstm_finetune", True)]:
        config = _config(name)
        model = create_model(config.model, 18)
        batch, _ = _random_track(config, n_windows)
        holder = {"state": steps.create_train_state(config, model, jax.random.PRNGKey(0))}
        step = steps.make_train_step(model, config.train.loss)
        original = musicnn.single_channel_conv
        if xla_kernel_grads:
            musicnn.single_channel_conv = musicnn._conv2d   # plain lax.conv: XLA differentiates it
        try:
            def one_step():
                holder["state"], loss, _, _ = step(holder["state"], batch, jax.random.PRNGKey(1))
                return loss
            rows.append((label, n_windows / _time(one_step, repeats)))
        finally:
            musicnn.single_channel_conv = original
    return rows


def trunk_ablation(n_windows: int, repeats: int) -> list[tuple[str, float]]:
    """Forward + backward of the paper trunk on n_windows windows, three ways: the plain Flax trunk
    (nn.Conv, nn.max_pool: XLA's own gradients; the model off CPU), and the CPU fast path
    (written-out gradients) on the whole track at once and on chunks of windows (the default on
    CPU). Returns (variant, windows/s)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxtag.models import trunks
    config = _config("cnn")
    d, m = config.data, config.model
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(n_windows, d.window_frames, d.n_mels)), jnp.float32)
    sizes = (tuple(m.conv_channels), m.dense_sizes[0])
    out = []
    for label, trunk in [
            ("plain Flax (nn.Conv, nn.max_pool)", trunks.PaperTrunk(*sizes)),
            ("CPU fast path, whole track at once", trunks.PaperTrunk(*sizes, cpu_fast=True, window_chunk=n_windows)),
            (f"CPU fast path, chunks of {trunks.CHUNK_ON_CPU} windows (default on CPU)",
             trunks.PaperTrunk(*sizes, cpu_fast=True))]:
        params = trunk.init(jax.random.PRNGKey(0), x[:1])
        grad = jax.jit(jax.grad(lambda p: jnp.sum(trunk.apply(p, x) ** 2)))
        out.append((label, n_windows / _time(lambda: grad(params), repeats)))
    return out


def count_compilations(name: str, n_tracks: int, max_windows: int) -> tuple[int, int]:
    """An epoch over n_tracks tracks of random lengths (10 to max_windows windows):
    (compilations, distinct buckets)."""
    import jax
    import numpy as np
    from jaxtag.data.buckets import bucket_length
    from jaxtag.models import create_model
    from jaxtag.training import compilations, steps
    config = _config(name)
    d, m = config.data, config.model
    d.n_mels, d.window_frames = 32, 32   # small sizes: this counts compilations, not speed
    m.conv_channels, m.dense_sizes, m.lstm_size = (4, 4, 8, 8), (32, 16, 16), 8
    model = create_model(m, 18)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    step = steps.make_train_step(model, "margin")
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(1)
    buckets = set()
    with compilations.count_compilations() as compiled:   # XLA compilations, counted by jax.monitoring
        for n in rng.integers(10, max_windows, size=n_tracks):
            length = bucket_length(int(n), config.train.length_buckets)
            buckets.add(length)
            present = np.arange(length)[None] < n
            batch = {"mel": np.ones((1, length, 32, 32), np.float32), "labels": np.zeros((1, length, 18), np.float32),
                     "mask": present, "present": present}
            state, _, _, _ = step(state, batch, key)
    return compiled["n"], len(buckets)


def pipeline_overhead() -> tuple[float, float]:
    """Seconds for the steps of one epoch of the default synthetic corpus's train split with small
    models, fed by tf.data, and fed from batches already in memory."""
    import jax
    from jaxtag.data import pipeline
    from jaxtag.models import create_model
    from jaxtag.training import steps
    config = _config("cnn_lstm")
    m = config.model
    m.conv_channels, m.dense_sizes, m.lstm_size = (8, 8, 16, 16), (64, 32, 32), 16
    model = create_model(m, 18)
    step = steps.make_train_step(model, "margin")
    buckets = tuple(config.train.length_buckets)
    batches = list(pipeline.bucketed_batches(pipeline.load_split(config, "train", seed=0), 1, buckets))
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    for b in batches:  # compile every bucket first
        state, loss, _, _ = step(state, steps.device_batch(b), key)
    jax.block_until_ready(loss)

    def epoch(source):
        nonlocal state
        start = time.perf_counter()
        for b in source():
            state, loss, _, _ = step(state, steps.device_batch(b), key)
        jax.block_until_ready(loss)
        return time.perf_counter() - start

    # Interleaved, best of 5 each: a shared machine's slow spells hit both alike.
    with_pipeline, in_memory = [], []
    for _ in range(5):
        with_pipeline.append(epoch(lambda: pipeline.bucketed_batches(
            pipeline.load_split(config, "train", seed=0), 1, buckets)))
        in_memory.append(epoch(lambda: iter(batches)))
    return min(with_pipeline), min(in_memory)


def torch_train_step(n_windows: int, compiled: bool = False):
    """One training step of the paper's CNN+LSTM in PyTorch (torch defaults, all cores), as a
    callable; None without torch. compiled: the model through torch.compile (inductor, its default
    mode: forward and backward compiled; Adam stays torch's own foreach implementation), else eager."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn
    torch.set_num_threads(os.cpu_count())
    small = _QUICK.value
    c = (4, 4, 8, 8) if small else (20, 40, 80, 80)
    dense = (32, 16, 16) if small else (1000, 800, 600)
    size = 32 if small else 128
    lstm_size = 8 if small else 500

    class PaperCNNLSTM(nn.Module):  # the paper's CNN+LSTM, as PyTorch code of the paper would be
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(1, c[0], 3, padding=1), nn.ReLU(), nn.Conv2d(c[0], c[1], 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2), nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
                nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.fc1 = nn.Linear(c[3] * (size // 4) ** 2, dense[0])
            self.lstm = nn.LSTM(dense[0], lstm_size, batch_first=True)
            self.fc2 = nn.Linear(dense[0] + lstm_size, dense[1])
            self.fc3 = nn.Linear(dense[1], dense[2])
            self.out = nn.Linear(dense[2], 18)

        def forward(self, x):  # x [W, 1, T, F]: one track
            h = torch.relu(self.fc1(self.conv(x).flatten(1)))
            y, _ = self.lstm(h[None])
            h = torch.cat([h, y[0]], dim=1)
            return torch.sigmoid(self.out(torch.relu(self.fc3(torch.relu(self.fc2(h))))))

    model = PaperCNNLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    forward = torch.compile(model) if compiled else model
    loss_fn = nn.MultiLabelMarginLoss(reduction="sum")
    x = torch.rand(n_windows, 1, size, size)
    y = torch.full((n_windows, 18), -1, dtype=torch.long)
    y[:, :4] = torch.arange(4)

    def step():
        opt.zero_grad()
        loss = loss_fn(forward(x), y)
        loss.backward()
        opt.step()

    return step


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def interleaved_best(steps: dict, repeats: int) -> dict:
    """Best seconds of each step, timed in turn: a shared machine's slow spells hit all alike."""
    for step in steps.values():
        step()  # warm-up
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def generate_music(path: str, seconds: float, seed: int, sr: int = 44100) -> str:
    """A stereo MP3 of `seconds` of music-like sound (chords changing every 2 s, a beat, noise),
    encoded block by block (a 60-minute file never sits in memory)."""
    import numpy as np
    import soundfile as sf
    from jaxtag.files import write_atomic
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(seed)
    block = 10 * sr

    def encode(out):
        with sf.SoundFile(out, "w", sr, 2, format="MP3") as f:
            for start in range(0, int(seconds * sr), block):
                t = (start + np.arange(min(block, int(seconds * sr) - start))) / sr
                root = 110 * 2 ** (rng.integers(0, 12) / 12)
                y = sum(np.sin(2 * np.pi * root * r * t + rng.uniform(0, 6)) for r in (1, 1.26, 1.5, 2))
                beat = np.exp(-30 * ((t * 2) % 1)) * rng.standard_normal(len(t))
                y = 0.12 * y + 0.25 * beat + 0.02 * rng.standard_normal(len(t))
                f.write(np.stack([y, np.roll(y, 50)], 1).astype(np.float32))

    write_atomic(path, encode, durable=False)
    return path


def library_run(files: list[str], beam_options: str | None = None) -> dict:
    """Tag `files` from scratch in this process (a fresh one: its peak memory is its own) with
    --model (musicnn-msd) at its default hop, into a temporary folder (on Beam with beam_options); seconds
    per stage and peak RSS."""
    import resource
    import tempfile
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.tagging.tagger import Tagger
    start = time.perf_counter()
    tagger = Tagger.pretrained(_MODEL.value, precision=_PRECISION.value[0])
    loaded = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        if beam_options:
            from jaxtag.library.beam import tag_on_beam
            result = tag_on_beam(tagger, files, LibraryOptions(output_dir=out, top_n=0), beam_options)
        else:
            result = tag_library(tagger, files, LibraryOptions(output_dir=out, top_n=0))
    per_worker = {}
    for worker in getattr(result, "workers", {}).values():     # on Beam: which worker process wrote each file
        per_worker[worker] = per_worker.get(worker, 0) + 1
    return {"files": len(result.tagged), "failed": result.failed, "audio_seconds": result.audio_seconds,
            "per_worker": per_worker,
            "tag_seconds": result.seconds, "load_seconds": loaded, "stages": result.stage_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": result.worker_peak_rss_mb, "precision": tagger.precision}


def library_benchmark() -> None:
    """Each case in a fresh process: audio-minutes per wall-second end to end, seconds per stage
    (decode and features in the workers, summed over them), peak RSS of the main process and of
    the worker processes."""
    import itertools
    import json
    import subprocess
    import tempfile
    from jaxtag import pretrained
    pretrained.fetch()  # the weights are cached before anything is timed
    folder = _LIBRARY_DIR.value or tempfile.mkdtemp(prefix="jaxtag_library_bench_")
    os.makedirs(folder, exist_ok=True)
    minutes = 1 if _QUICK.value else 4
    cases = set(_LIBRARY_CASES.value)
    four = generate_music(os.path.join(folder, f"{minutes}min.mp3"), minutes * 60, seed=0) if "file" in cases else ""
    long = generate_music(os.path.join(folder, f"{minutes * 15}min.mp3"), minutes * 15 * 60, seed=1) \
        if "long" in cases else ""
    library = [generate_music(os.path.join(folder, f"lib{i:02d}_{minutes}min.mp3"), minutes * 60, seed=10 + i)
               for i in range(3 if _QUICK.value else 10)] if "library" in cases else []
    print(f"library benchmark: {_MODEL.value}, default hop, {os.cpu_count()} CPU cores, audio in {folder}")
    for (case, label, files), precision in itertools.product(
            [("file", f"{minutes}-minute file", [four]), ("long", f"{minutes * 15}-minute file", [long]),
             ("library", f"library of {len(library)} {minutes}-minute files", library)], _PRECISION.value):
        if case not in cases:
            continue
        out = subprocess.run([sys.executable, __file__, f"--library_run={','.join(files)}", f"--model={_MODEL.value}",
                              f"--precision={precision}"], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
        print(f"{label}, {r['precision']}: {r['audio_seconds'] / 60:.1f} audio-min in {r['tag_seconds']:.1f} s = "
              f"{r['audio_seconds'] / 60 / r['tag_seconds']:.2f} audio-min per wall-second "
              f"({r['audio_seconds'] / r['tag_seconds']:.0f}x real time); stages: {stages}; peak RSS main "
              f"{r['peak_rss_mb']:.0f} MB, workers {r['worker_peak_rss_mb']:.0f} MB")


class DaskCluster:
    """A Dask scheduler and `workers` one-thread worker processes on this machine, on the loopback
    interface, importing this checkout; stopped on exit (`with DaskCluster(folder) as options:`
    gives the --beam_pipeline_options that name it)."""

    def __init__(self, folder: str, workers: int = 2, timeout: float = 120):
        self.folder, self.workers, self.timeout, self.procs = folder, workers, timeout, []

    def _start(self, name: str, *args: str):
        import subprocess
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        log = open(os.path.join(self.folder, f"{name}.log"), "w")
        self.procs.append((subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=log,
                                            stderr=subprocess.STDOUT), log))

    def __enter__(self) -> str:
        scheduler_file = os.path.join(self.folder, "scheduler.json")
        if os.path.exists(scheduler_file):
            os.remove(scheduler_file)
        loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
        try:
            self._start("scheduler", "distributed.cli.dask_scheduler", *loopback, "--port", "0", "--scheduler-file",
                        scheduler_file)
            deadline = time.monotonic() + self.timeout
            while not os.path.exists(scheduler_file):
                if time.monotonic() > deadline or self.procs[0][0].poll() is not None:
                    raise RuntimeError(f"the Dask scheduler did not start: see {self.folder}/scheduler.log")
                time.sleep(0.2)
            for i in range(self.workers):
                self._start(f"worker{i}", "distributed.cli.dask_worker", *loopback, "--scheduler-file", scheduler_file,
                            "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--name", f"w{i}",
                            "--death-timeout", "60")
            from distributed import Client
            with Client(scheduler_file=scheduler_file, timeout=self.timeout) as client:
                client.wait_for_workers(self.workers, timeout=self.timeout)
        except BaseException:
            self.__exit__()
            raise
        return f"runner=dask,dask_scheduler_file={scheduler_file}"

    def __exit__(self, *exc) -> None:
        from jaxtag.beam_dask import stop_processes
        stop_processes(self.procs)
        self.procs = []


def beam_benchmark() -> None:
    """One library (ten 4-minute MP3s; --quick: three 1-minute ones) tagged end to end by the local
    path, by Beam's DirectRunner in multi-processing mode with 2 workers and on a Dask cluster of
    this machine (a scheduler and 2 one-thread workers, started before the timing and left empty:
    the workers import jaxtag and build the model inside it), each driver in a fresh process, in
    turn: files/s and real-time factor, so the engines' overhead on one machine is known."""
    import json
    import subprocess
    import tempfile
    from jaxtag import pretrained
    pretrained.fetch()
    folder = _LIBRARY_DIR.value or tempfile.mkdtemp(prefix="jaxtag_beam_bench_")
    os.makedirs(folder, exist_ok=True)
    minutes, count = (1, 3) if _QUICK.value else (4, 10)
    library = [generate_music(os.path.join(folder, f"lib{i:02d}_{minutes}min.mp3"), minutes * 60, seed=10 + i)
               for i in range(count)]
    options = "runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=2"
    print(f"Beam benchmark: {count} {minutes}-minute MP3s, musicnn-msd, {os.cpu_count()} CPU cores")

    def run(label, extra):
        out = subprocess.run([sys.executable, __file__, f"--library_run={','.join(library)}", *extra],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        spread = f"; files per worker process {sorted(r['per_worker'].values())}" if r.get("per_worker") else ""
        print(f"{label}: {r['files']} files in {r['tag_seconds']:.1f} s = {r['files'] / r['tag_seconds']:.3f} files/s, "
              f"{r['audio_seconds'] / r['tag_seconds']:.0f}x real time; peak RSS driver {r['peak_rss_mb']:.0f} MB"
              f"{spread}")

    run("local path (2 decoding workers)", [])
    run(f"Beam DirectRunner ({options})", [f"--beam_run={options}"])
    if _DASK.value:
        with DaskCluster(tempfile.mkdtemp(prefix="jaxtag_dask_bench_")) as dask_options:
            run("Beam on Dask (runner=dask: a scheduler and 2 one-thread workers, loopback)",
                [f"--beam_run={dask_options}"])


def synthetic_moments(n: int, dim: int = 200, windows: int = 80, seed: int = 0):
    """n unit moment vectors shaped like a library's: tracks of `windows` consecutive moments that
    drift around the track's centre (AR(1), as a track's sections do), track centres around 64
    genre centres. Also 200 queries from new tracks of the same kind (not in the index, as an
    outside file's moments). Measured on real musicnn embeddings, whitened: a moment's nearest
    moments are mostly its neighbours in time and then tracks of the same kind; this keeps both."""
    import numpy as np
    from jaxtag.library.similarity import unit
    rng = np.random.default_rng(seed)
    genres = rng.standard_normal((64, dim)).astype(np.float32)

    def tracks(count):
        centres = 0.8 * genres[rng.integers(0, 64, count)] + 0.6 * rng.standard_normal((count, dim)).astype(np.float32)
        drift = np.zeros((count, dim), np.float32)
        out = np.empty((count, windows, dim), np.float32)
        for w in range(windows):
            drift = 0.9 * drift + 0.15 * rng.standard_normal((count, dim)).astype(np.float32)
            out[:, w] = centres + drift + 0.3 * rng.standard_normal((count, dim)).astype(np.float32)
        return unit(out.reshape(-1, dim))
    vectors = tracks(-(-n // windows))[:n]
    queries = tracks(3)[rng.choice(3 * windows, 200, replace=False)]
    return vectors, queries


def similarity_benchmark() -> None:
    """Build time, single-query latency and recall@10 against exact search of the moment index
    (jaxtag.library.similarity) on --moments synthetic moment vectors."""
    import numpy as np
    from jaxtag.library import similarity
    n = 20_000 if _QUICK.value else _MOMENTS.value
    start = time.perf_counter()
    vectors, queries = synthetic_moments(n)
    print(f"{n} moment vectors of 200 dimensions made in {time.perf_counter() - start:.1f} s; 200 queries from "
          "tracks not in the index")
    windows = 80  # a moment's id: its track's number and its window, as the library numbers them
    ids = (np.arange(n, dtype=np.int64) // windows << similarity.WINDOW_BITS) + np.arange(n, dtype=np.int64) % windows
    truth = similarity.exact_neighbours(queries, vectors, 10)
    for label, limit in (("exact (faiss flat)", n), ("IVF-Flat, tuned nprobe", 0)):
        start = time.perf_counter()
        index, kind, nprobe, tuned_recall = similarity.build_moment_index(vectors, ids, limit)
        built = time.perf_counter() - start
        if kind == "ivf":
            index.nprobe = nprobe
        latencies, found = [], []
        for q in queries:
            start = time.perf_counter()
            _, row = index.search(q[None], 10)
            latencies.append(time.perf_counter() - start)
            found.append(row[0])
        truth_ids = ids[truth]
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth_ids)]))
        ms = 1000 * np.array(latencies)
        extra = f", nprobe {nprobe} of {index.nlist} cells (recall {tuned_recall:.3f} of other tracks' moments, " \
            "tuned on sampled moments)" \
            if kind == "ivf" else ""
        print(f"{label}: build {built:.1f} s{extra}; query median {np.median(ms):.2f} ms, 95th percentile "
              f"{np.percentile(ms, 95):.2f} ms; recall@10 against exact {recall:.3f}")


# -- a rerun over an unchanged library --------------------------------------------------------------

RERUN_TRACKS_PER_ALBUM, RERUN_ALBUMS_PER_ARTIST = 10, 10
_RERUN = {}   # a setup worker's tagger and embedding statistics


def rerun_paths(music: str, n: int) -> list[str]:
    """The synthetic library's audio files: Artist NNNN/Album NNNNN/NN Track NNNNNN.mp3."""
    out = []
    for i in range(n):
        album = i // RERUN_TRACKS_PER_ALBUM
        out.append(os.path.join(music, f"Artist {album // RERUN_ALBUMS_PER_ARTIST:04d}", f"Album {album:05d}",
                                f"{i % RERUN_TRACKS_PER_ALBUM + 1:02d} Track {i:06d}.mp3"))
    return out


def _rerun_init(model: str) -> None:
    """A setup worker: the tagger (its tags, policy, sections, frontend) and how to make embeddings
    of its reference statistics (so that whitened they are the synthetic moments' structure)."""
    import numpy as np
    from jaxtag.tagging.tagger import Tagger
    from jaxtag.tagging.vectors import embedding_reference_path
    tagger = Tagger.pretrained(model)
    try:
        with np.load(embedding_reference_path(model), allow_pickle=False) as npz:
            mean, covariance = npz["mean"], npz["covariance"]
        values, vectors = np.linalg.eigh(covariance)
        colour = vectors * np.sqrt(np.maximum(values, 0))[None, :]
    except FileNotFoundError:
        mean, colour = None, None
    _RERUN.update(tagger=tagger, mean=mean, colour=colour,
                  genres=np.random.default_rng(12345).standard_normal((64, 200)).astype(np.float32))


def _rerun_track(i: int, path: str, name: str, out: str, formats: tuple) -> tuple:
    """One file of the synthetic library as a run of the tagger leaves it: its stored arrays (a
    track of 3-5 minutes: random scores with a per-track leaning, embeddings whose whitened moments
    drift around the track's centre, which is near one of 64 genre centres: the structure of
    synthetic_moments), its outputs (a few bytes each: a rerun only sees that they exist) and its
    library row made by summary.track_summary from its taggram. Returns (name, source, row as
    JSON, Analysis)."""
    import hashlib
    import numpy as np
    from jaxtag.files import write_atomic
    from jaxtag.library import summary
    from jaxtag.library.arrays import write_arrays
    from jaxtag.library.plan import LibraryOptions, wanted_outputs
    from jaxtag.library.state import Analysis, arrays_file
    from jaxtag.tagging.outputs import shown_path
    tagger, rng = _RERUN["tagger"], np.random.default_rng(i)
    f = tagger.frontend
    duration = float(rng.uniform(180, 300))
    n_frames = int(duration * f.sample_rate / f.hop_length)
    windows = len(tagger.window_starts(n_frames))
    leaning = rng.normal(-2.5, 1.2, len(tagger.tags))
    scores = 1 / (1 + np.exp(-(leaning + 0.8 * rng.standard_normal((windows, len(tagger.tags))))))
    centre = 0.8 * _RERUN["genres"][i % 64] + 0.6 * rng.standard_normal(200)
    drift, z = np.zeros(200), np.empty((windows, 200))
    for w in range(windows):
        drift = 0.9 * drift + 0.15 * rng.standard_normal(200)
        z[w] = centre + drift + 0.3 * rng.standard_normal(200)
    z /= 1.1   # about unit variance per dimension
    embeddings = (z if _RERUN["mean"] is None else _RERUN["mean"] + z @ _RERUN["colour"].T).astype(np.float32)
    with open(path, "rb") as audio:
        content = hashlib.sha256(audio.read()).hexdigest()
    st = os.stat(path)
    source = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "content": content}
    taggram = tagger.taggram(shown_path(path), duration, n_frames, scores.astype(np.float32), embeddings=embeddings)
    relative = arrays_file(content, tagger.fingerprint)
    size = write_arrays(out, relative, taggram, embeddings, tagger.fingerprint, source, [])
    row = summary.row_to_json(summary.track_summary(taggram, taggram.source, name, []))
    wanted = wanted_outputs(name, LibraryOptions(output_dir=out, formats=formats))
    for output in wanted + ([f"{name}.similar.js"] if "html" in formats else []):
        write_atomic(os.path.join(out, output), f"{output}\n", durable=False)
    return name, source, row, Analysis(content, tagger.fingerprint, relative, size, (), tagger.model_name, duration)


def _rerun_chunk(args) -> list[tuple]:
    return [_rerun_track(*a) for a in args]


def build_rerun_library(folder: str, n: int, model: str) -> bool:
    """The synthetic library of the rerun benchmark in folder (music/ and out/), as a run of
    `model` over it with the default formats leaves it: every file's stored arrays, outputs and
    database rows (files, analyses, decisions with the tagger's settings), the similarity index
    over all of them and its pages' lists (the lists themselves a few bytes each), then one rerun
    checked to skip every file. Kept: a folder with ready.json of the same size and model is reused
    (returns False then, True where the library was built)."""
    import concurrent.futures
    import json
    import multiprocessing
    from jaxtag.files import available_cpus, write_atomic
    from jaxtag.library import similarity
    from jaxtag.library.plan import settings_of, wanted_outputs
    from jaxtag.library.state import LibraryState
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.library.playlists import write_playlists
    from jaxtag.tagging.outputs import FORMATS, output_names
    from jaxtag.tagging.tagger import Tagger
    ready = os.path.join(folder, "ready.json")
    tagger = Tagger.pretrained(model)
    settings = settings_of(tagger)
    about = {"files": n, "model": model, "settings": settings, "formats": list(FORMATS)}
    try:
        with open(ready, encoding="utf-8") as f:
            if json.load(f) == about:
                return False
    except (OSError, ValueError):
        pass
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
    music, out = os.path.join(folder, "music"), os.path.join(folder, "out")
    start = time.perf_counter()
    paths = rerun_paths(music, n)
    for i, path in enumerate(paths):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(f"jaxtag rerun benchmark track {i}\n".encode())
    names = output_names(paths, (music,))
    options = LibraryOptions(output_dir=out, formats=FORMATS, top_n=0, roots=(music,))
    jobs = [(i, p, names[p], out, FORMATS) for i, p in enumerate(paths)]
    chunks = [jobs[k:k + 100] for k in range(0, n, 100)]
    made = []
    with concurrent.futures.ProcessPoolExecutor(available_cpus(), mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_rerun_init, initargs=(model,)) as pool:
        for k, chunk in enumerate(pool.map(_rerun_chunk, chunks)):
            made += chunk
            if (k + 1) % 20 == 0:
                print(f"  {len(made)} of {n} files made ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    with LibraryState(out) as state:
        for name, source, row, analysis in made:
            state.put_analysis(analysis)
            state.put_decision(name, source, settings, wanted_outputs(name, options), row, music)
    print(f"  the database written ({time.perf_counter() - start:.0f} s); building the similarity index",
          file=sys.stderr)
    index = similarity.update_index(out, tagger.spec, model=tagger.fingerprint)
    # The pages' lists were all written when the library was tagged (each file's NAME.similar.js
    # is there): the index's size at that full refresh.
    write_atomic(os.path.join(similarity.index_dir(out), similarity.LISTS), json.dumps({"moments": index.size}))
    print(f"  index: {len(index.names)} tracks, {index.size} moments, {index.kind} "
          f"({time.perf_counter() - start:.0f} s); a first rerun", file=sys.stderr)
    result = tag_library(tagger, [*paths], options)
    write_playlists(out)
    assert len(result.skipped) == n and not (result.tagged or result.derived or result.failed or result.gone), \
        result.summary_line(n)
    write_atomic(ready, json.dumps(about))
    print(f"  the library of {n} files made in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return True


def peak_rss_mb() -> float:
    """This process's peak resident memory: the kernel's high-water mark of its own address space
    (getrusage's ru_maxrss carries a parent's peak over exec on Linux: a child of a big process
    would report the parent's)."""
    import resource
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rerun_run(folder: str) -> dict:
    """Time one rerun over the library in folder (fresh process: its peak memory is its own): the
    audio found (as `python -m jaxtag.tag MUSIC` finds it), tag_library over every file (plan,
    prune, summary: library.json/.csv/index.html; similarity: the index checked and each file's
    most similar tracks) and the playlists."""
    import json
    from jaxtag.library.playlists import write_playlists
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.tagging.outputs import FORMATS, find_audio
    from jaxtag.tagging.tagger import Tagger
    import numpy as np
    with open(os.path.join(folder, "ready.json"), encoding="utf-8") as f:
        about = json.load(f)
    music, out = os.path.join(folder, "music"), os.path.join(folder, "out")
    start = time.perf_counter()
    tagger = Tagger.pretrained(about["model"])
    loaded = time.perf_counter() - start
    rss_loaded = peak_rss_mb()
    index_state = os.path.join(out, ".jaxtag", "index", "state.npz")
    index_before = os.stat(index_state).st_mtime_ns
    stages = {}
    start = time.perf_counter()
    files = find_audio([music])
    stages["find"] = time.perf_counter() - start
    begin = time.perf_counter()
    result = tag_library(tagger, files, LibraryOptions(output_dir=out, formats=FORMATS, top_n=0, roots=(music,)))
    run_seconds = time.perf_counter() - begin
    for key in ("plan", "prune", "summary", "similarity"):
        stages[key] = result.stage_seconds.get(key, 0.0)
    stages["other"] = run_seconds - sum(stages[k] for k in ("plan", "prune", "summary", "similarity"))
    start = time.perf_counter()
    playlists = write_playlists(out)
    stages["playlists"] = time.perf_counter() - start
    total = time.perf_counter() - begin + stages["find"]
    with np.load(index_state, allow_pickle=False) as npz:
        tracks, moments, kind = len(npz["names"]), int(npz["offsets"][-1]), json.loads(str(npz["meta"]))["kind"]
    return {"files": len(files), "skipped": len(result.skipped), "tagged": len(result.tagged),
            "derived": len(result.derived), "failed": len(result.failed), "gone": len(result.gone),
            "index_tracks": tracks, "index_moments": moments, "index_kind": kind,
            "index_rewritten": os.stat(index_state).st_mtime_ns != index_before, "playlists": len(playlists),
            "stages": stages, "total_seconds": total, "load_seconds": loaded,
            "peak_rss_mb": peak_rss_mb(), "loaded_rss_mb": rss_loaded,
            "model": about["model"], "formats": about["formats"]}


def rerun_benchmark() -> None:
    """A rerun over an unchanged library of --library_rerun files (issue 27's target: under 30 s
    for 20,000), in a fresh process after the library is built (or found) under --work_dir."""
    import json
    import subprocess
    import tempfile
    from jaxtag import pretrained
    pretrained.fetch()
    n = _LIBRARY_RERUN.value
    folder = os.path.join(_WORK_DIR.value or tempfile.gettempdir(), f"jaxtag_rerun_{n}_{_MODEL.value}")
    start = time.perf_counter()
    built = build_rerun_library(folder, n, _MODEL.value)
    print(f"rerun benchmark: a library of {n} files in {-(-n // RERUN_TRACKS_PER_ALBUM)} albums, {_MODEL.value}, "
          f"{os.cpu_count()} CPU cores, in {folder} "
          f"({f'built in {time.perf_counter() - start:.0f} s' if built else 'built before, reused'})")
    out = subprocess.run([sys.executable, __file__, f"--rerun_run={folder}"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the rerun failed:\n{out.stderr[-5000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in r["stages"].items())
    print(f"formats {','.join(r['formats'])}; files {r['files']}: skipped {r['skipped']}, tagged {r['tagged']}, "
          f"derived {r['derived']}, failed {r['failed']}, gone {r['gone']}")
    print(f"similarity index: {r['index_tracks']} tracks, {r['index_moments']} moments, {r['index_kind']}, "
          f"{'rewritten' if r['index_rewritten'] else 'up to date (not rewritten)'}; {r['playlists']} playlists")
    print(f"stages: {stages}")
    print(f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['loaded_rss_mb']:.0f} MB after loading the model in "
          f"{r['load_seconds']:.1f} s)")
    print(f"rerun of {r['files']} unchanged files: {r['total_seconds']:.1f} s (target for 20,000: under 30 s)")


def main(argv):
    del argv
    if _SIMILAR.value:
        similarity_benchmark()
        return
    if _LIBRARY_RUN.value:
        import json
        print(json.dumps(library_run(_LIBRARY_RUN.value, _BEAM_RUN.value)))
        return
    if _BEAM.value:
        beam_benchmark()
        return
    if _LIBRARY.value:
        library_benchmark()
        return
    if _RERUN_RUN.value:
        import json
        print(json.dumps(rerun_run(_RERUN_RUN.value)))
        return
    if _LIBRARY_RERUN.value:
        rerun_benchmark()
        return
    import jax
    n, r = (min(_WINDOWS.value, 20) if _QUICK.value else _WINDOWS.value), _REPEATS.value
    print(f"JAX {jax.__version__}, devices: {jax.devices()}, {os.cpu_count()} CPU cores")
    peak = matmul_peak()
    print(f"matmul peak (2048x2048 f32, XLA): {peak:.1f} GFLOP/s")
    results = {name: bench_model(name, n, r) for name in ("cnn", "cnn_lstm")}
    print(f"{'model':<10}{'train win/s':>12}{'GFLOP/s':>9}{'% peak':>8}{'infer win/s':>12}{'GFLOP/s':>9}"
          f"{'% peak':>8}  (track of {n} windows, padded to bucket)")
    for name, res in results.items():
        print(f"{name:<10}{res['train_windows_per_s']:>12.1f}{res['train_gflops']:>9.1f}"
              f"{100 * res['train_gflops'] / peak:>7.0f}%{res['infer_windows_per_s']:>12.1f}{res['infer_gflops']:>9.1f}"
              f"{100 * res['infer_gflops'] / peak:>7.0f}%  (padded to {res['padded_to']}; "
              f"{res['flops_per_step'] / 1e9:.0f} useful GFLOP/train step, counted analytically)")
    if _ABLATION.value:
        for label, rate in trunk_ablation(80 if not _QUICK.value else 8, r):
            print(f"paper trunk forward+backward, {label}: {rate:.1f} windows/s")
    if _MUSICNN.value:
        n_windows = 8 if _QUICK.value else 32
        for label, rate in musicnn_training(n_windows, r):
            print(f"musicnn_lstm train step, {label}: {rate:.1f} windows/s (track of {n_windows} windows)")
    n_tracks, max_windows = (8, 24) if _QUICK.value else (40, 200)  # quick: fewer buckets to compile
    for name in results:
        compiled, buckets = count_compilations(name, n_tracks, max_windows)
        print(f"{name}: compilations for an epoch of {n_tracks} tracks of random lengths: {compiled} "
              f"({buckets} length buckets)")
    if _PIPELINE.value:
        with_tf, in_memory = pipeline_overhead()
        print(f"epoch from tf.data {with_tf:.2f}s vs from memory {in_memory:.2f}s: "
              f"pipeline overhead {100 * (with_tf / in_memory - 1):+.1f}%")
    final = results["cnn_lstm"]["train_windows_per_s"]
    if _TORCH.value:
        torch_steps = {"PyTorch eager": torch_train_step(n), "torch.compile": torch_train_step(n, compiled=True)}
        if torch_steps["PyTorch eager"] is None:
            print("PyTorch cnn_lstm train: torch not installed")
        else:
            best = interleaved_best({"jaxtag": results["cnn_lstm"]["step"], **torch_steps}, r)
            final = n / best["jaxtag"]
            print(f"cnn_lstm train step, timed in turn with PyTorch {__import__('torch').__version__} "
                  f"(same track, {torch_threads()} threads; best of {r}): jaxtag {final:.1f} windows/s, "
                  + ", ".join(f"{name} {n / best[name]:.1f} windows/s ({best[name] / best['jaxtag']:.2f}x)"
                              for name in torch_steps))
    print(f"cnn_lstm train windows/s: {final:.1f}")


if __name__ == "__main__":
    app.run(main)
