"""Writing a file's outputs, in one place for the local run and Beam: its stored arrays first
(when new), every output atomically, and its decisions in the library's database last (a file
without them is redone); and taking a file's outputs away (moved, renamed or gone)."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxtag.errors import DataError
from jaxtag.files import write_atomic
from jaxtag.library import summary
from jaxtag.library.arrays import read_arrays, write_arrays
from jaxtag.library.plan import wanted_outputs
from jaxtag.library.state import Analysis, arrays_file
from jaxtag.tagging.outputs import shown_path, write_outputs
from jaxtag.tagging.taggram import Taggram


class UnreadableAnalysis(DataError):
    """A file's stored analysis is missing or damaged (its audio can be analysed again)."""


def stored_taggram(tagger, output_dir: str, state, content: str, path: str, read=None, scores: bool = True,
                   model: str | None = None):
    """(the stored arrays, the file's stamp now, its taggram with the tagger's policy) of audio
    analysed before, as the library's database knows it (arrays_taggram); model: the analysis's
    model (default the tagger's)."""
    analysis = state.analysis(content, model or tagger.fingerprint)
    return arrays_taggram(tagger, output_dir, None if analysis is None else analysis.arrays, content, path, read,
                          scores)


def arrays_taggram(tagger, output_dir: str, arrays: str | None, content: str, path: str, read=None,
                   scores: bool = True):
    """(the stored arrays, the file's stamp now, its taggram with the tagger's policy) of audio
    analysed before, from its analysis's arrays (their file relative to output_dir; None: none is
    stored), as a Beam worker is given them by the driver. read: arrays.read_arrays or another
    reader of the same; scores=False: its taggram has the stored scores whatever model made them
    (to be replaced)."""
    stored = None if arrays is None else (read or read_arrays)(output_dir, arrays)
    if stored is None:
        where = "is missing" if arrays is None else f"cannot be read ({arrays})"
        raise UnreadableAnalysis(path, f"its stored analysis {where}")
    source = dict(stored["source"], path=os.path.abspath(path), content=content)
    st = os.stat(path)
    source.update(size=st.st_size, mtime_ns=st.st_mtime_ns)  # the audio is the same (plan_file)
    if scores and stored["scores"].shape[1:] != (len(tagger.tags),):
        raise DataError(path, f"its stored scores are of {stored['scores'].shape[1:]} tags, the model has "
                              f"{len(tagger.tags)} (rerun with --force)")
    taggram = Taggram(source=shown_path(path), duration=float(stored["duration"]), tags=list(tagger.tags),
                      start=stored["start"], end=stored["end"], scores=stored["scores"], policy=tagger.policy,
                      model=tagger.model_name, envelope=stored["envelope"] if len(stored["envelope"]) else None,
                      tempo=stored["tempo"], embeddings=stored["embeddings"], sectioning=tagger.sectioning)
    return stored, source, taggram


def write_file(options, name: str, path: str, taggram, embeddings, source: dict, warnings: list[str],
               settings: dict, new_scores: bool, tagger, state=None, output_dir: str | None = None,
               link_from: str | None = None, parts: dict | None = None, write=write_arrays):
    """Every output of one file into output_dir (default options.output_dir), its analysis's
    arrays first when new (new_scores; write: arrays.write_arrays or another writer of the same,
    returning their size). With the library's `state` (the local run): the file's decisions
    forgotten first, its analysis and path recorded once its arrays are written (a run killed
    before its outputs derives them next time), and its decisions recorded last; without it (a
    Beam worker) the driver records them. Returns (its library row, its new Analysis or None).
    link_from: the folder its listening page will be in, if not output_dir's (its audio is linked
    relative to that)."""
    output_dir = output_dir or options.output_dir
    if state is not None:
        state.forget_decision(name)
    if taggram.embeddings is None:   # its sections come from them
        taggram = dataclasses.replace(taggram, embeddings=embeddings)
    analysis = None
    if new_scores:
        relative = arrays_file(source["content"], tagger.fingerprint)
        size = write(output_dir, relative, taggram, embeddings, tagger.fingerprint, source, warnings, parts,
                     precision=tagger.precision)
        analysis = Analysis(source["content"], tagger.fingerprint, relative, size, tuple(parts or ()),
                            tagger.model_name, float(taggram.duration))
        if state is not None:
            record_analysis(state, analysis, name, source, root_of(path, options))
    row = summary.track_summary(taggram, taggram.source, name, warnings)
    if options.embeddings:
        write_embeddings(output_dir, name, taggram, embeddings)
    write_outputs(taggram, path, output_dir, options.formats, name, embed_audio=options.embed_audio, link_from=link_from)
    if state is not None:
        record_decisions(options, state, name, path, source, settings, row)
    return row, analysis


def record_analysis(state, analysis: Analysis, name: str, source: dict, root: str) -> None:
    """A file's new analysis, and its path (once its arrays are written): a run killed before its
    outputs derives them next time."""
    state.put_analysis(analysis)
    state.put_file(name, source, root)


def record_decisions(options, state, name: str, path: str, source: dict, settings: dict, row: dict) -> None:
    """Last: the file's decisions (its outputs are all written)."""
    state.put_decision(**file_decisions(options, name, path, source, settings, row))


def file_decisions(options, name: str, path: str, source: dict, settings: dict, row: dict) -> dict:
    """A file's decisions as the database records them (LibraryState.put_decision's arguments):
    its stamp, the settings and the output files of this run's options, its library row."""
    return {"name": name, "source": source, "settings": settings, "outputs": wanted_outputs(name, options),
            "summary": summary.row_to_json(row), "root": root_of(path, options)}


def kept_parts(tagger, parts: dict, carried: dict | None = None) -> dict | None:
    """What a file's stored arrays keep of its networks' analyses beside the tagger's output
    ({network fingerprint: (scores, embeddings)}, tagger.parts_of): every network's of a combined
    model, and those carried over from the arrays before (None: nothing)."""
    kept = dict(carried or {})
    if len(tagger.part_fingerprints) > 1:
        for fp in tagger.part_fingerprints:
            kept[fp] = {"name": tagger.part_tagger(fp).model_name, "scores": parts[fp][0], "embeddings": parts[fp][1]}
    return kept or None


def root_of(path: str, options) -> str:
    """The folder given that holds `path` (where a run over it looks for files gone)."""
    source = os.path.abspath(path)
    for root in options.roots:
        root = os.path.abspath(root)
        if source.startswith(root.rstrip(os.sep) + os.sep):
            return root
    return os.path.dirname(source)


def remove_outputs(output_dir: str, record: dict) -> None:
    """A file's outputs in OUT, gone with it (moved away or deleted); its analysis stays."""
    for output in record.get("outputs") or []:
        remove(os.path.join(output_dir, output))
    remove(os.path.join(output_dir, f"{record['name']}.embeddings.npz"))


def remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def write_embeddings(output_dir: str, name: str, taggram, embeddings: np.ndarray) -> None:
    def save(f):
        np.savez(f, start=taggram.start, end=taggram.end, embeddings=embeddings)
    write_atomic(os.path.join(output_dir, f"{name}.embeddings.npz"), save)
