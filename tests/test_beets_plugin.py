"""The beets plugin (beetsplug/jaxtag.py), with beets' own plugin test helpers on a temporary
library of generated audio: fields set and typed (range queries through beets), tags written
through beets, resumable, tagging on import (a real beets import), similar items."""
import json
import os
import shutil
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("beets", reason="the beets plugin needs beets (pip install -e '.[beets]')")
from beets.library import Item  # noqa: E402
from beets.test.helper import ImporterMixin, PluginTestHelper  # noqa: E402

from jaxtag.library import file_tags as metadata  # noqa: E402
from test_library import _music  # noqa: E402


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Five generated tracks in three formats, one a copy of another (its most similar item)."""
    folder = tmp_path_factory.mktemp("beets_audio")
    files = [_music(folder / f"track{i}.{ext}", 6.0 + i, sr=8000, seed=20 + i, fmt=ext.upper())
             for i, ext in enumerate(("wav", "flac", "wav", "ogg"))]
    files.append(str(shutil.copy(files[1], folder / "copy of track1.flac")))
    return files


class TestJaxtagPlugin(PluginTestHelper):
    plugin: ClassVar[str] = "jaxtag"
    preload_plugin: ClassVar[bool] = False

    @pytest.fixture(autouse=True)
    def _library(self, setup, trained, audio, tmp_path):  # after beets' own setup (self.lib)
        self.trained_workdir = trained[1]
        self.items = []
        for path in audio:
            copy = self.lib_path / os.path.basename(path)
            shutil.copy(path, copy)
            item = Item.from_path(str(copy))
            item.add(self.lib)
            self.items.append(item)
        self.out = tmp_path / "jaxtag_out"

    def _configure(self, **extra):
        self.config["jaxtag"].set({"workdir": self.trained_workdir, "output_dir": str(self.out), "workers": 1, **extra})
        self.load_plugins("jaxtag")

    def _rows(self):
        rows = json.loads((self.out / "library.json").read_text())["files"]
        return {r["path"]: r for r in rows}

    def test_tags_items_sets_typed_fields_and_writes_through_beets(self):
        self.config["import"]["write"] = True
        self._configure()
        self.run_command("jaxtag")
        rows = self._rows()
        from beetsplug.jaxtag import field_name
        tags = json.loads((self.out / "library.json").read_text())["tags"]
        for item in self.lib.items():
            row = rows[os.fsdecode(item.path)]
            assert item["mood"] == "; ".join(row["moods"])
            assert item["jaxtag_tags"] == "; ".join(t.replace("Emotion-", "").replace("_", " ") for t in row["track_tags"])
            for tag in tags:
                assert item[field_name(tag)] == pytest.approx(row["strength"][tag], abs=1e-4)
            # Written into the file through beets' own writer, in the fields jaxtag reads back.
            fields = metadata.read_tags(os.fsdecode(item.path))
            jaxtag_field = next(v for k, v in fields.items() if "JAXTAG" in k.upper())
            assert metadata.parse_jaxtag(jaxtag_field)[1] == item["jaxtag_tags"].split("; ") if item["jaxtag_tags"] \
                else metadata.parse_jaxtag(jaxtag_field)[1] == []
        # Typed: a numeric range query through beets.
        field = field_name("Emotion-Sad")
        strengths = {os.fsdecode(i.path): i[field] for i in self.lib.items()}
        cut = float(np.median(list(strengths.values())))
        found = {os.fsdecode(i.path) for i in self.lib.items(f"{field}:{cut}..")}
        assert found == {p for p, s in strengths.items() if s >= cut} and 0 < len(found) < len(strengths)

    def test_a_second_run_reads_the_store_and_nowrite_leaves_files_alone(self):
        self._configure()
        before = {os.fsdecode(i.path): open(i.path, "rb").read() for i in self.items}
        self.run_command("jaxtag", "--nowrite")
        assert all(open(p, "rb").read() == data for p, data in before.items())  # files untouched
        from helpers import library_state
        before = library_state.records(self.out)
        self.run_command("jaxtag", "--nowrite")
        assert library_state.records(self.out) == before and len(before) == len(self.items)   # nothing redone
        assert all(self.lib.get_item(i.id)["jaxtag_tags"] is not None for i in self.items)

    def test_a_run_into_a_busy_output_folder_is_logged_naming_the_other_and_tags_nothing(self, caplog):
        from jaxtag.library.state import RunLock
        self._configure()
        lock = RunLock(str(self.out))
        lock.acquire()
        try:
            self.run_command("jaxtag")    # no exception: beets goes on
        finally:
            lock.release()
        assert f"is being tagged by process {os.getpid()}" in caplog.text
        assert all(self.lib.get_item(i.id).get("jaxtag_tags") is None for i in self.items)
        assert not (self.out / "library.json").exists()

    def test_the_precision_is_chosen_for_every_run_and_the_model_loaded_once_per_precision(self, monkeypatch):
        """A long import follows a precision another run records meanwhile (the plugin's _tagger
        chooses again for each album, no model): loaded once while the choice holds, again when
        the library's record changes; the choice tells the run to check the record under its lock."""
        from types import SimpleNamespace
        from beets import plugins
        from jaxtag.library.state import LibraryState
        from jaxtag.tagging import precision
        from jaxtag.tagging.tagger import Tagger
        loads = []
        monkeypatch.setattr(Tagger, "pretrained", classmethod(
            lambda cls, name, precision="float32": loads.append((name, precision)) or SimpleNamespace(precision=precision)))
        monkeypatch.setattr(precision, "auto_choice", lambda pretrained, backend=None: precision.Choice(
            "float32", f"{precision.CHOSEN}: this test"))
        self._configure(workdir="", model="musicnn-msd", precision="auto")
        plugin = next(p for p in plugins.find_plugins() if p.name == "jaxtag")
        tagger, choice = plugin._tagger()
        assert tagger.precision == "float32" and choice.follows_record
        assert plugin._tagger()[0] is tagger and loads == [("musicnn-msd", "float32")]
        with LibraryState(str(self.out)) as state:        # another run's record
            state.set_precision("bfloat16")
        tagger, choice = plugin._tagger()
        assert (tagger.precision, choice) == ("bfloat16", ("bfloat16", precision.RECORDED)) and choice.follows_record
        assert loads == [("musicnn-msd", "float32"), ("musicnn-msd", "bfloat16")]

    def test_similar_items(self, capsys):
        self._configure()
        self.run_command("jaxtag", "--nowrite")
        capsys.readouterr()
        self.run_command("jaxtag-similar", "-n", "2", f"path:{os.fsdecode(self.items[1].path)}")
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("1.000  ")
        copy = next(i for i in self.lib.items() if "copy of track1" in os.fsdecode(i.path))
        assert lines[0] == f"1.000  {copy}"


