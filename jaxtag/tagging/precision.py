"""The numeric precision a Tagger runs its model in: "float32" (the default, always available) or
"bfloat16" (the pretrained musicnn models on a CPU with bf16 instructions, through OpenVINO:
jaxtag.models.musicnn_openvino); "auto" picks one, once, when the Tagger is made.

bfloat16 is opt-in (--precision=bfloat16 or auto): its scores are within ~0.02 of float32's and
flip about 1.4% of musicnn-msd's window tags on real music (docs/performance.md, "Reduced
precision"), the shipped decision statistics are float32's, and a default that depended on the
machine would give one library different analyses on different machines.

"auto" picks bfloat16 only where it was measured to win: a CPU backend, a CPU with AMX (amx_bf16
in /proc/cpuinfo's flags), and OpenVINO installed; float32 everywhere else (GPU/TPU, trained
runs, other CPUs). XLA:CPU itself runs bf16 no faster than float32 (it converts bf16 dots and
convolutions to f32), so bfloat16 means OpenVINO's CPU plugin. The precision is part of the
Tagger's fingerprint (bfloat16 and float32 analyses of one file never mix) and of its spec (Beam
workers build the driver's choice, and fail rather than fall back where they cannot).
"""
from __future__ import annotations

import functools

PRECISIONS = ("auto", "float32", "bfloat16")
# auto's condition: the CPU feature it was measured on (AMX tiles; AVX512-BF16 alone is untested).
AUTO_CPU_FLAGS = frozenset({"amx_bf16"})
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})   # what OpenVINO's bf16 needs at least


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve(requested: str, pretrained: bool, backend: str | None = None) -> str:
    """"float32" or "bfloat16" for a request of PRECISIONS; ValueError where bfloat16 is asked
    for and cannot run. pretrained: the model is a pretrained musicnn (the only one with a
    bfloat16 path); backend: jax's default backend (looked up when None)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "float32":
        return "float32"
    if backend is None:
        import jax
        backend = jax.default_backend()
    from jaxtag.models import musicnn_openvino
    problem = None
    if not pretrained:
        problem = "only the pretrained musicnn models have a bfloat16 path"
    elif backend != "cpu":
        problem = f"bfloat16 runs on CPU only (the backend is {backend})"
    elif not BF16_CPU_FLAGS & cpu_flags():
        problem = "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)"
    elif not musicnn_openvino.available():
        problem = "bfloat16 needs OpenVINO (one of jaxtag's dependencies): pip install 'openvino>=2025.0'"
    if requested == "bfloat16":
        if problem:
            raise ValueError(f"--precision=bfloat16: {problem}")
        return "bfloat16"
    return "bfloat16" if problem is None and AUTO_CPU_FLAGS <= cpu_flags() else "float32"
