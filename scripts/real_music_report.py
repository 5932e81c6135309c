"""Real music from Debian's archive: the pretrained models' reference statistics, and how their
decisions cover music they were not calibrated on.

    python scripts/real_music_report.py calibrate   # fetch the calibration set, tag it, write
                                                    # jaxtag/tagging/calibration/<model>.json
    python scripts/real_music_report.py report      # fetch the report set, tag it, print coverage
                                                    # before (fixed 0.5) and after (calibrated)
    python scripts/real_music_report.py check       # the shipped statistics follow from their
                                                    # per-track summaries, and (where the audio is
                                                    # cached) those from the audio
    python scripts/real_music_report.py similarity  # do a track's nearest tracks come from its own
                                                    # soundtrack? jaxtag's vectors vs the plain mean
    python scripts/real_music_report.py levels      # how the calibrated rule's levels were chosen:
                                                    # coverage on each calibration collection with
                                                    # statistics from the others
    python scripts/real_music_report.py precision   # how often the decisions cannot be right, by
                                                    # the weak labels (scripts/weak_labels.py)
    python scripts/real_music_report.py sections --package=flare-game \
        --cache_dir ~/jaxtag_data/real_music_sections  # sections on one soundtrack's tracks joined
                                                    # in pairs at known seconds: joins found,
                                                    # boundaries a minute on the tracks as they are

--models=musicnn (the combined model: jaxtag.tagging.vocabulary) runs no model of its own: its
outputs on a set are its members' stored outputs (musicnn-msd's and musicnn-mtt's, tagged once by
this script), merged, so `calibrate --models=musicnn` makes jaxtag/tagging/calibration/musicnn.json
and musicnn.embeddings.npz from the members' analyses of the calibration set.

Two sets of freely licensed game soundtracks and songs, packaged in Debian's main archive (so
DFSG-free; each package's licence is in its /usr/share/doc/<package>/copyright, and the
collections below name it): CALIBRATION (the reference statistics are made from it) and REPORT
(music that no decision threshold was tuned on; coverage is reported on it). Packages are fetched
with `apt-get download` into --cache_dir (never into the repository), unpacked with Python's own
ar/tar readers, and their music selected: files of at least MIN_SECONDS under the music folders
named below (sound effects and speech are passed over); Frets on Fire songs come as stems,
mixed here (song + guitar [+ rhythm]). Only statistics are shipped, never audio.
"""
from __future__ import annotations

import collections
import dataclasses
import fnmatch
import glob
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

import weak_labels  # noqa: E402
from jaxtag.files import sha256_file, write_atomic  # noqa: E402

MIN_SECONDS = 30.0
MODELS = ("musicnn-msd", "musicnn-mtt")
# The models' precision here: the shipped reference statistics are float32's, whatever precision a
# user tags in (jaxtag.tagging.precision; bfloat16's scores differ by up to ~0.02).
PRECISION = "float32"
AUDIO = (".ogg", ".opus", ".mp3", ".flac", ".wav")


@dataclasses.dataclass(frozen=True)
class Collection:
    package: str
    music: tuple[str, ...]          # globs of music files, relative to the unpacked package
    license: str                    # as the package's copyright file states it for the music
    archive: str = ""               # music inside this zip (a game's .pk3) instead
    stems: bool = False             # each folder matched is one song, its .ogg stems mixed


CALIBRATION = (
    Collection("asc-music", ("usr/share/games/asc/music/*",), "GPL-2+"),
    Collection("colobot-common-sounds", ("usr/share/games/colobot/music/*",), "GPL-3+"),
    Collection("drascula-music", ("usr/share/scummvm/drascula/audio/*",), "Drascula licence (free, BSD-like)"),
    Collection("fretsonfire-songs-muldjord", ("usr/share/games/fretsonfire/data/songs/*/*/",), "CC-BY-SA-3.0",
               stems=True),
    Collection("fretsonfire-songs-sectoid", ("usr/share/games/fretsonfire/data/songs/*/*/",), "GPL", stems=True),
    Collection("hyperrogue-music", ("usr/share/hyperrogue/music/*",), "GPL-2+"),
    Collection("lincity-ng-data", ("usr/share/games/lincity-ng/music/default/*",), "GPL-2+"),
    Collection("nexuiz-music", ("sound/cdtracks/*",), "GPL-2+", archive="usr/share/games/nexuiz/data/music.pk3"),
    Collection("openarena-088-data", ("music/*",), "GPL-2+",
               archive="usr/share/games/openarena/baseoa/pak6-patch088.pk3"),
    Collection("planetblupi-music-ogg", ("usr/share/planetblupi/music/*",), "GPL-3+"),
    Collection("pushover-data", ("usr/share/pushover/themes/*",), "GPL-3+"),
    Collection("singularity-music", ("usr/share/games/singularity/music/*", "usr/share/games/singularity/music/*/*"),
               "CC-BY-SA-3.0"),
    Collection("ufoai-music", ("music/*",), "GPL-2+, CC-BY-3.0, CC-BY-SA-3.0 (per track)",
               archive="usr/share/games/ufoai/base/0music.pk3"),
    Collection("warzone2100-music", ("usr/share/games/warzone2100/music/*", "usr/share/games/warzone2100/music/*/*/*"),
               "CC-BY-SA-3.0 or GPL-2+"),
    Collection("wesnoth-1.16-music", ("usr/share/games/wesnoth/1.16/data/core/music/*",), "GPL-2+"),
)