class TestJaxtagOnImport(ImporterMixin, PluginTestHelper):
    """A real beets import (copying the files into the library, import.write on)."""
    plugin: ClassVar[str] = "jaxtag"
    preload_plugin: ClassVar[bool] = False

    @pytest.mark.parametrize("auto", [True, False])
    def test_an_import_tags_the_items_where_beets_put_them_only_with_auto(self, setup, trained, audio, tmp_path, auto):
        album = self.import_path / "album"
        album.mkdir()
        for path in audio[:3]:
            shutil.copy(path, album)
        out = tmp_path / "jaxtag_out"
        self.config["jaxtag"].set({"workdir": trained[1], "output_dir": str(out), "workers": 1, "auto": auto})
        self.load_plugins("jaxtag")
        self.setup_importer(autotag=False, write=True).run()
        items = list(self.lib.items())
        assert len(items) == 3 and all(os.fsdecode(i.path).startswith(str(self.lib_path)) for i in items)
        if not auto:
            assert all("jaxtag_tags" not in i for i in items) and not out.exists()
            return
        rows = {r["path"]: r for r in json.loads((out / "library.json").read_text())["files"]}
        assert sorted(rows) == sorted(os.fsdecode(i.path) for i in items)   # the library's copies
        for item in items:
            row = rows[os.fsdecode(item.path)]
            assert item["mood"] == "; ".join(row["moods"]) and item["jaxtag_tags"] is not None
            fields = metadata.read_tags(os.fsdecode(item.path))                # written through beets
            jaxtag_field = next(v for k, v in fields.items() if "JAXTAG" in k.upper())
            assert metadata.parse_jaxtag(jaxtag_field)[1] == (item["jaxtag_tags"].split("; ") if item["jaxtag_tags"]
                                                              else [])
        # The store knows them where they are: `beet jaxtag` afterwards runs no model (the stored
        # scores stay as they are; the files' new stamps, from the tags beets wrote, are checked
        # against their audio and recorded) and the decisions stay.
        scores = {p: p.stat().st_mtime_ns for p in (out / ".jaxtag" / "analyses").rglob("*.npz")}
        self.run_command("jaxtag", "--nowrite")
        assert {p: p.stat().st_mtime_ns for p in (out / ".jaxtag" / "analyses").rglob("*.npz")} == scores
        assert len(scores) == 3
        assert {r["path"]: r for r in json.loads((out / "library.json").read_text())["files"]} == rows
        # A CLI run into the same output folder, over other music: the summary is the whole library.
        from jaxtag.library.run import LibraryOptions, tag_library
        from jaxtag.tagging.tagger import Tagger
        other = tmp_path / "elsewhere"
        other.mkdir()
        more = [shutil.copy(audio[3], other)]
        tag_library(Tagger.from_workdir(trained[1]), more, LibraryOptions(output_dir=str(out), workers=1, top_n=0,
                                                                          formats=("json", "html"), roots=(str(other),)))
        listed = sorted(r["path"] for r in json.loads((out / "library.json").read_text())["files"])
        assert listed == sorted([*rows, *more])
