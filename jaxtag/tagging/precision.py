"""The numeric precision a Tagger runs its model in: "float32" (always available) or "bfloat16"
(the pretrained musicnn models, the front-end convolutions in bf16 and the rest in float32;
bfloat16_engine: on a CPU with bf16 instructions through OpenVINO, jaxtag.models.musicnn_openvino;
elsewhere through XLA, Musicnn.frontend_dtype: GPU/TPU natively, other CPUs at float32's speed);
"auto" picks one, once, when the Tagger is made.

Defaults: library tagging (`python -m jaxtag.tag`, its Beam driver, the beets plugin) runs in
"auto", or in $JAXTAG_PRECISION where that is set (ENV, default_request); the Python API
(Tagger.pretrained, Tagger.from_workdir, jaxtag.library.run.tag_library) in "float32", the same
numbers on every machine for whoever calls it as a library function.

Why auto for libraries: on a CPU with AMX bfloat16 tags 1.7-2.3x faster end to end, its scores
are within ~0.02 of float32's, and it flips about 1.4% of musicnn-msd's window tags on real music
(those whose score sits at a threshold; docs/performance.md, "Reduced precision"). The objection
to a machine-dependent default, one library analysed differently on different machines, is met
by choosing once per library (library_precision): the first run on an output folder records the
precision it ran in (its database's meta, jaxtag.library.state), and later auto runs follow the
record whichever machine runs them. A machine without OpenVINO's bf16 runs a recorded bfloat16
through XLA (bfloat16's numbers at float32's speed) rather than analysing the library again, and
so do Beam workers on such CPUs under a driver's bfloat16. A run whose auto choice another run's
record overtook before it took the library's lock does not start (Choice.follows_record,
jaxtag.library.run.check_record_unchanged). An explicit precision always wins and becomes the
record. What remains: the shipped decision statistics are float32's (the parity, 1.42% of
musicnn-msd's window tags and 1.16% of the combined model's, is what using them costs).

"auto" picks bfloat16 only where it was measured to win: a CPU backend, a CPU with AMX (amx_bf16
in /proc/cpuinfo's flags), and OpenVINO installed; float32 everywhere else (GPU/TPU, trained
runs, other CPUs). XLA:CPU itself runs bf16 no faster than float32 (it converts bf16 dots and
convolutions to f32). On GPU/TPU bfloat16 is there when asked for; auto does not pick it there
(not measured here: no accelerator). The precision is part of the Tagger's fingerprint (bfloat16
and float32 analyses of one file never mix) and of its spec (Beam workers build the driver's
choice); the engine is not: OpenVINO's and XLA's bfloat16 are one analysis (their parity:
docs/performance.md).
"""
from __future__ import annotations

import functools
import os
import typing

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


def bfloat16_engine(backend: str | None = None) -> str:
    """What runs a pretrained musicnn's bfloat16 here: "openvino" on a CPU with bf16 instructions
    and OpenVINO installed (the fast path), else "xla": on GPU/TPU XLA's own bf16, on other CPUs
    XLA:CPU, which rounds the front-end convolutions' inputs and weights to bf16 and convolves
    them in float32 (float32's speed, bfloat16's numbers: a library recorded in bfloat16, or a
    Beam driver's bfloat16, runs on any CPU)."""
    from jaxtag.models import musicnn_openvino
    if _backend(backend) == "cpu" and BF16_CPU_FLAGS & cpu_flags() and musicnn_openvino.available():
        return "openvino"
    return "xla"


def bfloat16_problem(pretrained: bool) -> str | None:
    """Why bfloat16 cannot run, or None where it can (bfloat16_engine: every backend, every CPU).
    pretrained: the model is a pretrained musicnn (the only one with a bfloat16 path)."""
    return None if pretrained else "only the pretrained musicnn models have a bfloat16 path"


def engine_note(precision: str, backend: str | None = None) -> str:
    """What the precision line adds where bfloat16 runs without its fast path on a CPU: "" else."""
    if precision != "bfloat16" or _backend(backend) != "cpu" or bfloat16_engine(backend) == "openvino":
        return ""
    reason = "no OpenVINO" if BF16_CPU_FLAGS & cpu_flags() else "no bf16 instructions"
    return f"; {reason} here: run by XLA, bfloat16's numbers at float32's speed"


