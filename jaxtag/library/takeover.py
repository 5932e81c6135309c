"""Taking over an output folder of the layout before the database (jaxtag up to 0.x: one JSON record
per file in OUT/.jaxtag/records/, its stored arrays in OUT/.jaxtag/scores/NAME.npz): imported into
the library's database on the first run, without running the model."""
from __future__ import annotations

import json
import os
import shutil

from jaxtag.files import TMP_MARK
from jaxtag.library.arrays import arrays_header
from jaxtag.library.state import STATE_DIR, Analysis, arrays_file

OLD_RECORDS = os.path.join(STATE_DIR, "records")
OLD_SCORES = os.path.join(STATE_DIR, "scores")


def _named_files(folder: str, suffix: str) -> dict[str, str]:
    """{name: file} of the files ending in `suffix` below `folder` (but temporary ones)."""
    found = {}
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(suffix) and TMP_MARK not in f:
                path = os.path.join(root, f)
                found[os.path.relpath(path[:-len(suffix)], folder).replace(os.sep, "/")] = path
    return found


def take_over_old_layout(output_dir: str, state, log) -> int:
    """Import OUT's records and stored arrays of the old layout (see the module docstring), if any;
    returns how many files were imported. Arrays that cannot be read stay where they are (their
    files are tagged again), with a warning."""
    records_dir, scores_dir = os.path.join(output_dir, OLD_RECORDS), os.path.join(output_dir, OLD_SCORES)
    if not os.path.isdir(records_dir) and not os.path.isdir(scores_dir):
        return 0
    unread, imported = [], 0
    for name, npz in sorted(_named_files(scores_dir, ".npz").items()):
        header = arrays_header(npz)
        if header is None:
            unread.append(npz)
            continue
        content, model = header["source"]["content"], header["model"]
        relative = arrays_file(content, model)
        os.makedirs(os.path.dirname(os.path.join(output_dir, relative)), exist_ok=True)
        os.replace(npz, os.path.join(output_dir, relative))
        state.put_analysis(Analysis(content, model, relative, os.path.getsize(os.path.join(output_dir, relative)),
                                    tuple(header["parts"])))
        state.put_file(name, header["source"], os.path.dirname(header["source"]["path"]))
    for name, path in sorted(_named_files(records_dir, ".json").items()):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            state.put_decision(name, record["source"], record["settings"], record["outputs"], record["summary"],
                               os.path.dirname(record["source"]["path"]))
            imported += 1
        except (OSError, ValueError, KeyError, TypeError):
            unread.append(path)  # its file is tagged again
    shutil.rmtree(records_dir, ignore_errors=True)
    if not unread:
        shutil.rmtree(scores_dir, ignore_errors=True)
    log.say(f"{output_dir}: took over {imported} file(s) of the earlier layout (records and stored scores) into "
            f"the library's database, without running the model")
    for path in unread:
        log.say(f"warning: {path}: cannot be read; left in place, its file is tagged again")
    return imported
