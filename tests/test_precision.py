"""Reduced-precision tagging: the choice of precision (jaxtag.tagging.precision), musicnn's encode
stage on OpenVINO (jaxtag.models.musicnn_openvino) against the Flax model, and the precision as
part of a tagger's identity (fingerprint, spec, stored scores)."""
import json
import pathlib

import jax
import numpy as np
import pytest

from jaxtag.models import musicnn_openvino
from jaxtag.models.musicnn import Musicnn, compress
from jaxtag.tagging import precision
from jaxtag.tagging.tagger import CombinedTagger, Tagger

REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "musicnn_reference.npz"
needs_openvino = pytest.mark.skipif(not musicnn_openvino.available(), reason="OpenVINO not installed")
needs_bf16_cpu = pytest.mark.skipif(not precision.BF16_CPU_FLAGS & precision.cpu_flags()
                                    or jax.default_backend() != "cpu", reason="no bf16 CPU")


def test_auto_picks_bfloat16_only_on_a_cpu_with_amx(monkeypatch):
    monkeypatch.setattr(musicnn_openvino, "available", lambda: True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert precision.resolve("auto", pretrained=True, backend="cpu") == "float32"
    # Asked for on a CPU without bf16 instructions: XLA's bfloat16 (float32's speed), said so.
    assert precision.resolve("bfloat16", pretrained=True, backend="cpu") == "bfloat16"
    assert precision.bfloat16_engine("cpu") == "xla"
    assert precision.engine_note("bfloat16", "cpu") == ("; no bf16 instructions here: run by XLA, bfloat16's "
                                                        "numbers at float32's speed")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    assert precision.resolve("float32", pretrained=True, backend="cpu") == "float32"
    assert precision.resolve("auto", pretrained=False, backend="cpu") == "float32"   # trained runs
    # GPU/TPU: bfloat16 when asked for (XLA's own), never by auto (not measured there), AMX or not.
    assert precision.resolve("auto", pretrained=True, backend="gpu") == "float32"
    assert precision.resolve("bfloat16", pretrained=True, backend="tpu") == "bfloat16"
    on_gpu = precision.library_precision("auto", None, pretrained=True, backend="gpu")
    assert on_gpu.precision == "float32" and on_gpu.follows_record   # (a run checks the record under its lock)
    assert not precision.library_precision("bfloat16", None, pretrained=True, backend="gpu").follows_record
    assert not precision.library_precision("auto", "bfloat16", pretrained=False, backend="gpu").follows_record
    with pytest.raises(ValueError, match="only the pretrained musicnn"):
        precision.resolve("bfloat16", pretrained=False, backend="gpu")
    with pytest.raises(ValueError, match="one of"):
        precision.resolve("float16", pretrained=True, backend="cpu")
    assert precision.bfloat16_engine("gpu") == "xla" and precision.engine_note("bfloat16", "gpu") == ""
    monkeypatch.setattr(musicnn_openvino, "available", lambda: False)
    assert precision.resolve("auto", pretrained=True, backend="cpu") == "float32"
    assert precision.bfloat16_engine("cpu") == "xla" and "; no OpenVINO here" in precision.engine_note("bfloat16", "cpu")
    monkeypatch.setattr(musicnn_openvino, "available", lambda: True)
    assert precision.resolve("auto", pretrained=True, backend="cpu") == "bfloat16"
    assert precision.bfloat16_engine("cpu") == "openvino" and precision.engine_note("bfloat16", "cpu") == ""
    assert precision.engine_note("float32", "cpu") == ""
    # AVX512-BF16 without AMX: bfloat16 on request, not by default (not measured there).
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert precision.resolve("auto", pretrained=True, backend="cpu") == "float32"
    assert precision.resolve("bfloat16", pretrained=True, backend="cpu") == "bfloat16"


def test_the_precision_flag_parses_and_defaults_to_jaxtag_precision_or_auto():
    from jaxtag import tag
    parser = tag.flags.FLAGS["precision"].parser
    assert tag.flags.FLAGS["precision"].default is None   # then precision.default_request()
    assert parser.parse("float32") == "float32" and parser.parse("bfloat16") == "bfloat16"
    with pytest.raises(ValueError):
        parser.parse("int8")
    assert precision.default_request({}) == precision.default_request({"JAXTAG_PRECISION": ""}) == "auto"
    assert precision.default_request({"JAXTAG_PRECISION": "bfloat16"}) == "bfloat16"
    assert precision.default_request() == "float32"       # (tests/conftest.py: the tests tag in float32)
    with pytest.raises(ValueError, match=r"^JAXTAG_PRECISION='fp16': must be one of auto, float32, bfloat16"):
        precision.default_request({"JAXTAG_PRECISION": "fp16"})
    # The API's default stays float32, whatever the variable says.
    import inspect
    assert inspect.signature(Tagger).parameters["precision"].default == "float32"   # (pretrained: **kwargs)


AMX = frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})
NO_BF16 = frozenset({"avx512f", "avx512_vnni"})


