"""beets plugin: jaxtag's moods, tags, tag strengths and tempo on your beets items.

    plugins: jaxtag
    jaxtag:
        model: musicnn            # both musicnn models in one vocabulary (the default); or musicnn-msd, musicnn-mtt; or `workdir:` a training run
        workdir: ''
        output_dir: ''            # jaxtag's outputs (default: jaxtag/ in beets' config folder)
        auto: no                  # tag items as they are imported (once beets has copied/moved them)
        write: ''                 # write file tags (default: beets' import.write)
        workers: 0                # decoding processes (0: one per CPU core)
        precision: ''             # auto (the default, or $JAXTAG_PRECISION), float32 or bfloat16: jaxtag's --precision

    beet jaxtag [QUERY]           tag the matching items (resumable: only new or changed audio
                                  runs the model; the rest is read from jaxtag's store)
    beet jaxtag-similar QUERY     the items most like the first matching item

Each item gets `mood` (its moods, "; "-joined: written to TMOO / MOOD / ----:com.apple.iTunes:MOOD,
where Navidrome and others read moods), `jaxtag_tags` (every tag it carries), `jaxtag` (the
JAXTAG field jaxtag writes: model and tags), a float `jaxtag_<tag>` per tag (its strength: for the
pretrained models the share of the track's time the tag is on; so `beet ls jaxtag_sad:0.5..`
lists the items that are sad for at least half their time), and `bpm` where the tempo is
steady. Decisions are jaxtag's own (docs/decisions.md); tagging runs jaxtag's library engine.
"""
from __future__ import annotations

import json
import os
import re

import mediafile
from beets import config, ui
from beets.dbcore import types
from beets.plugins import BeetsPlugin


def field_name(tag: str) -> str:
    """The flexible field of a tag's strength: `jaxtag_` and the tag in lower case, other
    characters as "_" ("female vocalists" -> jaxtag_female_vocalists)."""
    return "jaxtag_" + re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_")