def check(requested: str) -> str:
    """`requested` if it is one of PRECISIONS, else ValueError."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    return requested


def resolve(requested: str, pretrained: bool, backend: str | None = None) -> str:
    """"float32" or "bfloat16" for a request of PRECISIONS; ValueError where bfloat16 is asked
    for and cannot run. pretrained: the model is a pretrained musicnn (the only one with a
    bfloat16 path); backend: jax's default backend (looked up when None)."""
    if check(requested) == "float32":
        return "float32"
    if requested == "bfloat16":
        problem = bfloat16_problem(pretrained)
        if problem:
            # (No flag syntax: the beets plugin's precision option says the same.)
            raise ValueError(f"bfloat16 was asked for and cannot run here: {problem}")
        return "bfloat16"
    return auto_choice(pretrained, backend).precision


def _backend(backend: str | None) -> str:
    if backend is None:
        import jax
        backend = jax.default_backend()
    return backend


# -- library tagging's default: auto, chosen once per library ------------------------------------
ENV = "JAXTAG_PRECISION"   # the library entry points' default request, where set (else "auto")

ASKED = "asked for"
RECORDED = "recorded for this library"
CHOSEN = "chosen for this CPU"
TRAINED = "a trained run's only precision"


def default_request(environ=None) -> str:
    """What the library entry points ask for when not told: $JAXTAG_PRECISION where set, else
    "auto"; ValueError naming the variable for a value not of PRECISIONS."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    if value == "":
        return "auto"
    if value not in PRECISIONS:
        raise ValueError(f"{ENV}={value!r}: must be one of {', '.join(PRECISIONS)} (or unset: auto)")
    return value


class Choice(typing.NamedTuple):
    precision: str   # "float32" or "bfloat16"
    why: str         # ASKED (and what it changes), RECORDED, CHOSEN or TRAINED

    @property
    def follows_record(self) -> bool:
        """Whether auto made this choice from the library's record (or its absence): a run made
        with it must not start if another run has recorded another precision since
        (jaxtag.library.run.run_library, LibraryOptions.follows_record)."""
        return not self.why.startswith(ASKED) and self.why != TRAINED   # RECORDED, or chosen for this device


def auto_choice(pretrained: bool, backend: str | None = None) -> Choice:
    """What "auto" picks where nothing is recorded (resolve, and a new library's
    library_precision): bfloat16 on a CPU backend whose CPU has AMX, with OpenVINO, for a pretrained
    model; float32 everywhere else, GPU/TPU included (not measured there)."""
    from jaxtag.models import musicnn_openvino
    backend = _backend(backend)
    if backend != "cpu":
        return Choice("float32", f"chosen for this {backend.upper()}: auto picks bfloat16 on CPUs with AMX only "
                                 "(ask for bfloat16 to run it here)")
    if not pretrained:
        reason = bfloat16_problem(pretrained)
    elif not AUTO_CPU_FLAGS <= cpu_flags():
        reason = "no AMX"
    elif not musicnn_openvino.available():
        reason = "bfloat16 is fast with OpenVINO only (one of jaxtag's dependencies): pip install 'openvino>=2025.0'"
    else:
        return Choice("bfloat16", f"{CHOSEN}: AMX, and OpenVINO installed")
    return Choice("float32", f"{CHOSEN}: {reason}")


def library_precision(requested: str, recorded: str | None, pretrained: bool, backend: str | None = None,
                      library: str = "this library", float32_option: str = "--precision=float32") -> Choice:
    """The precision a library's run tags in (see the module docstring). requested: of PRECISIONS;
    recorded: the library's record (None: a new library, or none recorded yet); pretrained and
    backend: as resolve's. An explicit precision wins; "auto" follows the record, or resolves
    where there is none. (A run of a pretrained model records the precision it ran in:
    jaxtag.library.run.run_library; so an explicit one becomes the record.) A trained run has
    float32 only, whatever the record (the pretrained models' choice) says. A recorded bfloat16
    runs on any machine (bfloat16_engine). ValueError where the precision asked for cannot run
    (bfloat16 for a trained model) or the record is one this jaxtag does not know (library and
    float32_option name the folder and the option for float32 in its message)."""
    check(requested)
    if requested != "auto":
        precision = resolve(requested, pretrained, backend)
        why = ASKED if recorded in (None, precision) or not pretrained else \
            f"{ASKED}; the library's record was {recorded}: this run and later auto runs analyse in {precision}"
        return Choice(precision, why)
    if not pretrained:
        return Choice("float32", TRAINED)
    if recorded is None:
        return auto_choice(pretrained, backend)
    if recorded not in PRECISIONS[1:]:
        raise ValueError(f"{library} records precision {recorded!r}, which this jaxtag does not know: "
                         f"ask for one ({float32_option}, or bfloat16)")
    return Choice(recorded, RECORDED)   # (bfloat16 runs everywhere: bfloat16_engine)
