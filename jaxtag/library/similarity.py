"""Similar tracks and similar moments, from the embeddings kept with each tagged file's scores.

Vectors (jaxtag.tagging.vectors). A *moment* is one window: its embedding (the model's
penultimate layer), whitened with the model's reference statistics (the mean and covariance of the
calibration set's window embeddings, shipped beside the decision statistics;
scripts/real_music_report.py), unit length. A
*track* is the mean of its moments' whitened vectors, unit length. Similarity is the cosine (a dot
product). Whitening keeps the directions in which real music varies and stops the few dominant
ones (loudness, "music-ness") from deciding every comparison: on held-out real music, a track's
nearest tracks came from its own soundtrack more often than with the plain mean of its window
embeddings and cosine (docs/players.md). A model without reference statistics (a trained run)
uses its embeddings as they are.

The index (OUT/.jaxtag/index/) is derived from the library's stored model outputs and brought up
to date at the end of every tagging run (and by any query, if the store is newer): files tagged
since are added, files redone or gone are removed. Track vectors are always searched exactly (a
library of 100,000 tracks is 80 MB). Moments are searched exactly with faiss's flat index up to
EXACT_LIMIT moments, and above it with faiss's inverted-file index (IVF-Flat, inner product): a
coarse k-means partition of which `nprobe` cells are scanned per query, `nprobe` chosen at each
rebuild as the smallest that finds at least RECALL_TARGET of the exact 10 nearest neighbours of
sampled moments. The index is rebuilt when it switches kind or has grown fourfold since its
partition was trained. It is written under a fresh name, then the state that names it,
atomically: a run killed at any moment leaves the previous index usable, and the next sync
removes the orphan.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import sys
import uuid
import zipfile

import numpy as np

from jaxtag.library import arrays as store
from jaxtag.files import write_atomic
from jaxtag.tagging.taggram import window_at, window_bounds
# The vectors (moments, tracks, whitening) live in jaxtag.tagging.vectors (the sections use them too).
from jaxtag.tagging.vectors import (WHITENING_SHRINK, Whitening, embedding_reference_path,  # noqa: F401
                                    model_whitening, moment_vectors, track_vector, unit, whitening_from)

INDEX = os.path.join(".jaxtag", "index")
STATE = "state.npz"
EXACT_LIMIT = 250_000          # moments searched exactly up to here (about 3,000 four-minute tracks)
RECALL_TARGET = 0.97           # of the exact 10 nearest moments, by the IVF index's nprobe
NPROBES = (4, 8, 16, 32, 64, 128, 256, 512)
WINDOW_BITS = 20               # a moment's id: file number << 20 | window index
NEAREST = 3                    # each track's nearest tracks kept with the index (index.html's similar tracks)
STATE_VERSION = 2              # 2: signatures name the content-addressed arrays (jaxtag.library.state)


# -- the index ----------------------------------------------------------------------------------

@dataclasses.dataclass
class SimilarityIndex:
    """The library's tracks and moments, searchable (see the module docstring)."""
    output_dir: str
    names: list[str]                 # the files' output names, in file-number order
    paths: list[str]                 # their audio paths
    numbers: np.ndarray              # [F] file numbers (moment ids are number << WINDOW_BITS | window)
    signatures: list[str]            # the stored outputs they were made from
    tracks: np.ndarray               # [F, D] unit vectors
    starts: np.ndarray               # [M] moment start times, the files' moments one after another
    ends: np.ndarray
    offsets: np.ndarray              # [F + 1] where each file's moments begin in starts/ends
    moments: object                  # the faiss index of the moment vectors (None until first used: moment_index)
    kind: str                        # "exact" or "ivf"
    nprobe: int = 0
    recall: float = 1.0              # of the exact 10 nearest moments, measured at the last rebuild
    trained_size: int = 0
    model: str = ""                  # the model fingerprint the stored outputs come from
    whitening: Whitening = dataclasses.field(default_factory=Whitening)
    spec: dict = dataclasses.field(default_factory=dict)   # how to make that model again (Tagger.spec)
    file: str = ""                   # the faiss file in OUT/.jaxtag/index
    # [F, NEAREST] each track's nearest tracks (positions, -1: none) and their cosines, best first,
    # kept with the index when its tracks change (None: an index written before they were kept)
    nearest: np.ndarray | None = None
    nearest_scores: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.offsets[-1]) if len(self.offsets) else 0

    @functools.cached_property
    def _positions(self) -> dict[str, int]:   # (an index is never changed in place: _apply makes a new one)
        return {name: i for i, name in enumerate(self.names)}

    @functools.cached_property
    def _by_number(self) -> dict[int, int]:
        return {int(number): i for i, number in enumerate(self.numbers)}

    @functools.cached_property
    def path_of(self) -> dict[str, str]:
        """{output name: audio path}."""
        return dict(zip(self.names, self.paths))

    def position(self, name: str) -> int:
        try:
            return self._positions[name]
        except KeyError:
            raise ValueError(f"{name!r} is not in the index") from None

    def similar_tracks(self, vector: np.ndarray, n: int = 10, exclude: str | None = None) -> list[tuple[str, float]]:
        """The n tracks most similar to a track vector: (name, cosine), best first."""
        scores = self.tracks @ np.asarray(vector, np.float32)
        if exclude is not None and exclude in self._positions:
            scores[self.position(exclude)] = -np.inf
        order = np.argsort(-scores, kind="stable")[:n]
        return [(self.names[i], float(scores[i])) for i in order if np.isfinite(scores[i])]

    def moment_index(self):
        """The faiss index of the moments; an index read from disk (load_index) reads it on first
        use: a run that finds the index up to date never searches it (a library's is a GB)."""
        if self.moments is None:
            self.moments = _faiss().read_index(os.path.join(index_dir(self.output_dir), self.file))
        return self.moments

    def search_moments(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosines [Q, k], ids [Q, k]) of the k nearest moments of each query vector (ids -1 past
        the end)."""
        moments = self.moment_index()
        if self.kind == "ivf":
            moments.nprobe = self.nprobe
        k = max(1, min(k, self.size))
        return moments.search(np.ascontiguousarray(vectors, np.float32), k)

    def similar_moments(self, vectors: np.ndarray, n: int = 10, exclude: str | None = None
                        ) -> list[list[tuple[str, float, float, float]]]:
        """For each query vector [Q, D], the n most similar moments: (name, start, end, cosine),
        best first; the moments of the file `exclude` (the query's own track) passed over."""
        vectors = np.atleast_2d(vectors)
        skip, own = None, 0
        if exclude in self._positions:
            i = self.position(exclude)
            skip, own = int(self.numbers[i]), int(self.offsets[i + 1] - self.offsets[i])
        where = self._by_number
        k = n + min(own, 4 * n)   # its own moments are mostly among the nearest: look further
        while True:
            scores, ids = self.search_moments(vectors, k)
            results = [self._moments_of(row_scores, row_ids, skip, where)[:n] for row_scores, row_ids in zip(scores, ids)]
            if all(len(r) >= min(n, self.size - own) for r in results) or k >= self.size:
                return results
            k = min(self.size, k * 4)

    def _moments_of(self, scores, ids, skip, where) -> list[tuple[str, float, float, float]]:
        out = []
        for score, moment in zip(scores, ids):
            if moment < 0:
                continue
            number, window = int(moment) >> WINDOW_BITS, int(moment) & ((1 << WINDOW_BITS) - 1)
            if number == skip or number not in where:
                continue
            i = where[number]
            at = int(self.offsets[i]) + window
            out.append((self.names[i], float(self.starts[at]), float(self.ends[at]), float(score)))
        return out


def _faiss():
    import logging
    # faiss's loader reports at INFO each CPU build it could not load before the one it uses.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as e:  # a dependency of jaxtag; a broken install says so
        raise ImportError("similarity search needs faiss: pip install faiss-cpu") from e
    return faiss


def _exact_index(dim: int):
    faiss = _faiss()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _ivf_index(vectors: np.ndarray, seed: int = 0):
    faiss = _faiss()
    n, dim = vectors.shape
    nlist = int(np.clip(min(4 * np.sqrt(n), n // 39), 1, 65536))   # faiss wants 39 points a cell
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.cp.seed = seed
    index.train(np.ascontiguousarray(sample))
    return index


def tune_nprobe(index, vectors: np.ndarray, ids: np.ndarray, queries: int = 200, seed: int = 0) -> tuple[int, float]:
    """The smallest nprobe whose recall of the exact 10 nearest moments *of other tracks* (as the
    library's queries ask: a moment's own neighbours in time are no answer) reaches RECALL_TARGET,
    for `queries` sampled moments of the index (`vectors`, added with `ids`); and that recall (the
    largest nprobe's, if none reaches it)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    tracks = ids >> WINDOW_BITS
    own = max(int(np.sum(tracks == tracks[c])) for c in chosen)
    candidates = exact_neighbours(vectors[chosen], vectors, 10 + own)
    truth = [[ids[i] for i in row if tracks[i] != tracks[c]][:10] for row, c in zip(candidates, chosen)]
    recall = 0.0
    for nprobe in NPROBES:
        index.nprobe = nprobe
        _, found = index.search(vectors[chosen], 10 + own)
        found = [[i for i in row if i >= 0 and (i >> WINDOW_BITS) != tracks[c]][:10] for row, c in zip(found, chosen)]
        recall = float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth)]))
        if recall >= RECALL_TARGET or nprobe >= index.nlist:
            return nprobe, recall
    return NPROBES[-1], recall


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """[Q, k] positions of the k most similar vectors (inner product) of each query, best first,
    a block of vectors at a time (bounded memory)."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ vectors[start:start + block].T
        scores = np.concatenate([best_scores, scores], axis=1)
        positions = np.concatenate([best, np.arange(start, start + scores.shape[1] - best.shape[1])[None, :]
                                    .repeat(len(queries), 0)], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best = np.take_along_axis(scores, keep, 1), np.take_along_axis(positions, keep, 1)
    return best


def _signature(output_dir: str, arrays: str) -> str:
    """Stored arrays (relative to OUT) as the index knows them: their file, size and mtime (the
    same audio analysed again has new ones)."""
    st = os.stat(os.path.join(output_dir, arrays))
    return f"{arrays}|{st.st_size}:{st.st_mtime_ns}"


def _arrays(signature: str) -> str:
    return signature.rpartition("|")[0]


def library_entries(output_dir: str, model: str | None = None) -> tuple[dict, str]:
    """({name: (signature, path, model)} of the library's files with decisions and stored arrays
    of one model, that model): `model`, else the one most of the library was tagged with (one
    model's vectors in an index)."""
    from jaxtag.library.state import LibraryState
    state = LibraryState.existing(output_dir)
    if state is None:
        return {}, model or ""
    with state:
        records = state.records(summaries=False)
        found = {}
        for name, record in sorted(records.items()):
            settings = record.get("settings")
            if settings is None:
                continue
            found[name] = (record, settings["model"])
        if model is None:
            counts = collections.Counter(m for _, m in found.values())
            model = counts.most_common(1)[0][0] if counts else ""
        current, analyses = {}, state.analyses_by_content(model)
        for name, (record, m) in found.items():
            analysis = analyses.get(record["source"]["content"]) if m == model else None
            if analysis is None:
                continue
            try:
                current[name] = (_signature(output_dir, analysis.arrays), record["source"]["path"], m)
            except OSError:
                continue  # its arrays are gone: not in the index (the next tag run redoes it)
    return current, model


def index_dir(output_dir: str) -> str:
    return os.path.join(output_dir, INDEX)


def load_index(output_dir: str) -> SimilarityIndex | None:
    """The index as last written, or None where there is none (or it cannot be read)."""
    folder = index_dir(output_dir)
    try:
        with np.load(os.path.join(folder, STATE), allow_pickle=False) as npz:
            state = {k: npz[k] for k in npz.files}
        meta = json.loads(str(state["meta"]))
        if meta.get("version") != STATE_VERSION:
            return None
        # The moments are read when first searched (SimilarityIndex.moment_index); their file is
        # there, whole (its size as written, where the state says it).
        written = meta.get("file_bytes")   # (not in a state written before it was kept)
        if os.path.getsize(os.path.join(folder, meta["file"])) != written and written is not None:
            return None
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    whitening = Whitening(state["whitening_mean"], state["whitening_projection"], meta["whitening"]) \
        if len(state["whitening_mean"]) else Whitening()
    return SimilarityIndex(
        output_dir=output_dir, names=[str(n) for n in state["names"]], paths=[str(p) for p in state["paths"]],
        numbers=state["numbers"], signatures=[str(s) for s in state["signatures"]], tracks=state["tracks"],
        starts=state["starts"], ends=state["ends"], offsets=state["offsets"], moments=None, kind=meta["kind"],
        nprobe=int(meta["nprobe"]), recall=float(meta["recall"]), trained_size=int(meta["trained_size"]),
        model=meta["model"], whitening=whitening, file=meta["file"], spec=meta.get("spec") or {},
        nearest=state.get("nearest"), nearest_scores=state.get("nearest_scores"))


def _write(index: SimilarityIndex) -> None:
    """The moments under a fresh file name, then the state naming it (atomically); old files gone."""
    folder = index_dir(index.output_dir)
    os.makedirs(folder, exist_ok=True)
    new_file = f"moments-{uuid.uuid4().hex[:12]}.faiss"
    faiss = _faiss()
    moments = index.moment_index()
    write_atomic(os.path.join(folder, new_file),
                 lambda f: faiss.write_index(moments, faiss.PyCallbackIOWriter(f.write)))
    index.file = new_file
    meta = {"version": STATE_VERSION, "file": new_file, "file_bytes": os.path.getsize(os.path.join(folder, new_file)),
            "kind": index.kind, "nprobe": index.nprobe,
            "recall": index.recall, "trained_size": index.trained_size, "model": index.model,
            "whitening": index.whitening.source, "whitening_key": index.whitening.key(),
            "whitening_shrink": WHITENING_SHRINK, "spec": index.spec}
    w = index.whitening
    empty = np.zeros(0, np.float64)

    def save(f):
        np.savez(f, meta=np.array(json.dumps(meta)), names=np.array(index.names, dtype=str),
                 paths=np.array(index.paths, dtype=str), numbers=np.asarray(index.numbers, np.int64),
                 signatures=np.array(index.signatures, dtype=str), tracks=np.asarray(index.tracks, np.float32),
                 starts=np.asarray(index.starts, np.float32), ends=np.asarray(index.ends, np.float32),
                 offsets=np.asarray(index.offsets, np.int64),
                 **({} if index.nearest is None else {"nearest": np.asarray(index.nearest, np.int64),
                                                      "nearest_scores": np.asarray(index.nearest_scores, np.float32)}),
                 whitening_mean=empty if w.mean is None else w.mean,
                 whitening_projection=empty.reshape(0, 0) if w.projection is None else w.projection)
    write_atomic(os.path.join(folder, STATE), save)
    for entry in os.listdir(folder):
        if entry.startswith("moments-") and entry != new_file:
            os.remove(os.path.join(folder, entry))


def whitening_of(spec: dict) -> Whitening:
    """The whitening of the model a Tagger.spec names."""
    return model_whitening(spec.get("pretrained"))


def update_index(output_dir: str, spec: dict | None = None, exact_limit: int = EXACT_LIMIT,
                 log=None, model: str | None = None) -> SimilarityIndex:
    """Bring the index up to date with the library's stored outputs (see the module docstring).
    spec: the model that tagged them (Tagger.spec); default: the one the index names. model: its
    fingerprint (the view's; default: the index's, else the one most of the library was tagged with)."""
    index = load_index(output_dir)
    if model is None and index is not None and spec is None:
        model = index.model
    current, model = library_entries(output_dir, model)
    spec = spec if spec is not None else (index.spec if index is not None else {})
    whitening = whitening_of(spec)
    # Rebuilt for another model or another metric (other reference statistics or shrinkage).
    fresh = index is None or index.model != model or index.whitening.key() != whitening.key()
    if not fresh:
        unchanged = {n for n, s in zip(index.names, index.signatures) if current.get(n, (None,))[0] == s}
        added = _readable(output_dir, [n for n in current if n not in unchanged], current, log)
        gone = [n for n in index.names if n not in unchanged]
        if not gone and not added:
            return index
        total = index.size + sum(_window_count(output_dir, current[n][0]) for n in added) - \
            sum(int(index.offsets[index.position(n) + 1] - index.offsets[index.position(n)]) for n in gone)
        kind = "exact" if total <= exact_limit else "ivf"
        fresh = kind != index.kind or (kind == "ivf" and total > 4 * index.trained_size) or not _readable_moments(index)
    if fresh:
        index = _build(output_dir, _readable(output_dir, list(current), current, log), current, whitening, model,
                       exact_limit)
    else:
        index = _apply(index, gone, added, current)
    index.spec = spec
    index.nearest, index.nearest_scores = nearest_tracks(index.tracks, list(range(len(index.names))), NEAREST)
    _write(index)
    if log is not None:
        log(f"similarity index: {len(index.names)} tracks, {index.size} moments "
            f"({'exact search' if index.kind == 'exact' else f'IVF, nprobe {index.nprobe}, recall@10 {index.recall:.3f}'})")
    return index


def _readable_moments(index: SimilarityIndex) -> bool:
    """Whether the index's moments can be read (else it is built again)."""
    try:
        index.moment_index()
        return True
    except RuntimeError:   # faiss's error for a file it cannot read
        return False


def _readable(output_dir: str, names: list[str], current: dict, log=None) -> list[str]:
    """Those of `names` whose stored arrays can be read; the others (a truncated or damaged .npz)
    are left out of the index, with a warning naming them (the next tag run redoes them)."""
    readable = []
    for name in names:
        try:
            _window_count(output_dir, current[name][0])
            readable.append(name)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            current.pop(name, None)
            message = f"similarity index: {name} left out, its stored analysis cannot be read (tag it again)"
            (log or (lambda m: print(f"warning: {m}", file=sys.stderr)))(message)
    return readable


def _window_count(output_dir: str, signature: str) -> int:
    with np.load(os.path.join(output_dir, _arrays(signature)), allow_pickle=False) as npz:
        return int(npz["start"].shape[0])


def _file_vectors(output_dir: str, signature: str, whitening: Whitening):
    with np.load(os.path.join(output_dir, _arrays(signature)), allow_pickle=False) as npz:
        return moment_vectors(npz["embeddings"], whitening), npz["start"], npz["end"]


def build_moment_index(vectors: np.ndarray, ids: np.ndarray, exact_limit: int = EXACT_LIMIT):
    """(faiss index, kind, nprobe, recall@10) of unit moment vectors [M, D] with their ids: exact
    up to exact_limit, else IVF-Flat with nprobe tuned for RECALL_TARGET."""
    dim = vectors.shape[1]
    if len(vectors) <= exact_limit:
        index = _exact_index(dim)
        if len(vectors):
            index.add_with_ids(vectors, ids)
        return index, "exact", 0, 1.0
    index = _ivf_index(vectors)
    index.add_with_ids(vectors, ids)
    nprobe, recall = tune_nprobe(index, vectors, ids)
    return index, "ivf", nprobe, recall


def _build(output_dir: str, names: list[str], current: dict, whitening: Whitening, model: str,
           exact_limit: int) -> SimilarityIndex:
    vectors, starts, ends, tracks, counts = [], [], [], [], []
    for name in names:
        v, s, e = _file_vectors(output_dir, current[name][0], whitening)
        vectors.append(v)
        starts.append(s)
        ends.append(e)
        tracks.append(track_vector(v))
        counts.append(len(v))
    dim = vectors[0].shape[1] if vectors else 1
    all_vectors = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    numbers = np.arange(len(names), dtype=np.int64)
    ids = np.concatenate([(np.int64(k) << WINDOW_BITS) + np.arange(c, dtype=np.int64) for k, c in
                          zip(numbers, counts)]) if counts else np.zeros(0, np.int64)
    moments, kind, nprobe, recall = build_moment_index(all_vectors, ids, exact_limit)
    return SimilarityIndex(
        output_dir=output_dir, names=list(names), paths=[current[n][1] for n in names], numbers=numbers,
        signatures=[current[n][0] for n in names],
        tracks=np.stack(tracks) if tracks else np.zeros((0, dim), np.float32),
        starts=np.concatenate(starts) if starts else np.zeros(0), ends=np.concatenate(ends) if ends else np.zeros(0),
        offsets=np.r_[0, np.cumsum(counts)].astype(np.int64), moments=moments, kind=kind, nprobe=nprobe,
        recall=recall, trained_size=len(all_vectors), model=model, whitening=whitening)


def _apply(index: SimilarityIndex, gone: list[str], added: list[str], current: dict) -> SimilarityIndex:
    """The index with the moments of `gone` files removed and those of `added` files added."""
    faiss = _faiss()
    gone_names = set(gone)
    keep = [i for i, n in enumerate(index.names) if n not in gone_names]
    for name in gone:
        number = int(index.numbers[index.position(name)])
        index.moment_index().remove_ids(faiss.IDSelectorRange(number << WINDOW_BITS, (number + 1) << WINDOW_BITS))
    names = [index.names[i] for i in keep]
    counts = [int(index.offsets[i + 1] - index.offsets[i]) for i in keep]
    starts = [index.starts[index.offsets[i]:index.offsets[i + 1]] for i in keep]
    ends = [index.ends[index.offsets[i]:index.offsets[i + 1]] for i in keep]
    tracks = [index.tracks[i] for i in keep]
    numbers = [int(index.numbers[i]) for i in keep]
    next_number = int(index.numbers.max()) + 1 if len(index.numbers) else 0
    for name in added:
        v, s, e = _file_vectors(index.output_dir, current[name][0], index.whitening)
        index.moment_index().add_with_ids(v, (np.int64(next_number) << WINDOW_BITS) + np.arange(len(v), dtype=np.int64))
        names.append(name)
        counts.append(len(v))
        starts.append(s)
        ends.append(e)
        tracks.append(track_vector(v))
        numbers.append(next_number)
        next_number += 1
    return dataclasses.replace(
        index, names=names, paths=[current[n][1] for n in names], numbers=np.asarray(numbers, np.int64),
        signatures=[current[n][0] for n in names], tracks=np.stack(tracks) if tracks else index.tracks[:0],
        starts=np.concatenate(starts) if starts else index.starts[:0],
        ends=np.concatenate(ends) if ends else index.ends[:0], offsets=np.r_[0, np.cumsum(counts)].astype(np.int64))


# -- queries ----------------------------------------------------------------------------------------

def parse_seconds(text: str) -> float:
    """Seconds from "90", "90.5", "1:30" or "1:02:03" (M:SS, H:MM:SS); ValueError for anything else,
    and for a time that is negative or not a number."""
    parts = text.strip().split(":")
    try:
        if len(parts) > 3 or (len(parts) > 1 and not all(p.replace(".", "", 1).isdigit() for p in parts)):
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give seconds (90, 90.5) or M:SS (1:30)") from None
    if len(values) > 1 and any(v >= 60 for v in values[1:]):
        raise ValueError(f"{text!r} is not a time: minutes and seconds after a colon are below 60")
    seconds = sum(v * 60 ** k for k, v in enumerate(reversed(values)))
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a time: it must be a number of seconds >= 0")
    return seconds


def parse_query(query: str) -> tuple[str, float | None]:
    """(path, seconds or None) of QUERY: a path, or PATH@TIME where the path exists without it (TIME:
    parse_seconds). ValueError names the query whose time cannot be read."""
    if not os.path.exists(query) and "@" in query:
        path, _, at = query.rpartition("@")
        if os.path.exists(path):
            try:
                return path, parse_seconds(at)
            except ValueError as e:
                raise ValueError(f"{query}: {e}") from None
    return query, None


def parse_section(query: str) -> tuple[str, int | None]:
    """(path, section number or None) of QUERY: a path, or PATH#N (N = 1 for the first section, as
    the listening page numbers them) where the path exists without it."""
    if not os.path.exists(query) and "#" in query:
        path, _, number = query.rpartition("#")
        if number.strip().isdigit():
            return path, int(number)
    return query, None


def query_vectors(index, output_dir: str, path: str, workdir: str | None = None):
    """(the query's own output name or None, its moment vectors [W, D], their windows' start and
    end times [W], its duration). A file of the library is read from the store; any other is
    tagged."""
    from jaxtag.tagging.tagger import Tagger
    absolute = os.path.abspath(path)
    name = next((n for n, p in zip(index.names, index.paths) if p == absolute), None)
    if name is not None:
        stored = store.read_arrays(output_dir, _arrays(index.signatures[index.position(name)]))
        if stored is None:
            from jaxtag.errors import DataError
            raise DataError(path, f"its stored analysis in {output_dir} is missing or cannot be read: "
                                  "tag the library again (python -m jaxtag.tag) to redo it")
        return (name, moment_vectors(stored["embeddings"], index.whitening), stored["start"], stored["end"],
                float(stored["duration"]))
    tagger = Tagger.from_workdir(workdir) if workdir else Tagger.of_spec(index.spec)
    if tagger.fingerprint != index.model:
        raise ValueError(f"{workdir or tagger.model_name} is not the model that tagged {output_dir}")
    y, _ = tagger.load(path)
    from jaxtag.data.features import mel_spectrogram
    mel = mel_spectrogram(y, tagger.frontend)
    scores, embeddings = tagger.across_windows(tagger.encode_windows(tagger.windows(mel)), embeddings=True)
    taggram = tagger.taggram(path, len(y) / tagger.frontend.sample_rate, mel.shape[0], scores)
    return None, moment_vectors(embeddings, index.whitening), taggram.start, taggram.end, taggram.duration


def find_similar(output_dir: str, query: str, n: int = 10, workdir: str | None = None) -> dict:
    """{"query", "tracks": [{"path", "name", "score"}], "moments": [{"path", "name", "start", "end",
    "score"}]} (and for a section, "section": {"number", "start", "end"}): the library's tracks and
    moments most like the query: a file, FILE@SECONDS (its moment then), FILE#N (its section N,
    jaxtag.tagging.sections: the mean of its moments) (see the module docstring)."""
    from jaxtag.tagging import sections
    # The query is read and checked first: a bad one changes nothing.
    path, number = parse_section(query)
    path, seconds = parse_query(path) if number is None else (path, None)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    index = update_index(output_dir)   # the one written, if the library has not changed since
    name, vectors, starts, ends, duration = query_vectors(index, output_dir, path, workdir)
    if seconds is not None and seconds > duration:
        raise ValueError(f"{query}: past the end of the file ({duration:.1f} s long)")
    found = {}
    if number is not None:
        first, stop = sections.section_windows(vectors, starts, duration, number)
        bounds = window_bounds(starts, ends, duration)
        found["section"] = {"number": number, "start": round(float(bounds[first]), 2),
                            "end": round(float(bounds[stop]), 2)}
        track = track_vector(vectors[first:stop])
        moment_query = track[None, :]
    elif seconds is not None:
        k = window_at(starts, ends, seconds)
        moment_query, track = vectors[k:k + 1], track_vector(vectors[k:k + 1])
    else:
        moment_query, track = vectors, track_vector(vectors)
    tracks = index.similar_tracks(track, n, exclude=name)
    if seconds is None and number is None:  # a whole track: the moments most like its moments, best first
        per_window = index.similar_moments(moment_query, n, exclude=name)
        moments = sorted({(m[0], m[1]): m for row in per_window for m in row}.values(), key=lambda m: -m[3])[:n]
    else:
        moments = index.similar_moments(moment_query, n, exclude=name)[0]
    path_of = index.path_of
    from jaxtag.tagging.outputs import shown_path
    return {"query": shown_path(query), **found,
            "tracks": [{"path": shown_path(path_of[t]), "name": t, "score": round(s, 4)} for t, s in tracks],
            "moments": [{"path": shown_path(path_of[t]), "name": t, "start": round(a, 2), "end": round(b, 2),
                         "score": round(s, 4)} for t, a, b, s in moments]}


# -- the lists on the library's pages --------------------------------------------------------------

LISTS = "lists.json"            # in the index folder: the index size at the last full refresh
SIMILAR_TRACKS, SIMILAR_MOMENTS = 10, 5
REFRESH_ALL_BELOW = 300         # files: below this, every page's lists are remade each run
REFRESH_GROWTH = 0.1            # above it, all are remade when the moments changed by a tenth


def page_href(from_name: str, to_name: str, fragment: str = "") -> str:
    """The address of `to_name`'s listening page from `from_name`'s (both output names)."""
    import urllib.parse
    relative = os.path.relpath(to_name + ".html", os.path.dirname(from_name) or ".").replace(os.sep, "/")
    return "/".join(urllib.parse.quote(part) for part in relative.split("/")) + fragment


def similar_lists(index: SimilarityIndex, name: str, n_tracks: int = SIMILAR_TRACKS,
                  n_moments: int = SIMILAR_MOMENTS) -> dict:
    """A file's similar tracks and, for each of its windows, its most similar moments in other
    tracks, with the addresses of their pages (NAME.similar.js)."""
    position = index.position(name)
    vectors, _, _ = _file_vectors(index.output_dir, index.signatures[position], index.whitening)
    tracks = index.similar_tracks(index.tracks[position], n_tracks, exclude=name)
    moments = index.similar_moments(vectors, n_moments, exclude=name)
    path_of = index.path_of
    from jaxtag.tagging.outputs import shown_path
    return {"tracks": [{"name": other, "path": shown_path(path_of[other]), "score": round(score, 4),
                        "href": page_href(name, other)} for other, score in tracks],
            "moments": [[{"name": other, "start": round(start, 2), "end": round(end, 2), "score": round(score, 4),
                          "href": page_href(name, other, f"#t={start:.2f}")} for other, start, end, score in row]
                        for row in moments]}


def write_similar_lists(index: SimilarityIndex, names: list[str] | None = None) -> int:
    """NAME.similar.js beside each listening page (a script the page loads: it stays a static
    file that opens from disk) for `names`, or for every file when the library is small or its
    moments changed by a tenth since the last full refresh. Returns how many were written."""
    from jaxtag.tagging.html_page import _json_for_script
    lists_path = os.path.join(index_dir(index.output_dir), LISTS)
    try:
        with open(lists_path, encoding="utf-8") as f:
            last = json.load(f)["moments"]
    except (OSError, ValueError, KeyError):
        last = None
    everything = names is None or len(index.names) < REFRESH_ALL_BELOW or last is None or \
        abs(index.size - last) > REFRESH_GROWTH * max(last, 1)
    chosen = index.names if everything else [n for n in names if n in index.names]
    for name in chosen:
        data = _json_for_script(similar_lists(index, name))
        write_atomic(os.path.join(index.output_dir, f"{name}.similar.js"), f"window.JAXTAG_SIMILAR = {data};\n")
    if everything:
        write_atomic(lists_path, json.dumps({"moments": index.size}))
    return len(chosen)


def similar_tracks_of_all(index: SimilarityIndex, n: int = 3, block: int = 4096,
                          names: list[str] | None = None) -> dict[str, list[tuple[str, float]]]:
    """Each file's n most similar tracks (index.html's rows), for `names` (default: every file of
    the index), a block of tracks at a time."""
    positions = [index._positions[m] for m in names if m in index._positions] if names is not None \
        else list(range(len(index.names)))
    if index.nearest is not None and n <= index.nearest.shape[1]:   # kept with the index: its tracks are these
        top, scores = index.nearest[positions, :n], index.nearest_scores[positions, :n]
    else:
        top, scores = nearest_tracks(index.tracks, positions, n, block)
    return {index.names[i]: [(index.names[j], float(score)) for j, score in zip(row_top, row_scores) if j >= 0]
            for i, row_top, row_scores in zip(positions, top.tolist(), scores)}


def nearest_tracks(tracks: np.ndarray, positions: list[int], n: int,
                   block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """([P, n] the positions of the n tracks most similar to each track of `positions`, best first
    (ties by position; -1: none), [P, n] their cosines), a block of tracks at a time."""
    total, n = len(tracks), max(n, 0)
    top, cosines = np.full((len(positions), n), -1, np.int64), np.full((len(positions), n), -np.inf, np.float32)
    for start in range(0, len(positions), block):
        rows = positions[start:start + block]
        scores = tracks[rows] @ tracks.T
        for row, i in enumerate(rows):
            scores[row, i] = -np.inf
            order = [j for j in _top(scores[row], n, total) if np.isfinite(scores[row, j])]
            top[start + row, :len(order)] = order
            cosines[start + row, :len(order)] = scores[row, order]
    return top, cosines


def _top(scores: np.ndarray, n: int, total: int) -> np.ndarray:
    """The positions of the n highest scores, highest first, ties by position: a stable sort's
    first n (np.argsort(-scores, kind="stable")[:n]), sorting only the scores at least as high as
    the n-th highest (a library's row has tens of thousands)."""
    if 0 < n < total:
        candidates = np.flatnonzero(scores >= np.partition(scores, total - n)[total - n])
        if len(candidates) >= n:   # (fewer: NaNs, which partition puts last and argsort first; the whole row)
            return candidates[np.argsort(-scores[candidates], kind="stable")][:n]
    return np.argsort(-scores, kind="stable")[:n]