REPORT = (
    Collection("extremetuxracer-data", ("usr/share/games/etr/music/*",), "GPL-2+"),
    Collection("flare-game", ("usr/share/games/flare/mods/fantasycore/music/*",), "CC-BY-SA-3.0+"),
    Collection("freedroidrpg-data", ("usr/share/freedroidrpg/data/sound/music/*",), "GPL-2+"),
    Collection("hedgewars-data", ("usr/share/games/hedgewars/Data/Music/*",), "GPL-2 and others (per file)"),
    Collection("lugaru-data", ("usr/share/games/lugaru/Sounds/Music*",), "CC-BY-SA-3.0/4.0 and GPL-2+ (per file)"),
    Collection("megaglest-data", ("usr/share/games/megaglest/data/core/menu/music/*",
                                  "usr/share/games/megaglest/techs/megapack/factions/*/music/*"), "CC-BY-SA-3.0"),
    Collection("openclonk-data", ("usr/share/games/openclonk/Music.ocg/*",), "CC-BY 3.0 and others (per file)"),
    Collection("scorched3d-data", ("usr/share/games/scorched3d/data/globalmods/none/data/music/*",),
               "GPL-2+ and CC-BY-SA-3 (per file)"),
    Collection("supertux-data", ("usr/share/games/supertux2/music/*/*",), "GPL-2+ and CC-BY-SA (per file)"),
    Collection("xmoto-data", ("usr/share/games/xmoto/Textures/Musics/*",), "GPL-2+"),
)
# The weak-label set (scripts/weak_labels.py): the report set and two packages in no other list.
WEAK = REPORT + (
    Collection("widelands-data", ("usr/share/games/widelands/data/music/*",), "GPL-2+"),
    Collection("warmux-data", ("usr/share/games/warmux/music/*/*",), "GPL-2+ (music: per file, free)"),
)
SETS = {"calibration": CALIBRATION, "report": REPORT, "weak": WEAK}


# -- fetching and unpacking ---------------------------------------------------------------------

def fetch(package: str, cache_dir: str) -> str:
    """The package's .deb in cache_dir/debs, downloaded with apt-get when absent."""
    folder = os.path.join(cache_dir, "debs")
    os.makedirs(folder, exist_ok=True)
    found = sorted(glob.glob(os.path.join(folder, f"{package}_*.deb")))
    if not found:
        try:
            subprocess.run(["apt-get", "download", package], cwd=folder, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise SystemExit("apt-get is needed to fetch the music (a Debian or Ubuntu machine)") from None
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"apt-get download {package} failed: {e.stderr.strip()[-500:]} "
                             "(run `apt-get update` first?)") from None
        found = sorted(glob.glob(os.path.join(folder, f"{package}_*.deb")))
    return found[-1]


def deb_version(deb: str) -> str:
    return os.path.basename(deb).split("_")[1].replace("%3a", ":")


def _ar_members(deb: str):
    """(name, bytes) of a Debian package's ar members."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise SystemExit(f"{deb}: not a Debian package")
        while True:
            header = f.read(60)
            if len(header) < 60:
                return
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
            data = f.read(size)
            if size % 2:
                f.read(1)
            yield name, data


def _inside(member, path):
    """tarfile's "data" filter, passing over links that point out of the package (documentation
    links into other packages: not needed here)."""
    try:
        return tarfile.data_filter(member, path)
    except tarfile.FilterError:
        return None


def unpack(deb: str, cache_dir: str) -> str:
    """The package's files under cache_dir/unpacked/<package> (unpacked once)."""
    package = os.path.basename(deb).split("_")[0]
    target = os.path.join(cache_dir, "unpacked", package)
    done = os.path.join(target, ".unpacked-" + os.path.basename(deb))
    if os.path.exists(done):
        return target
    for name, data in _ar_members(deb):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise SystemExit(f"{deb}: zstd-compressed packages need `dpkg-deb -x`; unpack it into {target}")
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(target, filter=_inside)
            open(done, "w").close()
            return target
    raise SystemExit(f"{deb}: no data.tar member")


def _duration(path: str) -> float:
    import soundfile as sf
    try:
        return sf.info(path).duration
    except Exception:  # noqa: BLE001 - not audio libsndfile reads: passed over
        return 0.0


def collect(collection: Collection, cache_dir: str) -> list[dict]:
    """The collection's music as files under cache_dir/music/<package>: [{"file", "path",
    "source_sha256"}] sorted by file (the name inside the package, "/" replaced by "__")."""
    deb = fetch(collection.package, cache_dir)
    root = unpack(deb, cache_dir)
    out_dir = os.path.join(cache_dir, "music", collection.package)
    os.makedirs(out_dir, exist_ok=True)
    found = []
    if collection.archive:
        with zipfile.ZipFile(os.path.join(root, collection.archive)) as z:
            for member in sorted(z.namelist()):
                if any(fnmatch.fnmatch(member, g) for g in collection.music) and member.lower().endswith(AUDIO):
                    path = os.path.join(out_dir, member.replace("/", "__"))
                    if not os.path.exists(path):
                        write_atomic(path, z.read(member), durable=False)
                    found.append((member, path, sha256_file(path)))
    elif collection.stems:
        for folder in sorted({d for g in collection.music for d in glob.glob(os.path.join(root, g))}):
            stems = sorted(glob.glob(os.path.join(folder, "*.ogg")))
            member = os.path.relpath(folder, root).rstrip("/")
            path = os.path.join(out_dir, member.replace("/", "__").replace(" ", "_") + ".flac")
            if not os.path.exists(path):
                _mix(stems, path)
            digest = hashlib.sha256("".join(sha256_file(s) for s in stems).encode()).hexdigest()
            found.append((member, path, digest))
    else:
        for g in collection.music:
            for source in sorted(glob.glob(os.path.join(root, g))):
                if os.path.isfile(source) and source.lower().endswith(AUDIO):
                    member = os.path.relpath(source, root)
                    path = os.path.join(out_dir, member.replace("/", "__"))
                    if not os.path.lexists(path):
                        os.symlink(source, path)
                    found.append((member, path, sha256_file(source)))
    tracks = [{"file": m, "path": p, "source_sha256": h} for m, p, h in found if _duration(p) >= MIN_SECONDS]
    return sorted({t["file"]: t for t in tracks}.values(), key=lambda t: t["file"])