def test_library_precision_is_chosen_once_per_library(monkeypatch):
    """library_precision, the library entry points' decision: auto follows the library's record
    (whatever this CPU would pick), chooses for this CPU where there is none, and fails where a
    recorded bfloat16 cannot run here; an explicit precision wins; a trained run is float32."""
    monkeypatch.setattr(musicnn_openvino, "available", lambda: True)
    choose = lambda requested, recorded, pretrained=True: precision.library_precision(
        requested, recorded, pretrained, backend="cpu", library="/music/out")
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    assert choose("auto", None) == ("bfloat16", "chosen for this CPU: AMX, and OpenVINO installed")
    assert choose("auto", "bfloat16") == ("bfloat16", precision.RECORDED)
    assert choose("auto", "float32") == ("float32", precision.RECORDED)     # not re-decided on an AMX machine
    assert choose("bfloat16", None) == ("bfloat16", precision.ASKED)
    assert choose("float32", "bfloat16") == ("float32", "asked for; the library's record was bfloat16: this run "
                                                        "and later auto runs analyse in float32")
    monkeypatch.setattr(precision, "cpu_flags", lambda: NO_BF16)
    assert choose("auto", None) == ("float32", "chosen for this CPU: no AMX")
    assert choose("auto", "float32") == ("float32", precision.RECORDED)
    # A library recorded in bfloat16 on a machine without OpenVINO's: followed, through XLA.
    assert choose("auto", "bfloat16") == ("bfloat16", precision.RECORDED)
    assert choose("bfloat16", "bfloat16") == ("bfloat16", precision.ASKED)
    assert choose("float32", "bfloat16")[0] == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(musicnn_openvino, "available", lambda: False)
    assert choose("auto", None) == ("float32", "chosen for this CPU: bfloat16 is fast with OpenVINO only (one of "
                                               "jaxtag's dependencies): pip install 'openvino>=2025.0'")
    # A trained run has float32 only: auto gives it float32 whatever the record; bfloat16 fails.
    assert choose("auto", "bfloat16", pretrained=False) == ("float32", precision.TRAINED)
    assert choose("float32", "bfloat16", pretrained=False) == ("float32", precision.ASKED)
    with pytest.raises(ValueError, match="only the pretrained musicnn"):
        choose("bfloat16", None, pretrained=False)
    with pytest.raises(ValueError, match="one of"):
        choose("fp16", None)
    with pytest.raises(ValueError, match="records precision 'int8'"):
        choose("auto", "int8")
    assert choose("float32", "int8") == ("float32", "asked for; the library's record was int8: this run and later "
                                                    "auto runs analyse in float32")


def _stub_tagger(precision_, pretrained=True):
    """What run_library needs of a tagger to record a run (no model)."""
    from types import SimpleNamespace
    spec = {"pretrained": "musicnn-msd"} if pretrained else {"workdir": "/runs/tiny"}
    return SimpleNamespace(fingerprint=f"fp-{precision_}", model_name="musicnn-msd", precision=precision_,
                           spec={**spec, "precision": precision_})


def _run(out, tagger, follows_record=False, body=lambda state: None):
    """A run into `out` that tags nothing: the frame every run goes through (run_library)."""
    from jaxtag.library.log import Log
    from jaxtag.library.run import LibraryOptions, LibraryResult, run_library
    options = LibraryOptions(output_dir=str(out), top_n=0, follows_record=follows_record)
    run_library(tagger, [], options, Log(options), LibraryResult(), body)