class JaxtagPlugin(BeetsPlugin):
    def __init__(self, name: str = "jaxtag"):
        super().__init__(name)
        self.config.add({"model": "musicnn", "workdir": "", "output_dir": "", "auto": False, "write": "",
                         "workers": 0, "precision": ""})
        self._media_field("mood", mediafile.MediaField(
            mediafile.MP3StorageStyle("TMOO"), mediafile.MP4StorageStyle("----:com.apple.iTunes:MOOD"),
            mediafile.StorageStyle("MOOD"), mediafile.ASFStorageStyle("WM/Mood")))
        self._media_field("jaxtag", mediafile.MediaField(
            mediafile.MP3DescStorageStyle("JAXTAG"), mediafile.MP4StorageStyle("----:com.apple.iTunes:JAXTAG"),
            mediafile.StorageStyle("JAXTAG")))
        if self.config["auto"].get(bool):
            # After beets has copied or moved the files (and written its own tags): jaxtag's store
            # then knows the items at their library paths, so `beet jaxtag` later finds them done.
            # (An import stage proper runs before that, on the paths being imported from.)
            self.register_listener("import_task_files", self.imported)
        self._loaded_tagger = None

    def _media_field(self, name: str, descriptor) -> None:
        """A field beets reads from and writes to the files. Defined once per process: a plugin
        loaded again (or another plugin's mood field, the same frames) finds it there."""
        if name not in mediafile.MediaFile.fields():
            self.add_media_field(name, descriptor)

    # -- configuration ------------------------------------------------------------------------

    @property
    def output_dir(self) -> str:
        configured = self.config["output_dir"].as_str()
        return os.path.expanduser(configured) if configured else os.path.join(config.config_dir(), "jaxtag")

    def _tags(self) -> list[str]:
        """The model's tags: from the outputs of a run before, or the pretrained model's list."""
        try:
            with open(os.path.join(self.output_dir, "library.json"), encoding="utf-8") as f:
                return list(json.load(f)["tags"])
        except (OSError, ValueError, KeyError):
            pass
        if not self.config["workdir"].as_str():
            from jaxtag.tagging.decisions import load_reference
            reference = load_reference(self.config["model"].as_str())
            return list(reference["tags"]) if reference else []
        return []

    @property
    def item_types(self) -> dict:
        """Typed fields, so that `beet ls jaxtag_sad:0.5..` is a numeric range query."""
        return {field_name(t): types.Float(4) for t in self._tags()}

    def _tagger(self):
        """The model and the precision choice it runs in (jaxtag.tagging.precision.Choice). The
        choice is made again on every call (an import calls this for every album; it reads one row
        of the library's database), so a long import follows a precision another run recorded
        meanwhile; the model is loaded once per precision."""
        from jaxtag.library.run import choose_precision
        from jaxtag.tagging.precision import default_request, engine_note
        from jaxtag.tagging.tagger import Tagger
        workdir = self.config["workdir"].as_str()
        try:   # as jaxtag's --precision: the library's own, or chosen for this CPU (a new library)
            choice = choose_precision(self.output_dir, self.config["precision"].as_str() or default_request(),
                                      pretrained=not workdir,
                                      float32_option="`precision: float32` under jaxtag: in beets' config")
        except ValueError as e:
            raise ui.UserError(f"jaxtag: {e}") from None
        if self._loaded_tagger is None or self._loaded_tagger.precision != choice.precision:
            self._log.info("precision: {} ({}{})", choice.precision, choice.why, engine_note(choice.precision))
            self._loaded_tagger = Tagger.from_workdir(os.path.expanduser(workdir), precision=choice.precision) \
                if workdir else Tagger.pretrained(self.config["model"].as_str(), precision=choice.precision)
        return self._loaded_tagger, choice

    def _should_write(self, option: bool | None = None) -> bool:
        configured = self.config["write"].get()
        return ui.should_write(option if option is not None else (None if configured in ("", None) else bool(configured)))

    # -- commands -----------------------------------------------------------------------------

    def commands(self):
        tag = ui.Subcommand("jaxtag", help="tag items with jaxtag: moods, tags, tag strengths, tempo")
        tag.parser.add_option("-w", "--write", action="store_true", default=None, help="write tags to files")
        tag.parser.add_option("-W", "--nowrite", action="store_false", dest="write", help="do not write tags to files")
        tag.parser.add_option("-f", "--force", action="store_true", default=False,
                              help="run the model again on items tagged before")
        tag.func = lambda lib, opts, args: self.tag_items(lib.items(args), opts.write, opts.force)
        similar = ui.Subcommand("jaxtag-similar", help="list the items most like an item (jaxtag's similarity)")
        similar.parser.add_option("-n", "--number", type="int", default=10, help="how many")
        similar.func = lambda lib, opts, args: self.list_similar(lib, args, opts.number)
        return [tag, similar]

    def imported(self, session, task) -> None:
        """auto: yes: tag each import task's items where beets has put them; their file tags are
        written (through beets) when `write` (default: import.write) is on."""
        self.tag_items(task.imported_items())

    def tag_items(self, items, write: bool | None = None, force: bool = False) -> None:
        from jaxtag.library import run as library
        items = list(items)
        if not items:
            self._log.info("no items to tag")
            return
        paths = {os.fsdecode(item.path): item for item in items}
        tagger, choice = self._tagger()
        options = library.LibraryOptions(output_dir=self.output_dir, formats=("json", "html"), top_n=0, force=force,
                                         workers=self.config["workers"].get(int), follows_record=choice.follows_record,
                                         roots=(os.fsdecode(config["directory"].as_filename()),))
        from jaxtag.library.state import LibraryBusy
        try:
            result = library.tag_library(tagger, list(paths), options, log=_BeetsLog(self._log))
        except LibraryBusy as e:  # another jaxtag run into the same folder: these items are tagged next time
            self._log.error("{}", e)
            return
        for path, problem in result.failed.items():
            self._log.warning("{}: {}", path, problem)
        write = self._should_write(write)
        for path, item in paths.items():
            row = result.rows.get(path)   # none for a file that failed now (its old row is of other audio)
            if row is None:
                continue
            self.apply_row(item, row, tagger)
            if write:
                item.try_write()
            item.store()
        self._log.info("tagged {} item(s): {} by the model, {} from stored scores, {} already done, {} failed",
                       len(items), len(result.tagged), len(result.derived), len(result.skipped), len(result.failed))

    def apply_row(self, item, row: dict, tagger) -> None:
        """Set an item's fields from its jaxtag library row."""
        from jaxtag.data.tags import short_tag
        from jaxtag.library.file_tags import format_jaxtag
        item["mood"] = "; ".join(row["moods"])
        item["jaxtag_tags"] = "; ".join(short_tag(t) for t in row["track_tags"])
        item["jaxtag"] = format_jaxtag(tagger.model_name, [short_tag(t) for t in row["track_tags"]])
        for tag, strength in zip(tagger.tags, row["strength"]):
            item[field_name(tag)] = round(float(strength), 4)
        if row.get("bpm_stable") and row.get("bpm"):
            item["bpm"] = int(round(row["bpm"]))

    def list_similar(self, lib, query, n: int) -> None:
        from jaxtag.library.similarity import find_similar
        items = list(lib.items(query))
        if not items:
            raise ui.UserError("no item matches the query")
        found = find_similar(self.output_dir, os.fsdecode(items[0].path), n)
        by_path = {os.fsdecode(i.path): i for i in lib.items()}
        for track in found["tracks"]:
            item = by_path.get(track["path"])
            ui.print_(f"{track['score']:.3f}  " + (str(item) if item is not None else track["path"]))


class _BeetsLog:
    """jaxtag's library log, through beets' logger."""

    def __init__(self, log):
        self.log = log

    def plan(self, total, todo, derive=0, partial=0, library=0):
        self.log.info("{} item(s): {} for the model ({} of them for some of its networks only), {} from stored "
                      "scores; {} other file(s) of the library derived again", total, todo, partial, derive, library)

    def moved(self, old, new):
        self.log.info("moved: {} -> {}", old, new)

    def gone(self, path):
        self.log.info("gone: {}", path)

    def tagged(self, path, taggram):
        self.log.debug("tagged {}", path)

    def unchanged(self, path):
        self.log.debug("unchanged {}", path)

    def failed(self, path, problem, done=True):
        self.log.warning("{}: {}", path, problem)

    def warn(self, path, message):
        self.log.warning("{}: {}", path, message)

    def say(self, message):
        self.log.info("{}", message)