def _mix(stems: list[str], path: str) -> None:
    """A song from its stems: their sum, scaled down only where it would clip, as FLAC."""
    import numpy as np
    import soundfile as sf
    parts = [sf.read(s, dtype="float32", always_2d=True) for s in stems]
    sr = parts[0][1]
    if any(rate != sr for _, rate in parts):
        raise SystemExit(f"{stems}: stems of different sample rates")
    mix = np.zeros((max(len(y) for y, _ in parts), 2), np.float32)
    for y, _ in parts:
        mix[:len(y)] += y[:, :2] if y.shape[1] > 1 else y
    mix /= max(1.0, float(np.abs(mix).max()))
    write_atomic(path, lambda f: sf.write(f, mix, sr, format="FLAC"), durable=False)


# -- tagging ------------------------------------------------------------------------------------

def tag_set(name: str, model: str, cache_dir: str, workers: int = 0, read_only: bool = False
            ) -> tuple[list, list[dict]]:
    """Every track of a set tagged with a model (resumable: the library's own store), as
    (collections with their package version and deb hash, tracks with collection, file,
    source_sha256, seconds and the stored taggram). read_only: where the model's output for every
    track is stored, it is read as it is (no run over the set's outputs, which another process may
    be deriving)."""
    from jaxtag.library import run as library
    from jaxtag.tagging.tagger import COMBINED, Tagger
    if model in COMBINED:
        return combined_set(name, model, cache_dir, workers)
    infos, tracks = [], []
    for c in SETS[name]:
        found = collect(c, cache_dir)
        deb = fetch(c.package, cache_dir)
        infos.append({"package": c.package, "version": deb_version(deb), "deb_sha256": sha256_file(deb),
                      "license": c.license, "tracks": len(found)})
        tracks += [dict(t, collection=c.package) for t in found]
    tagger = Tagger.pretrained(model, precision=PRECISION)
    # Another precision's run keeps its own outputs (the float32 ones are the shipped statistics').
    out = os.path.join(cache_dir, "tagged", name, model + ("" if PRECISION == "float32" else f"-{PRECISION}"))
    files = [t["path"] for t in tracks]
    from jaxtag.library.views import stored_taggrams
    found = stored_taggrams(tagger, out, files) if read_only else {}
    if len(found) < len(files):
        result = library.tag_library(tagger, files, library.LibraryOptions(output_dir=out, formats=("json",), top_n=0,
                                                                             workers=workers))
        if result.failed:
            raise SystemExit(f"{len(result.failed)} file(s) could not be tagged: {result.failed}")
        found = stored_taggrams(tagger, out, files)
    for t in tracks:
        stored, t["taggram"] = found[t["path"]]
        t["embeddings"] = stored["embeddings"]
        t["seconds"] = round(float(t["taggram"].duration), 3)
    seconds = collections.Counter()
    for t in tracks:
        seconds[t["collection"]] += t["seconds"]
    for info in infos:
        info["hours"] = round(seconds[info["package"]] / 3600, 3)
    return infos, tracks


def combined_set(name: str, model: str, cache_dir: str, workers: int = 0) -> tuple[list, list[dict]]:
    """A combined model's outputs on a set, as tag_set gives them, from its members' (each member's
    tag_set: their stored outputs, so no model runs where the members tagged the set before): per
    track the merged scores and the members' embeddings side by side (CombinedTagger.assemble)."""
    import dataclasses
    from jaxtag.tagging.tagger import Tagger
    tagger = Tagger.pretrained(model, precision=PRECISION)
    runs = [tag_set(name, m.model_name, cache_dir, workers, read_only=True) for m in tagger.members]
    infos, tracks = runs[0]
    out = []
    for k, t in enumerate(tracks):
        same = [member_tracks[k] for _, member_tracks in runs]
        if any(s["path"] != t["path"] for s in same):
            raise SystemExit(f"the members' outputs on the {name} set are of other tracks")
        scores, embeddings = tagger.assemble({m.fingerprint: (s["taggram"].scores, s["embeddings"])
                                              for m, s in zip(tagger.members, same)})
        taggram = dataclasses.replace(t["taggram"], tags=list(tagger.tags), scores=scores, policy=tagger.policy,
                                      model=tagger.model_name)
        out.append(dict(t, taggram=taggram, embeddings=embeddings))
    return infos, out


# -- calibrate, check, report -------------------------------------------------------------------

def reference_of(model: str, infos: list, tracks: list[dict], tags: list[str]) -> dict:
    """The shipped reference statistics of a model (see jaxtag.tagging.decisions)."""
    from jaxtag.tagging import decisions
    summaries = [{"collection": t["collection"], "file": t["file"], "source_sha256": t["source_sha256"],
                  "seconds": t["seconds"], **decisions.summarise_track(t["taggram"].scores)} for t in tracks]
    from jaxtag.tagging.tagger import COMBINED
    hours = sum(t["seconds"] for t in tracks) / 3600
    combined = {"made_from": f"the stored outputs of {' and '.join(COMBINED[model])} on the same tracks, merged "
                             "(jaxtag.tagging.vocabulary: a merged tag's probability is the max of its members')",
                "made_by": f"python scripts/real_music_report.py calibrate --models={model}"} if model in COMBINED else {}
    return {"model": model, "tags": list(tags),
            "description": f"{len(tracks)} tracks ({hours:.1f} h) of {len(infos)} freely licensed soundtracks and "
                           "song collections from Debian's archive",
            "made_by": "python scripts/real_music_report.py calibrate",
            "make_up": make_up(tracks),
            "windows": "the model's own 3-s windows, end to end", "collections": infos, "tracks": summaries,
            "statistics": decisions.reference_statistics(summaries), **combined}


