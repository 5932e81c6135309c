"""The ORIGINAL musicnn (the musicnn==0.1.0 wheel) in a throwaway venv, for the scripts that compare with it.

    python scripts/original_musicnn.py cli UNPACKED MODEL SAVE FILE [FILE ...]   # in the venv

Used by scripts/make_musicnn_reference.py (the original's outputs on a test clip) and
scripts/cli_benchmark.py (its CLI's speed on real tracks). Outside the venv (any Python with pip):
- ensure_venv(venv): builds (or reuses) a venv with tensorflow-cpu 2.21.0, tf-keras 2.21.0,
  librosa 0.11.0, numpy and soundfile: NOT musicnn itself, whose pins (numpy<1.17) do not install
  on Python 3.11;
- fetch_wheel(workdir): `pip download`s the musicnn==0.1.0 wheel, checks its sha256 and unzips it
  (the code and the trained checkpoints), to be put on sys.path inside the venv;
- venv_python(venv), venv_env(): the venv's interpreter and the environment to run it in
  (TF_USE_LEGACY_KERAS=1, so that tf.compat.v1.layers exists on TF 2.21; no GPU; TF's C++ info
  logs off).
Inside the venv:
- record_restores(tf): wraps tf.compat.v1.train.Saver.restore to record each checkpoint restored.
  The extractor wraps its restore in a bare `except:` and would otherwise go on silently with
  random weights;
- the `cli` command: what musicnn's own CLI does (`python -m musicnn.tagger FILE --model MODEL
  --print --save SAVE`, which takes one file), run once per file in this one process; prints one
  JSON line last.
Only the standard library is imported at the top: the venv's process pays for nothing the
original's CLI does not import.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "musicnn==0.1.0"
WHEEL_FILE = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
VENV_PACKAGES = ["tensorflow-cpu==2.21.0", "tf-keras==2.21.0", "librosa==0.11.0", "numpy",
                 "soundfile"]
DEFAULT_VENV = os.path.join(tempfile.gettempdir(), "jaxtag-musicnn-ref-venv")


# ----------------------------------------------------------------------------- outside the venv

def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def venv_env() -> dict:
    """The environment the original runs in: TF 2.21 with Keras 2 (tf-keras) for tf.compat.v1.layers."""
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def ensure_venv(venv: str) -> None:
    check = ("import importlib.metadata as m; "
             "assert m.version('tensorflow-cpu') == '2.21.0' and m.version('tf-keras') == '2.21.0' "
             "and m.version('librosa') == '0.11.0'; import soundfile")
    if os.path.exists(venv_python(venv)) and subprocess.run(
            [venv_python(venv), "-c", check], capture_output=True).returncode == 0:
        print(f"reusing the venv {venv}", file=sys.stderr)
        return
    print(f"building the venv {venv} ({', '.join(VENV_PACKAGES)})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    subprocess.run([venv_python(venv), "-m", "pip", "install", "-q", *VENV_PACKAGES], check=True)


def fetch_wheel(workdir: str) -> str:
    """Download the wheel (no install), check it, unzip it; returns the folder to put on sys.path."""
    subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps",
                    "--only-binary=:all:", "-d", workdir], check=True, stdout=sys.stderr)  # stdout: results
    wheel = os.path.join(workdir, WHEEL_FILE)
    with open(wheel, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
    unpacked = os.path.join(workdir, "wheel")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    return unpacked


# ----------------------------------------------------------------------------- inside the venv

def record_restores(tf) -> list:
    """Wrap Saver.restore: the returned list gets the path of each checkpoint restored without error."""
    restored = []
    original_restore = tf.compat.v1.train.Saver.restore

    def restore(self, sess, save_path):
        result = original_restore(self, sess, save_path)
        restored.append(save_path)
        return result

    tf.compat.v1.train.Saver.restore = restore
    return restored


def cli(unpacked: str, model: str, save: str, files: list[str]) -> dict:
    """musicnn's CLI over `files`, one file after another in this process: for each, its
    `python -m musicnn.tagger FILE --model MODEL --print --save SAVE` (its module run as __main__
    with that command line: argparse, then top_tags -> extractor.extractor(file, model,
    input_length=3.0, input_overlap=False), which builds the graph, opens a session, restores the
    checkpoint, computes the log-mel with librosa and runs the patches one at a time as shipped).
    Checks that every restore succeeded; lists [file, patches, of patches] where the network
    input is not finite (the original's float16 10000 * mel overflows to inf where the mel power
    passes 6.55: loud audio; its taggram stays finite)."""
    import runpy
    sys.path.insert(0, unpacked)
    import numpy as np
    import tensorflow as tf
    restored = record_restores(tf)
    from musicnn import extractor
    not_finite = []
    original_batch_data = extractor.batch_data

    def batch_data(audio_file, *args, **kwargs):
        batch, spectrogram = original_batch_data(audio_file, *args, **kwargs)
        bad = int(np.sum(~np.all(np.isfinite(batch), axis=(1, 2))))
        if bad:
            not_finite.append([audio_file, bad, len(batch)])
        return batch, spectrogram

    extractor.batch_data = batch_data   # what extractor.extractor calls
    argv = sys.argv
    for file in files:
        sys.argv = ["musicnn.tagger", file, "--model", model, "--print", "--save", save]
        runpy.run_module("musicnn.tagger", run_name="__main__")
    sys.argv = argv
    expected = os.path.join(unpacked, "musicnn", model) + "/"
    if len(restored) != len(files) or any(os.path.normpath(p) != os.path.normpath(expected) for p in restored):
        sys.exit(f"the checkpoint {expected} was not restored once per file: {restored}")
    with open(save, encoding="utf-8") as f:
        saved = sum(1 for _ in f)
    return {"files": len(files), "restored": len(restored), "saved_lines": saved, "not_finite": not_finite}


def main() -> None:
    if len(sys.argv) >= 6 and sys.argv[1] == "cli":
        import json
        print(json.dumps(cli(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])))
        return
    sys.exit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    main()
