"""Reduced-precision musicnn on CPU: speed and parity against float32 (docs/performance.md,
"Reduced precision").

    python scripts/precision_benchmark.py --hlo            # what XLA:CPU compiles a bf16 dot/conv to
    python scripts/precision_benchmark.py --speed          # encode windows/s: XLA f32 / XLA bf16 / OpenVINO f32 / bf16
    python scripts/precision_benchmark.py --parity=DIR     # bf16 vs f32 scores and decisions on real audio under DIR

The speed cases run in turn, repeatedly, and report medians (the machine may be shared).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_HLO = flags.DEFINE_bool("hlo", False, "Print the ops XLA:CPU compiles a bf16 matmul and a bf16 convolution to.")
_SPEED = flags.DEFINE_bool("speed", False, "Encode speed of musicnn-msd per precision and runtime.")
_PARITY = flags.DEFINE_string("parity", None, "A folder of audio: bf16 vs f32 scores and decisions on every file.")
_MODEL = flags.DEFINE_string("model", "musicnn-msd", "Pretrained model (musicnn: the combined model, both networks; "
                             "--speed times its first).")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Runs of each speed case (in turn; medians reported).")
_MAX_FILES = flags.DEFINE_integer("max_files", 120, "Parity: at most this many files, evenly spread over the "
                                  "sorted list (0: all).")
_VARIANTS = flags.DEFINE_list("variants", ["jaxtag", "all"], "Parity: which bfloat16 to compare: jaxtag (OpenVINO, "
                               "the front-end in bf16), all (OpenVINO, everything in bf16), xla (XLA's bfloat16, "
                               "what runs where OpenVINO's cannot), xla_vs_openvino (those two against each other).")
_MAX_WINDOWS = flags.DEFINE_integer("max_windows", 200, "Parity: at most this many windows per file (0: all).")


def hlo_probe() -> None:
    from jax import lax
    a = jnp.ones((1024, 1024), jnp.bfloat16)
    x, k = jnp.ones((1, 193, 96, 1), jnp.bfloat16), jnp.ones((7, 38, 1, 204), jnp.bfloat16)
    cases = {"matmul bf16": (lambda a, b: a @ b, (a, a)),
             "conv 7x38 bf16": (lambda x, k: lax.conv_general_dilated(
                 x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), (x, k))}
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for name, (fn, args) in cases.items():
        text = jax.jit(fn).lower(*args).compile().as_text()
        entry = text[text.index("ENTRY"):]
        ops = [line.strip().split(" = ", 1)[1].split("(")[0].split(" ", 1)[1] + " " + line.split("calls=")[1].split(",")[0]
               if "calls=" in line else line.strip().split(" = ", 1)[1].split("(")[0]
               for line in entry.splitlines()[1:] if " = " in line]
        kinds = [line.split('"kind":"')[1].split('"')[0] for line in entry.splitlines() if '"kind":"' in line]
        print(f"{name}: entry ops {ops}; library fusions {kinds}; f32 convert of the inputs: "
              f"{'convert' in text and 'f32[' in text}")
    # The same ops timed in f32 and bf16 (jitted, warm, medians of 15).
    rng = np.random.default_rng(0)
    timed = {"matmul 2048": (lambda a, b: a @ b, [(2048, 2048), (2048, 2048)]),
             "conv 7x38 (a musicnn window)": (cases["conv 7x38 bf16"][0], [(1, 193, 96, 1), (7, 38, 1, 204)])}
    for name, (fn, shapes) in timed.items():
        for dtype in (jnp.float32, jnp.bfloat16):
            args = [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]
            f = jax.jit(fn)
            f(*args).block_until_ready()
            ts = []
            for _ in range(15):
                start = time.perf_counter()
                f(*args).block_until_ready()
                ts.append(time.perf_counter() - start)
            print(f"{name} {jnp.dtype(dtype).name}: {np.median(ts) * 1e3:.2f} ms")


def _tagger(precision):
    from jaxtag.tagging.tagger import Tagger
    return Tagger.pretrained(_MODEL.value, precision=precision)


def _networks(tagger) -> list:
    """The Taggers of a model's networks: a combined model's members, else the model itself."""
    return list(getattr(tagger, "members", [tagger]))


def _variables(tagger) -> dict:
    """A network's Musicnn variables (the tree under "musicnn"), as OpenVinoEncoder takes them."""
    return {c: tree["musicnn"] for c, tree in tagger.variables.items()}


def speed() -> None:
    from jaxtag.models.musicnn_openvino import OpenVinoEncoder
    f32 = _networks(_tagger("float32"))[0]   # (a combined model: its first network)
    variables = _variables(f32)
    n = f32.chunk_windows
    rng = np.random.default_rng(0)
    mel = (np.abs(rng.standard_normal((n, 187, 96))) ** 3 * 1e-2).astype(np.float32)
    xla_bf16 = _networks(_xla_bfloat16())[0]
    cases = {"XLA float32 (jaxtag's encode)": lambda: f32.encode_chunk(mel),
             "XLA bfloat16 (where OpenVINO's cannot run: front-end bf16)": lambda: xla_bf16.encode_chunk(mel),
             "OpenVINO float32": OpenVinoEncoder(variables, "float32").__call__,
             "OpenVINO bfloat16 (all of it)": OpenVinoEncoder(variables, "bfloat16", back_float32=False).__call__,
             "OpenVINO bfloat16 (jaxtag's: front-end bf16, the rest f32)": OpenVinoEncoder(variables, "bfloat16").__call__}
    for name, fn in list(cases.items()):
        cases[name] = (lambda fn=fn: fn(mel)) if name.startswith("OpenVINO") else fn
        cases[name]()
    times = {name: [] for name in cases}
    for _ in range(_REPEATS.value):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = np.median(times["XLA float32 (jaxtag's encode)"])
    print(f"encode of {n} windows, {os.cpu_count()} cores, median (best) of {_REPEATS.value} runs in turn:")
    for name, ts in times.items():
        print(f"  {name}: {n / np.median(ts):.1f} windows/s ({n / min(ts):.1f}); {base / np.median(ts):.2f}x")