def make_up(tracks: list[dict]) -> dict:
    """Hours of music per kind, by the weak labels (scripts/weak_labels.py): per style (a
    collection of no named style counts as "soundtrack, style unnamed") and sung or instrumental."""
    labels = weak_labels.labels_by_package()
    hours = collections.Counter(), collections.Counter()
    for t in tracks:
        label = labels[t["collection"]]
        for style in label.styles or ("soundtrack, style unnamed",):
            hours[0][style] += t["seconds"] / 3600
        hours[1][label.vocals] += t["seconds"] / 3600
    r = lambda c: {k: round(v, 2) for k, v in sorted(c.items())}
    return {"styles": r(hours[0]), "vocals": r(hours[1])}


def embedding_statistics(tracks: list[dict]) -> dict:
    """The mean and covariance of the tracks' window embeddings (the whitening of similarity
    search: jaxtag.library.similarity)."""
    import numpy as np
    windows = np.concatenate([t["embeddings"] for t in tracks]).astype(np.float64)
    return {"mean": windows.mean(axis=0), "covariance": np.cov(windows, rowvar=False, bias=True),
            "windows": np.int64(len(windows))}


def write_embedding_statistics(model: str, statistics: dict) -> str:
    import numpy as np
    from jaxtag.library.similarity import embedding_reference_path
    path = embedding_reference_path(model)
    write_atomic(path, lambda f: np.savez_compressed(f, mean=statistics["mean"].astype(np.float32),
                                                     covariance=statistics["covariance"].astype(np.float32),
                                                     windows=statistics["windows"]))
    return path


def write_reference(reference: dict) -> str:
    """One line per track, so that a change shows as the tracks that changed."""
    from jaxtag.tagging import decisions
    path = decisions.reference_path(reference["model"])
    head = {k: v for k, v in reference.items() if k not in ("tracks", "statistics")}
    lines = [json.dumps(head)[:-1] + ', "statistics": ' + json.dumps(reference["statistics"]) + ', "tracks": [']
    lines += [json.dumps(t) + ("," if i < len(reference["tracks"]) - 1 else "") for i, t in enumerate(reference["tracks"])]
    write_atomic(path, "\n".join(lines) + "\n]}\n")
    return path


def compare_summaries(shipped: list[dict], rebuilt: list[dict], atol: float = 2e-3) -> list[str]:
    """What differs between shipped and rebuilt per-track summaries (log-odds within atol: other
    CPUs round differently)."""
    import numpy as np
    problems = []
    by_key = {(t["collection"], t["file"]): t for t in shipped}
    for t in rebuilt:
        old = by_key.get((t["collection"], t["file"]))
        if old is None:
            problems.append(f"{t['collection']}/{t['file']}: not in the shipped statistics")
            continue
        if old["source_sha256"] != t["source_sha256"] or old["windows"] != t["windows"]:
            problems.append(f"{t['collection']}/{t['file']}: other audio ({old['windows']} vs {t['windows']} windows)")
            continue
        for key in ("logit_mean", "logit_sq_mean"):
            gap = float(np.max(np.abs(np.subtract(old[key], t[key]))))
            scale = 1.0 if key == "logit_mean" else 1.0 + float(np.max(np.abs(old[key])))
            if gap > atol * scale:
                problems.append(f"{t['collection']}/{t['file']}: {key} differs by {gap:.2e}")
    return problems


def coverage(tracks: list[dict], policy) -> dict:
    """Coverage of a set under a policy: tracks with >= 1 and >= 2 tags and >= 1 mood, windows with
    >= 1 tag on, tags per track and per window, how the first moods spread, and each collection's
    commonest track tags."""
    n = len(tracks)
    tags_per_track, windows, windows_on, on_per_window = [], 0, 0, 0.0
    first_moods, per_collection, one_mood = collections.Counter(), collections.defaultdict(collections.Counter), 0
    for t in tracks:
        d = t["taggram"].with_policy(policy).decisions()
        tags_per_track.append(len(d.track_tags))
        windows += len(d.active)
        windows_on += int(d.active.any(axis=1).sum())
        on_per_window += float(d.active.sum())
        one_mood += bool(d.moods)
        if d.moods:
            first_moods[d.moods[0]] += 1
        per_collection[t["collection"]].update(d.track_tags)
    top_mood = first_moods.most_common(1)[0][1] / max(1, sum(first_moods.values())) if first_moods else 0.0
    return {"tracks": n, "with_a_tag": sum(k >= 1 for k in tags_per_track) / n,
            "with_two_tags": sum(k >= 2 for k in tags_per_track) / n, "with_a_mood": one_mood / n,
            "windows_with_a_tag": windows_on / max(1, windows), "tags_per_track": sum(tags_per_track) / n,
            "tags_per_window": on_per_window / max(1, windows), "first_moods": dict(first_moods.most_common()),
            "commonest_first_mood_share": top_mood,
            "collections": {c: counter.most_common(5) for c, counter in sorted(per_collection.items())}}