def test_a_run_whose_auto_choice_another_run_overtook_tags_nothing(tmp_path, monkeypatch):
    """Auto chooses before the model is made, the run takes the folder's lock after: a run that
    recorded another precision in between (one this run waited for, or another machine's) stops
    this one before its body (LibraryBusy: run again), the record and the lock left as they were;
    the same precision recorded meanwhile, or an explicit request, runs."""
    from jaxtag.library.state import LibraryBusy
    from jaxtag.library.stats import library_stats
    from jaxtag.library.run import choose_precision
    monkeypatch.setattr(musicnn_openvino, "available", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    out, bodies = tmp_path / "out", []
    body = lambda state: bodies.append(state.precision())
    choice = choose_precision(str(out), "auto", pretrained=True)
    assert choice == ("bfloat16", choice.why) and choice.follows_record
    _run(out, _stub_tagger("float32"))                                 # the other run, asking for float32
    with pytest.raises(LibraryBusy, match=f"^{out}: another run recorded precision float32 .* in bfloat16; "
                                          "nothing was tagged: run again, and it follows the library's float32$"):
        _run(out, _stub_tagger(choice.precision), choice.follows_record, body)
    assert bodies == [] and library_stats(str(out))["precision"] == "float32"
    again = choose_precision(str(out), "auto", pretrained=True)       # run again: the lock was released
    assert again == ("float32", precision.RECORDED) and again.follows_record
    _run(out, _stub_tagger(again.precision), again.follows_record, body)
    asked = choose_precision(str(out), "bfloat16", pretrained=True)
    assert not asked.follows_record
    _run(out, _stub_tagger(asked.precision), asked.follows_record, body)
    _run(out, _stub_tagger("float32", pretrained=False), True, body)   # a trained run: not its record
    assert bodies == ["float32", "bfloat16", "bfloat16"] and library_stats(str(out))["precision"] == "bfloat16"


def test_a_librarys_runs_record_its_precision_and_auto_follows_it(tmp_path, monkeypatch, capsys):
    """choose_precision (the CLI's and the beets plugin's) over a library's life, no model: a new
    library's auto is chosen for this CPU and its run records what it ran in; a later auto on a
    machine without bf16 follows it; an explicit float32 run becomes the record, which
    auto then follows on an AMX machine too; a trained run leaves it; `python -m jaxtag.library`
    shows it."""
    from jaxtag.library.__main__ import main
    from jaxtag.library.run import choose_precision
    from jaxtag.library.stats import library_stats
    monkeypatch.setattr(musicnn_openvino, "available", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    out = tmp_path / "out"
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    first = choose_precision(str(out), "auto", pretrained=True)
    assert first.precision == "bfloat16" and first.why.startswith(precision.CHOSEN)
    assert not out.exists()                                   # deciding creates nothing
    _run(out, _stub_tagger(first.precision))
    assert library_stats(str(out))["precision"] == "bfloat16"
    assert choose_precision(str(out), "auto", pretrained=True) == ("bfloat16", precision.RECORDED)

    monkeypatch.setattr(precision, "cpu_flags", lambda: NO_BF16)    # the library on another machine
    assert choose_precision(str(out), "auto", pretrained=True) == ("bfloat16", precision.RECORDED)
    explicit = choose_precision(str(out), "float32", pretrained=True)
    assert explicit.precision == "float32" and explicit.why.startswith(precision.ASKED)
    _run(out, _stub_tagger("float32"))
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)        # and back: float32 it stays
    assert choose_precision(str(out), "auto", pretrained=True) == ("float32", precision.RECORDED)
    _run(out, _stub_tagger("float32", pretrained=False))             # a trained run: the record stays
    _run(out, _stub_tagger("bfloat16"))
    assert choose_precision(str(out), "auto", pretrained=True) == ("bfloat16", precision.RECORDED)
    _run(out, _stub_tagger("float32", pretrained=False))
    assert choose_precision(str(out), "auto", pretrained=True) == ("bfloat16", precision.RECORDED)

    capsys.readouterr()
    assert main([str(out)]) == 0
    assert "Precision (what --precision=auto follows): bfloat16" in capsys.readouterr().out
    assert main([str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bfloat16"


def test_a_library_tagged_before_the_record_follows_its_analyses(tmp_path):
    """A library from before the record (no meta "precision"): its precision is that of its current
    view's stored analyses (arrays from before precisions: float32), so auto does not analyse a
    library already tagged again on an AMX machine; nothing tagged yet: none."""
    from jaxtag.library.state import Analysis, LibraryState
    with LibraryState(str(tmp_path)) as state:
        assert state.precision() is None
        state.set_meta("view", json.dumps({"model": "fp1", "policy": "p"}))
        assert state.precision() is None                             # (its analyses gone)
        state.put_analysis(Analysis("c1", "fp1", "a.npz", 1, ()))
        np.savez(tmp_path / "a.npz", scores=np.zeros(2), precision=np.array("bfloat16"))
        assert state.precision() == "bfloat16"
        np.savez(tmp_path / "a.npz", scores=np.zeros(2))
        assert state.precision() == "float32"
        state.set_precision("bfloat16")                              # a record wins
        assert state.precision() == "bfloat16"


def test_a_bad_jaxtag_precision_is_a_usage_error_naming_it(tmp_path):
    from helpers import processes
    ran = processes.run(["-m", "jaxtag.tag", str(tmp_path), f"--output_dir={tmp_path / 'out'}"],
                        JAXTAG_PRECISION="fp16")
    assert ran.returncode == 1 and ran.stderr.strip().endswith(
        "JAXTAG_PRECISION='fp16': must be one of auto, float32, bfloat16 (or unset: auto)")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow   # two CLI runs of musicnn-msd (this CPU's auto: on one with AMX, OpenVINO's bfloat16)
def test_the_tag_command_chooses_once_per_library_and_says_so(pretrained_cache, tmp_path, capsys):
    """`python -m jaxtag.tag` without --precision (JAXTAG_PRECISION=auto, as unset): a new
    library's precision chosen for this CPU, said on stderr, recorded and shown by `python -m
    jaxtag.library`; then --precision=float32 asked for becomes the library's."""
    from conftest import write_tone
    from helpers import processes
    from jaxtag.library.stats import library_stats
    song, out = write_tone(tmp_path / "song.wav", 4.0), tmp_path / "out"
    command = ["-m", "jaxtag.tag", song, f"--output_dir={out}", "--model=musicnn-msd", "--formats=json",
               "--workers=1", "--top_n=0"]
    chosen = precision.library_precision("auto", None, pretrained=True)
    first = processes.run(command, JAXTAG_PRECISION="auto", JAXTAG_CACHE=pretrained_cache)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"precision: {chosen.precision} ({chosen.why})\n" in first.stderr
    assert library_stats(str(out))["precision"] == chosen.precision
    second = processes.run([*command, "--precision=float32"], JAXTAG_PRECISION="auto", JAXTAG_CACHE=pretrained_cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "precision: float32 (asked for" in second.stderr
    assert library_stats(str(out))["precision"] == "float32"


def _random_musicnn(frames=40):
    """Musicnn's variables, random (their shapes from jax.eval_shape: nothing compiled, unlike
    init), batch-norm scales and statistics away from 1 and 0."""
    net = Musicnn(50)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, frames, 96), np.float32))
    rng = np.random.default_rng(1)

    def value(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return rng.uniform(0.5, 2.0, leaf.shape)
        if "kernel" in name:   # (fan-in scaled, as an initialiser would)
            return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        return rng.normal(0, 0.3, leaf.shape)   # biases, means

    return net, jax.tree_util.tree_map_with_path(lambda p, leaf: np.asarray(value(p, leaf), np.float32), shapes)


@needs_openvino
def test_openvino_float32_graph_is_the_flax_network():
    net, variables = _random_musicnn()
    mel = (np.random.default_rng(2).random((3, 40, 96)) ** 4).astype(np.float32)
    want = np.asarray(jax.jit(lambda v, m: net.apply(v, compress(m), method=net.features))(variables, mel))
    got = musicnn_openvino.OpenVinoEncoder(variables, "float32")(mel)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(musicnn_openvino.OpenVinoEncoder(variables, "float32")(mel[:1]), got[:1],
                               rtol=1e-5, atol=1e-5)   # any number of windows


@needs_openvino
def test_openvino_is_imported_without_its_telemetry():
    """`import openvino` imports its conversion tools, which send a usage event from a forked
    process (openvino_telemetry); jaxtag's import of it does not (a fresh process: this one may
    have imported it already)."""
    import subprocess
    import sys
    code = ("import sys; from jaxtag.models import musicnn_openvino as m; m.openvino_module().Core(); "
            "print(sorted(n for n in sys.modules if n.startswith(('openvino_telemetry', 'openvino.tools.ovc'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=pathlib.Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@needs_openvino
@needs_bf16_cpu
def test_the_precision_is_part_of_a_taggers_identity_single_and_combined(pretrained_cache):
    f32 = Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache, precision="float32")
    bf16 = Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache, precision="bfloat16")
    assert (f32.precision, bf16.precision) == ("float32", "bfloat16")
    assert f32.fingerprint != bf16.fingerprint
    assert bf16.spec["precision"] == "bfloat16" and Tagger.of_spec(bf16.spec).fingerprint == bf16.fingerprint
    assert Tagger.of_spec({"pretrained": "musicnn-msd"}).precision == "float32"   # a spec from before
    # The combined model: both networks in its precision, its fingerprint (a hash of theirs) and
    # spec (what a Beam worker rebuilds) with it; each network's fingerprint is that model's own.
    combined = {p: Tagger.pretrained("musicnn", cache_dir=pretrained_cache, precision=p)
                for p in ("float32", "bfloat16")}
    for p, tagger in combined.items():
        assert tagger.precision == p and [m.precision for m in tagger.members] == [p, p]
        assert tagger.spec["precision"] == p and Tagger.of_spec(tagger.spec).fingerprint == tagger.fingerprint
    assert combined["bfloat16"].members[0].fingerprint == bf16.fingerprint
    assert combined["float32"].members[0].fingerprint == f32.fingerprint
    assert combined["float32"].fingerprint != combined["bfloat16"].fingerprint
    assert set(combined["bfloat16"].part_fingerprints).isdisjoint(combined["float32"].part_fingerprints)
    # auto is resolved once, for every network; networks of two precisions are not one model.
    auto = Tagger.pretrained("musicnn", cache_dir=pretrained_cache, precision="auto")
    assert {m.precision for m in auto.members} == {auto.precision} == {precision.resolve("auto", pretrained=True)}
    with pytest.raises(ValueError, match="one precision"):
        CombinedTagger("musicnn", [f32, combined["bfloat16"].members[1]], combined["float32"].vocabulary)


@pytest.mark.slow   # two models compiled and run on XLA, beside OpenVINO
@needs_openvino
@needs_bf16_cpu
@pytest.mark.parametrize("name", ["musicnn-msd", "musicnn"])
def test_bfloat16_scores_are_within_bounds_of_float32(name, pretrained_cache):
    """On the original's own clip (real music, tests/data/musicnn_reference.npz), a single network
    and the combined model: the bound measured on real music (docs/performance.md: scores within
    0.02, mean difference ~3e-4), with room."""
    with np.load(REFERENCE, allow_pickle=False) as npz:
        clip, sr = npz["clip"].astype(np.float32), int(npz["sr"])
    a, b = (Tagger.pretrained(name, cache_dir=pretrained_cache, precision=p).tag(clip, sr=sr).scores
            for p in ("float32", "bfloat16"))
    assert a.shape == b.shape and np.abs(a - b).max() < 0.05 and np.abs(a - b).mean() < 0.005


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_bfloat16_on_accelerators_is_xlas_own_with_the_front_end_in_bf16(platform):
    """--precision=bfloat16 on GPU/TPU: the Tagger's model (MusicnnTagger with frontend_dtype
    bfloat16, what jaxtag.tagging.tagger builds off CPU) lowers for the platform with the five
    front-end convolutions in bf16 and the mid-end's in float32, as OpenVINO splits it on CPU."""
    from jax import export
    from jaxtag.models.musicnn import MusicnnTagger
    model = MusicnnTagger(num_tags=50, frontend_dtype=jax.numpy.bfloat16)
    mel = jax.ShapeDtypeStruct((1, 2, 187, 96), np.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), mel)
    encode = jax.jit(lambda v, m: model.apply(v, m, method=model.encode))
    text = export.export(encode, platforms=[platform])(variables, mel).mlir_module()
    convolutions = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    kinds = [("bf16" if "xbf16>" in line.rsplit("->", 1)[-1] else "f32") for line in convolutions]
    assert kinds.count("bf16") == 5 and kinds.count("f32") == 3, convolutions


