"""Write tests/data/musicnn_reference.npz: what the ORIGINAL musicnn code computes on a test clip.

    python scripts/make_musicnn_reference.py [--venv /tmp/jaxtag-musicnn-ref-venv] \
        [--out tests/data/musicnn_reference.npz]

Needs: Python 3.11 with the `venv` module, access to PyPI through pip, ~2 GB free in /tmp, a few
minutes. Run from any environment (the jaxtag one is fine: only numpy and the standard library are
used outside the venv). Re-runnable: an existing venv with the pinned packages is reused.

What it does:
1. builds a throwaway venv (default /tmp/jaxtag-musicnn-ref-venv) with tensorflow-cpu 2.21.0,
   tf-keras 2.21.0, librosa 0.11.0, numpy and soundfile: NOT musicnn itself, whose pins
   (numpy<1.17) do not install on Python 3.11;
2. downloads the musicnn==0.1.0 wheel with `pip download --no-deps`, checks its sha256, unzips it
   and puts it on sys.path (the wheel holds the code and the trained checkpoints);
3. writes a deterministic 8.96 s clip at 16 kHz (chords, bass, kick, snare and hi-hat from a
   seeded generator) as 16-bit PCM, quiet enough that the mel power stays far below 6.55, where
   the original's float16 cast of 10000 * mel would overflow to inf;
4. runs musicnn's own `extractor.extractor(wav, model, input_length=3)` for MSD_musicnn and
   MTT_musicnn, with TF_USE_LEGACY_KERAS=1 so that tf.compat.v1.layers exists on TF 2.21, and
   once more with input_length=4 (250-frame patches) to cover another input length;
5. saves (np.savez_compressed, ~320 KB): the clip (int16) and its sample rate; the original's
   input patches [3, 187, 96] (its float16-rounded log-mel, as float16: they hold all 561 frames,
   and the 250-frame patches are their first 500 frames, which is checked); per model the
   taggram probabilities and penultimate features for both patch lengths, and the tag list the
   extractor returned; the clip's largest mel power (float32, must stay below 6.55).

The venv, the wheel and the restore shim come from scripts/original_musicnn.py (shared with
scripts/cli_benchmark.py).

Shims (monkeypatches applied inside the venv; none changes what musicnn computes):
- `tf.compat.v1.train.Saver.restore` is wrapped to record that it succeeded: the extractor wraps
  the restore in a bare `except:` and would otherwise go on silently with random weights;
- `extractor.batch_data` is wrapped to keep a copy of the patches it returns (the exact network
  input), which the extractor does not return;
- `musicnn.configuration.BATCH_SIZE` (patches per sess.run, 1 in the wheel) is set to 64 so all
  patches go through the extractor's first sess.run. Its loop over later batches has a bug: it
  unpacks their outputs into `backend_`, `midend1_`, ... but concatenates the stale `penultimate_`,
  `cnn1_`, ... of the first batch, so with BATCH_SIZE 1 every patch's "penultimate" is the first
  patch's (the taggram is not affected). The batch size does not change what is computed per
  patch (batch norm uses its moving averages): the script checks that the taggram and the first
  patch's penultimate are the same as with BATCH_SIZE 1.
No other shim was needed for tensorflow-cpu 2.21.0 / tf-keras 2.21.0 / librosa 0.11.0 / numpy 2.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import wave

import numpy as np

from original_musicnn import (DEFAULT_VENV, WHEEL_SHA256, ensure_venv, fetch_wheel, record_restores,  # scripts/
                              venv_env, venv_python)

MODELS = ("MSD_musicnn", "MTT_musicnn")
SR = 16000
# 561 mel frames (1 + n // 256) = exactly three 187-frame patches, so the patches hold the whole
# log-mel and 250-frame patches at 0 and 250 are slices of them.
N_SAMPLES = 143360
SEED = 20190531
ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- outer (any Python)

def make_clip() -> np.ndarray:
    """A deterministic band-like mix, int16 mono at 16 kHz, peak about -22 dBFS."""
    rng = np.random.default_rng(SEED)
    t = np.arange(N_SAMPLES) / SR
    y = np.zeros(N_SAMPLES)
    chords = [(220.00, 261.63, 329.63), (174.61, 220.00, 261.63),   # Am, F
              (261.63, 329.63, 392.00), (196.00, 246.94, 293.66)]   # C, G
    seg = N_SAMPLES // len(chords)
    for i, chord in enumerate(chords):
        sl = slice(i * seg, (i + 1) * seg)
        tt = t[sl] - t[sl][0]
        env = np.minimum(tt / 0.05, 1.0) * np.exp(-0.4 * tt)
        for f in chord:
            for k in range(1, 7):
                y[sl] += 0.05 / k * env * np.sin(2 * np.pi * k * f * tt + rng.uniform(0, 2 * np.pi))
        bass = chord[0] / 2
        y[sl] += 0.12 * env * np.sign(np.sin(2 * np.pi * bass * tt)) * 0.5
    beat = int(0.5 * SR)
    for start in range(0, N_SAMPLES, beat):                           # 120 bpm
        n = min(int(0.25 * SR), N_SAMPLES - start)
        tt = np.arange(n) / SR
        kick = np.sin(2 * np.pi * (50 * tt + 70 / 30 * (1 - np.exp(-30 * tt)))) * np.exp(-12 * tt)
        y[start:start + n] += 0.35 * kick
        off = start + beat // 2
        if (start // beat) % 2 == 1 and off < N_SAMPLES:               # snare on 2 and 4
            m = min(int(0.2 * SR), N_SAMPLES - off)
            y[off:off + m] += 0.15 * rng.standard_normal(m) * np.exp(-20 * np.arange(m) / SR)
    for start in range(0, N_SAMPLES, beat // 2):                      # hi-hat on eighths
        m = min(int(0.05 * SR), N_SAMPLES - start)
        noise = np.diff(rng.standard_normal(m + 1))                   # high-passed noise
        y[start:start + m] += 0.03 * noise * np.exp(-80 * np.arange(m) / SR)
    y = 0.08 * y / np.max(np.abs(y))
    return np.round(y * 32767).astype(np.int16)


def write_wav(path: str, samples: np.ndarray, sr: int) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(samples.astype("<i2").tobytes())


def outer(args) -> None:
    ensure_venv(args.venv)
    with tempfile.TemporaryDirectory(prefix="musicnn-ref-") as work:
        unpacked = fetch_wheel(work)
        clip = make_clip()
        wav = os.path.join(work, "clip.wav")
        write_wav(wav, clip, SR)
        raw = os.path.join(work, "original.npz")
        subprocess.run([venv_python(args.venv), os.path.abspath(__file__), "--inner", unpacked,
                        wav, raw], check=True, env=venv_env())
        with np.load(raw, allow_pickle=False) as original:
            out = {k: original[k] for k in original.files}
    out["clip"] = clip
    out["sr"] = np.int32(SR)
    out["wheel_sha256"] = np.array(WHEEL_SHA256)
    from jaxtag.files import write_atomic
    write_atomic(os.path.abspath(args.out), lambda f: np.savez_compressed(f, **out))
    summary = {k: [list(v.shape), str(v.dtype)] for k, v in sorted(out.items())}
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)


# ----------------------------------------------------------------------------- inner (the venv)

def inner(unpacked: str, wav: str, raw: str) -> None:
    sys.path.insert(0, unpacked)
    import tensorflow as tf
    from musicnn import extractor  # the original code, from the unzipped wheel

    restored = record_restores(tf)

    batches = []
    original_batch_data = extractor.batch_data

    def batch_data(*a, **k):
        batch, spectrogram = original_batch_data(*a, **k)
        batches.append((batch.copy(), spectrogram.copy()))
        return batch, spectrogram

    extractor.batch_data = batch_data

    def run(model, input_length):
        restored.clear()
        batches.clear()
        taggram, labels, features = extractor.extractor(
            wav, model=model, input_length=input_length, input_overlap=False,
            extract_features=True)
        assert len(restored) == 1 and restored[0].endswith(f"/{model}/"), restored
        (batch, spectrogram), = batches
        return taggram, labels, features, batch, spectrogram

    from musicnn import configuration
    assert configuration.BATCH_SIZE == 1
    as_shipped = {model: run(model, 3) for model in MODELS}
    configuration.BATCH_SIZE = 64  # see the docstring: all patches in the first sess.run

    out = {}
    for input_length, suffix in ((3, ""), (4, "_250")):
        for model in MODELS:
            taggram, labels, features, batch, spectrogram = run(model, input_length)
            assert len(batch) <= configuration.BATCH_SIZE
            assert not np.allclose(features["penultimate"][0], features["penultimate"][1])
            if not suffix:
                shipped_taggram, _, shipped_features, _, _ = as_shipped[model]
                print(model, "BATCH_SIZE 64 vs 1: taggram max abs diff",
                      np.abs(taggram - shipped_taggram).max(), "first penultimate",
                      np.abs(features["penultimate"][0] - shipped_features["penultimate"][0]).max(),
                      file=sys.stderr)
                assert np.allclose(taggram, shipped_taggram, rtol=0, atol=1e-6)
                assert np.allclose(features["penultimate"][0], shipped_features["penultimate"][0],
                                   rtol=0, atol=1e-5)
            assert batch.dtype == np.float16 and np.all(np.isfinite(batch)), "float16 overflow"
            out[f"patches{suffix}"] = batch  # identical for both models
            out[f"{model}_probs{suffix}"] = np.asarray(taggram, np.float32)
            out[f"{model}_penultimate{suffix}"] = np.asarray(features["penultimate"], np.float32)
            if not suffix:
                out[f"{model}_tags"] = np.array(labels)
                out["logmel"] = spectrogram
    import librosa
    audio, sr = librosa.load(wav, sr=16000)
    mel = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=256, n_fft=512, n_mels=96)
    out["max_mel_power"] = np.float32(mel.max())
    assert mel.max() < 6.55, f"mel power {mel.max()} would overflow the original's float16"
    # The 187-frame patches hold the whole log-mel (561 frames): keep only them.
    assert np.array_equal(out["patches"].reshape(-1, 96), out.pop("logmel"))
    assert np.array_equal(out["patches_250"].reshape(-1, 96), out["patches"].reshape(-1, 96)[:500])
    del out["patches_250"]
    np.savez(raw, **out)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--inner":
        inner(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default=DEFAULT_VENV)
    parser.add_argument("--out", default=str(ROOT / "tests" / "data" / "musicnn_reference.npz"))
    outer(parser.parse_args())


if __name__ == "__main__":
    main()