def _xla_bfloat16():
    """The bfloat16 tagger of a machine without OpenVINO's bf16 (precision.bfloat16_engine "xla")."""
    from jaxtag.tagging import precision
    engine = precision.bfloat16_engine
    precision.bfloat16_engine = lambda backend=None: "xla"
    try:
        return _tagger("bfloat16")
    finally:
        precision.bfloat16_engine = engine


def parity(folder: str) -> None:
    from jaxtag.tagging.outputs import find_audio
    from jaxtag.models.musicnn_openvino import OpenVinoEncoder
    f32 = _tagger("float32")
    bf16 = _tagger("bfloat16")
    files = sorted(find_audio([folder]))
    if _MAX_FILES.value and len(files) > _MAX_FILES.value:
        files = [files[i] for i in np.linspace(0, len(files) - 1, _MAX_FILES.value).round().astype(int)]
    # Each network's bf16 encode stage, per variant (a combined model: both networks in it).
    openvino = {"jaxtag": ("bf16 (jaxtag's: front-end bf16, the rest f32)", [m._reduced for m in _networks(bf16)]),
                "all": ("bf16 (all of it)", [OpenVinoEncoder(_variables(m), "bfloat16", back_float32=False)
                                             for m in _networks(bf16)])}
    for variant in _VARIANTS.value:
        if variant in openvino:
            name, encoders = openvino[variant]
            for network, encoder in zip(_networks(bf16), encoders):
                network._reduced = encoder
            _parity(f32, bf16, files, folder, f"{name} (OpenVINO)", "f32 (XLA)")
        elif variant == "xla":
            _parity(f32, _xla_bfloat16(), files, folder, "bf16 (XLA's, front-end bf16)", "f32 (XLA)")
        elif variant == "xla_vs_openvino":
            for network, encoder in zip(_networks(bf16), openvino["jaxtag"][1]):
                network._reduced = encoder
            _parity(bf16, _xla_bfloat16(), files, folder, "bf16 (XLA's, front-end bf16)", "bf16 (OpenVINO's)")
        else:
            raise app.UsageError(f"--variants: unknown {variant!r}")


def _parity(f32, bf16, files, folder, variant, against):
    """bf16's scores and decisions against f32's (two taggers: the second against the first)."""
    from jaxtag.data.features import mel_spectrogram
    worst, diffs, flips, on, track_flips, track_on, windows, seconds = 0.0, [], 0, 0, 0, 0, 0, 0.0
    for path in files:
        try:   # the first max_windows windows' worth of audio only (decoding whole long files is slow)
            import soundfile as sf
            info = sf.info(path)
            frames = int(info.samplerate * 3.0 * _MAX_WINDOWS.value) if _MAX_WINDOWS.value else -1
            audio, sr = sf.read(path, frames=frames, dtype="float32", always_2d=True)
            y, _ = f32.load(audio, sr=sr)
        except Exception as e:  # noqa: BLE001
            print(f"skipped {path}: {e}")
            continue
        mel = mel_spectrogram(y, f32.frontend)
        w = f32.windows(mel)
        if _MAX_WINDOWS.value:
            w = w[:_MAX_WINDOWS.value]
        a, _ = f32.across_windows(f32.encode_windows(w))
        b, _ = bf16.across_windows(bf16.encode_windows(w))
        d = np.abs(a - b)
        print(f"{variant} {os.path.relpath(path, folder)}: {len(w)} windows, max abs diff {d.max():.4f}, "
              f"flips {int((f32.policy.active(a) != f32.policy.active(b)).sum())} of {int(f32.policy.active(a).sum())} on",
              flush=True)
        worst, windows, seconds = max(worst, float(d.max())), windows + len(w), seconds + len(y) / f32.frontend.sample_rate
        diffs.append(d.ravel())
        act_a, act_b = f32.policy.active(a), f32.policy.active(b)
        flips += int((act_a != act_b).sum())
        on += int(act_a.sum())
        trk_a = set(f32.policy.decide(a, active=act_a).track_tags)
        trk_b = set(f32.policy.decide(b, active=act_b).track_tags)
        track_flips += len(trk_a ^ trk_b)
        track_on += len(trk_a)
    d = np.concatenate(diffs)
    print(f"parity {_MODEL.value} {variant} vs {against}: {len(files)} files, {windows} windows "
          f"({seconds / 60:.0f} min of audio, at most {_MAX_WINDOWS.value or 'all'} windows a file)")
    print(f"  scores: max abs diff {worst:.4f}, 99.9th percentile {np.quantile(d, 0.999):.4f}, mean {d.mean():.5f}")
    print(f"  window tags on ({against}, default policy): {on}; flipped: {flips} = {100 * flips / max(on, 1):.2f}% "
          f"of them ({100 * flips / d.size:.3f}% of all window-tag pairs)")
    print(f"  track tags on ({against}): {track_on}; flipped: {track_flips}")


def main(argv):
    del argv
    if _HLO.value:
        hlo_probe()
    if _SPEED.value:
        speed()
    if _PARITY.value:
        parity(_PARITY.value)


if __name__ == "__main__":
    app.run(main)