def test_musicnn_with_a_bf16_front_end_stays_near_float32(pretrained_cache):
    """The GPU/TPU bfloat16 network run here on XLA:CPU (which computes bf16 convolutions through
    float32 but rounds their inputs and outputs to bf16, as an accelerator would): the original's
    clip's scores within the bound of the CPU's bfloat16 (test_bfloat16_scores_are_within_bounds)."""
    from jaxtag.models.musicnn import MusicnnTagger
    from jaxtag.pretrained import load_pretrained
    with np.load(REFERENCE, allow_pickle=False) as npz:
        patches = npz["patches"].astype(np.float32)   # the original's log-mel patches [3, 187, 96]
    weights, _ = load_pretrained("musicnn-msd", pretrained_cache)
    variables = {c: {"musicnn": tree} for c, tree in weights.items()}
    mel = (10.0 ** patches - 1.0) / 10000.0   # back to power: MusicnnTagger.encode compresses it again
    scores = {}
    for name, dtype in (("float32", np.float32), ("bfloat16", jax.numpy.bfloat16)):
        model = MusicnnTagger(num_tags=50, frontend_dtype=dtype)
        scores[name] = np.asarray(jax.jit(lambda v, m: model.apply(v, m))(variables, mel[None]))
    difference = np.abs(scores["float32"] - scores["bfloat16"])
    assert 0 < difference.max() < 0.05 and difference.mean() < 0.005


