"""musicnn's encode stage (power-mel windows -> penultimate features) on OpenVINO, built from the
Flax model's own variables, for reduced-precision tagging on CPU (jaxtag.tagging.precision).

Why: XLA:CPU (jax 0.10.2) cannot run musicnn in bfloat16 faster than float32: its CPU compiler
converts every bf16 dot and convolution to f32 before any kernel library (Eigen, YNNPACK, oneDNN)
sees it, whatever XLA_FLAGS say (scripts/precision_benchmark.py --hlo), so bf16 only adds
conversions. OpenVINO's CPU plugin runs convolutions and matmuls in bf16 on AMX / AVX512-BF16
(its inference precision hint), accumulating in f32.

The graph is musicnn layer for layer as jaxtag.models.musicnn.Musicnn computes it (the same
compression, the batch norms folded into a scale and shift each, TF's "same" padding of the
temporal convs), so in float32 it gives the Flax model's features to float rounding (~1e-5).
Only the encode stage runs here; the output layer (a 200 x 50 dense and a sigmoid) stays in JAX.
"""
from __future__ import annotations

import numpy as np

from jaxtag.models.musicnn import BACKEND_UNITS, BN_EPSILON, FRONTEND_CHANNELS, N_MELS, TEMPORAL_KERNELS, TIMBRAL_KERNELS

# OpenVINO's names for jaxtag's precisions (its CPU plugin's INFERENCE_PRECISION_HINT).
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


def available() -> bool:
    """Whether OpenVINO is installed (found, not imported: see openvino_module)."""
    import importlib.util
    return importlib.util.find_spec("openvino") is not None


def openvino_module():
    """The openvino package, imported without its model-conversion tools (openvino.tools.ovc,
    which jaxtag does not use): importing those, as `import openvino` does, sends a usage event to
    Intel's analytics from a forked process (openvino_telemetry, on unless the user opted out
    with `opt_in_out --opt_out`), a fork of a process JAX already runs threads in. Where openvino
    is imported already, that one is used as it is."""
    import sys
    if "openvino" not in sys.modules:
        hidden = "openvino.tools.ovc" not in sys.modules
        if hidden:
            sys.modules["openvino.tools.ovc"] = None   # (openvino/__init__ imports it in a try: skipped)
        try:
            import openvino  # noqa: F401
        finally:
            if hidden:
                del sys.modules["openvino.tools.ovc"]
    return sys.modules["openvino"]


def build_model(variables, frames: int | None = None, part: str = "all"):
    """An openvino.Model: power mel [N, frames, 96] (float32) -> musicnn's penultimate features
    [N, 200]. variables: Musicnn's {"params": ..., "batch_stats": ...} (the tree under "musicnn").
    part: "all"; "front": the mel -> the front-end's map [N, 561, frames]; "back": that map ->
    the features."""
    ov = openvino_module()
    import openvino.opset13 as ops

    p = {k: {kk: np.asarray(vv, np.float32) for kk, vv in d.items()} for k, d in variables["params"].items()}
    s = {k: {kk: np.asarray(vv, np.float32) for kk, vv in d.items()} for k, d in variables["batch_stats"].items()}

    def c(value, dtype=np.float32):
        return ops.constant(np.asarray(value, dtype))

    def bn(x, layer, shape):
        scale = p[layer]["scale"] / np.sqrt(s[layer]["var"] + np.float32(BN_EPSILON))
        shift = p[layer]["bias"] - s[layer]["mean"] * scale
        return ops.add(ops.multiply(x, c(scale.reshape(shape))), c(shift.reshape(shape)))

    def conv(x, layer, kernel, pads_begin, pads_end, bias_shape):
        y = ops.convolution(x, c(kernel), [1] * len(pads_begin), pads_begin, pads_end, [1] * len(pads_begin))
        return ops.relu(ops.add(y, c(p[layer]["bias"].reshape(bias_shape))))

    time = -1 if frames is None else frames
    if part == "back":
        front = ops.parameter([-1, FRONTEND_CHANNELS, time], ov.Type.f32, name="front")
        return ov.Model([_back(front, p, bn, conv, c, ops)], [front], "musicnn_back")
    mel = ops.parameter([-1, time, N_MELS], ov.Type.f32, name="mel")
    # The original's compression log10(1 + 10000 mel) (jaxtag.models.musicnn.compress).
    logmel = ops.multiply(ops.log(ops.add(ops.multiply(mel, c(1e4)), c(1.0))), c(1.0 / np.log(10.0)))
    x = bn(ops.unsqueeze(logmel, c([1], np.int64)), "input_bn", (1,))          # [N, 1, T, 96]
    branches = []
    for kt, kf in TIMBRAL_KERNELS:                                              # time padded by 3, "valid"
        name = f"timbral_{kt}x{kf}"
        kernel = np.transpose(p[name]["kernel"], (3, 2, 0, 1))                  # HWIO -> OIHW
        y = bn(conv(x, name, kernel, [3, 0], [3, 0], (1, -1, 1, 1)), name + "_bn", (1, -1, 1, 1))
        branches.append(ops.reduce_max(y, c([3], np.int64), False))            # [N, 204, T]
    for kt in TEMPORAL_KERNELS:                                                 # TF "same" along time
        name = f"temporal_{kt}"
        kernel = np.transpose(p[name]["kernel"], (3, 2, 0, 1))
        before = (kt - 1) // 2
        y = bn(conv(x, name, kernel, [before, 0], [kt - 1 - before, 0], (1, -1, 1, 1)), name + "_bn", (1, -1, 1, 1))
        branches.append(ops.reduce_max(y, c([3], np.int64), False))            # [N, 51, T]
    front = ops.concat(branches, 1)                                             # [N, 561, T]
    if part == "front":
        return ov.Model([front], [mel], "musicnn_front")
    return ov.Model([_back(front, p, bn, conv, c, ops)], [mel], "musicnn_features")