def print_report(model: str, name: str, infos: list, tracks: list[dict], policies: dict) -> dict:
    hours = sum(t["seconds"] for t in tracks) / 3600
    print(f"\n## {model} on the {name} set: {len(tracks)} tracks, {hours:.1f} h, "
          f"{sum(len(t['taggram'].start) for t in tracks)} windows, {len(infos)} packages")
    print("packages: " + ", ".join(f"{i['package']} {i['version']} ({i['tracks']} tracks; {i['license']})"
                                   for i in infos))
    results = {label: coverage(tracks, policy) for label, policy in policies.items()}
    print("\n| decisions | tracks >= 1 tag | >= 2 tags | >= 1 mood | windows >= 1 tag | tags/track | "
          "tags/window | commonest first mood |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        top = next(iter(r["first_moods"]), "-")
        print(f"| {label} | {r['with_a_tag']:.1%} | {r['with_two_tags']:.1%} | {r['with_a_mood']:.1%} | "
              f"{r['windows_with_a_tag']:.1%} | {r['tags_per_track']:.1f} | {r['tags_per_window']:.1f} | "
              f"{top} ({r['commonest_first_mood_share']:.0%} of moods) |")
    after = results[list(results)[-1]]
    if after["first_moods"]:
        print("\nfirst moods (the default rule): " + ", ".join(f"{m} {k}" for m, k in after["first_moods"].items()))
    print("\ncommonest track tags per collection (the default rule):")
    for c, top in after["collections"].items():
        print(f"- {c}: " + ", ".join(f"{t} ({k})" for t, k in top))
    return results


def same_collection(tracks: list[dict], vectors, k: int = 5) -> dict:
    """How often a track's nearest tracks (cosine of `vectors`, itself left out) come from its own
    collection: precision at k and at 1."""
    import numpy as np
    v = np.asarray(vectors, np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    scores = v @ v.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    collection = [t["collection"] for t in tracks]
    hits = np.array([[collection[j] == collection[i] for j in row] for i, row in enumerate(nearest)])
    return {"precision_at_k": float(hits.mean()), "top1": float(hits[:, 0].mean())}


def similarity_report(name: str, model: str, cache_dir: str, workers: int) -> None:
    """jaxtag's track vectors (whitened moments, averaged) against the plain mean of each track's
    window embeddings, by how often the nearest tracks share the query's collection."""
    import numpy as np
    from jaxtag.library import similarity
    _, tracks = tag_set(name, model, cache_dir, workers)
    whitening = similarity.model_whitening(model)
    ours = [similarity.track_vector(similarity.moment_vectors(t["embeddings"], whitening)) for t in tracks]
    plain = [np.asarray(t["embeddings"], np.float64).mean(axis=0) for t in tracks]
    print(f"\n{model}, {name} set ({len(tracks)} tracks, {len({t['collection'] for t in tracks})} collections): "
          "the 5 nearest tracks from the query's own collection")
    print("| track vectors | precision@5 | nearest is from its collection |")
    print("|---|---|---|")
    for label, vectors in (("plain mean of window embeddings, cosine", plain),
                           ("jaxtag: whitened moments, averaged, cosine", ours)):
        r = same_collection(tracks, vectors)
        print(f"| {label} | {r['precision_at_k']:.3f} | {r['top1']:.3f} |")


def leave_one_collection_out(tracks: list[dict], policy, **levels) -> dict:
    """Coverage of the calibration set where each collection is judged by statistics made from
    the other collections only (as music the statistics never saw), at these levels (DecisionPolicy
    fields: track_z, lean_z, ...)."""
    from jaxtag.tagging import decisions
    summaries = [decisions.summarise_track(t["taggram"].scores) for t in tracks]
    with_a_tag = with_two = with_a_mood = 0
    for c in sorted({t["collection"] for t in tracks}):
        others = decisions.reference_statistics([s for s, t in zip(summaries, tracks) if t["collection"] != c])
        judged = policy.replace(track_mean=others["track_mean"], track_std=others["track_std"], **levels)
        for t in tracks:
            if t["collection"] == c:
                d = judged.decide(t["taggram"].scores)
                with_a_tag += bool(d.track_tags)
                with_two += len(d.track_tags) >= 2
                with_a_mood += bool(d.moods)
    n = len(tracks)
    return {"with_a_tag": with_a_tag / n, "with_two_tags": with_two / n, "with_a_mood": with_a_mood / n}


def precision(model: str, tracks: list[dict], policy) -> dict:
    """How often a policy's tags (None: each taggram's own) cannot be right, by the weak labels (scripts/weak_labels.py): per
    collection and pooled, voice tags on instrumental music (share of windows with one on, share of
    tracks carrying one), tags implausible for a collection's style (share of its track tags and of
    its window tags on), tracks with a mood, calm vs battle themes with a calm mood, and how much of
    its time a track tag is on (track/window consistency)."""
    import numpy as np
    labels = weak_labels.labels_by_package()
    voice = set(weak_labels.VOICE[model])
    per = collections.defaultdict(lambda: collections.Counter())
    share_on, themes, has_moods = [], collections.defaultdict(lambda: [0, 0]), False
    for t in tracks:
        label = labels[t["collection"]]
        taggram = t["taggram"] if policy is None else t["taggram"].with_policy(policy)
        d = taggram.decisions()
        tags = taggram.tags
        has_moods |= bool(taggram.policy.moods)
        bad = weak_labels.implausible(model, label)
        c = per[t["collection"]]
        c["tracks"] += 1
        c["windows"] += len(d.active)
        c["with_a_mood"] += bool(d.moods)
        c["with_a_tag"] += bool(d.track_tags)
        c["track_tags"] += len(d.track_tags)
        c["implausible_track_tags"] += sum(x in bad for x in d.track_tags)
        on = d.active.astype(bool)
        c["window_tags"] += int(on.sum())
        c["implausible_window_tags"] += int(sum(on[:, i].sum() for i, x in enumerate(tags) if x in bad))
        if label.vocals == weak_labels.INSTRUMENTAL:
            voice_ids = [i for i, x in enumerate(tags) if x in voice]
            c["voice_windows"] += int(on[:, voice_ids].any(axis=1).sum())
            c["voice_tracks"] += any(x in voice for x in d.track_tags)
        share_on += [float(d.share[tags.index(x)]) for x in d.track_tags]
        kind = weak_labels.theme(t["file"])
        if kind:
            themes[kind][0] += 1
            themes[kind][1] += any(m in weak_labels.CALM_MOODS for m in d.moods)
    total = sum(per.values(), collections.Counter())
    instrumental = sum((c for k, c in per.items() if labels[k].vocals == weak_labels.INSTRUMENTAL),
                       collections.Counter())
    styled = {k: c for k, c in per.items() if labels[k].styles}
    ratio = lambda a, b: a / b if b else float("nan")
    return {
        "tracks": total["tracks"], "has_moods": has_moods,
        "voice_windows": ratio(instrumental["voice_windows"], instrumental["windows"]),
        "voice_tracks": ratio(instrumental["voice_tracks"], instrumental["tracks"]),
        "implausible_track_tags": {k: ratio(c["implausible_track_tags"], c["track_tags"]) for k, c in styled.items()},
        "implausible_window_tags": {k: ratio(c["implausible_window_tags"], c["window_tags"]) for k, c in styled.items()},
        "with_a_mood": ratio(total["with_a_mood"], total["tracks"]),
        "with_a_tag": ratio(total["with_a_tag"], total["tracks"]),
        "tags_per_track": ratio(total["track_tags"], total["tracks"]),
        "tags_per_window": ratio(total["window_tags"], total["windows"]),
        "track_tag_time_on": float(np.mean(share_on)) if share_on else float("nan"),
        "track_tags_on_under_10pct": ratio(sum(x < 0.1 for x in share_on), len(share_on)),
        "calm_themes_calm_mood": ratio(themes["calm"][1], themes["calm"][0]), "calm_themes": themes["calm"][0],
        "battle_themes_calm_mood": ratio(themes["battle"][1], themes["battle"][0]), "battle_themes": themes["battle"][0],
    }


def print_precision(model: str, results: dict) -> None:
    """One table row per policy, and each styled collection's implausible share."""
    print(f"\n| {model}: decisions | voice tags: windows of instrumental music | tracks | track tags implausible "
          "for the style (worst collection) | window tags implausible (worst) | tracks with a tag | tracks with a "
          "mood | calm themes with a calm mood | battle themes | track tags per track | track tag's time on "
          "(mean; under 10 %) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    moods = any(r["has_moods"] for r in results.values())
    for label, r in results.items():
        worst = max(r["implausible_track_tags"].values(), default=float("nan"))
        worst_w = max(r["implausible_window_tags"].values(), default=float("nan"))
        mood = (f"{r['with_a_mood']:.1%} | {r['calm_themes_calm_mood']:.0%} of {r['calm_themes']} | "
                f"{r['battle_themes_calm_mood']:.0%} of {r['battle_themes']}") if moods else "— | — | —"
        print(f"| {label} | {r['voice_windows']:.1%} | {r['voice_tracks']:.1%} | {worst:.1%} | {worst_w:.1%} | "
              f"{r['with_a_tag']:.1%} | {mood} | {r['tags_per_track']:.1f} | "
              f"{r['track_tag_time_on']:.0%}; {r['track_tags_on_under_10pct']:.0%} |")
    for label, r in results.items():
        print(f"- {label}: implausible track tags " + ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(r["implausible_track_tags"].items())))


def held_out_references(tracks: list[dict]) -> dict:
    """For each collection, reference statistics from the other collections only (how a user's
    music, which the statistics never saw, is judged)."""
    from jaxtag.tagging import decisions
    summaries = [decisions.summarise_track(t["taggram"].scores) for t in tracks]
    return {c: decisions.reference_statistics([s for s, t in zip(summaries, tracks) if t["collection"] != c])
            for c in sorted({t["collection"] for t in tracks})}


def held_out_precision(model: str, tracks: list[dict], tags: list[str], make_policy, held_out: dict) -> dict:
    """precision() with each collection judged by a policy made from the others' statistics."""
    parts = {}
    for c, stats in held_out.items():
        reference = {"model": model, "tags": tags, "description": "held out", "statistics": stats}
        parts[c] = [dict(t, taggram=t["taggram"].with_policy(make_policy(reference)))
                    for t in tracks if t["collection"] == c]
    judged = [t for part in parts.values() for t in part]
    return precision(model, judged, None)


def levels_report(model: str, cache_dir: str, workers: int) -> None:
    """How the evidence rule's levels were chosen: precision and coverage on the calibration set by
    its weak labels, each collection judged by statistics made from the others (docs/decisions.md:
    the voice targets first, then the most tracks with a mood, then the fewest implausible tags)."""
    from jaxtag.tagging import decisions
    from jaxtag.tagging.tagger import Tagger
    _, tracks = tag_set("calibration", model, cache_dir, workers)
    tags = Tagger.pretrained(model, precision=PRECISION).tags
    held_out = held_out_references(tracks)
    results = {"before: calibrated z-scores": held_out_precision(model, tracks, tags,
                                                                 lambda r: decisions.calibrated_policy(tags, r), held_out)}
    grid = [(floor, ratio, share, 0.0) for floor in (0.0, 0.05, 0.1, 0.15) for ratio in (2.0, 4.0)
            for share in (0.25, 0.4)]
    if any(decisions.is_mood(t) for t in tags):
        grid += [(0.1, 2.0, 0.4, mood_floor) for mood_floor in (0.01, 0.03)]
    for floor, ratio, share, mood_floor in grid:
        make = lambda r: decisions.evidence_policy(tags, r, ratio=ratio, track_share=share, min_base_rate=floor,
                                                   min_mood_base_rate=mood_floor, mood_share=0.1)
        results[f"evidence x{ratio:g}, base >= {floor:g} (moods {mood_floor:g}), track {share:.0%}"] = \
            held_out_precision(model, tracks, tags, make, held_out)
    print(f"\n## {model}, calibration set, each collection judged by the others' statistics "
          "(moods on for >= 10 % of a track)")
    print_precision(model, results)


# -- sections -------------------------------------------------------------------------------------

JOIN_TOLERANCE = 4.5        # seconds: a join is found when a section boundary lies this near it
PIECE_SECONDS = (40.0, 50.0)  # each side of a join: this long (uniformly drawn), from the track's middle


def joined_pairs(tracks: list[dict], folder: str, sample_rate: int, seed: int = 0) -> list[dict]:
    """Every unordered pair of the tracks joined (in a seeded random order) into one file under
    `folder`: a piece of the first track, then a piece of the second, each PIECE_SECONDS long
    (drawn) and taken from the track's middle, cut without a fade at a time that falls anywhere
    in a window. [{"path", "join" (seconds), "first", "second" (the tracks' files)}]."""
    import numpy as np
    import soundfile as sf
    from jaxtag.data.audio import load_audio
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    audio = {}
    pieces = []
    for i in range(len(tracks)):
        for j in range(i + 1, len(tracks)):
            a, b = (i, j) if rng.random() < 0.5 else (j, i)
            la, lb = rng.uniform(*PIECE_SECONDS, size=2)
            pieces.append((a, b, float(la), float(lb)))
    out = []
    for a, b, la, lb in pieces:
        path = os.path.join(folder, f"join_{a:02d}_{b:02d}.flac")
        na, nb = int(round(la * sample_rate)), int(round(lb * sample_rate))
        if not os.path.exists(path):
            for k in (a, b):
                if k not in audio:
                    audio[k] = load_audio(tracks[k]["path"], sample_rate)

            def middle(y, n):
                begin = max(0, (len(y) - n) // 2)
                return y[begin:begin + n]
            y = np.concatenate([middle(audio[a], na), middle(audio[b], nb)])
            write_atomic(path, lambda f, y=y: sf.write(f, y, sample_rate, format="FLAC"), durable=False)
        out.append({"path": path, "join": na / sample_rate, "first": tracks[a]["file"], "second": tracks[b]["file"]})
    return out


def _tag_files(files: list[str], model: str, out: str, workers: int) -> list[tuple]:
    """(taggram, embeddings) of each file, tagged into `out` (resumable: the library's store)."""
    from jaxtag.library import run as library
    from jaxtag.tagging.tagger import Tagger
    tagger = Tagger.pretrained(model, precision=PRECISION)
    result = library.tag_library(tagger, files, library.LibraryOptions(output_dir=out, formats=("json",), top_n=0,
                                                                         workers=workers))
    if result.failed:
        raise SystemExit(f"{len(result.failed)} file(s) could not be tagged: {result.failed}")
    from jaxtag.library.views import stored_taggrams
    found = stored_taggrams(tagger, out, files)
    return [(found[path][1], found[path][0]["embeddings"]) for path in files]


def section_figures(ordinary: list[tuple], joined: list[tuple], joins: list[float], settings) -> dict:
    """Joins with a boundary within JOIN_TOLERANCE; boundaries a minute on ordinary tracks (all
    of them together, and the most of any one track); other boundaries a minute in the joined files."""
    import numpy as np
    from jaxtag.tagging import sections

    def boundaries(taggram, embeddings):
        cuts = sections.change_points(sections.moment_vectors(embeddings, taggram.model), taggram.start,
                                      taggram.duration, settings)
        return taggram.bounds()[cuts]
    found, gaps, extra, joined_minutes = 0, [], 0, 0.0
    for (taggram, embeddings), join in zip(joined, joins):
        times = boundaries(taggram, embeddings)
        gap = float(np.min(np.abs(times - join))) if len(times) else float("inf")
        gaps.append(gap)
        found += gap <= JOIN_TOLERANCE
        extra += len(times) - (gap <= JOIN_TOLERANCE)
        joined_minutes += taggram.duration / 60
    counts = [len(boundaries(t, e)) for t, e in ordinary]
    minutes = [t.duration / 60 for t, _ in ordinary]
    return {"joins": len(joins), "found": found, "share_found": found / max(1, len(joins)),
            "median_gap": float(np.median(gaps)) if gaps else float("nan"),
            "per_minute": sum(counts) / max(1e-9, sum(minutes)),
            "most_per_minute": max((c / m for c, m in zip(counts, minutes)), default=0.0),
            "ordinary_sections": sum(counts) + len(counts), "ordinary_tracks": len(counts),
            "extra_per_minute_joined": extra / max(1e-9, joined_minutes)}


def sections_report(package: str, model: str, cache_dir: str, workers: int, penalties: list[float]) -> dict:
    """Sections on one soundtrack: its tracks as they are, and every pair of them joined at a known
    second (joined_pairs); the default settings' figures, and those of other penalties."""
    import dataclasses as dc
    from jaxtag.models.musicnn import MUSICNN_FRONTEND
    from jaxtag.tagging import sections
    collection = next((c for c in REPORT + CALIBRATION if c.package == package), None)
    if collection is None:
        raise SystemExit(f"{package}: not one of the script's collections")
    tracks = collect(collection, cache_dir)
    pairs = joined_pairs(tracks, os.path.join(cache_dir, "joined", package), MUSICNN_FRONTEND.sample_rate)
    ordinary = _tag_files([t["path"] for t in tracks], model, os.path.join(cache_dir, "tagged", "sections", model,
                                                                              package), workers)
    joined = _tag_files([p["path"] for p in pairs], model, os.path.join(cache_dir, "tagged", "sections", model,
                                                                           package + "-joined"), workers)
    joins = [p["join"] for p in pairs]
    hours = sum(t.duration for t, _ in ordinary) / 3600
    print(f"\n{model}, {package}: {len(tracks)} tracks ({hours:.2f} h) as they are; {len(pairs)} pairs of them "
          f"joined at a known second ({PIECE_SECONDS[0]:.0f}-{PIECE_SECONDS[1]:.0f} s from each track's middle); "
          f"a join is found with a boundary within {JOIN_TOLERANCE} s")
    print("| settings | joins found | median distance to the nearest boundary | boundaries a minute "
          "(ordinary tracks) | most in one track | other boundaries a minute (joined files) |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for penalty in [sections.DEFAULT.penalty_seconds] + [p for p in penalties if p != sections.DEFAULT.penalty_seconds]:
        settings = dc.replace(sections.DEFAULT, penalty_seconds=penalty)
        r = section_figures(ordinary, joined, joins, settings)
        label = f"penalty {penalty:g} s, shortest section {settings.min_seconds:g} s" + \
            (" (the default)" if settings == sections.DEFAULT else "")
        rows[penalty] = r
        print(f"| {label} | {r['found']}/{r['joins']} ({r['share_found']:.1%}) | {r['median_gap']:.1f} s | "
              f"{r['per_minute']:.2f} | {r['most_per_minute']:.2f} | {r['extra_per_minute_joined']:.2f} |")
    return rows


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("calibrate", "report", "check", "levels", "similarity", "precision",
                                            "sections"))
    parser.add_argument("--cache_dir", default=os.path.join(os.environ.get("JAXTAG_CACHE", os.path.expanduser(
        os.path.join("~", "jaxtag_data"))), "real_music"), help="where packages, music and tagged outputs are kept")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--set", default=None, choices=tuple(SETS), help="report: which set (default: report)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--package", default="flare-game", help="sections: the soundtrack whose tracks are joined")
    parser.add_argument("--penalties", default="", help="sections: other penalties (seconds) to report beside "
                        "the default, comma-separated")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="report, precision, similarity, levels, sections: the models' precision (calibrate "
                        "and check: float32 only, the shipped statistics' own)")
    args = parser.parse_args(argv)
    if args.precision != "float32" and args.command in ("calibrate", "check"):
        parser.error(f"{args.command} runs in float32 only: the shipped reference statistics are float32's")
    global PRECISION
    PRECISION = args.precision
    from jaxtag.tagging import decisions
    from jaxtag.tagging.tagger import Tagger
    models = [m for m in args.models.split(",") if m]
    status = 0
    for model in models:
        if args.command == "calibrate":
            infos, tracks = tag_set("calibration", model, args.cache_dir, args.workers)
            path = write_reference(reference_of(model, infos, tracks, Tagger.pretrained(model, precision=PRECISION).tags))
            embeddings = write_embedding_statistics(model, embedding_statistics(tracks))
            print(f"{model}: {len(tracks)} tracks -> {os.path.relpath(path, REPO)}, {os.path.relpath(embeddings, REPO)}")
        elif args.command == "check":
            shipped = decisions.load_reference(model)
            if shipped is None:
                print(f"{model}: no shipped statistics")
                status = 1
                continue
            same = decisions.reference_statistics(shipped["tracks"]) == shipped["statistics"]
            print(f"{model}: statistics {'follow' if same else 'DO NOT follow'} from the shipped per-track summaries")
            status |= not same
            if os.path.isdir(os.path.join(args.cache_dir, "debs")):
                infos, tracks = tag_set("calibration", model, args.cache_dir, args.workers)
                rebuilt = reference_of(model, infos, tracks, shipped["tags"])["tracks"]
                problems = compare_summaries(shipped["tracks"], rebuilt)
                print(f"{model}: {len(rebuilt)} tracks re-tagged from the cached audio: "
                      + ("the same summaries" if not problems else f"{len(problems)} differ: {problems[:5]}"))
                status |= bool(problems)
                import numpy as np
                from jaxtag.library.similarity import embedding_reference_path
                again = embedding_statistics(tracks)
                with np.load(embedding_reference_path(model)) as npz:
                    gap = max(float(np.abs(npz["mean"] - again["mean"]).max()),
                              float(np.abs(npz["covariance"] - again["covariance"]).max()))
                print(f"{model}: embedding statistics from the cached audio differ by at most {gap:.2e}")
                status |= gap > 1e-3
        elif args.command == "sections":
            sections_report(args.package, model, args.cache_dir, args.workers,
                            [float(p) for p in args.penalties.split(",") if p])
        elif args.command == "similarity":
            similarity_report(args.set or "report", model, args.cache_dir, args.workers)
        elif args.command == "levels":
            levels_report(model, args.cache_dir, args.workers)
        elif args.command == "precision":
            name = args.set or "weak"
            _, tracks = tag_set(name, model, args.cache_dir, args.workers)
            tagger = Tagger.pretrained(model, precision=PRECISION)
            reference = decisions.load_reference(model)
            print(f"\n## {model} ({PRECISION}) on the {name} set: {len(tracks)} tracks, "
                  f"{sum(t['seconds'] for t in tracks) / 3600:.1f} h (weak labels: scripts/weak_labels.py)")
            print_precision(model, {
                "before: calibrated z-scores (stop 24)": precision(model, tracks, decisions.calibrated_policy(
                    tagger.tags, reference)),
                "after: evidence (the default)": precision(model, tracks, tagger.policy)})
        else:
            name = args.set or "report"
            infos, tracks = tag_set(name, model, args.cache_dir, args.workers)
            tagger = Tagger.pretrained(model, precision=PRECISION)
            print_report(model, name, infos, tracks, {
                "before: score >= 0.5, track tags on >= half the time": decisions.threshold_policy(tagger.tags, 0.5),
                "after: evidence (the default)": tagger.policy})
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