@pytest.mark.slow   # three taggers compiled (13 s)
def test_a_bfloat16_tagger_without_openvinos_bf16_builds_xlas_network(pretrained_cache, monkeypatch):
    """Tagger.pretrained(precision="bfloat16") where jax's backend is a GPU, or on a CPU without
    bf16 instructions (each faked while it is made): no OpenVINO stage, musicnn's front-end in
    bf16; it tags (here on the CPU) within the bounds of float32, bfloat16 is part of its identity
    as with OpenVINO, and (where this CPU has OpenVINO's bf16) it is near OpenVINO's bfloat16."""
    with np.load(REFERENCE, allow_pickle=False) as npz:
        clip, sr = npz["clip"].astype(np.float32), int(npz["sr"])
    f32 = Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache)
    base = f32.tag(clip, sr=sr).scores
    taggers = []
    for fake in ({"default_backend": "gpu"}, {"cpu_flags": NO_BF16}):
        with monkeypatch.context() as m:
            if "default_backend" in fake:
                m.setattr(jax, "default_backend", lambda: fake["default_backend"])
            else:
                m.setattr(precision, "cpu_flags", lambda: fake["cpu_flags"])
            taggers.append(Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache, precision="bfloat16"))
    for tagger in taggers:
        assert tagger.precision == "bfloat16" and tagger._reduced is None
        assert tagger.model.frontend_dtype == jax.numpy.bfloat16 and tagger.spec["precision"] == "bfloat16"
    assert taggers[0].fingerprint == taggers[1].fingerprint != f32.fingerprint
    scores = taggers[1].tag(clip, sr=sr).scores
    difference = np.abs(scores - base)
    assert 0 < difference.max() < 0.05 and difference.mean() < 0.005
    if precision.bfloat16_engine() == "openvino":
        openvino = Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache, precision="bfloat16")
        assert openvino._reduced is not None and openvino.fingerprint == taggers[1].fingerprint
        difference = np.abs(scores - openvino.tag(clip, sr=sr).scores)
        assert difference.max() < 0.05 and difference.mean() < 0.005