def _back(front, p, bn, conv, c, ops):
    """The mid-end and back-end: the front-end's map [N, 561, T] -> features [N, 200]."""
    outputs, h = [front], front
    for i in (1, 2, 3):
        name = f"midend_conv{i}"
        kernel = np.transpose(p[name]["kernel"], (2, 1, 0))                     # WIO -> OIW
        y = bn(conv(h, name, kernel, [3], [3], (1, -1, 1)), name + "_bn", (1, -1, 1))
        h = y if i == 1 else ops.add(y, h)
        outputs.append(h)
    feature_map = ops.concat(outputs, 1)                                        # [N, 753, T]
    max_pool = ops.reduce_max(feature_map, c([2], np.int64), True)
    mean_pool = ops.reduce_mean(feature_map, c([2], np.int64), True)
    # Interleaved (max0, mean0, max1, mean1, ...) as TF flattens [N, 753, 2].
    pooled = ops.reshape(ops.concat([max_pool, mean_pool], 2), c([0, -1], np.int64), True)
    pooled = bn(pooled, "backend_pool_bn", (1, -1))
    dense = ops.add(ops.matmul(pooled, c(p["backend_dense"]["kernel"]), False, False),
                    c(p["backend_dense"]["bias"]))
    return bn(ops.relu(dense), "backend_dense_bn", (1, -1))


class OpenVinoEncoder:
    """The compiled encode stage: __call__(mel [N, frames, 96]) -> features [N, 200] float32.
    precision: "float32" or "bfloat16" (OpenVINO's inference precision on CPU); in bfloat16 only
    the front-end (its convolutions are 97% of the FLOPs) runs in it, the mid- and back-end in
    float32 (back_float32; OpenVINO otherwise keeps every activation in bf16): 13% less error
    for no measurable time. threads: its inference threads (0: OpenVINO's default, every core)."""

    def __init__(self, variables, precision: str, threads: int = 0, back_float32: bool = True):
        ov = openvino_module()
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.precision = precision
        split = precision != "float32" and back_float32
        self._stages = []
        for part, stage_precision in ([("front", precision), ("back", "float32")] if split else [("all", precision)]):
            compiled = core.compile_model(build_model(variables, part=part), "CPU",
                                          {**config, "INFERENCE_PRECISION_HINT": PRECISION_HINTS[stage_precision]})
            wanted = {"float32": ov.Type.f32, "bfloat16": ov.Type.bf16}[stage_precision]
            if compiled.get_property("INFERENCE_PRECISION_HINT") != wanted:
                # (OpenVINO quietly runs f32 where the CPU has no bf16: scores would be mislabelled.)
                raise ValueError(f"OpenVINO cannot run {stage_precision} on this CPU")
            self._stages.append(compiled.create_infer_request())

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """One window at a time (as jaxtag.models.musicnn.window_by_window on XLA): OpenVINO
        allocates a call's intermediates for all its windows at once (a 32-window chunk: +410 MB
        peak, the front-end's conv outputs), and a window's stay in cache: 76 windows/s one at a
        time, 59 per chunk of 32 (scripts/precision_benchmark.py's machine, shared)."""
        mel = np.ascontiguousarray(mel, np.float32)
        out = np.empty((len(mel), BACKEND_UNITS), np.float32)
        for i in range(len(mel)):
            x = mel[i:i + 1]
            for request in self._stages:
                x = request.infer({0: x})[0]
            out[i] = x[0]
        return out
