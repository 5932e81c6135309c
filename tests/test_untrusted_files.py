"""No code path unpickles: user-supplied files (audio, CSVs, checkpoints' metadata, predictions)
are read with formats that cannot execute code."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_pickle_anywhere_in_the_package_or_scripts():
    offenders = []
    for folder in ("jaxtag", "scripts"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    text = open(path, encoding="utf-8").read()
                    if re.search(r"\bimport (c?pickle|dill|joblib)\b|allow_pickle\s*=\s*True|pickle\.loads?\(", text):
                        offenders.append(os.path.relpath(path, REPO))
    assert offenders == []
    # The checker itself finds what it should (it would fail on a regression).
    assert re.search(r"allow_pickle\s*=\s*True", "np.load(f, allow_pickle=True)")
