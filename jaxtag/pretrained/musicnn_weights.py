"""musicnn's published weights (Pons & Serra 2019, ISC licence), converted for jaxtag's Flax port.

    from jaxtag.models.musicnn import Musicnn, compress, MUSICNN_FRONTEND
    variables, info = load_pretrained("musicnn-msd")
    logits = Musicnn(num_tags=len(info["tags"])).apply(variables, logmel_patches)

The weights ship inside musicnn's wheel on PyPI (musicnn==0.1.0), whose code no longer installs on
Python 3.11. On first use (or `python -m jaxtag.pretrained fetch`) the wheel is downloaded with
pip (`pip download`, never installed), checked against its pinned sha256, and the two TF1
checkpoints it holds are read with TensorFlow (imported only then) and converted to Flax
variables, cached as `<cache>/musicnn-msd.npz` and `<cache>/musicnn-mtt.npz` with a manifest of
their sha256 and musicnn's licence. A cached file that is truncated, unreadable or altered is
refetched and reconverted, never used.

The cache is `$JAXTAG_CACHE` if set, else `<data dir>/pretrained` with the data dir
`$JAXTAG_DATA_DIR` or `~/jaxtag_data`.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from jaxtag.errors import JaxtagError
from jaxtag.files import sha256_file, write_atomic
from jaxtag.models.musicnn import MUSICNN_FRONTEND

WHEEL = "musicnn==0.1.0"
WHEEL_FILENAME = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
WHEEL_MB = 29
SOURCE = f"{WHEEL} (PyPI wheel sha256 {WHEEL_SHA256})"
# Per model, once the Adam slots and beta1/beta2 powers are dropped (measured): kernels, biases,
# batch-norm scales and offsets and their moving means and variances.
NUM_PARAMETERS = 792_079
MANIFEST = "musicnn-manifest.json"
LICENSE_FILE = "LICENSE-musicnn.md"
FETCH_COMMAND = "python -m jaxtag.pretrained fetch"


class PretrainedWeightsError(JaxtagError):
    """Published weights could not be fetched, checked or converted, and no usable copy is cached."""


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    name: str
    checkpoint: str        # folder of the TF1 checkpoint inside the wheel
    labels_variable: str   # list of the tag names in the wheel's musicnn/configuration.py
    num_tags: int
    description: str
    # sha256 of the converted arrays (names, dtypes, shapes, bytes; see _content_digest), pinned
    # after measuring it: conversion is deterministic. Independent of the npz container.
    content_sha256: str


PRETRAINED = {
    "musicnn-msd": PretrainedModel(
        "musicnn-msd", "MSD_musicnn", "MSD_LABELS", 50,
        "musicnn trained on the Million Song Dataset: 50 Last.fm tags",
        "e95b66f9e56e70dbb420013782844320d9728eadd0b079a087674154c472aa8b"),
    "musicnn-mtt": PretrainedModel(
        "musicnn-mtt", "MTT_musicnn", "MTT_LABELS", 50,
        "musicnn trained on MagnaTagATune: 50 tags",
        "16ce37e25d0c5b408f8eef41475db5de82697f2d073fb9815f7911f21efc13b0"),
}

# TF1 variable scope in the checkpoint -> (Flax module name, kind). Creation order in musicnn's
# models.py (the layers are auto-named conv2d, conv2d_1, ..., batch_normalization_1, ...).
_CONVS = {"conv2d": "timbral_7x38", "conv2d_1": "timbral_7x67", "conv2d_2": "temporal_128",
          "conv2d_3": "temporal_64", "conv2d_4": "temporal_32", "conv2d_5": "midend_conv1",
          "conv2d_6": "midend_conv2", "conv2d_7": "midend_conv3",
          "dense": "backend_dense", "dense_1": "output_dense"}
_BATCH_NORMS = {"batch_normalization": "input_bn", "batch_normalization_1": "timbral_7x38_bn",
                "batch_normalization_2": "timbral_7x67_bn", "batch_normalization_3": "temporal_128_bn",
                "batch_normalization_4": "temporal_64_bn", "batch_normalization_5": "temporal_32_bn",
                "batch_normalization_6": "midend_conv1_bn", "batch_normalization_7": "midend_conv2_bn",
                "batch_normalization_8": "midend_conv3_bn", "batch_normalization_9": "backend_pool_bn",
                "batch_normalization_10": "backend_dense_bn"}
_MIDEND_CONVS = ("conv2d_5", "conv2d_6", "conv2d_7")  # [7, C, 1, 64] -> 1-D conv kernel [7, C, 64]


# ----------------------------------------------------------------------------- paths

def cache_dir() -> str:
    """`$JAXTAG_CACHE` if set, else `<data dir>/pretrained`, data dir `$JAXTAG_DATA_DIR` or
    `~/jaxtag_data`."""
    if os.environ.get("JAXTAG_CACHE"):
        return os.path.expanduser(os.environ["JAXTAG_CACHE"])
    data_dir = os.environ.get("JAXTAG_DATA_DIR") or os.path.join("~", "jaxtag_data")
    return os.path.join(os.path.expanduser(data_dir), "pretrained")


def _root(path) -> str:
    return os.path.abspath(os.fspath(path)) if path else os.path.abspath(cache_dir())


def _spec(name: str) -> PretrainedModel:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(PRETRAINED))}")
    return PRETRAINED[name]


def weights_path(name: str, cache_dir=None) -> str:
    return os.path.join(_root(cache_dir), f"{_spec(name).name}.npz")


# ----------------------------------------------------------------------------- files

def _content_digest(arrays: dict) -> str:
    """sha256 over the sorted names, dtypes, shapes and little-endian bytes of the arrays."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.asarray(arrays[key])
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        h.update(json.dumps([key, a.dtype.str, list(a.shape)]).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _write_npz(path: str, arrays: dict) -> None:
    """An npz (readable by np.load) with fixed zip timestamps, so equal arrays give equal bytes."""
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                with z.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
    write_atomic(path, write)


def _to_variables(arrays: dict) -> tuple[dict, list[str], str]:
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, value in arrays.items():
        collection, *rest = key.split("/")
        if collection == "meta":
            continue
        node = variables[collection]
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return variables, [str(t) for t in arrays["meta/tags"]], str(arrays["meta/license"])


def _expected_shapes(num_tags: int) -> dict:
    """{"params/timbral_7x38/kernel": shape, ...} of Musicnn(num_tags), from Flax itself."""
    import jax
    from jaxtag.models.musicnn import Musicnn
    shapes = jax.eval_shape(lambda: Musicnn(num_tags=num_tags).init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 187, 96), jax.numpy.float32)))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {"/".join(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in flat}


class _Unusable(Exception):
    """The cached copy of a model cannot be used (the message says why)."""


def _read_manifest(root: str) -> dict:
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' entry")
        return manifest
    except FileNotFoundError:
        raise _Unusable(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise _Unusable(f"{path} is unreadable ({e})") from None


def _load_cached(spec: PretrainedModel, root: str) -> dict:
    """The verified arrays of a cached model; raises _Unusable saying why not."""
    path = os.path.join(root, spec.name + ".npz")
    if not os.path.isfile(path):
        raise _Unusable(f"{path} is missing")
    entry = _read_manifest(root)["files"].get(os.path.basename(path))
    if not isinstance(entry, dict) or "sha256" not in entry:
        raise _Unusable(f"{path} is not listed in {MANIFEST}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise _Unusable(f"{path} has sha256 {digest}, the manifest says {entry['sha256']} "
                        "(truncated or altered)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError, ...
        raise _Unusable(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    content = _content_digest(arrays)
    if content != spec.content_sha256:
        raise _Unusable(f"{path} holds other weights than {SOURCE} gives "
                        f"(content sha256 {content}, expected {spec.content_sha256})")
    return arrays


def is_cached(name: str, cache_dir=None) -> bool:
    """True if a verified copy of the model is in the cache (no download)."""
    try:
        _load_cached(_spec(name), _root(cache_dir))
        return True
    except _Unusable:
        return False


# ----------------------------------------------------------------------------- fetch and convert

def _download_wheel(dest_dir: str) -> str:
    """`pip download` the wheel into dest_dir (no install, no dependencies); returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", dest_dir]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise PretrainedWeightsError(f"could not run pip to download {WHEEL}: {e}") from None
    if result.returncode != 0:
        lines = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
        detail = " | ".join(ln.strip() for ln in lines[-3:]) or f"exit status {result.returncode}"
        raise PretrainedWeightsError(f"could not download {WHEEL} from PyPI with pip: {detail}")
    path = os.path.join(dest_dir, WHEEL_FILENAME)
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"pip download of {WHEEL} did not produce {WHEEL_FILENAME}")
    return path


def _labels(configuration_source: str, variable: str) -> list[str]:
    """The list literal assigned to `variable` in musicnn's configuration.py, read with ast."""
    for node in ast.parse(configuration_source).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == variable for t in node.targets):
            labels = ast.literal_eval(node.value)
            if isinstance(labels, list) and all(isinstance(t, str) for t in labels):
                return labels
    raise PretrainedWeightsError(f"musicnn/configuration.py in {WHEEL_FILENAME} has no "
                                 f"list of strings {variable}")


def _read_checkpoint(wheel: zipfile.ZipFile, checkpoint: str, workdir: str) -> dict:
    """{TF variable name: array} of a checkpoint in the wheel, without optimizer state.

    The wheel's checkpoints have empty base names (musicnn/MSD_musicnn/.index, ...) and a
    `checkpoint` file pointing to the author's machine, so tf.train.load_checkpoint(folder) finds
    nothing: the two files are extracted under a real prefix, which is then loaded.
    """
    prefix = os.path.join(workdir, checkpoint)
    for suffix in (".index", ".data-00000-of-00001"):
        with wheel.open(f"musicnn/{checkpoint}/{suffix}") as src, open(prefix + suffix, "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # only here: converting needs TensorFlow, using the weights does not.
    reader = tf.train.load_checkpoint(prefix)
    return {name: np.asarray(reader.get_tensor(name))
            for name in sorted(reader.get_variable_to_shape_map())
            if "/Adam" not in name and not name.endswith("_power")}


def _convert(tf_vars: dict, spec: PretrainedModel) -> dict:
    """TF variables -> flat {"params/<module>/<name>": float32 array, "batch_stats/...": ...}."""
    n = sum(int(np.prod(v.shape)) for v in tf_vars.values())
    if n != NUM_PARAMETERS:
        raise PretrainedWeightsError(f"{spec.checkpoint} in {WHEEL_FILENAME} has {n} parameters, "
                                     f"expected {NUM_PARAMETERS}")
    out, used = {}, set()

    def take(name):
        if name not in tf_vars:
            raise PretrainedWeightsError(f"{spec.checkpoint} in {WHEEL_FILENAME} has no {name}")
        used.add(name)
        return np.asarray(tf_vars[name], dtype=np.float32)

    for scope, module in _CONVS.items():
        kernel = take(f"{scope}/kernel")          # TF conv2d HWIO = Flax; dense [in, out] = Flax
        if scope in _MIDEND_CONVS:
            kernel = kernel[:, :, 0, :]
        out[f"params/{module}/kernel"] = kernel
        out[f"params/{module}/bias"] = take(f"{scope}/bias")
    for scope, module in _BATCH_NORMS.items():
        out[f"params/{module}/scale"] = take(f"{scope}/gamma")
        out[f"params/{module}/bias"] = take(f"{scope}/beta")
        out[f"batch_stats/{module}/mean"] = take(f"{scope}/moving_mean")
        out[f"batch_stats/{module}/var"] = take(f"{scope}/moving_variance")
    if set(tf_vars) - used:
        raise PretrainedWeightsError(f"{spec.checkpoint} has unexpected variables "
                                     f"{sorted(set(tf_vars) - used)}")
    expected = _expected_shapes(spec.num_tags)
    got = {k: tuple(v.shape) for k, v in out.items()}
    if got != expected:
        wrong = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        raise PretrainedWeightsError(f"converted {spec.checkpoint} does not fit Musicnn: {wrong}")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def fetch(cache_dir=None, force: bool = False) -> str:
    """Download, check and convert the weights of every model in PRETRAINED into the cache.

    Does nothing if every model is cached and verified, unless force. Returns the cache folder.
    Raises PretrainedWeightsError if the download, the check or the conversion fails; then
    nothing is written.
    """
    root = _root(cache_dir)
    if not force and all(is_cached(name, root) for name in PRETRAINED):
        return root
    print(f"jaxtag: fetching {WHEEL} weights from PyPI ({WHEEL_MB} MB, once) into {root}",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="jaxtag-musicnn-") as work:
        wheel_path = _download_wheel(work)
        digest = sha256_file(wheel_path)
        if digest != WHEEL_SHA256:
            raise PretrainedWeightsError(
                f"the downloaded {WHEEL_FILENAME} has sha256 {digest}, expected {WHEEL_SHA256}: "
                "not using it (nothing was cached)")
        converted = {}
        try:
            with zipfile.ZipFile(wheel_path) as wheel:
                configuration = wheel.read("musicnn/configuration.py").decode("utf-8")
                license_text = wheel.read("musicnn-0.1.0.dist-info/LICENSE.md").decode("utf-8")
                for spec in PRETRAINED.values():
                    tags = _labels(configuration, spec.labels_variable)
                    if len(tags) != spec.num_tags:
                        raise PretrainedWeightsError(
                            f"{spec.labels_variable} has {len(tags)} tags, expected {spec.num_tags}")
                    arrays = _convert(_read_checkpoint(wheel, spec.checkpoint, work), spec)
                    arrays["meta/tags"] = np.array(tags)
                    arrays["meta/license"] = np.array(license_text)
                    content = _content_digest(arrays)
                    if content != spec.content_sha256:
                        raise PretrainedWeightsError(
                            f"converting {spec.checkpoint} gave weights with content sha256 "
                            f"{content}, expected {spec.content_sha256}")
                    converted[spec.name] = arrays
        except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError) as e:
            raise PretrainedWeightsError(f"cannot read {WHEEL_FILENAME}: {type(e).__name__}: {e}")
    files = {}
    for name, arrays in converted.items():
        path = os.path.join(root, name + ".npz")
        _write_npz(path, arrays)
        files[os.path.basename(path)] = {"sha256": sha256_file(path),
                                         "bytes": os.path.getsize(path),
                                         "content_sha256": PRETRAINED[name].content_sha256}
    write_atomic(os.path.join(root, LICENSE_FILE), lambda f: f.write(license_text.encode("utf-8")))
    files[LICENSE_FILE] = {"sha256": sha256_file(os.path.join(root, LICENSE_FILE))}
    manifest = {"source": SOURCE, "wheel": WHEEL_FILENAME, "wheel_sha256": WHEEL_SHA256,
                "num_parameters": NUM_PARAMETERS, "files": files}
    write_atomic(os.path.join(root, MANIFEST),
                  lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode("utf-8")))
    return root


# ----------------------------------------------------------------------------- load

def load_pretrained(name: str, cache_dir=None) -> tuple[dict, dict]:
    """(variables, info) of a published model, fetched and converted on first use.

    variables = {"params": ..., "batch_stats": ...} (numpy float32) for
    `Musicnn(num_tags=len(info["tags"])).apply(variables, logmel)`; info is JSON-able:
    {"name", "description", "tags", "frontend", "source", "license", "num_parameters"}.
    """
    spec = _spec(name)
    root = _root(cache_dir)
    try:
        arrays = _load_cached(spec, root)
    except _Unusable as problem:
        if os.path.exists(os.path.join(root, spec.name + ".npz")):
            print(f"jaxtag: not using the cached {spec.name} weights: {problem}; refetching",
                  file=sys.stderr, flush=True)
        try:
            fetch(root, force=True)
            arrays = _load_cached(spec, root)
        except (PretrainedWeightsError, _Unusable, OSError) as e:
            raise PretrainedWeightsError(
                f"no usable {spec.name} weights: {e}. The cache ({root}; set $JAXTAG_CACHE to "
                f"use another folder) has no usable copy ({problem}). On a machine with access "
                f"to PyPI run `{FETCH_COMMAND}`, with the same $JAXTAG_CACHE, and copy that "
                "folder here if this machine is offline.") from None
    variables, tags, license_text = _to_variables(arrays)
    info = {"name": spec.name, "description": spec.description, "tags": tags,
            "frontend": MUSICNN_FRONTEND.to_dict(), "source": SOURCE, "license": license_text,
            "num_parameters": NUM_PARAMETERS}
    return variables, info