def test_stored_analyses_carry_the_precision(tmp_path):
    """The precision a file's analysis ran in is written with its arrays (jaxtag.library.arrays),
    from the tagger's; arrays written before precisions read as float32 (and stay valid)."""
    from types import SimpleNamespace
    from jaxtag.library import arrays
    from jaxtag.library.plan import LibraryOptions
    from jaxtag.library.write import write_file
    from jaxtag.tagging.decisions import threshold_policy
    from jaxtag.tagging.taggram import Taggram
    tags = ["a", "b"]
    scores = np.array([[0.9, 0.1], [0.2, 0.7]], np.float32)
    taggram = Taggram(source="song.wav", duration=6.0, tags=tags, start=np.array([0.0, 3.0]),
                      end=np.array([3.0, 6.0]), scores=scores, policy=threshold_policy(tags, 0.5), model="m")
    tagger = SimpleNamespace(fingerprint="f" * 16, precision="bfloat16", model_name="m")
    source = {"path": str(tmp_path / "song.wav"), "content": "c" * 32, "size": 1, "mtime_ns": 1}
    _, analysis = write_file(LibraryOptions(output_dir=str(tmp_path), formats=()), "song", source["path"], taggram,
                             np.zeros((2, 4), np.float32), source, [], {}, new_scores=True, tagger=tagger)
    stored = arrays.read_arrays(str(tmp_path), analysis.arrays)
    assert stored["precision"] == "bfloat16" and stored["model"] == tagger.fingerprint
    np.testing.assert_array_equal(stored["scores"], scores)
    # Arrays of the version before (no precision array) are float32's, and still stored output.
    path = tmp_path / analysis.arrays
    with np.load(path) as npz:
        before = {k: npz[k] for k in npz.files if k != "precision"}
    np.savez(path, **before)
    assert arrays.read_arrays(str(tmp_path), analysis.arrays)["precision"] == "float32"
    assert arrays.arrays_header(str(path))["model"] == tagger.fingerprint
